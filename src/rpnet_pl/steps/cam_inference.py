"""Multi-scale + flip CAM inference (IRN's make_cam, the spec's "CAM inference").

Kept apart from the LightningModule so it can be tested with a hand-made ``cam_fn``.
"""
from __future__ import annotations

import errno
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.utils.io import load_npy, save_npy
from rpnet_pl.ops.cam import max_normalise
from rpnet_pl.ops.params import CAM_INFERENCE

CamFn = Callable[[torch.Tensor], torch.Tensor]  # (N, 3, H, W) -> (N, C, h, w), raw class maps


def strided_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """ceil(H / stride), ceil(W / stride)."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


def strided_up_size(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """H and W rounded up to a multiple of ``stride``."""
    h, w = strided_size(size, stride)
    return h * stride, w * stride


def combine_scales(outputs: Sequence[torch.Tensor], size: tuple[int, int], out_stride: int = 4,
                   net_stride: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """IRN's ``make_cam`` after the network: the per-scale outputs (each (C, h_s, w_s), relu'd and
    flip-summed) summed over scales, bilinearly resized (``align_corners=False``) to the stride-4
    size ``ceil(H/4) x ceil(W/4)`` (``strided``) and to the stride-16-rounded-up size, then
    cropped to (H, W) (``high_res``). Neither is normalised."""
    if not outputs:
        raise ValueError("combine_scales needs at least one scale")
    h, w = size
    s_size, up_size = strided_size((h, w), out_stride), strided_up_size((h, w), net_stride)
    strided = sum(F.interpolate(o[None], size=s_size, mode="bilinear", align_corners=False)[0] for o in outputs)
    high = sum(F.interpolate(o[None], size=up_size, mode="bilinear", align_corners=False)[0] for o in outputs)
    return strided, high[:, :h, :w]


@torch.no_grad()
def multiscale_cam(
    cam_fn: CamFn,
    image: torch.Tensor,
    scales: Sequence[float] = CAM_INFERENCE.scales,
    flip: bool = True,
    out_stride: int = 4,
    net_stride: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs of one image summed over scales (and flips).

    Each scale runs on the image and its mirror as one batch; the mirrored map is flipped back and
    added, then ReLU; :func:`combine_scales` sums the scales. Returns ``strided``
    (C, ceil(H/4), ceil(W/4)) and ``high_res`` (C, H, W). Neither is normalised (see
    :func:`rpnet_pl.ops.cam.max_normalise`).
    """
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    outputs = []
    for s in scales:
        x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear",
                                                 align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        cams = cam_fn(x)  # (1 or 2, C, h', w')
        cam = cams[0:1] + cams[1:2].flip(-1) if flip else cams[0:1]
        outputs.append(F.relu(cam)[0])
    return combine_scales(outputs, (h, w), out_stride, net_stride)


def cam_record(strided: torch.Tensor, high_res: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """The per-image CAM file: ``keys`` (K,) label indices 1..C-1 of the image's classes,
    ``cam`` (K, h/4, w/4) and ``high_res`` (K, H, W), each channel max-normalised, float16 on disk
    for the high-res map (it is the large one; values are in [0, 1])."""
    keys = torch.nonzero(labels > 0.5).flatten()
    return {
        "keys": (keys + 1).cpu().numpy().astype(np.int64),
        "cam": max_normalise(strided[keys]).cpu().numpy().astype(np.float32),
        "high_res": max_normalise(high_res[keys]).cpu().numpy().astype(np.float16),
    }


def cam_path(out_dir: str | Path, image_id: str) -> Path:
    return Path(out_dir) / f"{image_id}.npy"


def cam_is_complete(path: Path) -> bool:
    """True if ``path`` holds a readable CAM record (a corrupted or partial file is redone)."""
    if not path.is_file():
        return False
    try:
        rec = load_npy(path)
        return isinstance(rec, dict) and {"keys", "cam", "high_res"} <= set(rec)
    except Exception:
        return False


def write_cam(out_dir: str | Path, image_id: str, record: dict[str, np.ndarray]) -> Path:
    """Write one CAM file atomically; a full disk is a one-line DatasetError naming the file (the
    partial temporary file is removed, the CAM files written before stay complete)."""
    from rpnet_pl.utils.errors import DatasetError

    path = cam_path(out_dir, image_id)
    try:
        save_npy(path, record)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DatasetError(f"{path}: no space left on device while writing the CAM file (nothing half-written "
                           "is kept; free space and re-run `rpnet cam`: complete CAM files are skipped)") from None
    return path


def read_cam(out_dir: str | Path, image_id: str) -> dict[str, np.ndarray]:
    """One image's CAM record (:func:`cam_record`'s keys). A record of the public RPNet / IRN code
    (``step/make_cam.py``: ``keys`` a torch tensor of 0-based foreground indices, ``cam`` a torch
    tensor) is read as ours: class ids ``keys + 1``, numpy arrays; ours never stores a tensor."""
    from rpnet_pl.utils.errors import DatasetError

    rec = load_npy(cam_path(out_dir, image_id))
    if not isinstance(rec, dict) or not {"keys", "cam", "high_res"} <= set(rec):
        raise DatasetError(f"{cam_path(out_dir, image_id)}: not a CAM record (keys, cam, high_res)")
    if isinstance(rec["keys"], torch.Tensor):  # the public code's numbering: channel c is class c + 1
        rec = {**rec, "keys": rec["keys"].numpy().astype(np.int64) + 1,
               **{k: np.asarray(rec[k].numpy() if isinstance(rec[k], torch.Tensor) else rec[k], dtype=np.float32)
                  for k in ("cam", "high_res")}}
    return rec
