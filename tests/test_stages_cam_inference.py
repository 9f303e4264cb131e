"""Multi-scale + flip CAM inference with a hand-made CAM function."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.steps.cam_inference import (cam_is_complete, cam_record, multiscale_cam, read_cam, strided_size,
                                           strided_up_size, write_cam)


def _pool16(x: torch.Tensor) -> torch.Tensor:
    """A 'network' at output stride 16 whose two class maps are the first two input channels."""
    return F.avg_pool2d(x[:, :2], 16, ceil_mode=True)


def test_sizes() -> None:
    assert strided_size((33, 50), 4) == (9, 13)
    assert strided_up_size((33, 50), 16) == (48, 64)


def test_constant_image_sums_scales_and_flips() -> None:
    image = torch.zeros(1, 3, 40, 56)
    image[:, 0] = 0.5
    image[:, 1] = -1.0  # ReLU removes it
    strided, high = multiscale_cam(_pool16, image, scales=(1.0, 0.5, 1.5, 2.0), flip=True)
    assert strided.shape == (2, 10, 14) and high.shape == (2, 40, 56)
    # 4 scales x (image + flipped) x 0.5 = 4.0 everywhere
    torch.testing.assert_close(strided[0], torch.full((10, 14), 4.0))
    torch.testing.assert_close(high[0], torch.full((40, 56), 4.0))
    assert strided[1].abs().max() == 0


def test_flip_is_undone() -> None:
    image = torch.zeros(1, 3, 32, 64)
    image[:, 0, :, :32] = 1.0  # left half on
    strided, _ = multiscale_cam(_pool16, image, scales=(1.0,), flip=True)
    without, _ = multiscale_cam(_pool16, image, scales=(1.0,), flip=False)
    torch.testing.assert_close(strided, 2 * without)  # the flipped map lines up after flipping back
    assert strided[0, :, 0].min() > strided[0, :, -1].max()  # still on the left


def test_record_roundtrip(tmp_path: Path) -> None:
    cams = torch.tensor([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([1.0, 0.0, 1.0])
    rec = cam_record(cams, cams, labels)
    assert rec["keys"].tolist() == [1, 3]
    np.testing.assert_allclose(rec["cam"][1], [[1.0, 0.0], [0.0, 0.0]], atol=1e-4)
    path = write_cam(tmp_path, "x", rec)
    assert cam_is_complete(path)
    assert read_cam(tmp_path, "x")["keys"].tolist() == [1, 3]
    path.write_bytes(b"truncated")
    assert not cam_is_complete(path)


def test_a_cam_file_of_the_public_code_reads_as_ours(tmp_path: Path) -> None:
    # step/make_cam.py's record: keys = torch.nonzero(label)[:, 0] (0-based), cam a tensor, high_res numpy
    from rpnet_pl.utils.io import save_npy

    strided = torch.tensor([[[0.5, 1.0]], [[1.0, 0.0]]])
    save_npy(tmp_path / "2007_000032.npy", {"keys": torch.tensor([0, 14]), "cam": strided,
                                            "high_res": strided.numpy().repeat(4, axis=2)})
    rec = read_cam(tmp_path, "2007_000032")
    assert rec["keys"].tolist() == [1, 15]  # aeroplane and person: class ids, as ours numbers them
    assert isinstance(rec["cam"], np.ndarray) and rec["cam"].dtype == np.float32
    np.testing.assert_array_equal(rec["cam"], strided.numpy())
    assert rec["high_res"].shape == (2, 1, 8)
