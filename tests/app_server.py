"""The app served on a free localhost port for the end-to-end and browser tests.

It runs a randomly initialised tiny model on synthetic example inputs (written to a temporary folder), so
the tests need neither the released weights nor the shipped demo model, and a generation takes a second.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

#: Model size (width, height) the served tiny model runs at.
SERVED_SIZE = (48, 64)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served_app() -> Iterator[tuple[str, object]]:
    """Yield (url, runtime) of the app on 127.0.0.1; close it afterwards."""
    from app import serve
    from leffa.core.model import LeffaModel
    from leffa.app.examples import TryOnExample
    from leffa.app.runtime import single_model_runtime
    from train.synthetic.export import make_examples

    torch.manual_seed(0)
    model = LeffaModel.from_base("tiny").eval()
    with tempfile.TemporaryDirectory(prefix="leffa-app-test-") as folder:
        written = make_examples(Path(folder), n=3, size=(128, 96))
        examples = [TryOnExample(e["person"], e["garment"], e["mask"], e["densepose"]) for e in written]
        runtime = single_model_runtime(model, SERVED_SIZE, examples)
        demo = serve(runtime, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
        try:
            yield demo.local_url, runtime
        finally:
            demo.close(verbose=False)
