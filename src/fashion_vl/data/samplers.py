"""A deterministic, stateless-by-construction sampler that shards itself across ranks.

Why not torch's samplers: a resumed run must see the same samples in the same order with the same
augmentations. Here the order of an epoch is a pure function of ``(seed, epoch)``, and each sample
carries its own seed (:class:`SampleKey`) from which the dataset draws every random choice (which
view, which crop), whatever the worker count. Its iterator is stateful (epoch and position), so
``torchdata``'s ``StatefulDataLoader`` saves it in every checkpoint and a resumed run continues the
same epoch at the same sample. It shards itself (rank ``r`` of ``w`` takes every ``w``-th sample),
so trainers run with ``use_distributed_sampler: false``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import Sampler

from fashion_vl.dist import rank as dist_rank
from fashion_vl.dist import step_seed
from fashion_vl.dist import world_size as dist_world_size


class SampleKey(NamedTuple):
    """What the sampler yields: the dataset index and the seed of that sample's randomness."""

    index: int
    seed: int


class ShardedSampler(Sampler[SampleKey]):
    """Sampler over ``size`` items; shuffled, weighted with replacement, or in order.

    Args:
        size: number of items in the dataset.
        shuffle: a fresh permutation each epoch (ignored when ``weights`` is given).
        seed: base seed; the epoch's order depends on ``(seed, epoch)`` only.
        weights: per-item sampling weights; draws ``epoch_size`` items with replacement.
        epoch_size: samples per epoch over all ranks (default ``size``).
        drop_last: give every rank the same count by dropping the remainder (training); when False the
            first ranks get one more (evaluation: nothing is duplicated).
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        weights: Sequence[float] | torch.Tensor | None = None,
        epoch_size: int | None = None,
        drop_last: bool = True,
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.size = size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and self.weights.numel() != size:
            raise ValueError(f"{self.weights.numel()} weights for {size} items")
        self.epoch_size = int(epoch_size) if epoch_size else size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _my_share(self, total: int) -> tuple[int, int, int]:
        world, rank = dist_world_size(), dist_rank()
        if self.drop_last:
            total = (total // world) * world
        return rank, world, len(range(rank, total, world))

    def __len__(self) -> int:
        return self._my_share(self.epoch_size)[2]

    def epoch_keys(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's indices and sample seeds for ``epoch``."""
        g = torch.Generator().manual_seed(step_seed(self.seed, epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.epoch_size, replacement=True, generator=g)
        elif self.shuffle:
            repeats = -(-self.epoch_size // self.size)
            order = torch.cat([torch.randperm(self.size, generator=g) for _ in range(repeats)])[
                : self.epoch_size
            ]
        else:
            order = torch.arange(self.size).repeat(-(-self.epoch_size // self.size))[: self.epoch_size]
        seeds = torch.randint(0, 2**62, (self.epoch_size,), generator=g)
        rank, world, count = self._my_share(self.epoch_size)
        picks = slice(rank, rank + count * world, world)
        return order[picks], seeds[picks]

    def __iter__(self) -> _ShardIterator:
        return _ShardIterator(self, self.epoch)


class _ShardIterator(Iterator[SampleKey]):
    """One epoch of a :class:`ShardedSampler`; its state (epoch, position) restores it exactly."""

    def __init__(self, sampler: ShardedSampler, epoch: int, position: int = 0) -> None:
        self.sampler = sampler
        self._start(epoch, position)

    def _start(self, epoch: int, position: int) -> None:
        self.epoch = epoch
        order, seeds = self.sampler.epoch_keys(epoch)
        self.order, self.seeds = order.tolist(), seeds.tolist()
        self.position = position

    def __next__(self) -> SampleKey:
        if self.position >= len(self.order):
            raise StopIteration
        key = SampleKey(self.order[self.position], self.seeds[self.position])
        self.position += 1
        return key

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self._start(state["epoch"], state["position"])
