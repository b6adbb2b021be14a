"""What the benchmark scripts share: the model-size command-line options and wall-clock timing."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--base``, ``--height``, ``--width``, ``--repeats`` and ``--threads``, with the SD1.5 try-on defaults."""
    parser.add_argument("--base", default="sd15-inpainting")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads; ``None`` (or 0) keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)


def sync(device: torch.device | str | None) -> None:
    """Wait for the work queued on a CUDA device, so a clock read after it counts that work."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Seconds ``fn()`` takes, including the work it queues on ``device`` (earlier queued work is not counted)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start
