"""CAM and label-map evaluation on the tiny VOC tree, with hand-computed IoUs.

tiny_voc: four 16x20 images; row 0 is 255 (ignored); class j of an image is the 4x4 block
rows 1:5, cols 1+4j:5+4j. So the 300 labelled pixels per image hold 16 per class, the rest
background: background 284 + 268 + 284 + 284 = 1120 gt pixels over the split.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.cli import main
from rpnet_pl.data.classes import voc_palette
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import write_label_png
from rpnet_pl.steps.cam_inference import cam_path, write_cam
from rpnet_pl.steps.evaluate import (DEFAULT_THRESHOLDS, cam_result_line, evaluate_cams, evaluate_masks,
                                      foreground_precision_recall, format_report, masks_result_line,
                                      seg_result_line, sweep_edge)

A, B = "2007_000001", "2007_000002"  # A: {1}; B: {1, 2}


def exact_cams(root: Path, out: Path, split: str = "train") -> dict[str, np.ndarray]:
    """CAMs equal to the gt regions (1.0 inside, 0 outside); returns the gt masks."""
    reader = build_reader("voc", root, split)
    masks = {}
    for i in reader.ids:
        gt = reader.mask(i)
        keys = reader.labels(i)
        high = np.stack([(gt == k) for k in keys]).astype(np.float16)
        write_cam(out, i, {"keys": keys.astype(np.int64), "cam": high[:, ::4, ::4].astype(np.float32),
                           "high_res": high})
        masks[i] = gt
    return masks


def test_default_thresholds() -> None:
    assert 0.15 in DEFAULT_THRESHOLDS and 0.16 in DEFAULT_THRESHOLDS
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.6
    assert list(DEFAULT_THRESHOLDS) == sorted(DEFAULT_THRESHOLDS)


def test_exact_cams_give_miou_one(tiny_voc: Path, tmp_path: Path) -> None:
    exact_cams(tiny_voc, tmp_path / "cams")
    res = evaluate_cams(tmp_path / "cams", tiny_voc, split="train", thresholds=(0.15, 0.5))
    assert res["n_images"] == 4
    assert res["thresholds"]["0.5"]["miou"] == 1.0 and res["thresholds"]["0.15"]["miou"] == 1.0
    assert res["best_miou"] == 1.0
    pc = res["per_class_iou"]
    assert pc["background"] == pc["aeroplane"] == pc["bicycle"] == pc["person"] == 1.0
    assert pc["cat"] is None  # absent from gt and prediction
    assert res["precision"]["bicycle"] == 1.0 and res["recall"]["person"] == 1.0
    json.dumps(res, allow_nan=False)  # JSON-safe


def test_half_covered_object(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    exact_cams(tiny_voc, cams)
    # Image A: the top half of its class-1 block scores 1.0, the bottom half 0.375 (exact in float16).
    high = np.zeros((1, 16, 20), dtype=np.float16)
    high[0, 1:3, 1:5] = 1.0
    high[0, 3:5, 1:5] = 0.375
    write_cam(cams, A, {"keys": np.array([1]), "cam": high[:, ::4, ::4].astype(np.float32), "high_res": high})
    res = evaluate_cams(cams, tiny_voc, split="train", thresholds=(0.2, 0.35, 0.4, 0.5))
    # thr < 0.375: exact. thr >= 0.375: 8 of A's 16 class-1 pixels go to background.
    assert res["thresholds"]["0.2"]["miou"] == 1.0 and res["thresholds"]["0.35"]["miou"] == 1.0
    # class 1: gt 32 (A 16 + B 16), predicted 24, all correct -> 24/32; background: gt 1120,
    # predicted 1128 -> 1120/1128; classes 2 and 15 exact.
    iou_bg, iou_1 = 1120 / 1128, 24 / 32
    for t in ("0.4", "0.5"):
        per = res["thresholds"][t]["per_class"]
        assert per["aeroplane"] == pytest.approx(iou_1) and per["background"] == pytest.approx(iou_bg)
        assert per["bicycle"] == 1.0 and per["person"] == 1.0
        assert res["thresholds"][t]["miou"] == pytest.approx((iou_bg + iou_1 + 1 + 1) / 4)
    assert res["best_threshold"] in (0.2, 0.35) and res["best_miou"] == 1.0


def test_half_covered_at_best_reports_precision_recall(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    exact_cams(tiny_voc, cams)
    high = np.zeros((1, 16, 20), dtype=np.float16)
    high[0, 1:3, 1:5] = 1.0
    write_cam(cams, A, {"keys": np.array([1]), "cam": high[:, ::4, ::4].astype(np.float32), "high_res": high})
    res = evaluate_cams(cams, tiny_voc, split="train", thresholds=(0.5,))
    assert res["best_threshold"] == 0.5
    assert res["per_class_iou"]["aeroplane"] == pytest.approx(0.75)
    assert res["precision"]["aeroplane"] == 1.0 and res["recall"]["aeroplane"] == pytest.approx(0.75)
    assert res["precision"]["background"] == pytest.approx(1120 / 1128) and res["recall"]["background"] == 1.0
    text = format_report(res)
    assert "| 0.5 |" in text and "| precision |" in text and "| recall |" in text and "75.0" in text


def test_missing_cam_names_file(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    exact_cams(tiny_voc, cams)
    cam_path(cams, B).unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 CAM file.*" + B + r"\.npy"):
        evaluate_cams(cams, tiny_voc, split="train")


def test_cam_size_mismatch(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    exact_cams(tiny_voc, cams)
    high = np.ones((1, 8, 8), dtype=np.float16)
    write_cam(cams, A, {"keys": np.array([1]), "cam": high.astype(np.float32), "high_res": high})
    with pytest.raises(DatasetError, match=A + r"\.npy.*differs"):
        evaluate_cams(cams, tiny_voc, split="train")


def test_strided_cams(tiny_voc: Path, tmp_path: Path) -> None:
    """Constant 0.5 stride-4 CAMs (first label only) upsample to a constant 0.5 at image size."""
    cams = tmp_path / "cams"
    reader = build_reader("voc", tiny_voc, "train")
    for i in reader.ids:
        write_cam(cams, i, {"keys": reader.labels(i)[:1], "cam": np.full((1, 4, 5), 0.5, np.float32),
                            "high_res": np.zeros((1, 16, 20), np.float16)})
    # Above 0.5 all background: bg gt 1120, predicted 1200 (80 fg pixels missed); fg IoU 0.
    low = evaluate_cams(cams, tiny_voc, thresholds=(0.6,), use_high_res=False)
    assert low["per_class_iou"]["background"] == pytest.approx(1120 / 1200)
    assert low["per_class_iou"]["aeroplane"] == 0.0
    assert evaluate_cams(cams, tiny_voc, thresholds=(0.4,))["per_class_iou"] == low["per_class_iou"]
    # Below 0.5 every labelled pixel is its image's first class: A, B -> 1; C -> 2; D -> 15.
    fg = evaluate_cams(cams, tiny_voc, thresholds=(0.4,), use_high_res=False)["per_class_iou"]
    assert fg["background"] == 0.0
    assert fg["aeroplane"] == pytest.approx(32 / 600)  # gt 32, pred 600, tp 32
    assert fg["bicycle"] == pytest.approx(16 / (32 + 300 - 16))  # gt 32 (B, C), pred 300 (C), tp 16
    assert fg["person"] == pytest.approx(16 / 300)


def write_masks(root: Path, out: Path) -> dict[str, np.ndarray]:
    reader = build_reader("voc", root, "train")
    masks = {i: reader.mask(i) for i in reader.ids}
    for i, m in masks.items():
        write_label_png(out / f"{i}.png", m, voc_palette())
    return masks


def test_masks_equal_to_gt(tiny_voc: Path, tmp_path: Path) -> None:
    write_masks(tiny_voc, tmp_path / "m")
    res = evaluate_masks(tmp_path / "m", tiny_voc, split="train")
    assert res["miou"] == 1.0 and res["n_images"] == 4
    assert res["per_class_iou"]["person"] == 1.0 and res["per_class_iou"]["cat"] is None


def test_masks_altered(tiny_voc: Path, tmp_path: Path) -> None:
    masks = write_masks(tiny_voc, tmp_path / "m")
    m = masks[B].copy()
    m[1:5, 5] = 1  # B's class-2 block (cols 5:9): its left column (4 px) predicted as class 1
    write_label_png(tmp_path / "m" / f"{B}.png", m, voc_palette())
    res = evaluate_masks(tmp_path / "m", tiny_voc, split="train")
    # class 1: gt 32, pred 36, tp 32; class 2: gt 32, pred 28, tp 28.
    assert res["per_class_iou"]["aeroplane"] == pytest.approx(32 / 36)
    assert res["per_class_iou"]["bicycle"] == pytest.approx(28 / 32)
    assert res["per_class_iou"]["background"] == 1.0
    assert res["miou"] == pytest.approx((1 + 32 / 36 + 28 / 32 + 1) / 4)
    assert res["precision"]["aeroplane"] == pytest.approx(32 / 36)
    assert res["recall"]["bicycle"] == pytest.approx(28 / 32)


def test_masks_ignore_pred(tiny_voc: Path, tmp_path: Path) -> None:
    masks = write_masks(tiny_voc, tmp_path / "m")
    m = masks[A].copy()
    m[1:5, 1:3] = 255  # half of A's class-1 block unsure
    write_label_png(tmp_path / "m" / f"{A}.png", m, voc_palette())
    with pytest.raises(DatasetError, match=A + r"\.png.*ignore_pred"):
        evaluate_masks(tmp_path / "m", tiny_voc)
    assert evaluate_masks(tmp_path / "m", tiny_voc, ignore_pred=True)["miou"] == 1.0


def test_masks_size_and_missing(tiny_voc: Path, tmp_path: Path) -> None:
    write_masks(tiny_voc, tmp_path / "m")
    write_label_png(tmp_path / "m" / f"{A}.png", np.zeros((10, 10), np.uint8), voc_palette())
    with pytest.raises(DatasetError, match=A + r"\.png: size 10x10 differs"):
        evaluate_masks(tmp_path / "m", tiny_voc)
    (tmp_path / "m" / f"{A}.png").unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 label PNG.*" + A + r"\.png"):
        evaluate_masks(tmp_path / "m", tiny_voc)


def _result_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rpnet_pl.progress"]


def test_cli_eval_cam_and_pseudo_masks(tiny_voc: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                       caplog: pytest.LogCaptureFixture) -> None:
    exact_cams(tiny_voc, tmp_path / "cams")
    out = tmp_path / "metrics" / "cam.json"
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        assert main(["eval-cam", "--cams", str(tmp_path / "cams"), "--root", str(tiny_voc),
                     "--thresholds", "0.15", "0.5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["best_miou"] == 1.0 and set(res["thresholds"]) == {"0.15", "0.5"}
    printed = capsys.readouterr().out
    assert "| threshold | mIoU |" in printed and "| recall |" in printed
    # the step's one result line (a quick step: no progress line before it)
    # exact CAMs score 1.0 at both thresholds: the best is an end of the sweep, but not beyond-suspect
    assert res["best_at_edge"] is None
    side = {0.5: "largest threshold, but a smaller", 0.15: "smallest threshold, but a larger"}[res["best_threshold"]]
    assert _result_lines(caplog) == [f"CAM seeds: best mIoU 100.0% at threshold {res['best_threshold']:g} "
                                     f"(sweep 0.15-0.5: its {side} one is as good)"]

    caplog.clear()
    write_masks(tiny_voc, tmp_path / "m")
    out2 = tmp_path / "metrics" / "masks.json"
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        assert main(["eval-pseudo-masks", "--masks", str(tmp_path / "m"), "--root", str(tiny_voc),
                     "--out", str(out2)]) == 0
    assert json.loads(out2.read_text())["miou"] == 1.0
    assert _result_lines(caplog) == [
        "mIoU 100.0%, foreground precision 100.0% recall 100.0% (4 images, split train)"]

    cam_path(tmp_path / "cams", A).unlink()
    assert main(["eval-cam", "--cams", str(tmp_path / "cams"), "--root", str(tiny_voc)]) == 2
    assert f"{A}.npy" in capsys.readouterr().err


def test_sweep_edge_flags_an_optimum_at_the_end_of_the_sweep() -> None:
    assert sweep_edge({0.1: 0.2, 0.2: 0.3, 0.3: 0.4}) == "high"
    assert sweep_edge({0.1: 0.5, 0.2: 0.3, 0.3: 0.4}) == "low"
    assert sweep_edge({0.1: 0.2, 0.2: 0.5, 0.3: 0.4}) is None
    assert sweep_edge({0.1: 0.5, 0.2: 0.5}) is None  # a tie: the edge is not strictly best
    assert sweep_edge({0.3: 0.4}) is None and sweep_edge({0.1: float("nan"), 0.3: 0.4}) is None


def test_best_at_the_largest_threshold_is_reported(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    exact_cams(tiny_voc, cams)
    # Image A: its class-1 block at 1.0 and a background strip at 0.3: thresholds below 0.3 call it class 1.
    high = np.zeros((1, 16, 20), dtype=np.float16)
    high[0, 1:5, 1:5] = 1.0
    high[0, 10:14, :] = 0.3
    write_cam(cams, A, {"keys": np.array([1]), "cam": high[:, ::4, ::4].astype(np.float32), "high_res": high})
    res = evaluate_cams(cams, tiny_voc, split="train", thresholds=(0.1, 0.2, 0.4))
    assert res["best_threshold"] == 0.4 and res["best_miou"] == 1.0 and res["best_at_edge"] == "high"
    assert "the best threshold is the sweep's largest" in format_report(res)
    res = evaluate_cams(cams, tiny_voc, split="train", thresholds=(0.1, 0.4, 0.6))
    assert res["best_at_edge"] is None and "sweep's" not in format_report(res)


def test_cam_result_line_hand_computed() -> None:
    sweep = {"thresholds": {"0.05": {}, "0.15": {}, "0.6": {}}, "best_threshold": 0.15, "best_miou": 0.5234,
             "best_at_edge": None}
    assert cam_result_line(sweep) == "CAM seeds: best mIoU 52.3% at threshold 0.15 (sweep 0.05-0.6, best inside it)"
    tied = {**sweep, "best_threshold": 0.6}  # at the end, but sweep_edge found another threshold as good
    assert cam_result_line(tied) == ("CAM seeds: best mIoU 52.3% at threshold 0.6 (sweep 0.05-0.6: its largest "
                                     "threshold, but a smaller one is as good)")
    high = {**sweep, "best_threshold": 0.6, "best_at_edge": "high"}
    assert cam_result_line(high) == ("CAM seeds: best mIoU 52.3% at threshold 0.6 (sweep 0.05-0.6: the best is "
                                     "its largest threshold, the optimum may lie above it)")
    low = {**sweep, "best_threshold": 0.05, "best_at_edge": "low"}
    assert cam_result_line(low).endswith("(sweep 0.05-0.6: the best is its smallest threshold, the optimum "
                                         "may lie below it)")
    one = {"thresholds": {"0.16": {}}, "best_threshold": 0.16, "best_miou": None, "best_at_edge": None}
    assert cam_result_line(one) == "CAM seeds: best mIoU - at threshold 0.16 (one threshold, no sweep)"


def test_foreground_precision_recall_pools_the_classes() -> None:
    """Rows gt (bg, 1, 2), columns prediction. Foreground predicted as any foreground class:
    20 + 2 + 3 + 1 = 26 (class 1 called class 2 still counts); predicted foreground: columns 1-2,
    28 + 8 = 36; gt foreground: rows 1-2, 32 + 8 = 40 -> precision 26/36, recall 26/40."""
    conf = [[50, 5, 5], [10, 20, 2], [4, 3, 1]]
    precision, recall = foreground_precision_recall(conf)
    assert precision == pytest.approx(26 / 36) and recall == pytest.approx(0.65)
    line = masks_result_line({"miou": 0.4321, "confusion": conf, "n_images": 3, "split": "train"})
    assert line == "mIoU 43.2%, foreground precision 72.2% recall 65.0% (3 images, split train)"
    # nothing predicted foreground: precision undefined, recall 0
    assert masks_result_line({"miou": 0.25, "confusion": [[5, 0], [3, 0]], "n_images": 1, "split": "val"}) == (
        "mIoU 25.0%, foreground precision - recall 0.0% (1 images, split val)")


def test_seg_result_line_hand_computed() -> None:
    both = {"without_crf": {"miou": 0.651, "n_images": 12, "split": "val"}, "with_crf": {"miou": 0.664}}
    assert seg_result_line(both) == "segmenter mIoU 65.1% without CRF, 66.4% with CRF (12 images, split val)"
    assert seg_result_line({"without_crf": both["without_crf"]}) == (
        "segmenter mIoU 65.1% without CRF, with CRF not run (12 images, split val)")


def test_eval_seg_step_logs_its_result_line(tiny_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """Predictions equal to the ground truth, CRF predictions all background. With CRF, by hand:
    background IoU 1120 / 1200 (every labelled pixel called background), classes 1, 2 and 15 IoU 0
    -> mIoU 0.9333 / 4 = 23.3%."""
    from rpnet_pl.steps import segmentation
    from rpnet_pl.pipeline.registry import EvalSegOptions

    def fake_predict(ckpt, pred_dir, root, dataset, split, crf_dir=None, **kw):
        reader = build_reader("voc", root, split, weak=False)
        for i in reader.ids:
            gt = reader.mask(i)
            write_label_png(Path(pred_dir) / f"{i}.png", np.where(gt == 255, 0, gt).astype(np.uint8), voc_palette())
            write_label_png(Path(crf_dir) / f"{i}.png", np.zeros_like(gt), voc_palette())
        return len(reader.ids), True

    monkeypatch.setattr(segmentation, "predict_segmentation", fake_predict)
    with caplog.at_level(logging.INFO, logger="rpnet_pl.progress"):
        assert segmentation.eval_seg_step(EvalSegOptions(ckpt="unused.ckpt", out=str(tmp_path / "seg"),
                                                         root=str(tiny_voc), split="val")) == 0
    assert _result_lines(caplog) == ["segmenter mIoU 100.0% without CRF, 23.3% with CRF (4 images, split val)"]
