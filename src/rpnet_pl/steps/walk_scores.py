"""The random walk's class scores, kept by `rpnet pseudo-masks --save-scores` so that
`rpnet eval-pseudo-masks` can sweep the background threshold without walking again.

One file per image, ``<masks>/scores/ID.npz`` (:func:`rpnet_pl.pipeline.layout.walk_scores_dir`), written
atomically with ``np.savez_compressed``:

* ``scores`` (K, h, w) float16: the walked scores at the walk's stride (4), divided by their max
  (so that float16 holds them; the thresholding divides by the max again);
* ``keys`` (K,) int64: the class ids 1..C of the channels;
* ``image_size`` (2,) int64: (H, W);
* ``bg_threshold`` () float64: the background threshold the step's mask was made with.

:func:`mask_from_walk_scores` is how the step makes its mask from a record, and
:func:`walk_scores_at_image_size` + :func:`labels_from_scores` (of :mod:`rpnet_pl.ops.random_walk`)
how the sweep thresholds the same record: one composition, so the sweep at the step's threshold
gives the step's masks exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rpnet_pl.utils.io import load_npz, save_npz
from rpnet_pl.ops.random_walk import sem_seg_from_rw


def walk_scores_path(folder: str | Path, image_id: str) -> Path:
    """The scores file of one image in a scores folder."""
    return Path(folder) / f"{image_id}.npz"


def walk_scores_record(rw: torch.Tensor, keys: Sequence[int] | np.ndarray | torch.Tensor,
                       image_size: tuple[int, int], bg_threshold: float) -> dict[str, np.ndarray]:
    """What :func:`write_walk_scores` saves: rw (K, h, w) / its max, as float16 on the CPU."""
    rw = rw.detach().float()
    peak = rw.max() if rw.numel() else rw.new_zeros(())
    scores = (rw / peak if peak > 0 else rw).cpu().numpy().astype(np.float16)
    return {"scores": scores, "keys": np.asarray(torch.as_tensor(keys).cpu(), dtype=np.int64).reshape(-1),
            "image_size": np.asarray(image_size, dtype=np.int64), "bg_threshold": np.float64(bg_threshold)}


def write_walk_scores(path: str | Path, record: dict[str, np.ndarray]) -> None:
    """Save a :func:`walk_scores_record` (compressed, atomic)."""
    save_npz(path, **record)


def read_walk_scores(path: str | Path) -> dict[str, Any]:
    """Load a scores file (DatasetError naming the file when it is missing or unreadable)."""
    return load_npz(path)


def scores_tensor(record: dict[str, np.ndarray]) -> torch.Tensor:
    """The record's stride-4 scores as a float32 CPU tensor (K, h, w)."""
    return torch.from_numpy(np.asarray(record["scores"]).astype(np.float32))


def image_size(record: dict[str, np.ndarray]) -> tuple[int, int]:
    """The record's (H, W)."""
    height, width = (int(v) for v in record["image_size"])
    return height, width


def mask_from_walk_scores(record: dict[str, np.ndarray], bg: float) -> np.ndarray:
    """(H, W) int64 pseudo mask of a record at background threshold ``bg`` (the step's mask)."""
    return sem_seg_from_rw(scores_tensor(record), record["keys"], image_size(record), bg=bg)
