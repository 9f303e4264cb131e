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

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rpnet_pl.errors import ConfigError
from rpnet_pl.models.backbones import build_backbone

LsVariant = Literal["code", "paper"]


# =================================================================================================
# Pure functions
# =================================================================================================
def confidence_mask(f4: Tensor, alpha: float = 0.3, eps: float = 1e-5) -> Tensor:
    """Binary confidence mask M (eq. 3-4 and the threshold of eq. 6, as coded; spec step 2).

    Each channel of ``f4`` is divided by its spatial max (eq. 3), thresholded at ``alpha`` (``>=``),
    and the max over channels (eq. 4, "cmax") marks the confident positions. A channel whose
    spatial max is <= 0 has no confident position (its max is clamped to ``eps``; for
    ``alpha > 0`` this equals eq. 3's ReLU form ``relu(f) / max relu(f)``). No gradient.

    f4: (N, D, h, w) -> (N, 1, h, w) float in {0, 1}.
    """
    with torch.no_grad():
        peak = f4.amax(dim=(2, 3), keepdim=True).clamp_min(eps)  # (N, D, 1, 1)
        normalised = f4 / peak  # O, eq. 3
        return (normalised >= alpha).any(dim=1, keepdim=True).to(f4.dtype)  # cmax >= alpha, eq. 4/6


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


def foreground_map(features_levels: Sequence[Tensor], masks: Sequence[Tensor], eps: float = 5e-4) -> Tensor:
    """Foreground probability map F^ = max over prototypes of cos(p, f) (eq. 7-8).

    For each feature level, the prototypes of all k members of the group are computed from that
    level's features with each of ``masks`` (full and part confidence masks, taken from f4 and
    shared by the levels), and every member's features are compared with all of them; the map is
    the max over prototypes and over levels. With k = 1 the prototypes come from the image itself.

    features_levels: each (B, k, D_l, h, w); masks: each (B, k, 1, h, w) -> (B, k, 1, h, w).
    """
    if not features_levels or not masks:
        raise ValueError("foreground_map needs at least one feature level and one mask")
    out: Tensor | None = None
    for feats in features_levels:
        b, k, d, h, w = feats.shape
        protos = group_prototypes(feats, masks, eps)  # (B, P, D), P = len(masks) * k
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

    Divide by the spatial max (``normalise``; clamped to ``eps``), multiply by ``scale`` (1.3 in the
    code), then convolve with the normalised ``size`` x ``size`` Gaussian of ``sigma`` with zero
    padding ``size // 2`` (``smooth``; ``smooth=False`` is Table VI's "w/o GF").

    fmap: (..., h, w) -> same shape.
    """
    shape = fmap.shape
    x = fmap.reshape(-1, 1, *shape[-2:])  # (M, 1, h, w)
    if normalise:
        x = x / x.amax(dim=(2, 3), keepdim=True).clamp_min(eps)
    x = x * scale
    if smooth:
        kernel = gaussian_kernel(size, sigma).to(x)[None, None]  # (1, 1, size, size)
        x = F.conv2d(x, kernel, padding=size // 2)
    return x.reshape(shape)


def enhance_features(features: Tensor, fmap: Tensor) -> Tensor:
    """Enhanced features f' = G(F^) * f (eq. 10). features: (N, D, h, w), fmap: (N, 1, h, w)."""
    return features * fmap


def max_normalise(x: Tensor, eps: float = 1e-5) -> Tensor:
    """relu(x) / (spatial max of relu(x) + eps), per channel. x: (N, C, h, w)."""
    x = F.relu(x)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)


def self_supervised_loss(plain: Tensor, enhanced: Tensor, labels: Tensor | None = None, lam: float = 10.0,
                         variant: LsVariant = "code") -> Tensor:
    """Self-supervised loss lambda * Ls (eq. 11, 13).

    ``variant="code"`` (default): ``plain`` and ``enhanced`` are class maps (N, C, h, w); both are
    relu'd, normalised per class by their spatial max (+1e-5), masked by ``labels`` (N, C), and
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
    a = max_normalise(plain.float()) * m  # float32: the +1e-5 survives mixed precision
    b = max_normalise(enhanced.float()) * m
    return lam * (a - b).pow(2).mean()


def multilabel_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss Lc (eq. 12), mean over classes and images.

    logits, labels: (N, C).
    """
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))


# =================================================================================================
# Modules
# =================================================================================================
class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local self-attention (Wang et al. 2018), as in the public RPNet code.

    theta, phi, g: 1x1 convs to ``inter`` channels (default ``channels // 2``); attention =
    softmax over positions of theta^T phi; output projection 1x1 conv + BatchNorm initialised to
    zero (the block starts as the identity); residual. ``sub_sample`` max-pools phi and g by 2.
    """

    def __init__(self, channels: int, inter_channels: int | None = None, sub_sample: bool = False) -> None:
        super().__init__()
        inter = inter_channels or max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        self.pool = nn.MaxPool2d(2) if sub_sample else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (N, hw, I)
        phi = self.pool(self.phi(x)).flatten(2)  # (N, I, h'w')
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # (N, h'w', I)
        attn = torch.softmax(theta @ phi, dim=-1)  # (N, hw, h'w')
        y = (attn @ g).transpose(1, 2).reshape(n, -1, h, w)  # (N, I, h, w)
        return x + self.out(y)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class RPNet(nn.Module):
    """The RPNet classifier (Fig. 2), as the public code builds it (see the spec).

    backbone (stage-2 output detached) -> f4 = 1x1 conv (no bias) of block 4 to ``mid`` channels.
    Plain branch: non-local block -> shared 1x1 classifier -> class maps; logits = their spatial
    mean. Prototype branch: confidence mask from f4 (eq. 3-4, 6), full and part prototypes from the
    feature ``levels`` (2, 3: the raw block outputs resized to f4's size; 4: f4) of every member of
    the group (eq. 5), foreground map (eq. 7-8), smoothed (eq. 9), enhanced features F * f4
    (eq. 10) -> second non-local block -> the shared classifier -> enhanced class maps, run at
    ``enhanced_scales`` (scales other than 1 without gradient) and averaged after ReLU.
    Losses (eq. 11-13, as coded): Lc on the plain logits of every member, lambda * Ls between
    the plain and the enhanced maps of every member; each summed over the k members (for k = 2:
    Lc(x) + Lc(y) + Ls(x) + Ls(y)).

    Args:
        backbone, pretrained, weights: see :func:`rpnet_pl.models.backbones.build_backbone`.
        num_classes: foreground classes (20 for VOC, 80 for COCO).
        mid: channels of f4 (512 in the code, 256 in the paper).
        alpha: confidence threshold (eq. 6 / spec step 2).
        beta: part-mask probability; dropped-position probability unless ``beta_is_keep_prob``.
        levels: feature levels compared (Table IV): a non-empty subset of (2, 3, 4).
        gaussian, sigma, gaussian_size, fg_scale: foreground-map smoothing (eq. 9, Table VI).
        self_attention: the code's non-local blocks (off = the paper's plain heads).
        attn_sub_sample: max-pool phi/g in the non-local blocks.
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
        attn_sub_sample: bool = False,
        enhanced_scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
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
        levels = tuple(int(v) for v in levels)
        if not levels or not set(levels) <= {2, 3, 4} or len(set(levels)) != len(levels):
            raise ConfigError(f"levels must be a non-empty subset of (2, 3, 4), got {levels}")
        scales = tuple(float(s) for s in enhanced_scales)
        if 1.0 not in scales:
            raise ConfigError(f"enhanced_scales must contain 1.0, got {scales}")
        if ls_variant not in ("code", "paper"):
            raise ConfigError(f"ls_variant must be 'code' or 'paper', got {ls_variant!r}")
        if not 1 <= group_size:
            raise ConfigError(f"group_size must be >= 1, got {group_size}")
        if not 0.0 <= beta <= 1.0:
            raise ConfigError(f"beta must be in [0, 1], got {beta}")
        self.levels = tuple(sorted(levels))
        self.alpha, self.beta, self.beta_is_keep_prob = alpha, beta, beta_is_keep_prob
        self.gaussian, self.sigma, self.gaussian_size, self.fg_scale = gaussian, sigma, gaussian_size, fg_scale
        self.enhanced_scales = scales
        self.lam, self.ls_variant, self.lc_on_enhanced = lam, ls_variant, lc_on_enhanced
        self.group_size = group_size
        self.num_classes = num_classes
        self.detach_level = 2 if freeze_early else None

        self.backbone = build_backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                                       freeze_stem=freeze_early, freeze_bn=freeze_early, dilated=dilated,
                                       freeze_bn_affine=freeze_bn_affine)
        if freeze_early:
            self.backbone.freeze_through(2)  # stages 1-2 sit behind the detach: no gradient reaches them
        self.down = nn.Conv2d(self.backbone.channels[4], mid, 1, bias=False)  # "down": block 4 -> mid
        self.attn_plain: nn.Module = NonLocalBlock(mid, mid // 2, attn_sub_sample) if self_attention else nn.Identity()
        self.attn_enhanced: nn.Module = (NonLocalBlock(mid, mid // 2, attn_sub_sample) if self_attention
                                         else nn.Identity())
        self.classifier = nn.Conv2d(mid, num_classes, 1, bias=False)

    # -- pieces ------------------------------------------------------------------------------
    def features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images (N, 3, H, W) -> f4 (N, mid, h, w) and the chosen levels, each resized to (h, w)."""
        feats = self.backbone(images, detach_level=self.detach_level)  # stage-2 output detached (IRN)
        f4 = self.down(feats[4])
        size = tuple(f4.shape[-2:])
        by_level = {2: feats[2], 3: feats[3], 4: f4}
        return f4, [_resize(by_level[lv], size) for lv in self.levels]

    def plain_cam(self, f4: Tensor) -> Tensor:
        """Plain class maps (N, C, h, w) from f4 (no ReLU)."""
        return self.classifier(self.attn_plain(f4))

    def enhanced_cam(self, f4: Tensor, fmap: Tensor) -> Tensor:
        """Enhanced class maps (N, C, h, w) from f4 and the smoothed foreground map (N, 1, h, w)."""
        return self.classifier(self.attn_enhanced(enhance_features(f4, fmap)))

    def foreground(self, f4: Tensor, levels: list[Tensor], k: int,
                   generator: torch.Generator | None = None) -> Tensor:
        """Smoothed foreground map (N, 1, h, w) of N = B*k images in group-major order (eq. 3-9)."""
        n, _, h, w = f4.shape
        b = n // k
        mask = confidence_mask(f4, self.alpha)  # (N, 1, h, w)
        # The public code thins the mask with functional dropout, which is on in eval mode too.
        part = part_mask(mask, self.beta, generator=generator, training=True,
                         beta_is_keep_prob=self.beta_is_keep_prob)
        masks = [mask.reshape(b, k, 1, h, w), part.reshape(b, k, 1, h, w)]
        fmap = foreground_map([lv.reshape(b, k, *lv.shape[1:]) for lv in levels], masks)  # (B, k, 1, h, w)
        fmap = smooth_foreground(fmap.reshape(n, 1, h, w), sigma=self.sigma, size=self.gaussian_size,
                                 scale=self.fg_scale, normalise=True, smooth=self.gaussian)
        return fmap

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
        f4, levels = self.features(x)  # (N, mid, h, w), [(N, D_l, h, w)]
        size = tuple(f4.shape[-2:])
        cams = self.plain_cam(f4)  # (N, C, h, w)
        logits = cams.mean(dim=(2, 3))  # GAP, (N, C)

        fmap = self.foreground(f4, levels, k, generator)  # (N, 1, h, w)
        enh1 = self.enhanced_cam(f4, fmap)  # (N, C, h, w), keeps its gradient
        enhanced = [F.relu(enh1)]
        hh, ww = x.shape[-2:]
        for s in self.enhanced_scales:
            if s == 1.0:
                continue
            with torch.no_grad():
                xs = F.interpolate(x, size=(max(1, round(hh * s)), max(1, round(ww * s))), mode="bilinear",
                                   align_corners=False)
                f4s, levels_s = self.features(xs)
                es = self.enhanced_cam(f4s, self.foreground(f4s, levels_s, k, generator))
                enhanced.append(F.relu(_resize(es, size)))
        enhanced_cams = torch.stack(enhanced).mean(dim=0)  # (N, C, h, w)

        out = {"logits": logits, "cams": cams, "enhanced_cams": enhanced_cams, "foreground": fmap}
        if y is None:
            return out
        # Sum over the k members of each member's batch-mean loss (k = 2: Lc(x) + Lc(y)).
        yk = y.reshape(b, k, -1)
        loss_cls = sum(multilabel_loss(logits.reshape(b, k, -1)[:, j], yk[:, j]) for j in range(k))
        if self.lc_on_enhanced:
            enh_logits = enh1.mean(dim=(2, 3)).reshape(b, k, -1)
            loss_cls = loss_cls + sum(multilabel_loss(enh_logits[:, j], yk[:, j]) for j in range(k))
        if self.ls_variant == "code":
            cams_k = cams.reshape(b, k, *cams.shape[1:])
            enh_k = enhanced_cams.reshape(b, k, *enhanced_cams.shape[1:])
            loss_ss = sum(self_supervised_loss(cams_k[:, j], enh_k[:, j], yk[:, j], self.lam) for j in range(k))
        else:
            ef = enhance_features(f4, fmap)
            f4_k, ef_k = f4.reshape(b, k, *f4.shape[1:]), ef.reshape(b, k, *ef.shape[1:])
            loss_ss = sum(self_supervised_loss(f4_k[:, j], ef_k[:, j], None, self.lam, "paper") for j in range(k))
        out.update(loss_cls=loss_cls, loss_ss=loss_ss, loss=loss_cls + loss_ss)
        return out

    def training_losses(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``forward`` with labels: the dict with ``loss``, ``loss_cls``, ``loss_ss`` and the maps."""
        return self.forward(images, labels)

    def cam(self, images: Tensor) -> Tensor:
        """CAM inference, plain branch only: relu(conv(features, classifier weight)).

        images (N, 3, H, W) -> (N, C, ceil(H/16), ceil(W/16)).
        """
        feats = self.backbone(images)
        f4 = self.down(feats[4])
        return F.relu(F.conv2d(self.attn_plain(f4), self.classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters) that require grad; new layers get 10x lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for name, p in self.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
        return backbone, new


__all__ = [
    "NonLocalBlock", "RPNet", "confidence_mask", "cosine_map", "enhance_features", "foreground_map",
    "gaussian_kernel", "group_prototypes", "max_normalise", "multilabel_loss", "part_mask", "region_prototypes",
    "self_supervised_loss", "smooth_foreground",
]
