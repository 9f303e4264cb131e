"""CAM helpers (spec "CAM inference and evaluation", IRN's make_cam / eval_cam /
cam_to_ir_label).

Conventions: a CAM file holds ``keys`` (K,) class ids in 1..C of the image's labels (0 is
background) and the matching foreground maps (K, H, W), each normalised by its spatial max.
A label map is obtained by prepending a constant background channel (the threshold) and
taking the argmax; ``np.argmax`` returns the first maximum, so ties go to background.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.data.classes import IGNORE_INDEX
from rpnet_pl.ops.crf import crf_inference_label
from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion, miou
from rpnet_pl.ops.params import IR_LABELS

ArrayLike = np.ndarray | torch.Tensor


def _numpy(x: ArrayLike | Sequence[int]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _full_keys(keys: ArrayLike | Sequence[int]) -> np.ndarray:
    """(K,) class ids -> (K + 1,) with background 0 first: channel index -> class id."""
    return np.concatenate([[0], _numpy(keys).astype(np.int64).reshape(-1)])


def max_normalise(cams: ArrayLike, eps: float = 1e-5) -> ArrayLike:
    """``relu(cam) / (max_space relu(cam) + eps)`` per channel (spec "CAM inference": keep the
    image's channels and normalise each by its spatial max). cams: (..., H, W), torch or numpy;
    returns the same type and shape."""
    if isinstance(cams, torch.Tensor):
        cams = torch.relu(cams)
        return cams / (cams.amax(dim=(-2, -1), keepdim=True) + eps)
    cams = np.maximum(np.asarray(cams), 0)
    if cams.shape[-1] * cams.shape[-2] == 0:
        return cams
    return cams / (cams.max(axis=(-2, -1), keepdims=True) + eps)


def multiscale_sum(
    maps: Iterable[torch.Tensor],
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize each map bilinearly (align_corners=False) to ``size`` and sum (spec "CAM
    inference": sum over scales of the resized maps). maps: (K, h_s, w_s) or (N, K, h_s, w_s)
    each; with ``crop = (H, W)`` the result is cut to its top-left H x W (the high-res CAM is
    computed at the stride-16-rounded size, then cropped to the image). Returns (..., K, H, W)."""
    total: torch.Tensor | None = None
    for m in maps:
        batched = m.dim() == 4
        x = m if batched else m[None]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = x if batched else x[0]
        total = x if total is None else total + x
    if total is None:
        raise ValueError("multiscale_sum needs at least one map")
    if crop is not None:
        total = total[..., : crop[0], : crop[1]]
    return total


def cam_to_label(cams_fg: ArrayLike, keys: ArrayLike | Sequence[int], bg_threshold: float) -> np.ndarray:
    """Seed label map: prepend a constant background channel ``bg_threshold`` to the
    normalised foreground CAMs (K, H, W), argmax, map channel -> class id via ``keys`` (K,).
    Returns (H, W) int64 class ids (spec "Eval"; 0.15 for IRN's ResNet-50 CAMs)."""
    cams = _numpy(cams_fg).astype(np.float32, copy=False)
    full = _full_keys(keys)
    if cams.shape[0] != len(full) - 1:
        raise ValueError(f"{cams.shape[0]} CAM channels for {len(full) - 1} keys")
    scores = np.pad(cams, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=bg_threshold)
    return full[np.argmax(scores, axis=0)]


CrfLabelFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def cam_to_ir_label(
    cams: ArrayLike,
    keys: ArrayLike | Sequence[int],
    image: np.ndarray,
    fg_thres: float = IR_LABELS.fg_threshold,
    bg_thres: float = IR_LABELS.bg_threshold,
    crf_fn: CrfLabelFn | None = crf_inference_label,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """IR labels for the boundary network (spec "Stage 2", IRN's ``cam_to_ir_label``).

    cams: (K, H, W) normalised high-res CAMs; keys: (K,) class ids; image: (H, W, 3) uint8.
    Two label maps, background at ``fg_thres`` and at ``bg_thres``, each refined by
    ``crf_fn(image, labels, n_labels)`` over the K + 1 channel indices (``None``: no CRF).
    A pixel is its class where the ``fg_thres`` map says foreground, 0 where both maps say
    background, ``ignore_index`` elsewhere. Returns (H, W) uint8.
    """
    cams_np = _numpy(cams).astype(np.float32, copy=False)
    full = _full_keys(keys)
    if cams_np.shape[0] != len(full) - 1:
        raise ValueError(f"{cams_np.shape[0]} CAM channels for {len(full) - 1} keys")
    image = np.asarray(image)
    if image.shape[:2] != cams_np.shape[1:]:
        raise ValueError(f"image {image.shape[:2]} and CAMs {cams_np.shape[1:]} differ in size")

    def refined(threshold: float) -> np.ndarray:
        scores = np.pad(cams_np, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold)
        channel = np.argmax(scores, axis=0)  # (H, W) in [0, K]
        if crf_fn is not None:
            channel = crf_fn(image, channel, len(full))
        return full[channel]

    fg_conf = refined(fg_thres)
    bg_conf = refined(bg_thres)
    out = fg_conf.copy()
    out[fg_conf == 0] = ignore_index
    out[(fg_conf == 0) & (bg_conf == 0)] = 0
    return out.astype(np.uint8)


def ir_label_thresholds(seed_threshold: float) -> tuple[float, float]:
    """(``fg_threshold``, ``bg_threshold``) of the IR labels from the seeds' best background
    threshold t*: ``(2 t*, t* / 3)``, rounded to 6 decimals.

    The rule gives back IRN's VOC thresholds, 0.30 / 0.05, from VOC's best seed threshold 0.15:
    confident foreground needs a background score twice the seeds' cut, confident background a
    third of it. It scales them for CAMs that peak elsewhere. A t* of 0.5 or more gives
    ``fg_threshold`` >= 1, above every max-normalised CAM: no confident foreground.
    """
    t = float(seed_threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"seed threshold must lie in [0, 1], got {seed_threshold}")
    return round(2.0 * t, 6), round(t / 3.0, 6)


class ThresholdSweep:
    """Accumulate one confusion matrix per background threshold (spec "Eval: report the
    sweep"). ``update`` takes what a CAM file holds: normalised (K, H, W) CAMs, keys (K,) and
    the (H, W) ground truth with ``ignore_index``.

    Equivalent to ``cam_to_label(cams, keys, thr)`` for every threshold, computed once: a
    pixel is background iff its max foreground score is <= thr (ties go to background).
    """

    def __init__(self, thresholds: Sequence[float], num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.thresholds = tuple(float(t) for t in thresholds)
        if not self.thresholds:
            raise ValueError("ThresholdSweep needs at least one threshold")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = {t: np.zeros((num_classes, num_classes), dtype=np.int64) for t in self.thresholds}

    def update(self, cams: ArrayLike, keys: ArrayLike | Sequence[int], gt: ArrayLike) -> None:
        cams_np = _numpy(cams).astype(np.float32, copy=False)
        full = _full_keys(keys)
        gt_np = _numpy(gt)
        if cams_np.shape[0] != len(full) - 1:
            raise ValueError(f"{cams_np.shape[0]} CAM channels for {len(full) - 1} keys")
        if cams_np.shape[0] == 0:
            fg_max = np.full(gt_np.shape, -np.inf, dtype=np.float32)
            fg_cls = np.zeros(gt_np.shape, dtype=np.int64)
        else:
            fg_max = cams_np.max(axis=0)
            fg_cls = full[1:][np.argmax(cams_np, axis=0)]
        for t in self.thresholds:
            pred = np.where(fg_max > t, fg_cls, 0)
            self.confusion[t] += confusion_matrix(pred, gt_np, self.num_classes, self.ignore_index)

    def update_labels(self, threshold: float, pred: ArrayLike, gt: ArrayLike) -> None:
        """Add one image's label map made at ``threshold`` by the caller's own thresholding (the walk's
        :func:`~rpnet_pl.ops.random_walk.labels_from_scores`)."""
        self.confusion[float(threshold)] += confusion_matrix(_numpy(pred), _numpy(gt), self.num_classes,
                                                             self.ignore_index)

    def results(self) -> dict[float, tuple[float, np.ndarray]]:
        """threshold -> (mIoU, per-class IoU (C,))."""
        return {t: (miou(c), iou_from_confusion(c)) for t, c in self.confusion.items()}

    def best(self) -> tuple[float, float]:
        """(threshold, mIoU) of the best threshold (nan mIoUs are skipped)."""
        scored = [(m, t) for t, (m, _) in self.results().items() if not np.isnan(m)]
        if not scored:
            return self.thresholds[0], float("nan")
        m, t = max(scored)
        return t, m
