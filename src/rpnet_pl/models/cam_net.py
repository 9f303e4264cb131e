"""The IRN CAM baseline (IRN's ``net/resnet50_cam.py``).

:class:`CAMNet` has RPNet's interface (``forward``, ``training_losses``, ``cam``,
``param_groups``), so one LightningModule trains either (``method: rpnet | cam`` chooses,
:mod:`rpnet_pl.pipeline.networks`).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from rpnet_pl.utils.init_args import init_args
from rpnet_pl.models.backbones import build_backbone
from rpnet_pl.models.reference_weights import is_reference_checkpoint, load_reference_checkpoint
from rpnet_pl.models.rpnet import multilabel_loss, timed_scope


class CAMNet(nn.Module):
    """CAM classifier (eq. 1-2): backbone (stage-2 output detached), global average pooling, a 1x1
    convolution without bias ``channels[4] -> num_classes``; loss Lc (eq. 12) only.

    Args:
        backbone, pretrained, weights, output_stride, dilated, freeze_bn_affine: see
            :func:`rpnet_pl.models.backbones.build_backbone`; ``weights`` may also be IRN's own CAM
            checkpoint (whole model, :mod:`rpnet_pl.models.reference_weights`) (IRN: ResNet-50, OS 16 without
            dilation, BatchNorm statistics frozen, affine parameters trained).
        freeze_early: see :class:`rpnet_pl.models.rpnet.RPNet`.
        num_classes: foreground classes (20 for VOC).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        pretrained: bool = False,
        weights: str | None = None,
        num_classes: int = 20,
        output_stride: int = 16,
        dilated: bool = False,
        freeze_bn_affine: bool = False,
        freeze_early: bool = True,
    ) -> None:
        super().__init__()
        self.init_args = init_args(locals())
        self.num_classes = num_classes
        self.detach_level = 2 if freeze_early else None
        whole_model = weights is not None and is_reference_checkpoint(weights)  # IRN's own res50_cam.pth
        self.backbone = build_backbone(backbone, pretrained=pretrained and not whole_model,
                                       weights=None if whole_model else weights, output_stride=output_stride,
                                       freeze_stem=freeze_early, freeze_bn=freeze_early, dilated=dilated,
                                       freeze_bn_affine=freeze_bn_affine)
        if freeze_early:
            self.backbone.freeze_through(2)  # stages 1-2 sit behind the detach: no gradient reaches them
        self.classifier = nn.Conv2d(self.backbone.channels[4], num_classes, 1, bias=False)
        if whole_model:
            load_reference_checkpoint(self, weights, kind="cam")

    @staticmethod
    def _flat(images: Tensor) -> Tensor:
        if images.dim() == 5:  # (B, k, 3, H, W) groups from the group sampler -> (B*k, 3, H, W)
            return images.reshape(-1, *images.shape[-3:])
        if images.dim() != 4:
            raise ValueError(f"expected images (N, 3, H, W) or (B, k, 3, H, W), got {tuple(images.shape)}")
        return images

    def forward(self, images: Tensor) -> Tensor:
        """images (N, 3, H, W) or (B, k, 3, H, W) -> logits (N, C), N = B*k (group-major)."""
        with timed_scope("cam/backbone", getattr(self, "sync_scopes", False)):
            x = self.backbone(self._flat(images), detach_level=self.detach_level, stem=False)[4]  # (N, D, h, w), stage 2 detached
        with timed_scope("cam/head", getattr(self, "sync_scopes", False)):
            return self.classifier(x.mean(dim=(2, 3), keepdim=True)).flatten(1)  # GAP -> 1x1 conv

    def training_losses(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Lc averaged over every image of the batch (groups are flattened). labels: (N, C) or (B, k, C)."""
        logits = self.forward(images)
        loss = multilabel_loss(logits, labels.reshape(logits.shape[0], -1))
        return {"logits": logits, "loss_cls": loss, "loss": loss}

    def cam(self, images: Tensor) -> Tensor:
        """relu(conv(features, classifier weight)): (N, 3, H, W) -> (N, C, ceil(H/16), ceil(W/16))."""
        x = self.backbone(images, stem=False)[4]
        return F.relu(F.conv2d(x, self.classifier.weight))

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, new-layer parameters) that require grad; new layers get 10x lr."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        new = [p for p in self.classifier.parameters() if p.requires_grad]
        return backbone, new


__all__ = ["CAMNet"]
