"""Seed quality during classifier training (issue "Does RPNet beat the baseline here?"): every epoch,
the CAM seeds of a fixed subset of a labelled split, scored like ``eval-cam`` at one threshold.

Logged as ``seed/miou``, ``seed/fg_precision``, ``seed/fg_recall`` (foreground vs background, over
the subset's pixels) so a training curve shows whether the seeds grow, leak or stay compact.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from rpnet_pl.ops.cam import cam_to_label
from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion
from rpnet_pl.stages.cam_inference import cam_record, multiscale_cam

log = logging.getLogger(__name__)


def seed_scores(conf: np.ndarray) -> dict[str, float]:
    """mIoU (classes present in the ground truth or the prediction) and the binary foreground
    precision / recall of a (C, C) confusion matrix, rows = ground truth, class 0 = background."""
    conf = np.asarray(conf, dtype=np.float64)
    iou = iou_from_confusion(conf)
    fg_true_fg_pred = conf[1:, 1:].sum()
    pred_fg, gt_fg = conf[:, 1:].sum(), conf[1:, :].sum()
    return {"miou": float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else 0.0,
            "fg_precision": float(fg_true_fg_pred / pred_fg) if pred_fg else 0.0,
            "fg_recall": float(fg_true_fg_pred / gt_fg) if gt_fg else 0.0}


class SeedMonitor(pl.Callback):
    """At the end of every ``every_n_epochs``-th training epoch (rank 0), CAMs of the first ``images``
    images of ``split`` of the trainer's datamodule (its ``root`` and ``dataset``), flip-averaged at
    ``scales``, thresholded at ``threshold`` (background score), scored and logged."""

    def __init__(self, images: int = 32, split: str = "train", threshold: float = 0.25,
                 scales: tuple[float, ...] = (1.0,), every_n_epochs: int = 1) -> None:
        self.images, self.split, self.threshold = images, split, threshold
        self.scales, self.every_n_epochs = tuple(scales), max(1, every_n_epochs)
        self._dataset: Any = None
        self.history: list[dict[str, float]] = []

    def _data(self, trainer: pl.Trainer) -> Any:
        if self._dataset is None:
            from rpnet_pl.data.datasets import InferenceDataset, build_reader
            from rpnet_pl.data.transforms import eval_transform

            hp = trainer.datamodule.hparams
            reader = build_reader(hp.dataset, hp.root, self.split, weak=False)
            self._dataset = InferenceDataset(reader, eval_transform(), with_mask=True, ids=reader.ids[:self.images])
        return self._dataset

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        data = self._data(trainer)
        model = pl_module.model
        was_training = model.training
        model.eval()
        num_classes = data.reader.num_classes
        conf = np.zeros((num_classes, num_classes), dtype=np.int64)
        with torch.no_grad():
            for i in range(len(data)):
                item = data[i]
                strided, high = multiscale_cam(model.cam, item["image"][None].to(pl_module.device), self.scales)
                rec = cam_record(strided, high, item["labels"])
                pred = cam_to_label(rec["high_res"].astype(np.float32), rec["keys"], self.threshold)
                conf += confusion_matrix(pred, item["mask"].numpy(), num_classes)
        model.train(was_training)
        scores = seed_scores(conf)
        scores["epoch"] = float(trainer.current_epoch)
        self.history.append(scores)
        log.info("seeds (%s, %d images, bg %.2f) after epoch %d: mIoU %.3f, foreground precision %.3f, recall %.3f",
                 self.split, len(data), self.threshold, trainer.current_epoch, scores["miou"],
                 scores["fg_precision"], scores["fg_recall"])
        pl_module.log_dict({f"seed/{k}": v for k, v in scores.items() if k != "epoch"}, rank_zero_only=True)


def confidence_coverage(model: Any, images: Any, alpha: float | None = None) -> dict[str, float]:
    """How much of each image RPNet's confidence mask M (eq. 3-4, 6) covers, under the reference's
    rule (divide by max + 1e-5: an all-negative channel of f4 marks its whole map) and under the
    paper's ReLU reading (``clamp_peak``). images: iterable of (1, 3, H, W) tensors. Returns the mean
    covered share, the share of images covered entirely, and the mean share of all-negative channels."""
    from rpnet_pl.models.rpnet import confidence_mask

    alpha = model.head.alpha if alpha is None else alpha
    ref, clamped, full_ref, full_clamped, negative, n = 0.0, 0.0, 0, 0, 0.0, 0
    with torch.no_grad():
        for image in images:
            f4 = model.head.down(model.backbone(image)[4])  # (1, mid, h, w)
            m_ref, m_clamp = confidence_mask(f4, alpha), confidence_mask(f4, alpha, clamp_peak=True)
            ref += m_ref.mean().item()
            clamped += m_clamp.mean().item()
            full_ref += int(m_ref.min().item() == 1.0)
            full_clamped += int(m_clamp.min().item() == 1.0)
            negative += (f4.amax(dim=(2, 3)) < 0).float().mean().item()
            n += 1
    n = max(n, 1)
    return {"covered_reference": ref / n, "covered_clamped": clamped / n, "whole_image_reference": full_ref / n,
            "whole_image_clamped": full_clamped / n, "negative_channels": negative / n, "images": float(n)}
