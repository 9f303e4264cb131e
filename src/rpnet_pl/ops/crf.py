"""Fully connected CRF (Kraehenbuehl & Koltun 2011, the paper's ref. [69]) on pydensecrf2.

Two uses, two wrappers (spec "Stage 2: IRN" and "Stage 3: DeepLab"):

* ``crf_inference_label``: refine a hard label map (IR labels, IRN's ``cam_to_ir_label``):
  unary from labels with ``gt_prob`` 0.7, Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5
  compat 10, 10 mean-field iterations.
* ``crf_inference_prob``: DeepLab-style post-processing of class probabilities:
  Gaussian pos_w 3 pos_xy 3, bilateral bi_w 4 bi_xy 67 bi_rgb 3, 10 iterations.

pydensecrf2 installs the module ``pydensecrf`` (``pydensecrf.densecrf``, ``pydensecrf.utils``).
"""
from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from rpnet_pl.ops.params import LABEL_CRF, PROB_CRF


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got {image.dtype}")
    return np.ascontiguousarray(image)


def crf_inference_label(
    image: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    *,
    t: int = LABEL_CRF.t,
    gt_prob: float = LABEL_CRF.gt_prob,
    gauss_sxy: float = LABEL_CRF.gauss_sxy,
    gauss_compat: float = LABEL_CRF.gauss_compat,
    bi_sxy: float = LABEL_CRF.bi_sxy,
    bi_srgb: float = LABEL_CRF.bi_srgb,
    bi_compat: float = LABEL_CRF.bi_compat,
) -> np.ndarray:
    """Refine a label map with a dense CRF whose unary comes from the labels themselves.

    image: (H, W, 3) uint8 RGB. labels: (H, W) ints in ``[0, n_labels)`` (every label is
    trusted with probability ``gt_prob``; none is "unsure"). Returns (H, W) int64 labels.
    Defaults: :data:`rpnet_pl.ops.params.LABEL_CRF` (spec "Stage 2", IRN's ``crf_inference_label``).
    """
    image = _check_image(image)
    labels = np.asarray(labels)
    h, w = image.shape[:2]
    if labels.shape != (h, w):
        raise ValueError(f"labels {labels.shape} do not match image {(h, w)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in [0, {n_labels})")
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    # zero_unsure=False: label 0 is a real class here (background), not "unknown".
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob, zero_unsure=False)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=image, compat=bi_compat)
    q = np.asarray(crf.inference(t), dtype=np.float32).reshape(n_labels, h, w)  # (L, H*W) -> (L, H, W)
    return np.argmax(q, axis=0).astype(np.int64)


def crf_inference_prob(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    t: int = PROB_CRF.t,
    pos_w: float = PROB_CRF.pos_w,
    pos_xy: float = PROB_CRF.pos_xy,
    bi_w: float = PROB_CRF.bi_w,
    bi_xy: float = PROB_CRF.bi_xy,
    bi_rgb: float = PROB_CRF.bi_rgb,
) -> np.ndarray:
    """DeepLab-style dense CRF on class probabilities (spec "Stage 3", paper Sec. IV-B).

    image: (H, W, 3) uint8 RGB; probs: (C, H, W) probabilities (softmax output; clipped away
    from 0 inside). Returns the refined (C, H, W) float32 marginals; take ``argmax(0)``.
    Defaults: :data:`rpnet_pl.ops.params.PROB_CRF`.
    """
    image = _check_image(image)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (C, H, W) matching image {image.shape[:2]}, got {probs.shape}")
    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = unary_from_softmax(probs)  # -log p, (C, H*W)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=image, compat=bi_w)
    return np.asarray(crf.inference(t), dtype=np.float32).reshape(c, h, w)
