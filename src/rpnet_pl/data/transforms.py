"""Augmentation with albumentations: random rescale, crop with ignore padding, flip, jitter, normalise.

Image and mask go through the same geometric ops; padding is 0 for the (normalised) image, so padded
pixels are the dataset mean, and 255 (ignore) for the mask.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from rpnet_pl.data.classes import IGNORE_INDEX

if TYPE_CHECKING:  # albumentations takes about a second to import: only the steps that augment pay it
    import albumentations as A

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ScaleMode = Literal["long_side", "factor", "none"]


def train_transform(
    crop_size: int,
    scale_mode: ScaleMode = "long_side",
    long_side: Sequence[int] = (320, 640),
    scale: Sequence[float] = (0.5, 1.5),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> A.Compose:
    """Training pipeline; returns HWC float32 image and HW mask (tensors are made by the dataset).

    ``scale_mode='long_side'`` resizes the long side to a random length in ``long_side`` (the RPNet/IRN
    classifier recipe: 320-640); ``'factor'`` rescales by a random factor in ``scale`` (IRN's affinity
    stage and DeepLab: 0.5-1.5).
    """
    import albumentations as A
    import cv2

    ops: list[A.BasicTransform] = []
    if scale_mode == "long_side":
        lo, hi = int(long_side[0]), int(long_side[1])
        ops.append(A.LongestMaxSize(max_size=list(range(lo, hi + 1)), interpolation=cv2.INTER_LINEAR,
                                    mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    elif scale_mode == "factor":
        ops.append(A.RandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), interpolation=cv2.INTER_LINEAR,
                                 mask_interpolation=cv2.INTER_NEAREST, p=1.0))
    elif scale_mode != "none":
        raise ValueError(f"scale_mode must be long_side, factor or none, got {scale_mode!r}")
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=color_jitter))
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    ops.append(A.PadIfNeeded(min_height=crop_size, min_width=crop_size, position="top_left",
                             border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX))
    ops.append(A.RandomCrop(height=crop_size, width=crop_size))
    return A.Compose(ops)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Normalisation only (inference runs at full size)."""
    import albumentations as A

    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)])


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (3, H, W) contiguous float32."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
