"""A corrupt image met by a DataLoader worker mid-run ends `rpnet fit` with the one-line DatasetError."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rpnet_pl.cli import main
from rpnet_pl.utils.terminal import one_line
from rpnet_pl.utils.errors import DatasetError


@pytest.mark.slow
def test_corrupt_image_in_a_worker_is_one_line_naming_the_file(tmp_path: Path, tiny_voc: Path, capsys) -> None:
    images = sorted((tiny_voc / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))
    for p in images:
        p.write_bytes(b"not a jpeg")
    cfg = {"model": {"net": {"class_path": "rpnet_pl.models.rpnet.RPNet", "init_args": {
               "backbone": "resnet18", "pretrained": False, "mid": 16, "enhanced_scales": [1.0, 0.5]}}},
           "data": {"root": str(tiny_voc), "batch_size": 2, "crop_size": 16, "long_side": [16, 24],
                    "num_workers": 1},
           "trainer": {"max_steps": 1, "logger": False, "enable_progress_bar": False, "accelerator": "cpu",
                       "default_root_dir": str(tmp_path / "run")}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "classifier", "--config", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    named = [p for p in images if err[0].startswith(f"error: {p}: unreadable image (")]
    assert len(named) == 1, err[0]


def test_one_line_unwraps_a_worker_traceback() -> None:
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 3, in f\n    raise DatasetError(msg)\n"
                           "rpnet_pl.utils.errors.DatasetError: /d/a.jpg: unreadable image (OSError: truncated)\n")
    assert one_line(wrapped) == "/d/a.jpg: unreadable image (OSError: truncated)"
    assert one_line(DatasetError("/d/b.png: mask not found")) == "/d/b.png: mask not found"
