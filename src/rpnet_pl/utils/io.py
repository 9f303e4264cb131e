"""The one place that reads and writes images, masks and arrays.

Every writer is atomic: it writes a temporary file in the destination folder and renames it,
so an interrupted job never leaves a half-written output behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from rpnet_pl.utils.errors import DatasetError

PathLike = str | os.PathLike


def process_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The result gets the mode a plain ``open()`` would give (0644 under umask 022), not mkstemp's 0600,
    so colleagues on a shared machine can read the outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~process_umask())  # the writer may have replaced the file: chmod last
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: PathLike, obj: object) -> Path:
    """Write ``obj`` as JSON atomically (a temp file, then renamed); returns the path."""
    import json

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    return path


#: greyscale modes wider than 8 bits, which PIL's ``convert("RGB")`` clips to 255 (a 16-bit photo turns white)
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_grey_to_rgb(values: np.ndarray, mode: str) -> np.ndarray:
    """A wide greyscale image as (H, W, 3) uint8: 16-bit values scaled by 255 / 65535; 32-bit integer
    or float values taken as 8-bit when they fit, else as 16-bit."""
    arr = values.astype(np.float64)
    full = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
    grey = np.clip(np.rint(arr * (255.0 / full)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def read_image(path: PathLike) -> np.ndarray:
    """Read an RGB image as (H, W, 3) uint8; a clear DatasetError if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            if im.mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(np.asarray(im), im.mode)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DatasetError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None


def read_label_png(path: PathLike) -> np.ndarray:
    """Read a label PNG (palette or grey) as (H, W) uint8 class indices, without palette mapping."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: mask not found")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"{path}: mask must be a palette or greyscale PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable mask ({exc.__class__.__name__}: {exc})") from None
    if arr.max(initial=0) > 255:
        raise DatasetError(f"{path}: mask value {int(arr.max())} does not fit the 0-255 label range")
    return arr.astype(np.uint8)


def write_label_png(path: PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write (H, W) uint8 labels as a PNG, with ``palette`` ((256, 3) uint8) when given; atomic."""
    if label.ndim != 2:
        raise ValueError(f"label must be 2-D, got shape {label.shape}")
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette is not None:
        im = im.convert("P")
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def write_image(path: PathLike, image: np.ndarray, quality: int = 95) -> None:
    """Write an (H, W, 3) uint8 RGB image (JPEG or PNG by suffix); atomic."""
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(image.astype(np.uint8), mode="RGB").save(tmp, format=fmt, quality=quality)


def save_npy(path: PathLike, obj: object) -> None:
    """Save an array or a dict of arrays with np.save; atomic."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, obj, allow_pickle=True)


def load_npy(path: PathLike) -> object:
    """Load what ``save_npy`` wrote (a dict comes back as a dict)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        obj = np.load(path, allow_pickle=True)
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable .npy ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        return obj.item()
    return obj


def save_npz(path: PathLike, **arrays: np.ndarray) -> None:
    """Save named arrays with ``np.savez_compressed`` (zlib); atomic."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: savez would append ".npz" to a name
            np.savez_compressed(fh, **arrays)


def load_npz(path: PathLike) -> dict[str, np.ndarray]:
    """Load what ``save_npz`` wrote, as a dict of arrays."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise DatasetError(f"{path}: unreadable .npz ({exc.__class__.__name__}: {exc})") from None
