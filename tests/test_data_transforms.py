"""Augmentation keeps image and mask aligned; padding is ignore (255) in the mask."""
from __future__ import annotations

import numpy as np
import pytest

from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform


def _pattern(h: int = 37, w: int = 53) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the mask: red = 40 * label, so alignment is checkable."""
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[5:20, 10:30] = 1
    mask[22:35, 30:50] = 2
    mask[0:4, 0:8] = 3
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[..., 0] = 40 * mask
    return image, mask


@pytest.mark.parametrize("mode", ["long_side", "factor", "none"])
def test_image_and_mask_stay_aligned(mode: str) -> None:
    image, mask = _pattern()
    t = train_transform(48, scale_mode=mode, long_side=(30, 90), scale=(0.6, 1.8), hflip=0.5, color_jitter=0.0)
    for seed in range(20):
        np.random.seed(seed)
        import random
        random.seed(seed)
        t.set_random_seed(seed)
        out = t(image=image, mask=mask)
        img, m = out["image"], out["mask"]
        assert img.shape == (48, 48, 3) and m.shape == (48, 48)
        red = img[..., 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to [0, 1]
        valid = m != 255
        assert valid.any()
        # away from label edges (bilinear image vs nearest mask), red must equal 40 * label / 255
        from scipy.ndimage import binary_erosion
        for lab in (0, 1, 2):
            interior = binary_erosion(m == lab, iterations=2)
            if interior.any():
                # labels are 40/255 = 0.157 apart: a shifted mask would be off by that much
                np.testing.assert_allclose(red[interior], 40 * lab / 255.0, atol=0.05)
        # padding: the image is 0 (the mean after normalisation) where the mask is ignore
        assert np.all(img[~valid] == 0)


def test_eval_transform_normalises_only() -> None:
    image = np.full((5, 7, 3), 255, dtype=np.uint8)
    out = eval_transform()(image=image)["image"]
    assert out.shape == (5, 7, 3)
    np.testing.assert_allclose(out[0, 0], (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), rtol=1e-5)
