"""Stage 1: the RPNet classifier (or the IRN CAM baseline) and its CAM seeds.

Training: L = Lc + lambda * Ls (eq. 11-13, as the public code does it; see the spec). The CAM seeds
are the ``cam`` step's (:mod:`rpnet_pl.steps.cam`), from the trained network's plain branch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from rpnet_pl.data.classes import class_names
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models.reference_weights import detect_kind, infer_backbone, read_state_dict
from rpnet_pl.stages.common import StageModule
from rpnet_pl.stages.visuals import (denormalise, eval_mode, log_images, overlay_cam, resize_map,
                                    unit)


class ClassifierStage(StageModule):
    """Trains its network on image groups: :class:`~rpnet_pl.models.rpnet.RPNet` (the paper) or
    :class:`~rpnet_pl.models.cam_net.CAMNet` (the IRN baseline), which it is given (in YAML, the
    ``net`` entry's ``class_path`` and ``init_args``; an experiment's ``method`` chooses,
    :mod:`rpnet_pl.pipeline.networks`). Its own arguments are the optimiser's, the logging's and the
    seed monitor's. Defaults are the spec's (the public code's) choices.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 0.02,
        new_layer_lr_mult: float = 10.0,
        weight_decay: float = 1e-4,
        momentum: float = 1e-4,
        poly_power: float = 0.9,
        checkpoint_every_n_steps: int | None = None,
        progress_every_n_steps: int | None = None,
        image_log_every_n_steps: int = 200,
        channels_last: bool = False,
        seed_monitor_images: int = 0,
        seed_monitor_split: str = "train",
        seed_monitor_threshold: float = 0.25,
        log_grad_norms: bool = False,
    ) -> None:
        super().__init__()
        self.model = net
        self.save_network_and_hyperparameters(net)

    # -- training ----------------------------------------------------------------------------
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The network's losses on a batch of groups: ``images`` (B, k, 3, H, W), ``labels`` (B, k, C)."""
        return self.model.training_losses(batch["images"], batch["labels"])

    def log_samples(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
        """First image of the batch, the plain CAM of its first class and (RPNet) its foreground map."""
        images = batch["images"].reshape(-1, *batch["images"].shape[-3:])  # group-major, like the model
        labels = batch["labels"].reshape(images.shape[0], -1)
        size = tuple(images.shape[-2:])
        image = denormalise(images[0])
        classes = torch.nonzero(labels[0] > 0.5).flatten()
        c = int(classes[0]) if len(classes) else 0
        cams = out.get("cams")
        if cams is None:  # the CAM baseline returns logits only: one extra CAM pass, BatchNorm untouched
            with eval_mode(self.model):
                cams = self.model.cam(images[:1])
        tiles = [image, overlay_cam(image, unit(resize_map(cams[0, c], size)))]
        captions = ["image", f"CAM {class_names(self.model.num_classes + 1)[c + 1]}"]
        if "foreground" in out:
            fg = np.clip(resize_map(out["foreground"][0, 0], size), 0.0, 1.0)
            tiles.append(overlay_cam(image, fg))
            captions.append("foreground")
        log_images(self.loggers, "train/samples", tiles, self.global_step, captions)

    def optimizer_groups(self) -> list[tuple[Any, float]]:
        """The backbone at ``lr``, the new layers at ``lr * new_layer_lr_mult``."""
        backbone_params, new_params = self.model.param_groups()
        return [(backbone_params, self.hparams.lr), (new_params, self.hparams.lr * self.hparams.new_layer_lr_mult)]

    def configure_callbacks(self) -> list[pl.Callback]:
        callbacks = super().configure_callbacks()
        if self.hparams.get("seed_monitor_images", 0):
            from rpnet_pl.stages.seed_monitor import SeedMonitor

            callbacks.append(SeedMonitor(self.hparams.seed_monitor_images, self.hparams.get("seed_monitor_split", "train"),
                                         self.hparams.get("seed_monitor_threshold", 0.25)))
        return callbacks


def reference_classifier_args(ckpt: str | Path, backbone: str | None = None) -> dict[str, Any]:
    """The flat ``model`` section of a checkpoint of the public code (method, backbone, sizes), for
    :func:`~rpnet_pl.stages.checkpoints.build_stage`."""
    state = read_state_dict(ckpt)
    kind = detect_kind(list(state))
    if kind == "irn":
        raise ConfigError(f"{ckpt}: an IRN boundary-network checkpoint, not a classifier (use it with the refine stage)")
    names = {k.removeprefix("module."): v for k, v in state.items()}
    args: dict[str, Any] = {"method": "rpnet" if kind == "rpnet" else "cam", "pretrained": False, "weights": str(ckpt),
                            "backbone": backbone or infer_backbone(state)}
    if kind == "rpnet":
        args.update(mid=int(names["downsample.weight"].shape[0]), num_classes=int(names["classifierx.weight"].shape[0]),
                    separate_reference_heads="classifiery.weight" in names)
    else:
        args["num_classes"] = int(names["classifier.weight"].shape[0])
    return args

