"""Segmentation metrics from one confusion matrix: the one mIoU of the project.

Rows of a confusion matrix are ground truth, columns are predictions. Matrices are int64 and
additive, so a split is evaluated by summing per-image matrices:
``conf = sum(confusion_matrix(p, g, 21) for p, g in pairs)``.

IoU follows IRN's ``eval_cam`` / ``eval_sem_seg`` (the numbers of the paper's Tables I, XI):
``IoU_c = TP_c / (GT_c + PRED_c - TP_c)``, mIoU = the nan-mean over classes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rpnet_pl.data.classes import IGNORE_INDEX

ArrayLike = np.ndarray | torch.Tensor


def _as_int64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    # Widen first: uint8 inputs would overflow in ``num_classes * target + pred``.
    return np.asarray(x).astype(np.int64, copy=False).reshape(-1)


def confusion_matrix(
    pred: ArrayLike,
    target: ArrayLike,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    ignore_pred: bool = False,
) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = ground truth, columns = prediction.

    Pixels whose target is ``ignore_index`` are left out. With ``ignore_pred`` pixels whose
    prediction is ``ignore_index`` are left out as well (to score IR labels on their confident
    pixels only); otherwise a prediction outside ``[0, num_classes)`` is an error.
    """
    p = _as_int64(pred)
    t = _as_int64(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target differ in size: {np.shape(pred)} vs {np.shape(target)}")
    keep = t != ignore_index
    if ignore_pred:
        keep &= p != ignore_index
    p, t = p[keep], t[keep]
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target has labels outside [0, {num_classes}) other than {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"pred has labels outside [0, {num_classes}); pass ignore_pred=True "
                         f"to leave out pixels predicted as {ignore_index}")
    counts = np.bincount(num_classes * t + p, minlength=num_classes * num_classes)
    return counts.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU ``TP / (GT + PRED - TP)``, float64 (C,); nan for classes absent from both."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    denom = conf.sum(axis=1) + conf.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in ground truth or prediction (nan-mean)."""
    iou = iou_from_confusion(conf)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def precision_recall(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision ``TP / PRED`` and recall ``TP / GT``, float64 (C,) each; nan on 0/0."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    pred_n, gt_n = conf.sum(axis=0), conf.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / np.where(pred_n > 0, pred_n, 1.0), np.nan)
        recall = np.where(gt_n > 0, tp / np.where(gt_n > 0, gt_n, 1.0), np.nan)
    return precision, recall


def format_iou_table(
    per_class_iou: Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    row_name: str | None = None,
) -> str:
    """Markdown table in the layout of the paper's Table XI: one row, one column per class,
    the last column mIoU; values x100 with one decimal ("-" for nan).

    ``row_name`` adds a first "method" column holding it.
    """
    iou = np.asarray(per_class_iou, dtype=np.float64)
    if iou.shape != (len(class_names),):
        raise ValueError(f"{iou.shape[0] if iou.ndim else 0} IoU values for {len(class_names)} class names")
    mean = float(np.nanmean(iou)) if not np.all(np.isnan(iou)) else float("nan")

    def fmt(v: float) -> str:
        return "-" if np.isnan(v) else f"{100.0 * v:.1f}"

    header = list(class_names) + ["mIoU"]
    values = [fmt(v) for v in iou] + [fmt(mean)]
    if row_name is not None:
        header = ["method"] + header
        values = [row_name] + values
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * len(header)) + "|",
        "| " + " | ".join(values) + " |",
    ]
    return "\n".join(lines)
