"""Splitting a batch over processes: ``--shard I/N``, or the rank and world size a launcher sets.

Under ``accelerate launch`` or ``torchrun`` every process runs the same command; each takes every N-th pair
of the whole list (from its own index), so names decided on the whole list stay the same whatever N is,
and runs on its own GPU (``LOCAL_RANK``). ``--shard I/N`` does the same for schedulers without a launcher
(e.g. a SLURM or Kubernetes array job, one task per shard).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``; ``local_rank`` (its GPU on the node) when a launcher started it."""

    index: int = 0
    count: int = 1
    local_rank: int | None = None

    def take(self, items: Sequence[T]) -> list[T]:
        """This process's share: items ``index``, ``index + count``, ..."""
        return list(items[self.index :: self.count])

    @property
    def label(self) -> str:
        return f"shard {self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` (0 <= I < N) as a :class:`Shard`; an ``argparse`` error naming the form otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (this process's index and the count), got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"I/N needs 0 <= I < N, got {text!r}")
    return Shard(index, count)


def launcher_shard(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard a launcher (``torchrun``, ``accelerate launch``) gave this process through ``RANK``,
    ``WORLD_SIZE`` and ``LOCAL_RANK``; ``None`` for a single process."""
    count = int(environ.get("WORLD_SIZE", "1"))
    if count <= 1:
        return None
    return Shard(int(environ.get("RANK", "0")), count, int(environ.get("LOCAL_RANK", "0")))


def shard_device(device: str, shard: Shard) -> str:
    """``auto``/``cuda`` become this process's GPU (``cuda:LOCAL_RANK``) when a launcher started several on
    a CUDA node; any other choice stays as given."""
    if shard.local_rank is None or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    return f"cuda:{shard.local_rank % torch.cuda.device_count()}"
