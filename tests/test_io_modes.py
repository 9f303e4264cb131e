"""Outputs are created with the process's umask (readable by the group), not mkstemp's 0600."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.pipeline.config import dump_yaml
from rpnet_pl.utils.io import atomic_path, process_umask, save_npy, write_image, write_label_png
from rpnet_pl.utils.io import write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_every_writer_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert process_umask() == umask
        write_image(tmp_path / "a.jpg", np.zeros((4, 4, 3), np.uint8))
        write_label_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
        save_npy(tmp_path / "c.npy", {"x": np.zeros(2)})
        dump_yaml({"a": 1}, tmp_path / "config.yaml")
        write_json(tmp_path / "metrics.json", {"miou": 0.5})
        with atomic_path(tmp_path / "report.md") as tmp:
            tmp.write_text("# report\n")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {name: mode for name in ("a.jpg", "b.png", "c.npy", "config.yaml", "metrics.json", "report.md")}


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_16_bit_greyscale_image_is_read_scaled_not_clipped(tmp_path: Path) -> None:
    """PIL's convert("RGB") clips a 16-bit grey image to 255 (a blank white image)."""
    from PIL import Image

    from rpnet_pl.utils.io import read_image

    Image.fromarray(np.array([[0, 65535], [257 * 100, 257 * 200 + 100]], dtype=np.uint16)).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I")  # as PIL reads it back
    rgb = read_image(tmp_path / "a.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb[..., 0].tolist() == [[0, 255], [100, 200]] and (rgb[..., 1] == rgb[..., 0]).all()
    Image.fromarray(np.array([[3, 250]], dtype=np.int32), mode="I").save(tmp_path / "b.tif")  # 8-bit values, 32-bit mode
    assert read_image(tmp_path / "b.tif")[..., 2].tolist() == [[3, 250]]
