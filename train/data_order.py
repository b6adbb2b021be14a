"""Reproducible data order: seeded per-epoch permutations, sharded per process, resumable mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler



def derived_seed(*values: int) -> int:
    """A well-mixed 64-bit seed from several integers (neighbouring inputs give unrelated seeds)."""
    state = np.random.SeedSequence(list(values)).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


class EpochSampler(Sampler[int]):
    """This process's share of a seeded permutation per epoch, whole batches only, resumable mid-epoch.

    Epoch ``e`` uses ``randperm(len, seed=(seed, e))``; process ``r`` of ``n`` takes every ``n``-th index
    from ``r``, cut to a multiple of ``batch_size`` so all processes run the same number of batches.
    """

    def __init__(
        self, length: int, *, seed: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> None:
        per_process = length // world_size
        self.batches_per_epoch = per_process // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the dataset has {length} items: fewer than train.batch_size ({batch_size}) x processes "
                f"({world_size}); use a larger dataset or a smaller batch"
            )
        self.length, self.seed, self.batch_size = length, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=generator)[self.rank :: self.world_size]
        order = order[: self.batches_per_epoch * self.batch_size]
        return iter(order[self.start_batch * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def batch_stream(loader: DataLoader, sampler: EpochSampler, first_batch: int) -> Iterator[dict]:
    """Endless batches starting at this process's ``first_batch``-th batch since the start of training."""
    epoch, offset = divmod(first_batch, sampler.batches_per_epoch)
    while True:
        sampler.set_position(epoch, offset)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        yield from loader
        epoch, offset = epoch + 1, 0
