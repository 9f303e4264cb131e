"""Stage 3: DeepLab (LargeFOV or v2 ASPP) trained on pseudo masks, with the one mIoU of
:mod:`rpnet_pl.ops.metrics` on a validation split while it trains.

The trained network's predictions (multi-scale + flip softmax, :func:`multiscale_probs`), with and
without denseCRF, and the benchmark's files are the steps ``eval_seg`` and ``predict_seg``
(:mod:`rpnet_pl.steps.segmentation`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from rpnet_pl.data.classes import IGNORE_INDEX, class_names, voc_palette
from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion
from rpnet_pl.stages.common import StageModule
from rpnet_pl.stages.visuals import denormalise, log_images, overlay_labels


@torch.no_grad()
def multiscale_probs(logits_fn, image: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = True) -> torch.Tensor:
    """Softmax class probabilities (C, H, W) averaged over scales and flips; logits resized to the image."""
    h, w = image.shape[-2:]
    total, n = None, 0
    for s in scales:
        x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear",
                                                 align_corners=False)
        batch = torch.cat([x, x.flip(-1)]) if flip else x
        logits = F.interpolate(logits_fn(batch).float(), size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        p = probs[0] + probs[1].flip(-1) if flip else probs[0]
        total = p if total is None else total + p
        n += 2 if flip else 1
    return total / n


class SegmenterStage(StageModule):
    """Trains the DeepLab it is given (:class:`~rpnet_pl.models.deeplab.DeepLabNet`) on label PNGs
    (pseudo masks from stage 2, or any method's masks); 255 is ignored.

    ``eval_scales`` and ``eval_flip`` are the validation's (the val mIoU logged while it trains); the
    ``eval_seg`` and ``predict_seg`` steps have their own.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 2.5e-4,
        head_lr_mult: float = 10.0,
        head_bias_lr_mult: float = 20.0,
        head_bias_weight_decay: float = 0.0,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        eval_scales: tuple[float, ...] = (1.0,),
        eval_flip: bool = True,
        checkpoint_every_n_steps: int | None = None,
        progress_every_n_steps: int | None = None,
        image_log_every_n_steps: int = 200,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = net
        self.save_network_and_hyperparameters(net)
        self._val_conf: np.ndarray | None = None

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy (255 ignored) of the logits upsampled to the label: ``loss`` and ``logits``
        (B, C, H, W). ``image`` (B, 3, H, W), ``label`` (B, H, W) int64."""
        logits = self.model(batch["image"])
        logits = F.interpolate(logits, size=batch["label"].shape[-2:], mode="bilinear", align_corners=False)
        return {"loss": F.cross_entropy(logits, batch["label"], ignore_index=IGNORE_INDEX), "logits": logits}

    def log_samples(self, batch: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
        """First image of the batch, its pseudo mask and the current prediction."""
        image, palette = denormalise(batch["image"][0]), voc_palette()
        pred = out["logits"][0].argmax(0).cpu().numpy()
        tiles = [image, overlay_labels(image, batch["label"][0].cpu().numpy(), palette),
                 overlay_labels(image, pred, palette)]
        log_images(self.loggers, "train/samples", tiles, self.global_step, ["image", "pseudo mask", "prediction"])

    def on_validation_epoch_start(self) -> None:
        self._val_conf = np.zeros((self.model.num_classes,) * 2, dtype=np.int64)

    def probs(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities (C, H, W) of one image (1, 3, H, W), averaged over ``eval_scales`` and flips."""
        return multiscale_probs(self.model, image, self.hparams.eval_scales, self.hparams.eval_flip)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.probs(batch["image"]).argmax(0)
        self._val_conf += confusion_matrix(pred, batch["mask"][0], self.model.num_classes)

    def on_validation_epoch_end(self) -> None:
        conf = torch.as_tensor(self._val_conf, device=self.device)
        if self.trainer.world_size > 1:
            conf = self.all_gather(conf).sum(0)
        iou = iou_from_confusion(conf.cpu().numpy())
        self.log("val/miou", float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else 0.0, rank_zero_only=True)
        # per class; a class absent from both the ground truth and the prediction (nan) is left out
        names = class_names(self.model.num_classes)
        per_class = {f"val/iou_{names[c].replace(' ', '_')}": float(v) for c, v in enumerate(iou) if not np.isnan(v)}
        if per_class:
            self.log_dict(per_class, rank_zero_only=True)

    def optimizer_groups(self) -> list[tuple[Any, ...]]:
        """kazuto1011/deeplab-pytorch's groups (``get_params`` 1x / 10x / 20x): the backbone at ``lr``
        (its stem too, unless ``freeze_stem``), the head's weights at ``lr * head_lr_mult``, its biases
        at ``lr * head_bias_lr_mult`` with weight decay ``head_bias_weight_decay``."""
        hp = self.hparams
        backbone_params, head_params = self.model.param_groups()
        weights = [p for p in head_params if p.ndim > 1]
        biases = [p for p in head_params if p.ndim <= 1]
        return [(backbone_params, hp.lr), (weights, hp.lr * hp.head_lr_mult),
                (biases, hp.lr * hp.head_bias_lr_mult, hp.head_bias_weight_decay)]
