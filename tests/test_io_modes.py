"""Outputs are created with the process's umask (readable by the group), not mkstemp's 0600."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.config import dump_yaml
from rpnet_pl.io import atomic_path, process_umask, save_npy, write_image, write_label_png
from rpnet_pl.io import write_json


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
