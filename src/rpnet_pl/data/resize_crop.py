"""The public code's random resize and random crop as albumentations ops (IRN/RPNet ``misc/imutils.py``).

Each op draws its parameters like the reference (``random_resize_long``: an integer long side;
``random_scale``: a uniform factor; ``random_crop``: a crop box) and applies them in ``apply``, so
``op.apply(image, **params)`` with given parameters is the deterministic part that parity checks.

``resample='pil'`` (the reference): size ``(round(H s), round(W s))``, PIL bicubic for the image and
PIL nearest for the mask, an unchanged array when the size is unchanged; ``'cv2'``: the same size with
OpenCV bilinear / nearest (faster, and no antialiasing when shrinking).
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
from PIL import Image


_PIL = {3: Image.BICUBIC, 0: Image.NEAREST}
_CV2 = {3: cv2.INTER_LINEAR, 0: cv2.INTER_NEAREST}


def rescale(array: np.ndarray, scale: float, order: int, resample: str = "pil") -> np.ndarray:
    """Resize (H, W[, C]) uint8 by ``scale`` to ``(round(H scale), round(W scale))``; ``order`` 3 for
    an image (bicubic, or bilinear under ``'cv2'``), 0 for a label map (nearest)."""
    h, w = array.shape[:2]
    size = (int(np.round(h * scale)), int(np.round(w * scale)))
    if size == (h, w):
        return array
    if resample == "pil":
        return np.asarray(Image.fromarray(array).resize(size[::-1], _PIL[order]))
    if resample == "cv2":
        return cv2.resize(array, size[::-1], interpolation=_CV2[order])
    raise ValueError(f"resample must be 'pil' or 'cv2', got {resample!r}")


class RandomResizeLong(A.DualTransform):
    """Resize so that the long side is ``target_long``, an integer drawn uniformly in
    ``[min_long, max_long]`` (the classifier's 320-640)."""

    def __init__(self, min_long: int, max_long: int, resample: str = "pil", p: float = 1.0) -> None:
        super().__init__(p=p)
        self.min_long, self.max_long, self.resample = int(min_long), int(max_long), resample

    def get_params(self) -> dict[str, Any]:
        return {"target_long": self.py_random.randint(self.min_long, self.max_long)}

    def apply(self, img: np.ndarray, target_long: int, **params: Any) -> np.ndarray:
        return rescale(img, target_long / max(img.shape[:2]), 3, self.resample)

    def apply_to_mask(self, mask: np.ndarray, target_long: int, **params: Any) -> np.ndarray:
        return rescale(mask, target_long / max(mask.shape[:2]), 0, self.resample)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_long", "max_long", "resample")


class RandomRescale(A.DualTransform):
    """Rescale by ``scale = low + u (high - low)``, ``u`` uniform in [0, 1) (IRN's 0.5-1.5)."""

    def __init__(self, low: float, high: float, resample: str = "pil", p: float = 1.0) -> None:
        super().__init__(p=p)
        self.low, self.high, self.resample = float(low), float(high), resample

    def get_params(self) -> dict[str, Any]:
        return {"scale": self.low + self.py_random.random() * (self.high - self.low)}

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        return rescale(img, scale, 3, self.resample)

    def apply_to_mask(self, mask: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        return rescale(mask, scale, 0, self.resample)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("low", "high", "resample")


class RandomCropFill(A.DualTransform):
    """A ``size`` x ``size`` crop; a side shorter than ``size`` is padded with ``fill`` (image) and
    ``fill_mask`` (mask).

    Per axis, with ``space = side - size``: a longer side is cut at an offset uniform in
    ``[0, space]``; a shorter one is placed in the container at an offset uniform in ``[0, -space]``
    (``pad_position='random'``, the reference) or at 0 (``'top_left'``, DeepLab's padding).
    Parameters: ``cont_top``, ``cont_left`` (where the kept part lands) and ``img_top``, ``img_left``
    (where it starts in the input).
    """

    def __init__(self, size: int, fill: float = 0.0, fill_mask: int = 255, pad_position: str = "random",
                 p: float = 1.0) -> None:
        super().__init__(p=p)
        if pad_position not in ("random", "top_left"):
            raise ValueError(f"pad_position must be 'random' or 'top_left', got {pad_position!r}")
        self.size, self.fill, self.fill_mask, self.pad_position = int(size), fill, fill_mask, pad_position

    def _offsets(self, side: int) -> tuple[int, int]:
        """(container offset, input offset) along one axis; drawn like ``get_random_crop_box``."""
        space = side - self.size
        if space > 0:
            return 0, self.py_random.randrange(space + 1)
        return (self.py_random.randrange(-space + 1) if self.pad_position == "random" else 0), 0

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        cont_left, img_left = self._offsets(w)  # the reference draws the width's offset first
        cont_top, img_top = self._offsets(h)
        return {"cont_top": cont_top, "cont_left": cont_left, "img_top": img_top, "img_left": img_left}

    def _crop(self, array: np.ndarray, fill: float, cont_top: int, cont_left: int, img_top: int,
              img_left: int) -> np.ndarray:
        ch, cw = min(self.size, array.shape[0]), min(self.size, array.shape[1])
        out = np.full((self.size, self.size, *array.shape[2:]), fill, dtype=array.dtype)
        out[cont_top:cont_top + ch, cont_left:cont_left + cw] = array[img_top:img_top + ch, img_left:img_left + cw]
        return out

    def apply(self, img: np.ndarray, cont_top: int, cont_left: int, img_top: int, img_left: int,
              **params: Any) -> np.ndarray:
        return self._crop(img, self.fill, cont_top, cont_left, img_top, img_left)

    def apply_to_mask(self, mask: np.ndarray, cont_top: int, cont_left: int, img_top: int, img_left: int,
                      **params: Any) -> np.ndarray:
        return self._crop(mask, self.fill_mask, cont_top, cont_left, img_top, img_left)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "fill", "fill_mask", "pad_position")
