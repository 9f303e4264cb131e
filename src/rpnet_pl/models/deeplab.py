"""DeepLab segmenters on a five-level backbone (spec "Stage 3: DeepLab"): :class:`DeepLabNet`, with
one of two heads.

* ``largefov`` (:class:`LargeFOVHead`): the paper's choice (RPNet Sec. IV-B: "DeepLab-LargeFOV with a
  ResNet-50 backbone"). The head is DeepLab-LargeFOV's (Chen et al., "Semantic Image
  Segmentation with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015, Table 2:
  ``fc6`` a 3x3 convolution with dilation ("input stride") 12 and 1024 channels, ``fc7`` a 1x1
  convolution with 1024 channels, each followed by ReLU and dropout 0.5, ``fc8`` a 1x1
  convolution to the classes), put on the backbone's last level instead of VGG-16's pool5.
* ``aspp`` (:class:`ASPPHead`): DeepLab v2's ASPP-L head (Chen et al., "DeepLab: Semantic Image
  Segmentation with Deep Convolutional Nets, Atrous Convolution, and Fully Connected CRFs",
  TPAMI 2018, Fig. 4 and the ResNet-101 model): four parallel 3x3 convolutions with dilations
  6, 12, 18, 24, each straight to the classes, summed.

Both run on :func:`build_backbone` with ``output_stride`` 8 or 16, dilated last stage(s), the
stem convolution training (as in kazuto1011/deeplab-pytorch; ``freeze_stem`` freezes it) and every
BatchNorm frozen (statistics and affine parameters, as DeepLab v2 fine-tunes its Caffe ResNet). ``forward`` returns logits at the backbone's output stride; ``segment``
upsamples them (bilinear) to the input size; ``param_groups`` splits the trainable parameters for
the head's learning rates. Initialisation: the class layers ``N(0, 0.01)`` with zero bias
(DeepLab's ``fc8`` / ASPP); LargeFOV's ``fc6``/``fc7`` (ImageNet-initialised from VGG's fully
connected layers in the original, which a ResNet has no counterpart for) Kaiming-normal with zero
bias.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.init_args import init_args
from rpnet_pl.models.backbones import Backbone, build_backbone

#: DeepLab-LargeFOV's fc6 dilation and fc6/fc7 width.
LARGEFOV_DILATION = 12
LARGEFOV_CHANNELS = 1024
#: DeepLab v2 ASPP-L dilations.
ASPP_DILATIONS = (6, 12, 18, 24)


def _init_classifier(conv: nn.Conv2d) -> None:
    """DeepLab's class layers: weights ``N(0, 0.01)``, bias 0."""
    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class DeepLab(nn.Module):
    """A backbone and a head on its last level; the common interface of the DeepLab variants.

    Subclasses set ``self.head``: a module mapping the last level (B, channels[-1], h, w) to
    logits (B, num_classes, h, w).
    """

    head: nn.Module

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes

    @property
    def output_stride(self) -> int:
        """Stride of the logits: the backbone's last level (8 or 16)."""
        return int(self.backbone.strides[-1])

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> logits (B, num_classes, ceil(H / os), ceil(W / os))."""
        return self.head(self.backbone(images)[-1])

    def segment(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) -> logits (B, num_classes, H, W), bilinearly upsampled
        (``align_corners=False``)."""
        logits = self.forward(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, head parameters) that require grad: disjoint, and together every
        trainable parameter; the head gets 10x the learning rate (spec "Stage 3")."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return backbone, head


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV's fc6-fc8: conv3x3 (dilation 12) -> ReLU -> dropout -> conv1x1 -> ReLU ->
    dropout -> conv1x1 to the classes. Keeps the spatial size."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = LARGEFOV_CHANNELS,
                 dilation: int = LARGEFOV_DILATION, dropout: float = 0.5) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)
        self.drop6 = nn.Dropout(dropout)
        self.drop7 = nn.Dropout(dropout)
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        _init_classifier(self.fc8)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, h, w) -> (B, num_classes, h, w)."""
        x = self.drop6(F.relu(self.fc6(x)))  # (B, 1024, h, w)
        x = self.drop7(F.relu(self.fc7(x)))  # (B, 1024, h, w)
        return self.fc8(x)


class ASPPHead(nn.Module):
    """DeepLab v2 ASPP: parallel 3x3 convolutions (dilations 6, 12, 18, 24, with bias), each
    ``in_channels -> num_classes``, summed. Keeps the spatial size."""

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = ASPP_DILATIONS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d) for d in dilations)
        for conv in self.branches:
            _init_classifier(conv)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_channels, h, w) -> (B, num_classes, h, w): the sum of the branches."""
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class DeepLabNet(DeepLab):
    """The segmenter's network from plain arguments (what a config names): ``head`` ``largefov`` (the
    paper's, :class:`LargeFOVHead`) or ``aspp`` (DeepLab v2, :class:`ASPPHead`) on
    ``build_backbone(backbone, pretrained, weights, output_stride, freeze_stem, freeze_bn=True)``
    (dilated, BatchNorm statistics and affine parameters frozen; the stem convolution trains unless
    ``freeze_stem``: kazuto1011/deeplab-pytorch trains it, its ``get_params("1x")`` takes ``layer1.conv1``).

    Args:
        head: ``largefov`` | ``aspp``.
        backbone: a name of :data:`rpnet_pl.models.backbones.BACKBONES`.
        num_classes: classes including background.
        output_stride: 8 (DeepLab's) or 16.
        pretrained, weights: ImageNet weights through timm, or a local file (see
            :func:`build_backbone`).
    """

    def __init__(
        self,
        head: Literal["largefov", "aspp"] = "largefov",
        backbone: str = "resnet50",
        num_classes: int = 21,
        output_stride: int = 8,
        pretrained: bool = False,
        weights: str | None = None,
        freeze_stem: bool = False,
    ) -> None:
        args = init_args(locals())
        if head not in ("largefov", "aspp"):
            raise ConfigError(f"unknown DeepLab head {head!r} (largefov | aspp)")
        if output_stride not in (8, 16):
            raise ConfigError(f"DeepLab output_stride must be 8 or 16, got {output_stride}")
        body = build_backbone(backbone, pretrained=pretrained, weights=weights, output_stride=output_stride,
                              freeze_stem=freeze_stem, freeze_bn=True)
        super().__init__(body, num_classes)
        self.init_args = args
        # the paper's DeepLab-LargeFOV (Chen et al. ICLR 2015) or DeepLab v2 with ASPP-L (TPAMI 2018)
        self.head = (LargeFOVHead(body.channels[-1], num_classes) if head == "largefov"
                     else ASPPHead(body.channels[-1], num_classes))


#: The segmenter's network by its arguments (one implementation: :class:`DeepLabNet`).
build_deeplab = DeepLabNet


__all__ = ["ASPPHead", "ASPP_DILATIONS", "DeepLab", "DeepLabNet", "LargeFOVHead", "build_deeplab"]
