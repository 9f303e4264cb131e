"""Inter-pixel affinities from a class-boundary map and their labels and loss (IRN, spec
"Stage 2: IRN").

For a source pixel p and a search direction d (see ``path_index``), the affinity is
``a(p, p + d) = 1 - max_{q in path(p, p + d)} B(q)``: two pixels are alike unless a boundary
lies between them. The training maps follow IRN's layout: sources are the pixels for which
every direction stays inside the map (``path_index.source_window``), so a (.., H, W) map gives
(.., D, H', W') affinities with ``H' = H - (radius - 1)``, ``W' = W - 2 (radius - 1)``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from rpnet_pl.data.classes import IGNORE_INDEX
from rpnet_pl.ops.path_index import path_pixels, reference_direction_order, search_directions, source_window

AFFINITY_EPS = 1e-5


@lru_cache(maxsize=64)
def _paths_by_length(radius: int, w: int) -> tuple[tuple[int, np.ndarray], ...]:
    """The search directions grouped by the number of pixels on their path (IRN's order:
    :func:`reference_direction_order`): per group, its path length L and the (n * L,) flat offsets
    ``py * w + px`` of every path pixel of its n directions, direction-major."""
    dirs = search_directions(radius)
    groups: dict[int, list[int]] = {}
    for d in reference_direction_order(radius).tolist():
        pixels = path_pixels(*dirs[d])
        groups.setdefault(len(pixels), []).extend(py * w + px for py, px in pixels)
    return tuple((length, np.asarray(offsets, dtype=np.int64)) for length, offsets in groups.items())


def affinity_from_boundary(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinities ``1 - max(B along the path)`` for every source in the window and direction.

    boundary: (..., H, W) in [0, 1] (e.g. (N, H, W) sigmoid outputs at stride 4).
    Returns (..., D, H', W'); ``[..., d, i, j]`` relates pixel ``(i, j + radius - 1)`` to that
    pixel plus ``search_directions(radius)[d]``. Differentiable in ``boundary``.

    One gather and one max per path length (about ``radius`` of them), not one per direction and
    path pixel: the directions of a length are gathered from the flattened map at once.
    """
    h, w = boundary.shape[-2:]
    hp, wp, x0 = source_window(h, w, radius)
    lead = boundary.shape[:-2]
    flat = boundary.reshape(*lead, h * w)
    dev = boundary.device
    sources = (torch.arange(hp, device=dev)[:, None] * w + torch.arange(x0, x0 + wp, device=dev)[None, :]).reshape(-1)
    grouped = []
    for length, offsets in _paths_by_length(radius, w):
        index = (torch.as_tensor(offsets, device=dev)[:, None] + sources[None, :]).reshape(-1)  # (n*L*H'*W',)
        path = flat.index_select(-1, index).view(*lead, len(offsets) // length, length, hp, wp)
        grouped.append(1.0 - path.amax(dim=-3))
    out = torch.cat(grouped, dim=-3)  # (..., D, H', W') in IRN's order
    to_ours = np.argsort(reference_direction_order(radius))
    return out.index_select(-3, torch.as_tensor(to_ours, device=dev))


def mask_boundary(mask: np.ndarray, size: tuple[int, int], stride: int = 4) -> np.ndarray:
    """A class-boundary map at ``stride`` drawn from a label mask: the ideal ``B`` (a diagnosis
    reference for IRN's learned one; `rpnet eval-refinement --boundary ground-truth`).

    mask: (H, W) class ids, 255 ignore. Cell ``(i, j)`` of the (h, w) = ``size`` map covers pixels
    ``[stride i, stride (i + 1)) x [stride j, stride (j + 1))``; it is 1 where that block holds two
    labels or an ignore pixel, else 0. Blocks past the mask's edge repeat its last row/column.
    """
    h, w = size
    H, W = mask.shape
    m = np.asarray(mask, dtype=np.int64)
    m = np.pad(m, ((0, max(0, h * stride - H)), (0, max(0, w * stride - W))), mode="edge")[:h * stride, :w * stride]
    blocks = m.reshape(h, stride, w, stride).transpose(0, 2, 1, 3).reshape(h, w, stride * stride)
    mixed = (blocks.max(-1) != blocks.min(-1)) | (blocks == IGNORE_INDEX).any(-1)
    return mixed.astype(np.float32)


def affinity_labels(
    label: torch.Tensor | np.ndarray,
    radius: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pair labels for the affinity loss from an IR label map at stride 4 (spec "Stage 2").

    label: (..., H, W) integer map, 0 = background, ``ignore_index`` = unsure. Returns three
    bool (..., D, H', W') masks laid out like ``affinity_from_boundary``: ``pos_bg`` (both
    pixels background), ``pos_fg`` (both the same foreground class), ``neg`` (different
    labels); a pair with either pixel ``ignore_index`` is in none of them.
    """
    label = torch.as_tensor(label)
    h, w = label.shape[-2:]
    hp, wp, x0 = source_window(h, w, radius)
    src = label[..., :hp, x0:x0 + wp]  # (..., H', W')
    src_valid = src != ignore_index
    pos_bg, pos_fg, neg = [], [], []
    for dy, dx in search_directions(radius).tolist():
        dst = label[..., dy:dy + hp, x0 + dx:x0 + dx + wp]
        valid = src_valid & (dst != ignore_index)
        equal = src == dst
        pos_bg.append(valid & equal & (src == 0))
        pos_fg.append(valid & equal & (src != 0))
        neg.append(valid & ~equal)
    return torch.stack(pos_bg, -3), torch.stack(pos_fg, -3), torch.stack(neg, -3)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (mask.sum() + AFFINITY_EPS)


def affinity_loss(
    aff: torch.Tensor,
    pos_bg: torch.Tensor,
    pos_fg: torch.Tensor,
    neg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRN's inter-pixel affinity losses, each averaged over its own pairs (spec "Stage 2").

    positive pairs: ``-log(aff + 1e-5)``; negative pairs: ``-log(1 + 1e-5 - aff)``.
    Returns scalars ``(pos_bg_loss, pos_fg_loss, neg_loss)``; the objective combines them as
    ``pos = pos_bg / 2 + pos_fg / 2`` and ``affinity = (pos + neg) / 2``.
    """
    if not (aff.shape == pos_bg.shape == pos_fg.shape == neg.shape):
        raise ValueError(f"affinity {tuple(aff.shape)} and label masks "
                         f"{tuple(pos_bg.shape)}, {tuple(pos_fg.shape)}, {tuple(neg.shape)} differ")
    pos_term = -torch.log(aff + AFFINITY_EPS)
    neg_term = -torch.log(1.0 + AFFINITY_EPS - aff)
    return _masked_mean(pos_term, pos_bg), _masked_mean(pos_term, pos_fg), _masked_mean(neg_term, neg)
