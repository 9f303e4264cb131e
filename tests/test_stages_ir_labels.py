"""IR labels from crafted high-res CAMs on the tiny VOC tree (16x20 images)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.cli import main
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_label_png
from rpnet_pl.steps.cam_inference import cam_path, write_cam
from rpnet_pl.steps.ir_labels import make_ir_labels

A, B = "2007_000001", "2007_000002"  # A: {1}; B: {1, 2}


def crafted_cams(root: Path, out: Path) -> dict[str, np.ndarray]:
    """Per image: each class's 4x4 gt block scores 0.5, a 1-pixel ring around it 0.1, the rest 0.
    Returns the expected thresholded IR label (fg 0.30, bg 0.05, no CRF)."""
    reader = build_reader("voc", root, "train_aug")
    expected = {}
    for i in reader.ids:
        keys = reader.labels(i)
        high = np.zeros((len(keys), 16, 20), dtype=np.float16)
        label = np.zeros((16, 20), dtype=np.uint8)
        for c, k in enumerate(keys):
            r0, c0 = 1, 1 + 4 * c
            high[c, r0 - 1:r0 + 5, max(c0 - 1, 0):c0 + 5] = 0.1  # ring: between 0.05 and 0.30
            label[r0 - 1:r0 + 5, max(c0 - 1, 0):c0 + 5] = 255
        for c, k in enumerate(keys):
            r0, c0 = 1, 1 + 4 * c
            high[c, r0:r0 + 4, c0:c0 + 4] = 0.5
            label[r0:r0 + 4, c0:c0 + 4] = k
        write_cam(out, i, {"keys": keys.astype(np.int64), "cam": high[:, ::4, ::4].astype(np.float32),
                           "high_res": high})
        expected[i] = label
    return expected


def test_thresholds_without_crf(tiny_voc: Path, tmp_path: Path) -> None:
    expected = crafted_cams(tiny_voc, tmp_path / "cams")
    n = make_ir_labels(tmp_path / "cams", tmp_path / "ir", tiny_voc, crf=False, workers=0)
    assert n == 4
    for i, exp in expected.items():
        got = read_label_png(tmp_path / "ir" / f"{i}.png")
        np.testing.assert_array_equal(got, exp)
    # B by hand: row 0 and col 0..9 of rows 0..5 are the rings, blocks 1 at cols 1:5, 2 at 5:9.
    b = read_label_png(tmp_path / "ir" / f"{B}.png")
    assert b[2, 2] == 1 and b[2, 6] == 2 and b[0, 3] == 255 and b[5, 9] == 255 and b[10, 10] == 0
    assert b[2, 9] == 255 and b[2, 10] == 0


def test_with_crf_runs(tiny_voc: Path, tmp_path: Path) -> None:
    crafted_cams(tiny_voc, tmp_path / "cams")
    assert make_ir_labels(tmp_path / "cams", tmp_path / "ir", tiny_voc, crf=True, workers=0, t=2) == 4
    reader = build_reader("voc", tiny_voc, "train_aug")
    for i in reader.ids:
        got = read_label_png(tmp_path / "ir" / f"{i}.png")
        assert got.shape == (16, 20)
        assert set(np.unique(got).tolist()) <= {0, 255, *reader.labels(i).tolist()}


def test_resume_and_corrupt(tiny_voc: Path, tmp_path: Path) -> None:
    expected = crafted_cams(tiny_voc, tmp_path / "cams")
    ir = tmp_path / "ir"
    assert make_ir_labels(tmp_path / "cams", ir, tiny_voc, crf=False, workers=0) == 4
    assert make_ir_labels(tmp_path / "cams", ir, tiny_voc, crf=False, workers=0) == 0
    (ir / f"{A}.png").write_bytes(b"\x89PNG truncated")
    assert make_ir_labels(tmp_path / "cams", ir, tiny_voc, crf=False, workers=0) == 1
    np.testing.assert_array_equal(read_label_png(ir / f"{A}.png"), expected[A])
    # A PNG of the wrong size is redone too; a done image no longer needs its CAM.
    from rpnet_pl.utils.io import write_label_png

    write_label_png(ir / f"{B}.png", np.zeros((4, 4), np.uint8))
    cam_path(tmp_path / "cams", A).unlink()
    assert make_ir_labels(tmp_path / "cams", ir, tiny_voc, crf=False, workers=0) == 1
    assert not list(ir.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_missing_cam(tiny_voc: Path, tmp_path: Path) -> None:
    crafted_cams(tiny_voc, tmp_path / "cams")
    cam_path(tmp_path / "cams", B).unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 CAM file.*" + B + r"\.npy"):
        make_ir_labels(tmp_path / "cams", tmp_path / "ir", tiny_voc, crf=False, workers=0)
    with pytest.raises(TypeError, match="unknown CRF option"):
        make_ir_labels(tmp_path / "cams", tmp_path / "ir", tiny_voc, workers=0, sigma=3)


def test_workers_match_inline(tiny_voc: Path, tmp_path: Path) -> None:
    crafted_cams(tiny_voc, tmp_path / "cams")
    assert make_ir_labels(tmp_path / "cams", tmp_path / "w1", tiny_voc, crf=True, workers=1, t=2) == 4
    assert make_ir_labels(tmp_path / "cams", tmp_path / "w2", tiny_voc, crf=True, workers=2, t=2,
                          chunksize=1) == 4
    for p in sorted((tmp_path / "w1").glob("*.png")):
        assert p.read_bytes() == (tmp_path / "w2" / p.name).read_bytes()


def test_cli_ir_labels_then_eval(tiny_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    crafted_cams(tiny_voc, tmp_path / "cams")
    assert main(["ir-labels", "--cams", str(tmp_path / "cams"), "--out", str(tmp_path / "ir"),
                 "--root", str(tiny_voc), "--no-crf", "--workers", "0"]) == 0
    assert "wrote 4 IR label PNG(s)" in capsys.readouterr().out
    # The IR labels are exact on their confident pixels: scored with --ignore-pred, mIoU 1.
    out = tmp_path / "ir.json"
    assert main(["eval-pseudo-masks", "--masks", str(tmp_path / "ir"), "--root", str(tiny_voc), "--split", "train",
                 "--ignore-pred", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["miou"] == 1.0
