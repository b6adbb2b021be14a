"""``python -m leffa``: the command line (see :mod:`leffa.cli`)."""

import sys

from leffa.cli import main

sys.exit(main())
