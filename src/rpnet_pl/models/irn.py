"""IRNet: class-boundary and displacement branches on a frozen backbone (spec "Stage 2: IRN";
Ahn, Cho & Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations", CVPR 2019, the paper's boundary refinement [4]).

Architecture (IRN's ``net/resnet50_irn.py``, channel counts read from ``backbone.channels``):

* Backbone: ResNet-50 with strides (2, 2, 2, 1) and no dilation (``output_stride=16,
  dilated=False``), *entirely* frozen: every level is detached, no backbone parameter requires
  grad, and the backbone stays in eval mode whatever ``train()`` says.
* Edge branch: per level ``i`` a 1x1 conv (no bias) ``channels[i] -> 32``, GroupNorm(4, 32),
  bilinear upsampling by ``strides[i] / strides[0]`` (``align_corners=False``), ReLU; each
  map is cropped to the stride-4 size, the five are concatenated (5 * 32 = 160) and a 1x1
  conv with bias gives one logit channel.
* Displacement branch: 1x1 convs (no bias) to 64 / 128 / 256 / 256 / 256 channels with
  GroupNorm(8) for 64 and GroupNorm(16) otherwise, ReLU; levels 4-5 are upsampled to level 3's
  stride (8) and cropped; levels 3-5 are fused (768 -> 256, GN 16), upsampled to stride 4 and
  cropped; fused with levels 1-2 (448 -> 256, GN 16, ReLU), then a 1x1 conv (no bias) to two
  channels ``(dy, dx)`` in stride-4 pixels, then the mean shift (:class:`MeanShift`).
* ``self_attention`` (RPNet's copy of IRN; off in IRN's own): a non-local block
  (:class:`~rpnet_pl.models.rpnet.NonLocalBlock`, dot-product attention divided by N, zero-initialised
  conv + BatchNorm projection, residual) on each of the detached levels 3, 4 and 5 before both
  branches. Its BatchNorm follows ``train()`` (batch statistics in training, running ones in eval:
  RPNet's IRN ``Net.train()`` calls ``super().train(mode)``), so the blocks use ``norm="running"``.

The affinity (edge) losses are in :mod:`rpnet_pl.ops.affinity`; this module holds the
displacement losses (:func:`pair_displacement`, :func:`displacement_losses`), which follow
IRN's ``AffinityDisplacementLoss`` and ``step/train_irn.py`` exactly (not an approximation).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rpnet_pl.utils.init_args import init_args
from rpnet_pl.data.classes import IGNORE_INDEX
from rpnet_pl.models.backbones import Backbone, build_backbone
from rpnet_pl.models.reference_weights import is_reference_checkpoint, load_reference_checkpoint
from rpnet_pl.models.rpnet import NonLocalBlock
from rpnet_pl.ops.affinity import affinity_labels
from rpnet_pl.ops.params import RANDOM_WALK
from rpnet_pl.ops.path_index import search_directions, source_window

#: Denominator guard of IRN's displacement losses (``2 * sum(label) + 1e-5``).
DISPLACEMENT_EPS = 1e-5
#: Output channels of the displacement branch's five level-wise 1x1 convs (IRN).
DP_CHANNELS = (64, 128, 256, 256, 256)
#: Channels of the displacement branch's two fusion convs (IRN ``fc_dp6``, ``fc_dp7``).
DP_FUSED = 256
#: Backbone levels (1-based) that RPNet's copy of IRN passes through a non-local block (``self_atten3..5``).
ATTENTION_LEVELS = (3, 4, 5)
#: Channels of each edge-branch level (IRN ``fc_edge1..5``).
EDGE_CHANNELS = 32
#: IRN's ``EdgeDisplacement(crop_size=512)``: inference images are zero-padded to this size.
IRN_INFER_PAD = RANDOM_WALK.pad_to


def _groups(channels: int) -> int:
    """GroupNorm groups of the displacement branch: 8 for 64 channels, 16 otherwise (IRN)."""
    return 8 if channels <= 64 else 16


def _crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop (.., h, w) to its top-left ``size`` (IRN's ``[..., :h, :w]``); a map smaller than
    ``size`` (a backbone whose stride-s map is not ``ceil(H / s)``) is bilinearly resized."""
    h, w = size
    if x.shape[-2] >= h and x.shape[-1] >= w:
        return x[..., :h, :w]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _level_block(c_in: int, c_out: int, groups: int, scale: int) -> nn.Sequential:
    """1x1 conv (no bias) -> GroupNorm -> [bilinear x scale] -> ReLU (IRN's order: upsample
    before the ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.GroupNorm(groups, c_out)]
    if scale > 1:
        layers.append(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.Module):
    """IRN's running-mean shift at the end of the displacement branch (``Net.MeanShift``).

    BatchNorm bookkeeping without normalising: in training mode the input is returned unchanged
    while ``running_mean`` follows the batch mean (exponential average, ``momentum``, as a
    ``BatchNorm2d`` without affine parameters updates it); in eval mode the output is
    ``input - running_mean``. This is the IRN code as first published; IRN's final
    ``train_irn.py`` instead overwrites ``running_mean`` after training with the mean raw
    displacement over the training images (see :meth:`IRNet.displacement_mean` and
    :meth:`IRNet.set_mean_shift`). Only the displacement output depends on it; the boundary
    map (and so the semantic pseudo masks) never does.

    Not a ``BatchNorm2d`` subclass (its buffers and their names are a BatchNorm's, so checkpoints
    load either way): ``trainer.sync_batchnorm`` converts every BatchNorm into a normalising
    ``SyncBatchNorm``, which would change the displacement output.
    """

    def __init__(self, num_features: int = 2, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Module's name
        """(B, C, h, w) -> (B, C, h, w): identity in training (statistics updated, no gradient
        through them), ``input - running_mean`` in eval."""
        if self.training:
            with torch.no_grad():
                F.batch_norm(input.detach().float(), self.running_mean, self.running_var, training=True,
                             momentum=self.momentum)
                self.num_batches_tracked.add_(1)
            return input
        return input - self.running_mean.view(1, -1, 1, 1).to(input.dtype)


class IRNet(nn.Module):
    """IRN's class-boundary and displacement network on a frozen backbone (spec "Stage 2: IRN").

    Args:
        backbone: a backbone name for :func:`build_backbone` or a built :class:`Backbone`
            (frozen here in either case).
        pretrained, weights, output_stride, dilated: passed to :func:`build_backbone` when
            ``backbone`` is a name. IRN: ResNet-50, output stride 16, no dilation.
        mean_shift_momentum: momentum of :class:`MeanShift`'s running mean.
        self_attention: a non-local block on each of the levels :data:`ATTENTION_LEVELS` before both
            branches (RPNet's copy of IRN); off: IRN's own network.
    """

    def __init__(
        self,
        backbone: str | Backbone = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        output_stride: int = 16,
        dilated: bool = False,
        mean_shift_momentum: float = 0.1,
        self_attention: bool = False,
    ) -> None:
        super().__init__()
        self.init_args = init_args(locals())
        whole_model = weights is not None and is_reference_checkpoint(weights)  # IRN's own res50_irn.pth
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained and not whole_model,
                                      weights=None if whole_model else weights, output_stride=output_stride,
                                      freeze_stem=True, freeze_bn=True, dilated=dilated)
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        ch, st = list(backbone.channels), list(backbone.strides)
        if len(ch) != 5 or len(st) != 5:
            raise ValueError(f"IRNet needs five backbone levels, got channels {ch}, strides {st}")
        if st[1] != st[0] or st[3] % st[2] or st[4] % st[2] or st[2] % st[0]:
            raise ValueError(f"IRNet expects strides like [4, 4, 8, 16, 16], got {st}")
        self.stride = st[0]  # output stride of both branches (4)

        # RPNet's non-local blocks (self_atten3..5), keyed by level; empty in IRN's own network
        self.attention = nn.ModuleDict(
            {str(level): NonLocalBlock(ch[level - 1], norm="running") for level in ATTENTION_LEVELS}
            if self_attention else {})

        # edge branch (IRN fc_edge1..6)
        self.edge_levels = nn.ModuleList(
            _level_block(c, EDGE_CHANNELS, 4, s // st[0]) for c, s in zip(ch, st))
        self.edge_out = nn.Conv2d(5 * EDGE_CHANNELS, 1, 1, bias=True)

        # displacement branch (IRN fc_dp1..7)
        self.dp_levels = nn.ModuleList([
            _level_block(ch[0], DP_CHANNELS[0], _groups(DP_CHANNELS[0]), 1),
            _level_block(ch[1], DP_CHANNELS[1], _groups(DP_CHANNELS[1]), 1),
            _level_block(ch[2], DP_CHANNELS[2], _groups(DP_CHANNELS[2]), 1),
            _level_block(ch[3], DP_CHANNELS[3], _groups(DP_CHANNELS[3]), st[3] // st[2]),
            _level_block(ch[4], DP_CHANNELS[4], _groups(DP_CHANNELS[4]), st[4] // st[2]),
        ])
        self.dp_fuse_deep = _level_block(sum(DP_CHANNELS[2:]), DP_FUSED, _groups(DP_FUSED), st[2] // st[0])
        self.mean_shift = MeanShift(2, momentum=mean_shift_momentum)
        self.dp_out = nn.Sequential(
            nn.Conv2d(DP_CHANNELS[0] + DP_CHANNELS[1] + DP_FUSED, DP_FUSED, 1, bias=False),
            nn.GroupNorm(_groups(DP_FUSED), DP_FUSED),
            nn.ReLU(inplace=True),
            nn.Conv2d(DP_FUSED, 2, 1, bias=False),
        )
        if whole_model:
            load_reference_checkpoint(self, weights, kind="irn")
        self.train(self.training)

    # -- nn.Module -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "IRNet":
        """Set the mode of the branches; the backbone always stays in eval mode (IRN)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """images (B, 3, H, W) -> ``edge_logits`` (B, 1, h4, w4) and ``displacement``
        (B, 2, h4, w4), ``(h4, w4)`` the stride-4 level's size (``ceil(H / 4)`` for ResNets).

        ``displacement[:, 0]`` is dy, ``[:, 1]`` dx, in stride-4 pixels, after the mean shift
        (identity in training mode, running mean subtracted in eval mode).
        """
        edge_logits, raw = self._branches(images)
        return {"edge_logits": edge_logits, "displacement": self.mean_shift(raw)}

    def _branches(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) -> (edge logits (B, 1, h4, w4), raw displacement (B, 2, h4, w4))."""
        with torch.no_grad():
            feats = [f.detach() for f in self.backbone(images)]  # 5 x (B, C_i, H/s_i, W/s_i)
        for level, block in self.attention.items():  # RPNet: self_atten3..5 on the detached levels
            feats[int(level) - 1] = block(feats[int(level) - 1])
        size4 = tuple(feats[1].shape[-2:])  # stride-4 map (h4, w4)
        size8 = tuple(feats[2].shape[-2:])  # stride-8 map (h8, w8)

        edges = [_crop_to(block(f), size4) for block, f in zip(self.edge_levels, feats)]  # 5 x (B, 32, h4, w4)
        edge_logits = self.edge_out(torch.cat(edges, dim=1))  # (B, 1, h4, w4)

        dp1 = self.dp_levels[0](feats[0])  # (B, 64, h4, w4)
        dp2 = self.dp_levels[1](feats[1])  # (B, 128, h4, w4)
        dp3 = self.dp_levels[2](feats[2])  # (B, 256, h8, w8)
        dp4 = _crop_to(self.dp_levels[3](feats[3]), size8)  # (B, 256, h8, w8)
        dp5 = _crop_to(self.dp_levels[4](feats[4]), size8)  # (B, 256, h8, w8)
        deep = _crop_to(self.dp_fuse_deep(torch.cat([dp3, dp4, dp5], dim=1)), size4)  # (B, 256, h4, w4)
        raw = self.dp_out(torch.cat([dp1, dp2, deep], dim=1))  # (B, 2, h4, w4)
        return edge_logits, raw

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def edge_displacement(self, image: Tensor, pad_to: int | None = IRN_INFER_PAD) -> tuple[Tensor, Tensor]:
        """IRN's ``EdgeDisplacement``: the flip-averaged boundary map and the displacement field.

        image: (3, H, W) or (1, 3, H, W), normalised. The image and its horizontal flip are
        zero-padded on the right and bottom to ``pad_to`` (IRN's ``crop_size`` 512; ``None``
        or a smaller value than the image: no padding), run as one batch, and the outputs cut
        to ``((H - 1) // 4 + 1, (W - 1) // 4 + 1)``. Returns ``boundary`` (h4, w4) =
        ``sigmoid(logit(image) / 2 + flip(logit(flip(image))) / 2)`` and ``displacement``
        (2, h4, w4) of the unflipped image (mean-shifted when the model is in eval mode).
        """
        if image.dim() == 4:
            if image.shape[0] != 1:
                raise ValueError(f"edge_displacement takes one image, got a batch of {image.shape[0]}")
            image = image[0]
        if image.dim() != 3:
            raise ValueError(f"expected an image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        h4, w4 = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
        x = torch.stack([image, image.flip(-1)])  # (2, 3, H, W): the flip before the padding (IRN)
        if pad_to is not None:
            x = F.pad(x, [0, max(pad_to - w, 0), 0, max(pad_to - h, 0)])
        out = self.forward(x)
        logits = out["edge_logits"][:, 0, :h4, :w4]  # (2, h4, w4)
        boundary = torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2)  # (h4, w4)
        return boundary, out["displacement"][0, :, :h4, :w4]

    def boundary(self, image: Tensor, pad_to: int | None = IRN_INFER_PAD) -> Tensor:
        """(3, H, W) or (1, 3, H, W) -> boundary probability (h4, w4), averaged over the image
        and its flip (see :meth:`edge_displacement`; spec "Pseudo masks")."""
        return self.edge_displacement(image, pad_to=pad_to)[0]

    # -- mean shift ----------------------------------------------------------------------------
    @torch.no_grad()
    def displacement_mean(self, images: Tensor) -> Tensor:
        """Mean raw (unshifted) displacement (2,) over a batch (B, 3, H, W), as IRN's final
        ``train_irn.py`` averages it per batch over the training images (crop 512, top-left)
        before :meth:`set_mean_shift`. Does not change any state (the mean shift is bypassed)."""
        return self._branches(images)[1].mean(dim=(0, 2, 3))

    @torch.no_grad()
    def set_mean_shift(self, mean: Tensor | Iterable[float]) -> None:
        """Overwrite the mean shift's running mean (2,) (IRN's final recipe: the mean of
        :meth:`displacement_mean` over the training batches)."""
        mean = torch.as_tensor(mean, dtype=self.mean_shift.running_mean.dtype)
        self.mean_shift.running_mean.copy_(mean.to(self.mean_shift.running_mean.device))

    # -- optimisation ---------------------------------------------------------------------------
    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """(edge-branch, displacement-branch, non-local block parameters), the reference's
        ``trainable_parameters()``: its ``train_irn.py`` gives the edge group ``lr``, the displacement
        group ``10 * lr`` and (RPNet's copy) the blocks ``2 * lr``. The third list is empty without
        ``self_attention``."""
        edge = [p for m in (self.edge_levels, self.edge_out) for p in m.parameters()]
        dp = [p for m in (self.dp_levels, self.dp_fuse_deep, self.dp_out) for p in m.parameters()]
        return edge, dp, list(self.attention.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter (edge branch, displacement branch, non-local blocks); the
        backbone has none."""
        return [p for group in self.param_groups() for p in group]


# -- displacement losses (IRN AffinityDisplacementLoss + train_irn.py) ----------------------------
def displacement_target(radius: int, device: torch.device | str | None = None) -> Tensor:
    """(2, D) float: the search directions ``(dy, dx)`` of ``radius``, in
    :func:`rpnet_pl.ops.path_index.search_directions` order (IRN's ``disp_target``)."""
    return torch.as_tensor(np.ascontiguousarray(search_directions(radius).T), dtype=torch.float32, device=device)


def pair_displacement(displacement: Tensor, radius: int) -> Tensor:
    """IRN's ``to_pair_displacement``: ``disp(src) - disp(dst)`` for every source and direction.

    displacement: (B, 2, H, W). Returns (B, 2, D, H', W') laid out like
    :func:`rpnet_pl.ops.affinity.affinity_labels` (sources: rows ``[0, H')``, columns
    ``[radius - 1, radius - 1 + W')``; destination = source + ``search_directions(radius)[d]``).
    """
    h, w = displacement.shape[-2:]
    hp, wp, x0 = source_window(h, w, radius)
    src = displacement[..., :hp, x0:x0 + wp]  # (B, 2, H', W')
    dst = torch.stack([displacement[..., dy:dy + hp, x0 + dx:x0 + dx + wp]
                       for dy, dx in search_directions(radius).tolist()], dim=-3)  # (B, 2, D, H', W')
    return src.unsqueeze(-3) - dst


def _masked_pair_mean(values: Tensor, mask: Tensor) -> Tensor:
    """``sum(values * mask) / (2 * sum(mask) + eps)``: values (B, 2, D, H', W'), mask
    (B, D, H', W'); the mean over the masked pairs and both channels (IRN's normalisation)."""
    m = mask.to(values.dtype).unsqueeze(1)  # (B, 1, D, H', W')
    return (values * m).sum() / (2 * m.sum() + DISPLACEMENT_EPS)


def displacement_fg_loss(pair_disp: Tensor, pos_fg: Tensor, radius: int) -> Tensor:
    """Foreground displacement loss: mean over positive foreground pairs ``(p, q = p + delta)``
    and both channels of ``|disp(p) - disp(q) - delta|``.

    It is zero exactly when every pixel of a same-class region points to one common point
    (``p + disp(p) = c``, the instance centroid at convergence). pair_disp (B, 2, D, H', W')
    from :func:`pair_displacement`; pos_fg (B, D, H', W') bool from ``affinity_labels``.
    """
    target = displacement_target(radius, pair_disp.device).to(pair_disp.dtype)  # (2, D)
    diff = (pair_disp - target.view(2, -1, 1, 1)).abs()  # (B, 2, D, H', W')
    return _masked_pair_mean(diff, pos_fg)


def displacement_bg_loss(pair_disp: Tensor, pos_bg: Tensor) -> Tensor:
    """Background displacement loss: mean over positive background pairs and both channels of
    ``|disp(p) - disp(q)|``: background displacements should be uniform (the mean shift then
    removes their common value at eval). pair_disp (B, 2, D, H', W'), pos_bg (B, D, H', W')."""
    return _masked_pair_mean(pair_disp.abs(), pos_bg)


def displacement_losses(
    displacement: Tensor,
    label: Tensor,
    radius: int,
    ignore_index: int = IGNORE_INDEX,
    pairs: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """IRN's displacement losses ``(fg, bg)`` from a stride-4 IR label map (spec "Stage 2").

    displacement: (B, 2, H, W) raw branch output (training mode); label: (B, H, W) integer IR
    labels at the same size (0 background, ``ignore_index`` unsure). The pairs are those of
    the affinity loss (``affinity_labels(label, radius)``: positive fg = same foreground
    class, positive bg = both background; IRN trains with radius 10). The objective adds
    ``(fg + bg) / 2``. ``pairs = (pos_bg, pos_fg)``: those masks when the caller has them already
    (the affinity loss computes them), so they are not computed twice.
    """
    if displacement.dim() != 4 or displacement.shape[1] != 2:
        raise ValueError(f"displacement must be (B, 2, H, W), got {tuple(displacement.shape)}")
    if tuple(label.shape) != (displacement.shape[0], *displacement.shape[-2:]):
        raise ValueError(f"label {tuple(label.shape)} does not match displacement {tuple(displacement.shape)}")
    if pairs is None:
        pos_bg, pos_fg, _ = affinity_labels(label, radius, ignore_index=ignore_index)  # (B, D, H', W') each
    else:
        pos_bg, pos_fg = pairs
    pair = pair_displacement(displacement, radius)  # (B, 2, D, H', W')
    return displacement_fg_loss(pair, pos_fg.to(pair.device), radius), displacement_bg_loss(pair, pos_bg.to(pair.device))


__all__ = [
    "ATTENTION_LEVELS", "IRN_INFER_PAD", "IRNet", "MeanShift", "displacement_bg_loss", "displacement_fg_loss",
    "displacement_losses",
    "displacement_target", "pair_displacement",
]
