"""Sample images for the training loggers: overlays built with numpy, and one dispatcher per logger.

The image functions are pure (uint8 RGB arrays in and out). :func:`log_images` sends a list of them
to W&B (one media panel), TensorBoard (one HWC image, the list laid out in a row) or, for a CSV or
any other logger with a folder, to ``<log_dir>/images/<key>_<step>.png``.
"""
from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


def denormalise(image: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised (3, H, W) image -> (H, W, 3) uint8 RGB (inverse of ``A.Normalize`` with max 255)."""
    x = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {x.shape}")
    x = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def jet(values: np.ndarray) -> np.ndarray:
    """Jet-like colour map of values in [0, 1] (clipped): (...) -> (..., 3) uint8 (0 blue, 1 red)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # r, g, b peaks at 3/4, 1/2, 1/4
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.rint(rgb * 255.0).astype(np.uint8)


def gray(values: np.ndarray) -> np.ndarray:
    """A map in [0, 1] (clipped) as an (H, W, 3) uint8 grey image (1 is white)."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
    return np.repeat(np.rint(v * 255.0).astype(np.uint8)[..., None], 3, axis=-1)


def _check_pair(image: np.ndarray, mapping: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if mapping.shape != image.shape[:2]:
        raise ValueError(f"map of shape {mapping.shape} does not match the image {image.shape[:2]}")


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend the jet colours of ``cam`` ((H, W) in [0, 1]) onto ``image`` ((H, W, 3) uint8).

    The blend weight of a pixel is ``alpha * cam``: where the CAM is 0 the image is unchanged.
    """
    cam = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
    _check_pair(image, cam)
    w = (alpha * cam)[..., None]
    out = image.astype(np.float32) * (1.0 - w) + jet(cam).astype(np.float32) * w
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def overlay_labels(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colour of every label ((H, W) ints, 255 = ignore in the palette's 255 colour)
    onto ``image`` with weight ``alpha`` (1: the palette colours exactly)."""
    label = np.asarray(label)
    _check_pair(image, label)
    palette = np.asarray(palette, np.uint8)
    colours = palette[np.clip(label.astype(np.int64), 0, len(palette) - 1)].astype(np.float32)
    out = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grid(tiles: Sequence[np.ndarray], cols: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Lay (H, W, 3) uint8 tiles (or (H, W) grey ones) out row-major, ``cols`` per row, each in a cell
    the size of the largest tile, ``pad`` pixels of ``fill`` between cells."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    tiles = [np.repeat(t[..., None], 3, axis=-1) if t.ndim == 2 else t for t in tiles]
    ch, cw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    out = np.full((rows * ch + (rows - 1) * pad, cols * cw + (cols - 1) * pad, 3), fill, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = r * (ch + pad), c * (cw + pad)
        out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def _file_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "images"


def _log_dir(logger: Any) -> Path | None:
    for attr in ("log_dir", "save_dir"):
        try:
            value = getattr(logger, attr, None)
        except Exception:  # some loggers compute these lazily and may fail
            value = None
        if value:
            return Path(value)
    return None


def log_images(logger: Any, key: str, images: Sequence[np.ndarray], step: int,
               captions: Sequence[str] | None = None) -> Path | None:
    """Send ``images`` ((H, W, 3) uint8) to ``logger`` (a Lightning logger, a list of them, or None/False).

    W&B: ``log_image`` (one panel, with captions); TensorBoard: ``add_image`` of the row of images;
    any other logger with a ``log_dir``/``save_dir``: ``<dir>/images/<key>_<step>.png`` (atomic).
    Returns the PNG written for a folder logger (the last one when given a list), else None.
    """
    if not logger or not images:
        return None
    if isinstance(logger, (list, tuple)):
        written = None
        for one in logger:
            written = log_images(one, key, images, step, captions) or written
        return written
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    images = [np.ascontiguousarray(im, dtype=np.uint8) for im in images]
    if isinstance(logger, WandbLogger):
        kwargs = {"caption": list(captions)} if captions else {}
        logger.log_image(key=key, images=images, step=step, **kwargs)
        return None
    row = grid(images, cols=len(images))
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, row, step, dataformats="HWC")
        return None
    folder = _log_dir(logger)
    if folder is None:
        log.debug("logger %s has no folder; images %s not logged", type(logger).__name__, key)
        return None
    from rpnet_pl.utils.io import write_image

    path = folder / "images" / f"{_file_key(key)}_{step}.png"
    write_image(path, row)
    return path


def image_logging_due(module: Any, every_n_steps: int | None) -> bool:
    """True on global rank 0 when ``module`` (a LightningModule in training) has a logger and its
    optimiser step is a multiple of ``every_n_steps`` (0 or None: never), once per step."""
    if not every_n_steps or every_n_steps < 0:
        return False
    trainer = getattr(module, "_trainer", None)
    if trainer is None or not trainer.is_global_zero or not trainer.loggers:
        return False
    step = int(trainer.global_step)
    if step % every_n_steps or getattr(module, "_last_image_step", None) == step:
        return False
    module._last_image_step = step
    return True


def resize_map(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map -> (H, W) float32 numpy, bilinearly resized (no gradient)."""
    import torch.nn.functional as F

    x = x.detach().float()[None, None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[0, 0].cpu().numpy()


def unit(x: np.ndarray) -> np.ndarray:
    """ReLU then divide by the maximum (all zeros stay zeros): a CAM for display in [0, 1]."""
    x = np.maximum(np.asarray(x, np.float32), 0.0)
    m = float(x.max(initial=0.0))
    return x / m if m > 0 else x


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run ``module`` in eval mode (BatchNorm statistics untouched), then restore every submodule's
    own training flag exactly (frozen BatchNorm layers stay frozen)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training
