"""Two-process DDP on CPU (gloo): a classifier fit, then a CAM step where each image is written once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rpnet_pl.data.synthetic import generate_synthetic_voc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # a free port of our own, so two test runs on one machine never join each other's process group
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    return subprocess.run([sys.executable, "-m", "rpnet_pl.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_two_process_fit_and_cam_write_each_image_once(tmp_path: Path) -> None:
    data = tmp_path / "synth"
    generate_synthetic_voc(data, images=14, size=40, classes=3, seed=1, test_images=1)
    cfg = {
        "model": {"net": {"class_path": "rpnet_pl.models.rpnet.RPNet", "init_args": {
            "backbone": "resnet18", "pretrained": False, "mid": 16, "enhanced_scales": [1.0]}}},
        "data": {"root": str(data), "batch_size": 2, "crop_size": 40, "long_side": [32, 48], "num_workers": 0},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
                    "default_root_dir": str(tmp_path / "run"), "logger": False, "enable_progress_bar": False},
    }
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(cfg))
    fit = _run(["fit", "classifier", "--config", str(tmp_path / "cls.yaml")], tmp_path)
    assert fit.returncode == 0, fit.stdout[-3000:] + fit.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in fit.stdout + fit.stderr  # a real 2-process gloo group
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    cams = tmp_path / "cams"
    cam = _run(["-v", "cam", "--ckpt", str(ckpt), "--out", str(cams), "--root", str(data), "--split", "train_aug",
                "--scales", "1.0", "--devices", "2", "--accelerator", "cpu"], tmp_path)
    assert cam.returncode == 0, cam.stdout[-3000:] + cam.stderr[-3000:]
    ids = (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert sorted(p.stem for p in cams.glob("*.npy")) == sorted(ids)
    writes = re.findall(r"rank (\d) wrote the CAMs of (\S+)", cam.stdout + cam.stderr)
    per_id = Counter(i for _, i in writes)
    assert sorted(per_id) == sorted(ids) and set(per_id.values()) == {1}  # each image written exactly once
    assert {r for r, _ in writes} == {"0", "1"}  # and both ranks did part of the work
