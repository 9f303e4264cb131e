"""Seed quality during classifier training (docs/results.md, "Does RPNet beat the baseline here?"): every epoch,
the CAM seeds of a fixed subset of a labelled split, scored like ``eval-cam`` at one threshold.

Logged as ``seed/miou``, ``seed/fg_precision``, ``seed/fg_recall`` (foreground vs background, over
the subset's pixels) so a training curve shows whether the seeds grow, leak or stay compact.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from rpnet_pl.ops.cam import cam_to_label, max_normalise
from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion
from rpnet_pl.ops.params import DEFAULT_THRESHOLDS
from rpnet_pl.steps.cam_inference import cam_record, multiscale_cam

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


def branch_confusions(maps: torch.Tensor, labels: torch.Tensor, mask: np.ndarray, thresholds: Sequence[float],
                      num_classes: int) -> np.ndarray:
    """Seed confusions of one image's class maps at every background threshold.

    maps (C, h, w): one branch's class maps (plain or enhanced; relu'd here), labels (C,) multi-hot,
    mask (H, W) ground truth (255 ignored). The image's classes are resized (bilinear) to (H, W),
    max-normalised per class and turned into seeds with :func:`cam_to_label` as ``eval-cam`` does.
    Returns (T, num_classes, num_classes) int64, rows = ground truth.
    """
    keys = torch.nonzero(labels > 0.5).flatten()
    out = np.zeros((len(thresholds), num_classes, num_classes), dtype=np.int64)
    fg = max_normalise(F.interpolate(F.relu(maps[keys].float())[None], size=tuple(mask.shape), mode="bilinear",
                                     align_corners=False)[0])
    for t, thr in enumerate(thresholds):
        pred = cam_to_label(fg.cpu().numpy(), (keys + 1).cpu().numpy(), thr)
        out[t] = confusion_matrix(pred, mask, num_classes)
    return out


def reference_partner(labels: Sequence[torch.Tensor], i: int) -> int | None:
    """The first image after ``i`` (cyclically) sharing a class with it: the group RPNet's pair
    sampler would form (section III-B: images of a group share a class); None if there is none."""
    n = len(labels)
    for d in range(1, n):
        j = (i + d) % n
        if bool(((labels[i] > 0.5) & (labels[j] > 0.5)).any()):
            return j
    return None


def branch_seed_scores(model: Any, dataset: Any, size: int, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                       generator: torch.Generator | None = None) -> dict[str, dict[str, Any]]:
    """Seeds of RPNet's two branches on the same groups: every image of ``dataset`` (an
    :class:`InferenceDataset` with masks) with its :func:`reference_partner`, both resized to
    ``size`` x ``size``, one forward of the model in eval mode (the enhanced branch needs the group,
    so this is a training-time view, not CAM inference). For the plain maps (eq. 1-2) and the
    enhanced maps (eq. 8-10, mean over the enhanced scales): the threshold sweep's mIoU, the best
    threshold, and foreground precision / recall there. Ls (eq. 11) pulls the plain maps towards the
    enhanced ones, so the enhanced seeds should score at least as well."""
    items = [dataset[i] for i in range(len(dataset))]
    labels = [it["labels"] for it in items]
    num_classes = int(labels[0].numel()) + 1
    conf = {b: np.zeros((len(thresholds), num_classes, num_classes), dtype=np.int64) for b in ("plain", "enhanced")}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i, item in enumerate(items):
            j = reference_partner(labels, i)
            if j is None:
                continue
            images = torch.stack([F.interpolate(items[m]["image"][None], size=(size, size), mode="bilinear",
                                                align_corners=False)[0] for m in (i, j)])[None]
            out = model(images, generator=generator)
            mask = F.interpolate(torch.as_tensor(item["mask"])[None, None].float(), size=(size, size),
                                 mode="nearest")[0, 0].long().numpy()
            conf["plain"] += branch_confusions(out["cams"][0], labels[i], mask, thresholds, num_classes)
            conf["enhanced"] += branch_confusions(out["enhanced_cams"][0], labels[i], mask, thresholds, num_classes)
    model.train(was_training)
    result: dict[str, dict[str, Any]] = {}
    for branch, c in conf.items():
        sweep = [seed_scores(c[t]) for t in range(len(thresholds))]
        best = int(np.argmax([s["miou"] for s in sweep]))
        result[branch] = {"best_threshold": float(thresholds[best]), **sweep[best],
                          "sweep": {f"{t:.2f}": s["miou"] for t, s in zip(thresholds, sweep)}}
    return result
