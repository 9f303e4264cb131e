"""RPNet: the region prototypical network (paper Sec. III.C-E, eq. 3-13; spec "Stage 1").

Pure functions first, one per equation, then :class:`RPNet` composing them as the public code does.

Group layout. A training batch holds ``B`` groups of ``k`` same-class images (the data module's
``collate_groups``): ``images`` (B, k, 3, H, W) and ``labels`` (B, k, C) with C foreground classes
(20 for VOC). Member 0 is the anchor, members 1..k-1 its references (k = 2: the paper's pair x, y;
k = 1..4: Table VII). Every member is run through the backbone in one pass as ``(B*k, 3, H, W)``
(group-major: member j of group b is row ``b*k + j``). Prototypes are shared inside a group only:
each image's foreground map is the max over the prototypes of all k members of its group.
A flat ``(B*k, 3, H, W)`` input is accepted too and read with ``group_size`` as that layout.

Shapes in comments: N = B*k images, h x w the stride-16 feature size, D a feature depth.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from rpnet_pl.utils.init_args import init_args
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models.backbones import build_backbone
from rpnet_pl.models.reference_weights import is_reference_checkpoint, load_reference_checkpoint
from rpnet_pl.ops.params import CAM_INFERENCE

LsVariant = Literal["code", "paper"]


# =================================================================================================
# Pure functions
# =================================================================================================
def confidence_mask(f4: Tensor, alpha: float = 0.3, eps: float = 1e-5, clamp_peak: bool = False) -> Tensor:
    """Binary confidence mask M (eq. 3-4 and the threshold of eq. 6, as coded; spec step 2).

    Each channel of ``f4`` is divided by its spatial max + ``eps`` (eq. 3, the reference's
    ``x / (adaptive_max_pool2d(x) + 1e-5)``), thresholded at ``alpha`` (``>=``), and the max over
    channels (eq. 4, "cmax") marks the confident positions. As in the reference, a channel whose
    values are all negative divides by a negative peak and so marks every position where
    ``f <= alpha * (peak + eps)``: in practice its whole map. ``clamp_peak=True`` is the paper's ReLU
    reading of eq. 3 instead: the peak is clamped to ``eps``, so such a channel marks nothing.
    No gradient.

    f4: (N, D, h, w) -> (N, 1, h, w) float in {0, 1}.
    """
    with torch.no_grad():
        peak = f4.amax(dim=(2, 3), keepdim=True)  # (N, D, 1, 1)
        normalised = f4 / (peak.clamp_min(eps) if clamp_peak else peak + eps)  # O, eq. 3
        cmax = normalised.amax(dim=1, keepdim=True)  # eq. 4: any channel >= alpha <=> their max is
        return (cmax >= alpha).to(f4.dtype)  # eq. 6


def region_prototypes(features: Tensor, mask: Tensor, eps: float = 5e-4) -> Tensor:
    """Region prototype p = sum(M f) / (sum(M) + eps) (eq. 5; ``eps`` = 5e-4 as coded).

    features: (N, D, h, w), mask: (N, 1, h, w) -> (N, D). An empty mask gives the zero vector.
    """
    num = (features * mask).sum(dim=(2, 3))  # (N, D)
    den = mask.sum(dim=(2, 3)) + eps  # (N, 1)
    return num / den


def part_mask(mask: Tensor, beta: float = 0.5, generator: torch.Generator | None = None,
              training: bool = True, beta_is_keep_prob: bool = False) -> Tensor:
    """Randomly thinned confidence mask for the "part" prototype (eq. 6's Bernoulli Z).

    Code default (``beta_is_keep_prob=False``): each confident position is dropped with
    probability ``beta`` (``F.dropout(M, beta)`` re-binarised), i.e. kept with ``1 - beta``:
    ``beta = 1`` keeps nothing, ``beta -> 0`` keeps everything. Paper reading
    (``beta_is_keep_prob=True``): Z ~ Bernoulli(beta) is the keep indicator: ``beta = 1`` keeps
    every confident position, ``beta -> 0`` none. With ``training=False`` the mask is returned
    unchanged (as dropout in eval mode).

    mask: (N, 1, h, w) in {0, 1} -> same shape, a subset of ``mask``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not training:
        return mask
    keep = beta if beta_is_keep_prob else 1.0 - beta
    z = torch.bernoulli(torch.full_like(mask, keep), generator=generator)
    return mask * z


def cosine_map(features: Tensor, prototypes: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every position to every prototype, s = cos(p, f(x, y)) (eq. 7).

    features: (N, D, h, w), prototypes: (N, P, D) -> (N, P, h, w). A zero prototype or a zero
    feature vector has similarity 0. Computed in float32.
    """
    # float32 so that eps survives mixed precision (empty masks give zero prototypes)
    f = F.normalize(features.float(), dim=1, eps=eps)  # (N, D, h, w)
    p = F.normalize(prototypes.float(), dim=2, eps=eps)  # (N, P, D)
    return torch.einsum("ndhw,npd->nphw", f, p)


def group_prototypes(features: Tensor, masks: Sequence[Tensor], eps: float = 5e-4) -> Tensor:
    """Prototypes of every member of every group, for every mask (eq. 5).

    features: (B, k, D, h, w); masks: each (B, k, 1, h, w) -> (B, len(masks) * k, D), ordered
    mask-major (all members' prototypes for ``masks[0]``, then for ``masks[1]``, ...).
    """
    b, k, d, h, w = features.shape
    flat = features.reshape(b * k, d, h, w)
    protos = [region_prototypes(flat, m.reshape(b * k, 1, h, w), eps).reshape(b, k, d) for m in masks]
    return torch.cat(protos, dim=1)  # (B, M*k, D)


def foreground_map(features_levels: Sequence[Tensor], masks: Sequence[Tensor] | Sequence[Sequence[Tensor]],
                   eps: float = 5e-4) -> Tensor:
    """Foreground probability map F^ = max over prototypes of cos(p, f) (eq. 7-8).

    For each feature level, the prototypes of all k members of the group are computed from that
    level's features with each of its masks (full and part confidence masks, taken from f4), and
    every member's features are compared with all of them; the map is the max over prototypes and
    over levels. With k = 1 the prototypes come from the image itself. ``masks`` is either one list
    shared by every level or one list per level (the reference draws the part mask per level).

    features_levels: each (B, k, D_l, h, w); masks: each (B, k, 1, h, w) -> (B, k, 1, h, w).
    """
    if not features_levels or not masks:
        raise ValueError("foreground_map needs at least one feature level and one mask")
    per_level = [list(masks)] * len(features_levels) if isinstance(masks[0], Tensor) else [list(m) for m in masks]
    if len(per_level) != len(features_levels):
        raise ValueError(f"{len(per_level)} mask lists for {len(features_levels)} feature levels")
    out: Tensor | None = None
    for feats, level_masks in zip(features_levels, per_level):
        b, k, d, h, w = feats.shape
        protos = group_prototypes(feats, level_masks, eps)  # (B, P, D), P = len(masks) * k
        protos = protos.unsqueeze(1).expand(b, k, *protos.shape[1:]).reshape(b * k, -1, d)  # (N, P, D)
        sim = cosine_map(feats.reshape(b * k, d, h, w), protos)  # (N, P, h, w)
        fmap = sim.amax(dim=1, keepdim=True).reshape(b, k, 1, h, w)
        out = fmap if out is None else torch.maximum(out, fmap)
    assert out is not None
    return out


def gaussian_kernel(size: int = 5, sigma: float = 3.0) -> Tensor:
    """Normalised 2-D Gaussian G (eq. 9) on a ``size`` x ``size`` grid centred at 0, summing to 1.

    The 1 / (2 pi sigma^2) factor of eq. 9 cancels in the normalisation (as coded).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"Gaussian size must be a positive odd number, got {size}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


def smooth_foreground(fmap: Tensor, sigma: float = 3.0, size: int = 5, scale: float = 1.3,
                      normalise: bool = True, smooth: bool = True, eps: float = 1e-5) -> Tensor:
    """Foreground map as used for re-weighting (eq. 9, as coded; spec step 5).

    Divide by the spatial max + ``eps`` (``normalise``, as the reference), multiply by ``scale`` (1.3 in the
    code), then convolve with the normalised ``size`` x ``size`` Gaussian of ``sigma`` with zero
    padding ``size // 2`` (``smooth``; ``smooth=False`` is Table VI's "w/o GF").

    fmap: (..., h, w) -> same shape.
    """
    shape = fmap.shape
    x = fmap.reshape(-1, 1, *shape[-2:])  # (M, 1, h, w)
    if normalise:
        x = x / (x.amax(dim=(2, 3), keepdim=True) + eps)
    x = x * scale
    if smooth:
        kernel = gaussian_kernel(size, sigma).to(x)[None, None]  # (1, 1, size, size)
        x = F.conv2d(x, kernel, padding=size // 2)
    return x.reshape(shape)


def enhance_features(features: Tensor, fmap: Tensor) -> Tensor:
    """Enhanced features f' = G(F^) * f (eq. 10). features: (N, D, h, w), fmap: (N, 1, h, w)."""
    return features * fmap


def ls_normalise(x: Tensor, eps: float = 1e-5) -> Tensor:
    """relu(relu(x) - eps) / (spatial max of relu(x) + eps), per channel: the reference's
    normalisation of both maps in Ls (``step/train_cam.py``). x: (N, C, h, w)."""
    x = F.relu(x)
    return F.relu(x - eps) / (x.amax(dim=(-2, -1), keepdim=True) + eps)


def self_supervised_loss(plain: Tensor, enhanced: Tensor, labels: Tensor | None = None, lam: float = 10.0,
                         variant: LsVariant = "code") -> Tensor:
    """Self-supervised loss lambda * Ls (eq. 11, 13).

    ``variant="code"`` (default): ``plain`` and ``enhanced`` are class maps (N, C, h, w); both are
    relu'd, normalised per class by their spatial max (:func:`ls_normalise`), masked by ``labels`` (N, C), and
    Ls = mean over (N, C, h, w) of the squared difference. Gradient flows into both maps.
    ``variant="paper"``: eq. 13 literally, on feature maps (N, D, h, w): the squared difference
    summed over positions and channels, averaged over images; ``labels`` unused.

    Returns ``lam * Ls`` (a scalar).
    """
    if plain.shape != enhanced.shape:
        raise ValueError(f"shape mismatch: plain {tuple(plain.shape)} vs enhanced {tuple(enhanced.shape)}")
    if variant == "paper":
        return lam * (enhanced - plain).pow(2).flatten(1).sum(dim=1).mean()
    if variant != "code":
        raise ValueError(f"unknown Ls variant {variant!r} (code | paper)")
    if labels is None:
        raise ValueError("the code variant of Ls needs the image labels")
    m = labels.float()[:, :, None, None]  # (N, C, 1, 1)
    a = ls_normalise(plain.float()) * m  # float32: the +1e-5 survives mixed precision
    b = ls_normalise(enhanced.float()) * m
    return lam * (a - b).pow(2).mean()


def multilabel_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss Lc (eq. 12), mean over classes and images.

    logits, labels: (N, C).
    """
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


# =================================================================================================
# Modules
# =================================================================================================
AttentionForm = Literal["dot_product", "softmax"]
AttentionNorm = Literal["batch", "running"]


def dot_product_attention(theta: Tensor, phi: Tensor, g: Tensor, associative: bool = True) -> Tensor:
    """Dot-product non-local attention y = (theta^T phi / M) g, no softmax (the public RPNet code's
    ``_NonLocalBlockND``; Wang et al. 2018, "dot product" form).

    theta: (N, L, I) queries at L positions; phi: (N, I, M) keys and g: (N, M, I) values at M
    positions -> (N, L, I). Without a softmax the product is associative: ``associative=True``
    computes theta (phi g) / M, O(L I^2) operations and no L x M matrix; ``False`` computes
    (theta phi / M) g as the reference does, O(L M I). Both give the same numbers up to rounding.
    """
    m = phi.shape[-1]
    if associative:
        return theta @ ((phi @ g) / m)  # (N, L, I) @ (N, I, I)
    return ((theta @ phi) / m) @ g  # (N, L, M) @ (N, M, I)


def softmax_attention(theta: Tensor, phi: Tensor, g: Tensor) -> Tensor:
    """Embedded-Gaussian non-local attention y = softmax_M(theta^T phi) g (not the reference's form).

    theta: (N, L, I), phi: (N, I, M), g: (N, M, I) -> (N, L, I).
    """
    return torch.softmax(theta @ phi, dim=-1) @ g


def grouped_batch_norm(x: Tensor, groups: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                       eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """BatchNorm with the batch's own statistics, computed separately for each group of images.

    The public RPNet code never leaves training mode, so its non-local BatchNorm normalises every
    forward pass with that pass's statistics: the B anchors of a training step in one pass, the B
    references in another, an image and its flip at CAM inference. ``groups`` (N,) assigns each
    image to such a pass (``None``: one pass). x: (N, C, h, w) -> (y, mean (G, C), biased var (G, C)).
    """
    xf = x.float()
    if groups is not None and bool((groups == groups[0]).all()):
        groups = None  # one pass: the fused kernel below
    if groups is None:
        # one fused pass for the statistics and the normalisation (differentiable, as F.batch_norm)
        y, mean, invstd = torch.native_batch_norm(xf, None if weight is None else weight.float(),
                                                  None if bias is None else bias.float(), None, None, True, 0.0, eps)
        var = invstd.detach().pow(-2) - eps  # the biased variance the kernel used
        return y.to(x.dtype), mean.detach()[None], var[None]
    idx = groups.to(device=x.device, dtype=torch.long)
    n_groups = int(idx.max().item()) + 1
    onehot = F.one_hot(idx, n_groups).to(xf.dtype)  # (N, G)
    count = onehot.sum(dim=0)[:, None] * (x.shape[2] * x.shape[3])  # (G, 1)
    mean = (onehot.t() @ xf.sum(dim=(2, 3))) / count  # (G, C)
    centred = xf - mean[idx][:, :, None, None]
    var = (onehot.t() @ centred.pow(2).sum(dim=(2, 3))) / count
    y = (xf - mean[idx][:, :, None, None]) * torch.rsqrt(var[idx] + eps)[:, :, None, None]
    if weight is not None:
        y = y * weight.float()[None, :, None, None]
    if bias is not None:
        y = y + bias.float()[None, :, None, None]
    return y.to(x.dtype), mean, var


class NonLocalBlock(nn.Module):
    """Non-local self-attention block as in the public RPNet code (``NONLocalBlock2D``).

    theta, phi, g: 1x1 convs to ``inter`` channels (default ``channels // 2``); ``attention``
    ``"dot_product"`` (reference, default): y = theta^T phi / N g, computed in the associative
    order (:func:`dot_product_attention`); ``"softmax"``: the embedded-Gaussian form. Output
    projection: 1x1 conv + BatchNorm initialised to zero (the block starts as the identity);
    residual. ``sub_sample`` max-pools phi and g by 2.

    ``norm="batch"`` (reference, default): the projection's BatchNorm always normalises with the
    statistics of the current pass, per group of ``stat_groups`` (:func:`grouped_batch_norm`), in
    training and at inference alike, because the reference's ``Net.train()`` never calls
    ``super().train()``. ``norm="running"``: standard BatchNorm (running statistics in eval mode).
    """

    def __init__(self, channels: int, inter_channels: int | None = None, sub_sample: bool = False,
                 attention: AttentionForm = "dot_product", norm: AttentionNorm = "batch") -> None:
        super().__init__()
        if attention not in ("dot_product", "softmax"):
            raise ConfigError(f"attention must be 'dot_product' or 'softmax', got {attention!r}")
        if norm not in ("batch", "running"):
            raise ConfigError(f"attention_norm must be 'batch' or 'running', got {norm!r}")
        inter = inter_channels or max(1, channels // 2)
        self.attention, self.norm = attention, norm
        self.associative = True  # theta (phi^T g) / N; False: the reference's (theta^T phi / N) g order
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.pool = nn.MaxPool2d(2) if sub_sample else nn.Identity()

    def forward(self, x: Tensor, stat_groups: Tensor | None = None) -> Tensor:
        """x (N, C, h, w) -> (N, C, h, w); ``stat_groups`` (N,) ids of the BatchNorm passes."""
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, hw, I)
        phi = self.pool(self.phi(x)).flatten(2)  # (N, I, h'w')
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # (N, h'w', I)
        if self.attention == "dot_product":
            y = dot_product_attention(theta, phi, g, associative=self.associative)
        else:
            y = softmax_attention(theta, phi, g)
        y = y.transpose(1, 2).reshape(n, -1, h, w)  # (N, I, h, w)
        if self.norm == "running":
            return x + self.out(y)
        conv, bn = self.out[0], self.out[1]
        z = conv(y)
        out, mean, var = grouped_batch_norm(z, stat_groups, bn.weight, bn.bias, bn.eps)
        if self.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():  # keep the buffers meaningful for a later norm="running"
                count = z.numel() / z.shape[1] / mean.shape[0]
                unbiased = var.mean(0) * (count / max(count - 1.0, 1.0))
                bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean.mean(0).to(bn.running_mean))
                bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * unbiased.to(bn.running_var))
                bn.num_batches_tracked.add_(1)
        return x + out


def _attend(block: nn.Module, x: Tensor, stat_groups: Tensor | None) -> Tensor:
    return block(x, stat_groups) if isinstance(block, NonLocalBlock) else block(x)


def member_index(n: int, k: int, device: torch.device | None = None) -> Tensor:
    """(N,) member index j of each row of a group-major batch (row b*k + j): the reference runs the
    anchors (j = 0) and the references (j >= 1) as separate passes."""
    return torch.arange(n, device=device) % k


@contextlib.contextmanager
def timed_scope(name: str, sync: bool = False) -> Iterator[None]:
    """``torch.profiler.record_function(name)``; ``sync`` waits for the GPU at both ends."""
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    with record_function(name):
        yield
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class RPNetHead(nn.Module):
    """Everything of RPNet after the backbone (Fig. 2), as the public code builds it.

    f4 = 1x1 conv (no bias) of block 4 to ``mid`` channels ("downsample"). Plain branch:
    non-local block -> 1x1 classifier -> class maps. Prototype branch: confidence mask from f4
    (eq. 3-4, 6), full and part prototypes from every feature level of every group member (eq. 5),
    foreground map (eq. 7-8), smoothed (eq. 9), enhanced features F * f4 (eq. 10) -> second
    non-local block -> the classifier -> enhanced class maps.

    ``separate_reference_heads`` (reference, default): as in the public code, the reference
    members (j >= 1) have their own non-local blocks and classifier (``self_atten_y``,
    ``cross_atten_y``, ``classifiery``), trained by their Lc and Ls only and unused at CAM
    inference; ``False`` shares the anchor's heads (the paper's figure; needed for k = 1).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        mid: int,
        alpha: float,
        beta: float,
        beta_is_keep_prob: bool,
        levels: Sequence[int],
        gaussian: bool,
        sigma: float,
        gaussian_size: int,
        fg_scale: float,
        self_attention: bool,
        attention: AttentionForm,
        attention_norm: AttentionNorm,
        attn_sub_sample: bool,
        separate_reference_heads: bool,
        clamp_confidence_peak: bool,
    ) -> None:
        """Every setting is keyword-only and without a default here: :class:`RPNet`'s signature is
        the one place the defaults are said (:func:`head_defaults` reads them)."""
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or not set(levels) <= {2, 3, 4} or len(set(levels)) != len(levels):
            raise ConfigError(f"levels must be a non-empty subset of (2, 3, 4), got {levels}")
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {beta}")
        self.levels = tuple(sorted(levels))
        self.alpha, self.beta, self.beta_is_keep_prob = alpha, beta, beta_is_keep_prob
        self.gaussian, self.sigma, self.gaussian_size, self.fg_scale = gaussian, sigma, gaussian_size, fg_scale
        self.num_classes = num_classes
        self.clamp_confidence_peak = clamp_confidence_peak

        def block() -> nn.Module:
            if not self_attention:
                return nn.Identity()
            return NonLocalBlock(mid, mid // 2, attn_sub_sample, attention=attention, norm=attention_norm)

        self.down = nn.Conv2d(in_channels, mid, 1, bias=False)  # reference "downsample": block 4 -> mid
        self.attn_plain: nn.Module = block()  # reference self_atten_x
        self.attn_enhanced: nn.Module = block()  # reference cross_atten_x
        self.classifier = nn.Conv2d(mid, num_classes, 1, bias=False)  # reference classifierx
        self.separate_reference_heads = separate_reference_heads
        if separate_reference_heads:
            self.attn_plain_ref: nn.Module = block()  # reference self_atten_y
            self.attn_enhanced_ref: nn.Module = block()  # reference cross_atten_y
            self.classifier_ref = nn.Conv2d(mid, num_classes, 1, bias=False)  # reference classifiery

    # -- features --------------------------------------------------------------------------------
    def level_features(self, f4: Tensor, raw: dict[int, Tensor]) -> list[Tensor]:
        """The compared feature levels (Table IV), each resized to f4's (h, w) bilinearly with
        ``align_corners=True`` (the reference's ``F.upsample_bilinear``): 4 is f4 itself, 2 and 3
        the raw block outputs ``raw[level]`` (N, D_l, h_l, w_l)."""
        size = tuple(f4.shape[-2:])
        by_level = {**raw, 4: f4}
        return [_resize(by_level[lv], size, align_corners=True) for lv in self.levels]

    # -- heads -------------------------------------------------------------------------------
    def _head(self, feats: Tensor, k: int, enhanced: bool) -> Tensor:
        """Non-local block + classifier of every member; (N, mid, h, w) -> (N, C, h, w), N = B*k."""
        attn = self.attn_enhanced if enhanced else self.attn_plain
        n = feats.shape[0]
        if not self.separate_reference_heads or k == 1:
            return self.classifier(_attend(attn, feats, member_index(n, k, feats.device)))
        attn_ref = self.attn_enhanced_ref if enhanced else self.attn_plain_ref
        b = n // k
        grouped = feats.reshape(b, k, *feats.shape[1:])
        anchors = self.classifier(_attend(attn, grouped[:, 0], None))  # (B, C, h, w)
        refs = grouped[:, 1:].reshape(b * (k - 1), *feats.shape[1:])
        refs = self.classifier_ref(_attend(attn_ref, refs, member_index(b * (k - 1), k - 1, feats.device)))
        out = torch.cat([anchors[:, None], refs.reshape(b, k - 1, *refs.shape[1:])], dim=1)
        return out.reshape(n, *out.shape[2:])

    def plain_cam(self, f4: Tensor, k: int = 1) -> Tensor:
        """Plain class maps (N, C, h, w) from f4 (no ReLU); N = B*k in group-major order."""
        return self._head(f4, k, enhanced=False)

    def enhanced_cam(self, f4: Tensor, fmap: Tensor, k: int = 1) -> Tensor:
        """Enhanced class maps (N, C, h, w) from f4 and the smoothed foreground map (N, 1, h, w)."""
        return self._head(enhance_features(f4, fmap), k, enhanced=True)

    def cam(self, f4: Tensor) -> Tensor:
        """CAM inference: relu(classifier(non-local(f4))) with the anchor's head, the whole batch one
        BatchNorm pass (the reference's image and its flip)."""
        return F.relu(F.conv2d(_attend(self.attn_plain, f4, None), self.classifier.weight))

    # -- prototype branch ----------------------------------------------------------------------
    def foreground(self, f4: Tensor, levels: list[Tensor], k: int, generator: torch.Generator | None = None,
                   part_keep: dict[int, Tensor] | None = None) -> Tensor:
        """Smoothed foreground map (N, 1, h, w) of N = B*k images in group-major order (eq. 3-9).

        The part mask is drawn afresh for every image and every feature level (the reference's
        ``cal_cos_vector_part``: four draws for a pair at levels 2 and 4); ``part_keep[level]``
        (N, 1, h, w) in {0, 1} replaces the draw (tests, parity cases).
        """
        n, _, h, w = f4.shape
        b = n // k
        mask = confidence_mask(f4, self.alpha, clamp_peak=self.clamp_confidence_peak)  # (N, 1, h, w)
        per_level = []
        for lv in self.levels:
            if part_keep is not None and lv in part_keep:
                part = mask * part_keep[lv].to(mask)
            else:
                # functional dropout in the reference: on in eval mode too
                part = part_mask(mask, self.beta, generator=generator, training=True,
                                 beta_is_keep_prob=self.beta_is_keep_prob)
            per_level.append([mask.reshape(b, k, 1, h, w), part.reshape(b, k, 1, h, w)])
        fmap = foreground_map([lv.reshape(b, k, *lv.shape[1:]) for lv in levels], per_level)  # (B, k, 1, h, w)
        return smooth_foreground(fmap.reshape(n, 1, h, w), sigma=self.sigma, size=self.gaussian_size,
                                 scale=self.fg_scale, normalise=True, smooth=self.gaussian)

    def forward(self, block4: Tensor, raw_levels: dict[int, Tensor], k: int,
                generator: torch.Generator | None = None, part_keep: dict[int, Tensor] | None = None,
                plain: bool = True) -> dict[str, Tensor]:
        """block4 (N, D4, h, w) and the raw blocks 2/3 -> ``f4``, ``cams`` (plain, no ReLU; only with
        ``plain``), ``enhanced`` (no ReLU) and ``foreground`` (smoothed), N = B*k group-major."""
        f4 = self.down(block4)
        levels = self.level_features(f4, raw_levels)
        fmap = self.foreground(f4, levels, k, generator, part_keep)
        out = {"f4": f4, "foreground": fmap, "enhanced": self.enhanced_cam(f4, fmap, k)}
        if plain:
            out["cams"] = self.plain_cam(f4, k)
        return out


class RPNet(nn.Module):
    """The RPNet classifier (Fig. 2): a backbone (stage-2 output detached) and :class:`RPNetHead`.

    The enhanced branch runs at ``enhanced_scales`` (input sizes floored, ``int(H * s)``, as the
    reference; scales other than 1 without gradient) and the maps are averaged after ReLU.
    Losses (eq. 11-13, as coded): Lc on the plain logits of every member, lambda * Ls between the
    plain and the enhanced maps of every member; each summed over the k members (for k = 2:
    Lc(x) + Lc(y) + Ls(x) + Ls(y)).

    Args:
        backbone, pretrained, weights: see :func:`rpnet_pl.models.backbones.build_backbone`;
            ``weights`` may also be a checkpoint of the public RPNet code (whole model, see
            :mod:`rpnet_pl.models.reference_weights`).
        num_classes: foreground classes (20 for VOC, 80 for COCO).
        mid: channels of f4 (512 in the code, 256 in the paper).
        alpha: confidence threshold (eq. 6 / spec step 2).
        beta: part-mask probability; dropped-position probability unless ``beta_is_keep_prob``.
        levels: feature levels compared (Table IV): a non-empty subset of (2, 3, 4).
        gaussian, sigma, gaussian_size, fg_scale: foreground-map smoothing (eq. 9, Table VI).
        self_attention: the code's non-local blocks (off = the paper's plain heads).
        attention: ``dot_product`` (reference) or ``softmax`` (embedded Gaussian) non-local form.
        attention_norm: ``batch`` (reference: the blocks' BatchNorm always uses the statistics of
            the current pass, also at CAM inference) or ``running`` (standard eval-mode BatchNorm).
        attn_sub_sample: max-pool phi/g in the non-local blocks.
        separate_reference_heads: the reference members' own heads (reference); see RPNetHead.
        clamp_confidence_peak: the paper's ReLU reading of eq. 3 (see :func:`confidence_mask`);
            ``False`` (reference) lets an all-negative channel mark its whole map confident.
        enhanced_scales: input scales of the enhanced branch; must contain 1.0.
        lam: lambda of eq. 11.
        ls_variant: ``code`` (normalised class maps) or ``paper`` (eq. 13 on features).
        lc_on_enhanced: also apply Lc to the scale-1 enhanced logits (the paper's reading).
        group_size: k, used only to read a flat (B*k, 3, H, W) input.
        output_stride, dilated: backbone geometry (IRN: 16, no dilation).
        freeze_bn_affine: also freeze the BatchNorm affine parameters (IRN trains them).
        freeze_early: the IRN fine-tuning policy (default): stem frozen, BatchNorm statistics frozen,
            stage-2 output detached. ``False`` trains every layer with live BatchNorm, for training
            from scratch (no ImageNet weights, e.g. the CPU demo).
    """

    def __init__(
        self,
        backbone: str = "resnext50",
        pretrained: bool = False,
        weights: str | None = None,
        num_classes: int = 20,
        mid: int = 512,
        alpha: float = 0.3,
        beta: float = 0.5,
        beta_is_keep_prob: bool = False,
        levels: Sequence[int] = (2, 4),
        gaussian: bool = True,
        sigma: float = 3.0,
        gaussian_size: int = 5,
        fg_scale: float = 1.3,
        self_attention: bool = True,
        attention: AttentionForm = "dot_product",
        attention_norm: AttentionNorm = "batch",
        attn_sub_sample: bool = False,
        separate_reference_heads: bool = True,
        clamp_confidence_peak: bool = False,
        enhanced_scales: Sequence[float] = CAM_INFERENCE.scales,
        lam: float = 10.0,
        ls_variant: LsVariant = "code",
        lc_on_enhanced: bool = False,
        group_size: int = 2,
        output_stride: int = 16,
        dilated: bool = False,
        freeze_bn_affine: bool = False,
        freeze_early: bool = True,
    ) -> None:
        super().__init__()
        self.init_args = init_args(locals())
        scales = tuple(float(s) for s in enhanced_scales)
        if 1.0 not in scales:
            raise ConfigError(f"enhanced_scales must contain 1.0, got {scales}")
        if ls_variant not in ("code", "paper"):
            raise ConfigError(f"ls_variant must be 'code' or 'paper', got {ls_variant!r}")
        if not 1 <= group_size:
            raise ConfigError(f"group_size must be >= 1, got {group_size}")
        self.enhanced_scales = scales
        self.lam, self.ls_variant, self.lc_on_enhanced = lam, ls_variant, lc_on_enhanced
        self.group_size = group_size
        self.num_classes = num_classes
        self.detach_level = 2 if freeze_early else None

        whole_model = weights is not None and is_reference_checkpoint(weights)
        self.backbone = build_backbone(backbone, pretrained=pretrained and not whole_model,
                                       weights=None if whole_model else weights, output_stride=output_stride,
                                       freeze_stem=freeze_early, freeze_bn=freeze_early, dilated=dilated,
                                       freeze_bn_affine=freeze_bn_affine)
        if freeze_early:
            self.backbone.freeze_through(2)  # stages 1-2 sit behind the detach: no gradient reaches them
        given = locals()
        self.head = RPNetHead(self.backbone.channels[4], **{name: given[name] for name in HEAD_ARGS})
        if whole_model:
            load_reference_checkpoint(self, weights)

    @property
    def levels(self) -> tuple[int, ...]:
        return self.head.levels

    def _scope(self, name: str) -> contextlib.AbstractContextManager:
        """A named profiler range; with ``sync_scopes`` set (``tools/bench.py --breakdown`` on a GPU)
        the device is synchronised at its ends, so the range's CPU time is the GPU work in it."""
        return timed_scope(name, getattr(self, "sync_scopes", False))

    # -- pieces ------------------------------------------------------------------------------
    def _raw(self, images: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        feats = self.backbone(images, detach_level=self.detach_level, stem=False)  # stage 2 detached (IRN)
        return feats[4], {lv: feats[lv] for lv in self.head.levels if lv != 4}

    def features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images (N, 3, H, W) -> f4 (N, mid, h, w) and the chosen levels, each resized to (h, w)."""
        block4, raw = self._raw(images)
        f4 = self.head.down(block4)
        return f4, self.head.level_features(f4, raw)

    def plain_cam(self, f4: Tensor, k: int = 1) -> Tensor:
        """Plain class maps (N, C, h, w) from f4 (no ReLU)."""
        return self.head.plain_cam(f4, k)

    def enhanced_cam(self, f4: Tensor, fmap: Tensor, k: int = 1) -> Tensor:
        """Enhanced class maps (N, C, h, w) from f4 and the smoothed foreground map (N, 1, h, w)."""
        return self.head.enhanced_cam(f4, fmap, k)

    def _group(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None, int, int]:
        if images.dim() == 5:  # (B, k, 3, H, W)
            b, k = images.shape[:2]
        elif images.dim() == 4:  # (B*k, 3, H, W)
            k = self.group_size
            if images.shape[0] % k:
                raise ValueError(f"{images.shape[0]} images do not split into groups of {k}")
            b = images.shape[0] // k
        else:
            raise ValueError(f"expected images (B, k, 3, H, W) or (B*k, 3, H, W), got {tuple(images.shape)}")
        flat = images.reshape(b * k, *images.shape[-3:])
        if labels is not None:
            labels = labels.reshape(b * k, -1)
            if labels.shape[1] != self.num_classes:
                raise ValueError(f"labels have {labels.shape[1]} classes, the model {self.num_classes}")
        return flat, labels, b, k

    # -- nn.Module ---------------------------------------------------------------------------
    def forward(self, images: Tensor, labels: Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Both branches and, when ``labels`` are given, the losses.

        images: (B, k, 3, H, W) (or (B*k, 3, H, W), read with ``group_size``); labels: (B, k, C)
        (or (B*k, C)), multi-hot floats. Returns (N = B*k, group-major):
          ``logits`` (N, C) plain logits; ``cams`` (N, C, h, w) plain class maps (no ReLU);
          ``enhanced_cams`` (N, C, h, w) mean over scales of relu(enhanced maps); ``foreground``
          (N, 1, h, w) the smoothed scale-1 foreground map; with labels also ``loss_cls`` (Lc),
          ``loss_ss`` (lambda * Ls) and ``loss`` (their sum).
        """
        x, y, b, k = self._group(images, labels)
        with self._scope("rpnet/backbone scale 1"):
            block4, raw = self._raw(x)
        with self._scope("rpnet/head scale 1"):
            head = self.head(block4, raw, k, generator)
        f4, cams, fmap, enh1 = head["f4"], head["cams"], head["foreground"], head["enhanced"]
        size = tuple(cams.shape[-2:])
        logits = cams.mean(dim=(2, 3))  # GAP, (N, C)
        enhanced = [F.relu(enh1)]
        hh, ww = x.shape[-2:]
        if self.backbone.channels_last:  # the rescaled inputs come out in the weights' layout
            x = x.contiguous(memory_format=torch.channels_last)
        for s in self.enhanced_scales:
            if s == 1.0:
                continue
            with torch.no_grad():  # the reference's extra scales (plain branch not needed)
                xs = F.interpolate(x, size=(max(1, int(hh * s)), max(1, int(ww * s))), mode="bilinear",
                                   align_corners=False)
                with self._scope("rpnet/backbone extra scales"):
                    block4_s, raw_s = self._raw(xs)
                with self._scope("rpnet/head extra scales"):
                    es = self.head(block4_s, raw_s, k, generator, plain=False)["enhanced"]
                enhanced.append(F.relu(_resize(es, size)))
        enhanced_cams = torch.stack(enhanced).mean(dim=0)  # (N, C, h, w)

        out = {"logits": logits, "cams": cams, "enhanced_cams": enhanced_cams, "foreground": fmap}
        if y is None:
            return out
        with self._scope("rpnet/losses"):
            out.update(self.losses(cams, enhanced_cams, y, k, f4=f4, fmap=fmap, enhanced_1=enh1))
        return out

    def losses(self, cams: Tensor, enhanced_cams: Tensor, labels: Tensor, k: int, f4: Tensor | None = None,
               fmap: Tensor | None = None, enhanced_1: Tensor | None = None) -> dict[str, Tensor]:
        """``loss_cls`` (Lc), ``loss_ss`` (lambda * Ls) and ``loss`` from the maps (eq. 11-13, as coded):
        each member's batch-mean loss, summed over the k members (k = 2: Lc(x) + Lc(y))."""
        n = cams.shape[0]
        b = n // k
        yk = labels.reshape(b, k, -1)
        logits = cams.mean(dim=(2, 3)).reshape(b, k, -1)
        loss_cls = sum(multilabel_loss(logits[:, j], yk[:, j]) for j in range(k))
        if self.lc_on_enhanced:
            if enhanced_1 is None:
                raise ValueError("lc_on_enhanced needs the scale-1 enhanced maps")
            enh_logits = enhanced_1.mean(dim=(2, 3)).reshape(b, k, -1)
            loss_cls = loss_cls + sum(multilabel_loss(enh_logits[:, j], yk[:, j]) for j in range(k))
        if self.ls_variant == "code":
            cams_k = cams.reshape(b, k, *cams.shape[1:])
            enh_k = enhanced_cams.reshape(b, k, *enhanced_cams.shape[1:])
            loss_ss = sum(self_supervised_loss(cams_k[:, j], enh_k[:, j], yk[:, j], self.lam) for j in range(k))
        else:
            if f4 is None or fmap is None:
                raise ValueError("the paper's Ls needs f4 and the foreground map")
            ef = enhance_features(f4, fmap)
            f4_k, ef_k = f4.reshape(b, k, *f4.shape[1:]), ef.reshape(b, k, *ef.shape[1:])
            loss_ss = sum(self_supervised_loss(f4_k[:, j], ef_k[:, j], None, self.lam, "paper") for j in range(k))
        return {"loss_cls": loss_cls, "loss_ss": loss_ss, "loss": loss_cls + loss_ss}

    def training_losses(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``forward`` with labels: the dict with ``loss``, ``loss_cls``, ``loss_ss`` and the maps."""
        return self.forward(images, labels)

    def cam(self, images: Tensor) -> Tensor:
        """CAM inference, plain branch only: relu(conv(non-local(f4), classifier weight)); the batch
        (an image and its flip) is one BatchNorm pass, as in the reference.

        images (N, 3, H, W) -> (N, C, ceil(H/16), ceil(W/16)).
        """
        return self.head.cam(self.head.down(self.backbone(images, stem=False)[4]))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters) that require grad; new layers get 10x lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for p in self.head.parameters() if p.requires_grad]
        return backbone, new


#: The arguments :class:`RPNet` passes through to :class:`RPNetHead`.
HEAD_ARGS = ("num_classes", "mid", "alpha", "beta", "beta_is_keep_prob", "levels", "gaussian", "sigma", "gaussian_size",
             "fg_scale", "self_attention", "attention", "attention_norm", "attn_sub_sample", "separate_reference_heads",
             "clamp_confidence_peak")


def head_defaults(**overrides: object) -> dict[str, object]:
    """The head's settings as :class:`RPNet`'s signature defaults them, with ``overrides``."""
    import inspect

    params = inspect.signature(RPNet.__init__).parameters
    unknown = set(overrides) - set(HEAD_ARGS)
    if unknown:
        raise ConfigError(f"not RPNetHead settings: {sorted(unknown)}")
    return {**{name: params[name].default for name in HEAD_ARGS}, **overrides}


__all__ = [
    "HEAD_ARGS", "NonLocalBlock", "RPNet", "RPNetHead", "head_defaults", "confidence_mask", "cosine_map", "dot_product_attention",
    "enhance_features", "foreground_map", "gaussian_kernel", "group_prototypes", "grouped_batch_norm",
    "ls_normalise", "member_index", "multilabel_loss", "part_mask", "region_prototypes", "self_supervised_loss",
    "smooth_foreground", "softmax_attention",
]
