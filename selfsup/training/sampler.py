"""Deterministic, resumable data order: the batch of step s is a pure function of (seed, s)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from selfsup.data.neighbours import DrawIndex


class StepBatchSampler(Sampler[list[int]]):
    """Yields this process's dataset indices for each step from ``start_step`` to ``steps``.

    The dataset is walked in epochs, each a fresh permutation seeded by (seed, epoch);
    step s takes the global positions ``[s B P, (s + 1) B P)`` and process r the slice
    ``r B : (r + 1) B`` of them (B batch size, P processes). Positions wrap into the next
    epoch, so no sample is dropped or repeated within an epoch and resuming at step s
    gives exactly the batches an uninterrupted run would have seen.

    Indices are :class:`~selfsup.data.neighbours.DrawIndex` values (ints that also carry
    their global position as ``draw``), so random choices a dataset makes per sample (its
    neighbour frames) are a pure function of (seed, step) as well and resume exactly.

    Raises:
        ValueError: empty dataset or bad rank.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        steps: int,
        start_step: int = 0,
        num_processes: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if num_samples < 1:
            raise ValueError("StepBatchSampler: the training dataset is empty")
        if not 0 <= rank < num_processes:
            raise ValueError(f"StepBatchSampler: rank {rank} not in [0, {num_processes})")
        self.n, self.batch_size, self.steps, self.start_step = num_samples, batch_size, steps, start_step
        self.num_processes, self.rank, self.seed, self.shuffle = num_processes, rank, seed, shuffle

    def _perm(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def indices_for_step(self, step: int) -> list[int]:
        first = (step * self.num_processes + self.rank) * self.batch_size
        out, cached = [], {}
        for pos in range(first, first + self.batch_size):
            epoch = pos // self.n
            if epoch not in cached:
                cached[epoch] = self._perm(epoch)
            out.append(DrawIndex(int(cached[epoch][pos % self.n]), pos))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield self.indices_for_step(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)
