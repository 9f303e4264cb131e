"""Random walk of CAMs over boundary-aware affinities: the pseudo masks of IRN (spec "Stage 2:
IRN", "Pseudo masks"; the paper's boundary refinement [4] behind Table I).

The affinity matrix A over the h*w pixels of the stride-4 map holds ``a(i, j) = 1 - max B``
on the path between pixels closer than ``radius``, ``A = A^T``, ``A_ii = 1``. The transition
matrix is ``T = A^beta / colsum(A^beta)`` (element-wise power, every column sums to 1) and the
propagated CAMs are ``x T^(2^exp_times)`` for row vectors x.

The public IRN code forms T densely and squares it ``exp_times`` times (O((hw)^3) per
squaring). Here T is sparse (about 2 * D + 1 = 69 entries a column at radius 5) and the walk
is ``2^exp_times`` sparse products with the CAMs; ``dense_random_walk_reference`` keeps the
dense route for tests.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.ops.affinity import affinity_from_boundary
from rpnet_pl.ops.params import RANDOM_WALK
from rpnet_pl.ops.path_index import pairs_for_size, source_window, valid_pair_mask


def transition_matrix_sparse(aff: torch.Tensor, radius: int, beta: float = RANDOM_WALK.beta) -> torch.Tensor:
    """Sparse (hw, hw) column-stochastic transition matrix from pair affinities.

    aff: (D, h, w); ``aff[d, y, x]`` is the affinity of pixel (y, x) to (y, x) +
    ``search_directions(radius)[d]`` (entries whose partner falls outside the map are unused).
    Builds ``A`` symmetric with unit diagonal, raises it to ``beta`` element-wise and divides
    each column by its sum. Returns a coalesced sparse COO tensor on ``aff``'s device/dtype.
    """
    d, h, w = aff.shape
    n = h * w
    device = aff.device
    mask = torch.from_numpy(valid_pair_mask(h, w, radius)).to(device)
    if mask.shape[0] != d:
        raise ValueError(f"aff has {d} directions, radius {radius} has {mask.shape[0]}")
    src_np, dst_np = pairs_for_size(h, w, radius)
    src = torch.from_numpy(src_np).to(device)
    dst = torch.from_numpy(dst_np).to(device)
    pair_aff = aff[mask]  # (P,) in the order of pairs_for_size
    diag = torch.arange(n, device=device)
    rows = torch.cat([src, dst, diag])
    cols = torch.cat([dst, src, diag])
    vals = torch.cat([pair_aff, pair_aff, torch.ones(n, dtype=aff.dtype, device=device)]).pow(beta)
    col_sum = torch.zeros(n, dtype=aff.dtype, device=device).index_add_(0, cols, vals)
    vals = vals / col_sum[cols]  # the diagonal keeps every column sum > 0
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), vals, (n, n), check_invariants=False
    ).coalesce()


def random_walk(cams: torch.Tensor, trans: torch.Tensor, steps: int = 256) -> torch.Tensor:
    """Propagate ``steps`` times: ``x <- x T`` for every channel at once.

    cams: (K, N) or (K, H, W) with ``N = H W``; trans: sparse (or dense) (N, N) column-
    stochastic T on the same device. ``steps = 2 ** exp_times`` reproduces IRN's
    ``x @ T^(2^exp_times)``. Returns the same shape as ``cams``.
    """
    shape = cams.shape
    k = shape[0]
    x = cams.reshape(k, -1).t().contiguous()  # (K, N) -> (N, K): x T == (T^T x^T)^T
    if x.shape[0] != trans.shape[0]:
        raise ValueError(f"cams have {x.shape[0]} pixels, the transition matrix {trans.shape[0]}")
    trans_t = trans.t()
    if trans_t.is_sparse:
        # CSR products are much faster than COO on CPU (docs/benchmarks.md); torch flags CSR as "beta".
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            trans_t = trans_t.coalesce().to_sparse_csr()
    for _ in range(steps):
        x = trans_t @ x  # (N, N) @ (N, K) -> (N, K)
    return x.t().reshape(shape)


def dense_random_walk_reference(cams: torch.Tensor, trans_dense: torch.Tensor, exp_times: int) -> torch.Tensor:
    """The public IRN route: square the dense T ``exp_times`` times, then ``x @ T``.

    cams: (K, N) or (K, H, W); trans_dense: (N, N). For tests and small maps only.
    """
    t = trans_dense
    for _ in range(exp_times):
        t = t @ t
    return (cams.reshape(cams.shape[0], -1) @ t).reshape(cams.shape)


def fit_to_map(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Strided CAMs (K, h, w) cut or zero-padded (bottom, right) to the boundary map's (h4, w4): the two
    sizes can differ by a pixel, the CAM's ``ceil(H / 4)`` against the network's stride-4 output."""
    h4, w4 = size
    cams = cams[:, :h4, :w4]
    return F.pad(cams, (0, w4 - cams.shape[-1], 0, h4 - cams.shape[-2]))


def propagate_cams(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    radius: int = RANDOM_WALK.radius,
    beta: float = RANDOM_WALK.beta,
    exp_times: int = RANDOM_WALK.exp_times,
) -> torch.Tensor:
    """Spec "Pseudo masks" up to the random walk (IRN's ``propagate_to_edge``).

    cams: (K, h, w) strided CAMs of the foreground classes (no background channel);
    boundary: (h, w) class-boundary map in [0, 1] at the same stride. Pads B with 1.0 by
    ``radius`` on the left, right and bottom, takes the affinities of all pixel pairs within
    ``radius`` (the pairs whose partner lies in the padding are dropped), builds T with power
    ``beta``, multiplies the CAMs by ``1 - B`` and walks ``2 ** exp_times`` steps.
    Returns (K, h, w), in float32 (float64 for float64 inputs) also under bf16 autocast and for
    half-precision inputs: there is no bf16 sparse product, and ``2 ** exp_times`` steps would
    compound bf16's rounding.
    """
    k, h, w = cams.shape
    if boundary.shape != (h, w):
        raise ValueError(f"boundary {tuple(boundary.shape)} does not match cams {(h, w)}")
    cams, boundary = (t.float() if t.dtype in (torch.bfloat16, torch.float16) else t for t in (cams, boundary))
    with torch.autocast(boundary.device.type, enabled=False):
        padded = F.pad(boundary[None], (radius, radius, 0, radius), value=1.0)[0]  # (h + r, w + 2r)
        aff = affinity_from_boundary(padded, radius)  # (D, h + r - (r-1), w + 2r - 2(r-1))
        _, _, x0 = source_window(h + radius, w + 2 * radius, radius)
        off = radius - x0  # padded column of source j is x0 + j; original column = x0 + j - radius
        aff = aff[:, :h, off:off + w]  # (D, h, w): sources = the original pixels
        trans = transition_matrix_sparse(aff, radius, beta)
        x = cams * (1.0 - boundary)
        return random_walk(x, trans, steps=2 ** exp_times)


def walk_scores_at_image_size(rw: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The walk's class scores at the image size (IRN's ``make_sem_seg_labels`` before the threshold).

    rw: (K, h, w) at stride 4. Upsamples x4 (bilinear), crops to ``image_size`` (H, W) and divides
    by the global max over all classes. Returns (K, H, W) float32 (K = 0: an empty map).
    """
    height, width = image_size
    if rw.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=torch.float32)
    up = F.interpolate(rw[None].float(), scale_factor=4, mode="bilinear", align_corners=False)
    up = up[0, :, :height, :width]  # (K, 4h, 4w) -> (K, H, W)
    peak = up.max()
    return up / peak if peak > 0 else up


def labels_from_scores(
    scores: torch.Tensor,
    keys: Sequence[int] | np.ndarray | torch.Tensor,
    bg: float = RANDOM_WALK.bg_threshold,
) -> np.ndarray:
    """Pseudo mask of scores at the image size (:func:`walk_scores_at_image_size`): prepends a
    constant background channel ``bg`` and takes the argmax (a tie goes to the background).

    scores: (K, H, W); keys: (K,) class ids (1..C) of the channels. Returns (H, W) int64 class ids
    (0 = background). The one thresholding of the walk: the ``pseudo_masks`` step and
    ``eval-pseudo-masks``'s sweep over saved scores both call it.
    """
    keys_np = np.concatenate([[0], np.asarray(torch.as_tensor(keys).cpu(), dtype=np.int64).reshape(-1)])
    if scores.shape[0] != len(keys_np) - 1:
        raise ValueError(f"{scores.shape[0]} channels for {len(keys_np) - 1} keys")
    if scores.shape[0] == 0:
        return np.zeros(tuple(scores.shape[1:]), dtype=np.int64)
    padded = F.pad(scores.float(), (0, 0, 0, 0, 1, 0), value=bg)  # (K + 1, H, W)
    return keys_np[padded.argmax(dim=0).cpu().numpy()]


def sem_seg_from_rw(
    rw: torch.Tensor,
    keys: Sequence[int] | np.ndarray | torch.Tensor,
    image_size: tuple[int, int],
    bg: float = RANDOM_WALK.bg_threshold,
) -> np.ndarray:
    """Pseudo mask from propagated CAMs (spec "Pseudo masks", IRN's ``make_sem_seg_labels``).

    rw: (K, h, w) at stride 4; keys: (K,) class ids (1..C) of the channels. Upsamples x4
    (bilinear), crops to ``image_size`` (H, W), divides by the global max over all classes,
    prepends a constant background channel ``bg`` and takes the argmax
    (:func:`walk_scores_at_image_size`, then :func:`labels_from_scores`). Returns (H, W) int64
    class ids (0 = background).
    """
    n_keys = int(np.asarray(torch.as_tensor(keys).cpu()).size)
    if rw.shape[0] != n_keys:
        raise ValueError(f"{rw.shape[0]} channels for {n_keys} keys")
    return labels_from_scores(walk_scores_at_image_size(rw, image_size), keys, bg)
