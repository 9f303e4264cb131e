"""Plain nn.Modules: backbones, RPNet, the IRN CAM baseline, IRN, DeepLab (no Lightning, no I/O)."""
from rpnet_pl.models.backbones import BACKBONES, Backbone, build_backbone
from rpnet_pl.models.cam_net import CAMNet
from rpnet_pl.models.deeplab import DeepLab, DeepLabNet, build_deeplab
from rpnet_pl.models.irn import IRNet, displacement_losses
from rpnet_pl.models.rpnet import RPNet

__all__ = ["BACKBONES", "Backbone", "build_backbone", "CAMNet", "RPNet", "DeepLab", "DeepLabNet", "build_deeplab", "IRNet",
           "displacement_losses"]
