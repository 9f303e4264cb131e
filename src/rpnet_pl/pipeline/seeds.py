"""Runs repeated over seeds: folder names and mean +- std of their numbers.

``rpnet pipeline EXP --seeds 0 1 2`` writes ``runs/<experiment>/seed<k>/`` (one ordinary run folder
per seed); the report and the ablation tables show each number as ``mean ± std (n=K)`` over the seeds
that have it. The std is the sample standard deviation (ddof=1), 0 for a single seed.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

_SEED_DIR = re.compile(r"^seed(\d+)$")


def seed_dir_name(seed: int) -> str:
    """``seed3`` for seed 3."""
    return f"seed{int(seed)}"


def seed_folders(folder: str | Path) -> list[Path]:
    """The ``seed<k>`` sub-folders of ``folder``, sorted by k (empty for a single run)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SEED_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass(frozen=True)
class Stat:
    """A number over ``n`` seeds: mean and sample standard deviation."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float | None]) -> Stat | None:
    """Mean and sample std (ddof=1; 0.0 when n = 1) of the values that are not None; None if none are.

    >>> mean_std([0.60, None, 0.64])
    Stat(mean=0.62, std=0.028284271247461926, n=2)
    """
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return Stat(round(mean, 12), std, n)


def as_float(value: float | Stat | None) -> float | None:
    """The number itself, or a Stat's mean."""
    return value.mean if isinstance(value, Stat) else value


def format_pct(value: float | Stat | None, digits: int = 1) -> str:
    """``65.1`` for one run, ``65.1 ± 1.4 (n=3)`` over seeds, ``-`` when missing (values in [0, 1])."""
    if value is None:
        return "-"
    if isinstance(value, Stat):
        return f"{100 * value.mean:.{digits}f} ± {100 * value.std:.{digits}f} (n={value.n})"
    return f"{100 * value:.{digits}f}"


__all__ = ["Stat", "as_float", "format_pct", "mean_std", "seed_dir_name", "seed_folders"]
