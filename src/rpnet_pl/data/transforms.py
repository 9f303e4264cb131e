"""Augmentation with albumentations: random rescale, crop with ignore padding, flip, jitter, normalise.

Image and mask go through the same geometric ops; padding is 0 for the (normalised) image, so padded
pixels are the dataset mean, and 255 (ignore) for the mask. The rescale and the crop are the public
code's (:mod:`rpnet_pl.data.resize_crop`): PIL bicubic resampling and a randomly placed padded crop by
default, OpenCV bilinear and top-left padding on request.
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
Resample = Literal["pil", "cv2"]
PadPosition = Literal["random", "top_left"]


def train_transform(
    crop_size: int,
    scale_mode: ScaleMode = "long_side",
    long_side: Sequence[int] = (320, 640),
    scale: Sequence[float] = (0.5, 1.5),
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resample: Resample = "pil",
    pad_position: PadPosition = "random",
) -> A.Compose:
    """Training pipeline; returns HWC float32 image and HW mask (tensors are made by the dataset).

    ``scale_mode='long_side'`` resizes the long side to a random length in ``long_side`` (the RPNet/IRN
    classifier recipe: 320-640); ``'factor'`` rescales by a random factor in ``scale`` (IRN's affinity
    stage and DeepLab: 0.5-1.5). ``resample``: ``'pil'`` (bicubic image, nearest mask, as the public
    code) or ``'cv2'`` (bilinear / nearest); ``pad_position``: where an image smaller than the crop
    lands, ``'random'`` (the public code's ``random_crop``) or ``'top_left'`` (DeepLab's padding).
    """
    import albumentations as A

    from rpnet_pl.data.resize_crop import RandomCropFill, RandomRescale, RandomResizeLong

    ops: list[A.BasicTransform] = []
    if scale_mode == "long_side":
        ops.append(RandomResizeLong(int(long_side[0]), int(long_side[1]), resample=resample))
    elif scale_mode == "factor":
        ops.append(RandomRescale(float(scale[0]), float(scale[1]), resample=resample))
    elif scale_mode != "none":
        raise ValueError(f"scale_mode must be long_side, factor or none, got {scale_mode!r}")
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=color_jitter))
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    ops.append(RandomCropFill(crop_size, fill=0.0, fill_mask=IGNORE_INDEX, pad_position=pad_position))
    return A.Compose(ops)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Normalisation only (inference runs at full size)."""
    import albumentations as A

    return A.Compose([A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0)])


def to_chw(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (3, H, W) contiguous float32."""
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
