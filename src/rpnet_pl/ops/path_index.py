"""Pixel pairs within a radius and the straight paths between them (IRN's path indices).

Spec "Stage 2: IRN": affinities are defined between pixel pairs closer than ``radius`` (10 for
training, 5 for the random walk), each pair once, through the straight path between them.

* A *search direction* is a displacement (dy, dx) with ``0 < dy^2 + dx^2 < radius^2`` in the
  half-plane ``dy > 0 or (dy == 0 and dx > 0)``: every unordered pair appears exactly once.
* The *path* of (dy, dx) is the set of pixels of the bounding box of (0, 0) and (dy, dx)
  whose centre lies at distance < 1 from the line through them: a band two pixels wide, so
  that no 8-connected boundary line can be crossed without touching a path pixel.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


def _check_radius(radius: int) -> int:
    if int(radius) != radius or radius < 2:
        raise ValueError(f"radius must be an integer >= 2, got {radius}")
    return int(radius)


@lru_cache(maxsize=16)
def _search_directions(radius: int) -> tuple[tuple[int, int], ...]:
    dirs = []
    for dy in range(0, radius):
        for dx in range(-radius + 1, radius):
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius:
                dirs.append((dy, dx))
    return tuple(dirs)


def search_directions(radius: int) -> np.ndarray:
    """(D, 2) int64 displacements (dy, dx), ``0 < |d| < radius``, ``dy > 0 or (dy == 0 and dx > 0)``;
    sorted by dy then dx. ``D`` is half the number of non-zero lattice points in the open disc."""
    radius = _check_radius(radius)
    return np.asarray(_search_directions(radius), dtype=np.int64).reshape(-1, 2)


@lru_cache(maxsize=512)
def _path_pixels(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    length_sq = dy * dy + dx * dx
    coords = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            # squared distance of (y, x) to the line through (0, 0) and (dy, dx)
            if (dy * x - dx * y) ** 2 < length_sq:
                coords.append((y, x))
    return tuple(coords)


def reference_direction_order(radius: int) -> np.ndarray:
    """(D,) indices into :func:`search_directions` in IRN's pair order (``PathIndex.path_dst``):
    the directions grouped by the number of pixels on their path, shortest first, and in our
    (dy, dx) order inside a group. IRN's pair tensors (B, D, P) use this order."""
    dirs = search_directions(radius)
    return np.asarray(sorted(range(len(dirs)), key=lambda i: len(path_pixels(*dirs[i]))), dtype=np.int64)


def path_pixels(dy: int, dx: int) -> list[tuple[int, int]]:
    """The pixels (y, x), relative to the source, on the straight path from (0, 0) to (dy, dx),
    both ends included: the bounding-box pixels at distance < 1 from the line."""
    if dy == 0 and dx == 0:
        return [(0, 0)]
    return list(_path_pixels(int(dy), int(dx)))


def source_window(h: int, w: int, radius: int) -> tuple[int, int, int]:
    """``(h', w', x0)``: the source pixels for which every search direction lands in the
    image are rows ``[0, h')`` and columns ``[x0, x0 + w')`` with ``h' = h - (radius - 1)``,
    ``w' = w - 2 (radius - 1)``, ``x0 = radius - 1`` (IRN's training crop of the sources)."""
    radius = _check_radius(radius)
    floor = radius - 1
    hp, wp = h - floor, w - 2 * floor
    if hp <= 0 or wp <= 0:
        raise ValueError(f"a {h}x{w} map is too small for radius {radius}")
    return hp, wp, floor


def valid_pair_mask(h: int, w: int, radius: int) -> np.ndarray:
    """(D, h, w) bool: ``[d, y, x]`` is True where pixel (y, x) + direction d is in the image."""
    dirs = search_directions(radius)
    ys = np.arange(h)[None, :, None]
    xs = np.arange(w)[None, None, :]
    dy = dirs[:, 0][:, None, None]
    dx = dirs[:, 1][:, None, None]
    return (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)


def pairs_for_size(h: int, w: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat (raster) indices ``(src, dst)`` of every unordered pixel pair of an h x w grid at
    distance < radius, each once. Order: direction-major, then source raster order, i.e. the
    order of ``values[valid_pair_mask(h, w, radius)]`` for a (D, h, w) array of pair values.
    Their number is ``sum_d (h - |dy_d|)_+ (w - |dx_d|)_+``."""
    dirs = search_directions(radius)
    d, y, x = np.nonzero(valid_pair_mask(h, w, radius))  # C order: d, then y, then x
    src = y * w + x
    dst = (y + dirs[d, 0]) * w + (x + dirs[d, 1])
    return src.astype(np.int64), dst.astype(np.int64)
