"""Same-class image groups (the pairwise input RPNet needs) and the data-volume cut (Table II).

A *group* is ``k`` images (k = 1..4, Table VII) that share at least one class: an anchor and
``k - 1`` partners drawn from the per-class list of a class picked uniformly among the anchor's
classes (the spec's pair sampling; a partner may be the anchor itself, as in the public code).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Group:
    """Indices of one group: ``members[0]`` is the anchor; ``shared_class`` is a class index (1..C-1)."""

    members: tuple[int, ...]
    shared_class: int


def class_lists(labels: Sequence[np.ndarray]) -> dict[int, list[int]]:
    """Per-class lists of image indices: class -> sorted indices of the images that contain it."""
    out: dict[int, list[int]] = {}
    for idx, labs in enumerate(labels):
        for c in np.asarray(labs).tolist():
            out.setdefault(int(c), []).append(idx)
    return out


def read_class_lists(folder: str | Path, ids: Sequence[str]) -> dict[int, list[int]]:
    """Per-class lists from ``folder/<c>.txt`` (one image id a line, ``c`` = 1, 2, ...), as indices
    into ``ids``: e.g. the public RPNet code's ``voc12/list/full``, which leaves out 903 of the 16458
    (image, class) entries of train_aug. Ids not in ``ids`` are dropped."""
    from rpnet_pl.utils.errors import DatasetError

    folder = Path(folder)
    files = sorted(folder.glob("*.txt"), key=lambda f: (len(f.stem), f.stem))
    files = [f for f in files if f.stem.isdigit()]
    if not files:
        raise DatasetError(f"{folder}: no per-class lists (<class>.txt with one image id a line)")
    index = {image_id: i for i, image_id in enumerate(ids)}
    out: dict[int, list[int]] = {}
    for f in files:
        idxs = sorted({index[name] for name in f.read_text().split() if name in index})
        if idxs:
            out[int(f.stem)] = idxs
    return out


def data_volume_lists(labels: Sequence[np.ndarray], fraction: float, seed: int = 0) -> dict[int, list[int]]:
    """Cut each class's image list to ``ceil(fraction * n_c)`` images (Table II's data volume).

    All images are ranked once by a seeded permutation and each class keeps the first images of its
    list in that order. Consequences, by design:
      * an image with several classes is counted in every class's list it belongs to, and it is kept
        when *any* of its classes keeps it (the training set is the union of the cut lists);
      * cuts nest: the 1/16 lists are a subset of the 1/8 lists, and so on, for the same seed;
      * every class keeps at least one image.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data volume fraction must be in (0, 1], got {fraction}")
    rank = np.random.default_rng(seed).permutation(len(labels))
    order = np.argsort(rank)  # position of each image in the ranking
    lists = class_lists(labels)
    out: dict[int, list[int]] = {}
    for c, idxs in lists.items():
        keep = max(1, math.ceil(fraction * len(idxs)))
        out[c] = sorted(sorted(idxs, key=lambda i: order[i])[:keep])
    return out


def kept_images(lists: dict[int, list[int]]) -> list[int]:
    """The union of per-class lists: the images a data-volume run trains on."""
    return sorted({i for idxs in lists.values() for i in idxs})


class GroupSampler(Sampler[Group]):
    """Yields one :class:`Group` per anchor; every kept image is an anchor once per epoch.

    Under DDP (``num_replicas > 1``) the shuffled anchors are split into disjoint, equal shares: the
    ``n mod num_replicas`` anchors that do not fill a share (fewer than the number of ranks, different
    ones each epoch) are left out of that epoch, so every rank runs the same number of batches.
    Deterministic given ``seed`` and the epoch set by :meth:`set_epoch` (Lightning calls it).
    """

    def __init__(
        self,
        labels: Sequence[np.ndarray],
        group_size: int = 2,
        seed: int = 0,
        shuffle: bool = True,
        class_lists_override: dict[int, list[int]] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if not 1 <= group_size <= 8:
            raise ValueError(f"group_size must be 1..8, got {group_size}")
        self.labels = [np.asarray(x, dtype=np.int64) for x in labels]
        self.group_size = group_size
        self.seed = seed
        self.shuffle = shuffle
        self.lists = class_lists_override if class_lists_override is not None else class_lists(self.labels)
        self.anchors = kept_images(self.lists)
        self.epoch = 0
        self._num_replicas = num_replicas
        self._rank = rank

    # DDP topology is read lazily so a sampler built before the process group still shards.
    @property
    def num_replicas(self) -> int:
        if self._num_replicas is not None:
            return self._num_replicas
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return 1

    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.anchors) // self.num_replicas

    def candidates(self, anchor: int) -> dict[int, list[int]]:
        """What a group of ``anchor`` is drawn from: each of its classes that has a list (picked
        uniformly) -> the images a partner is drawn from (uniformly, the anchor included if listed)."""
        return {c: self.lists[c] for c in self.labels[anchor].tolist() if c in self.lists}

    def groups(self) -> list[Group]:
        """All groups of this rank for the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        anchors = np.array(self.anchors)
        if self.shuffle:
            anchors = anchors[rng.permutation(len(anchors))]
        per_rank = len(anchors) // self.num_replicas
        mine = anchors[self.rank * per_rank:(self.rank + 1) * per_rank]
        # Partners are drawn from one generator per anchor so a group does not depend on the rank.
        out = []
        for a in mine.tolist():
            g = np.random.default_rng([self.seed, self.epoch, a])
            candidates = self.candidates(a)
            classes = list(candidates)
            shared = int(classes[g.integers(len(classes))])
            pool = candidates[shared]
            partners = tuple(int(pool[j]) for j in g.integers(len(pool), size=self.group_size - 1))
            out.append(Group((a, *partners), shared))
        return out

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups())


class ShardSampler(Sampler[int]):
    """Inference sharding: rank ``r`` of ``W`` gets indices ``r, r + W, ...`` with no padding.

    Unlike DistributedSampler nothing is repeated, so under DDP every image is processed (and its
    output file written) by exactly one rank. Ranks may differ by one item; prediction has no
    collective step, so that is harmless.
    """

    def __init__(self, length: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.length = length
        self._num_replicas = num_replicas
        self._rank = rank

    num_replicas = GroupSampler.num_replicas
    rank = GroupSampler.rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))
