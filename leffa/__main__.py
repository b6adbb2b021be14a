"""``python -m leffa``: the command line (see :mod:`leffa.app.cli`)."""

import sys

from leffa.app.cli import main

sys.exit(main())
