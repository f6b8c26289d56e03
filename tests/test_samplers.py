"""The deterministic sharded sampler."""

from __future__ import annotations

import pytest
import torch

from fashion_vl.data import samplers
from fashion_vl.data.samplers import ShardedSampler


def keys(sampler: ShardedSampler) -> list[tuple[int, int]]:
    return [tuple(k) for k in sampler]


def test_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = ShardedSampler(50, seed=3), ShardedSampler(50, seed=3)
    assert keys(a) == keys(b)
    b.set_epoch(1)
    assert keys(a) != keys(b)
    assert sorted(i for i, _ in keys(a)) == list(range(50))  # a permutation


def test_shards_partition_the_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    shards = []
    for rank in range(3):
        monkeypatch.setattr(samplers, "dist_world_size", lambda: 3)
        monkeypatch.setattr(samplers, "dist_rank", lambda rank=rank: rank)
        sampler = ShardedSampler(20, seed=0, drop_last=True)
        shards.append(keys(sampler))
        assert len(sampler) == len(shards[-1]) == 6
    flat = [k for shard in shards for k in shard]
    assert len(set(flat)) == 18  # disjoint; the remainder 2 dropped so every rank gets as many


def test_eval_shards_cover_everything_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    for rank in range(2):
        monkeypatch.setattr(samplers, "dist_world_size", lambda: 2)
        monkeypatch.setattr(samplers, "dist_rank", lambda rank=rank: rank)
        seen += [i for i, _ in keys(ShardedSampler(7, shuffle=False, drop_last=False))]
    assert sorted(seen) == list(range(7))


def test_weights_give_each_item_its_share() -> None:
    weights = torch.tensor([0.7] + [0.3 / 9] * 9, dtype=torch.double)
    picks = [i for i, _ in keys(ShardedSampler(10, weights=weights, epoch_size=4000, seed=1))]
    assert abs(picks.count(0) / 4000 - 0.7) < 0.03


def test_epoch_size_longer_than_dataset_cycles_permutations() -> None:
    picks = [i for i, _ in keys(ShardedSampler(5, epoch_size=12))]
    assert len(picks) == 12 and sorted(picks[:5]) == list(range(5))
