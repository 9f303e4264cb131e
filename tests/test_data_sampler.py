"""Same-class group sampler (Table VII) and data-volume cut (Table II)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rpnet_pl.data.sampler import (GroupSampler, ShardSampler, class_lists, data_volume_lists, kept_images)


def _labels(n: int = 57, classes: int = 5, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = rng.integers(1, 3)
        out.append(np.sort(rng.choice(np.arange(1, classes + 1), size=k, replace=False)))
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_every_group_shares_its_class_and_each_image_is_anchor_once(k: int) -> None:
    labels = _labels()
    sampler = GroupSampler(labels, group_size=k, seed=0)
    groups = list(sampler)
    assert len(groups) == len(labels) == len(sampler)
    assert sorted(g.members[0] for g in groups) == list(range(len(labels)))
    for g in groups:
        assert len(g.members) == k
        for m in g.members:
            assert g.shared_class in labels[m].tolist()


def test_class_lists() -> None:
    lists = class_lists([np.array([1]), np.array([1, 2]), np.array([2])])
    assert lists == {1: [0, 1], 2: [1, 2]}


def test_deterministic_for_seed_and_epoch() -> None:
    labels = _labels()
    a, b = GroupSampler(labels, 2, seed=5), GroupSampler(labels, 2, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(GroupSampler(labels, 2, seed=6)) != list(b)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_equal(world: int) -> None:
    labels = _labels(n=57)
    shards = [list(GroupSampler(labels, 2, seed=1, num_replicas=world, rank=r)) for r in range(world)]
    lengths = {len(s) for s in shards}
    assert lengths == {57 // world}
    anchors = [g.members[0] for s in shards for g in s]
    assert len(anchors) == len(set(anchors)) == (57 // world) * world
    # a group does not depend on which rank draws it
    single = {g.members[0]: g for g in GroupSampler(labels, 2, seed=1)}
    for s in shards:
        for g in s:
            assert single[g.members[0]] == g


def test_shard_sampler_covers_each_index_once() -> None:
    seen = sorted(i for r in range(3) for i in ShardSampler(10, 3, r))
    assert seen == list(range(10))
    assert [len(ShardSampler(10, 3, r)) for r in range(3)] == [4, 3, 3]


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25, 0.125, 0.0625])
def test_data_volume_counts_per_class(fraction: float) -> None:
    labels = _labels(n=200, classes=6)
    full = class_lists(labels)
    cut = data_volume_lists(labels, fraction, seed=0)
    for c, idxs in full.items():
        assert len(cut[c]) == max(1, math.ceil(fraction * len(idxs)))
        assert set(cut[c]) <= set(idxs)
    kept = kept_images(cut)
    assert set(kept) == {i for idxs in cut.values() for i in idxs}


def test_data_volume_cuts_nest_and_are_deterministic() -> None:
    labels = _labels(n=200, classes=6)
    half, quarter = data_volume_lists(labels, 0.5, 7), data_volume_lists(labels, 0.25, 7)
    for c in quarter:
        assert set(quarter[c]) <= set(half[c])
    assert data_volume_lists(labels, 0.25, 7) == quarter
    assert data_volume_lists(labels, 0.25, 8) != quarter


def test_sampler_with_data_volume_draws_partners_from_cut_lists() -> None:
    labels = _labels(n=120)
    cut = data_volume_lists(labels, 0.25, seed=0)
    sampler = GroupSampler(labels, 3, seed=0, class_lists_override=cut)
    groups = list(sampler)
    assert sorted(g.members[0] for g in groups) == kept_images(cut)
    for g in groups:
        for m in g.members[1:]:
            assert m in cut[g.shared_class]


def test_bad_group_size() -> None:
    with pytest.raises(ValueError, match="group_size"):
        GroupSampler([np.array([1])], group_size=0)
