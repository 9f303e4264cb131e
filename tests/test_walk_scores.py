"""The walk's saved scores (`rpnet pseudo-masks --save-scores`) and `eval-pseudo-masks`'s sweep over them:
one thresholding, so the sweep at a threshold gives exactly the step's masks at that threshold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rpnet_pl.pipeline import layout
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_label_png
from rpnet_pl.ops.random_walk import labels_from_scores, sem_seg_from_rw, walk_scores_at_image_size
from rpnet_pl.steps.evaluate import evaluate_masks, format_report
from rpnet_pl.steps.pseudo_masks import make_pseudo_masks
from rpnet_pl.steps.walk_scores import (mask_from_walk_scores, read_walk_scores, walk_scores_path,
                                         walk_scores_record, write_walk_scores)
from tests.conftest import save_stage_checkpoint, tiny_refine_stage, write_uniform_cams


def test_a_tie_with_the_background_threshold_is_background() -> None:
    scores = torch.tensor([[[0.25, 0.5, 0.1]], [[0.25, 0.6, 0.3]]])  # (K=2, 1, 3)
    np.testing.assert_array_equal(labels_from_scores(scores, [4, 7], bg=0.25), [[0, 7, 7]])
    np.testing.assert_array_equal(labels_from_scores(scores, [4, 7], bg=0.55), [[0, 7, 0]])
    np.testing.assert_array_equal(labels_from_scores(scores[:0], [], bg=0.1), [[0, 0, 0]])
    with pytest.raises(ValueError, match="2 channels for 1 keys"):
        labels_from_scores(scores, [4], bg=0.25)


def test_scores_at_image_size_are_upsampled_cropped_and_divided_by_their_max() -> None:
    # (1, 2, 2), rows 2 and 0: x4 bilinear, output row i samples source row (i + 0.5) / 4 - 0.5 (clamped)
    rw = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])
    up = walk_scores_at_image_size(rw, (7, 3))
    assert up.shape == (1, 7, 3) and up.max() == 1.0  # 2 / 2
    np.testing.assert_allclose(up[0, :, 0].numpy(), [1, 1, 0.875, 0.625, 0.375, 0.125, 0])
    np.testing.assert_array_equal(sem_seg_from_rw(rw, [3], (7, 3), bg=0.9), labels_from_scores(up, [3], 0.9))


def test_a_record_keeps_float16_scores_over_their_max_and_gives_the_mask(tmp_path: Path) -> None:
    rw = torch.tensor([[[4.0, 1.0], [0.5, 0.0]], [[2.0, 3.0], [0.0, 1.0]]])
    record = walk_scores_record(rw, torch.tensor([2, 9]), (8, 6), 0.3)
    path = walk_scores_path(tmp_path / "scores", "x")
    write_walk_scores(path, record)
    back = read_walk_scores(path)
    assert back["scores"].dtype == np.float16 and back["scores"].max() == 1.0
    np.testing.assert_array_equal(back["scores"], (rw / 4).numpy().astype(np.float16))
    assert back["keys"].tolist() == [2, 9] and back["image_size"].tolist() == [8, 6] and back["bg_threshold"] == 0.3
    np.testing.assert_array_equal(mask_from_walk_scores(back, 0.3), sem_seg_from_rw(rw, [2, 9], (8, 6), bg=0.3))
    assert [p.name for p in path.parent.iterdir()] == ["x.npz"]  # no temporary file left behind


# -- the step and the sweep on a tiny VOC set -------------------------------------------------------
def _checkpoint_and_cams(tiny_voc: Path, tmp_path: Path) -> tuple[Path, Path]:
    write_uniform_cams(tiny_voc, tmp_path / "cams")
    return save_stage_checkpoint(tiny_refine_stage(), tmp_path / "irn.ckpt"), tmp_path / "cams"


def _step(ckpt: Path, cams: Path, out: Path, root: Path, bg: float, save_scores: bool) -> int:
    return make_pseudo_masks(ckpt, cams, out, root=str(root), split="train", radius=2, exp_times=2, bg_threshold=bg,
                             pad_to=None, save_scores=save_scores, devices=1, accelerator="cpu")


def test_the_sweep_gives_exactly_the_steps_masks_at_each_threshold(tiny_voc: Path, tmp_path: Path) -> None:
    ckpt, cams = _checkpoint_and_cams(tiny_voc, tmp_path)
    ids = build_reader("voc", str(tiny_voc), "train").ids
    plain = tmp_path / "plain"
    assert _step(ckpt, cams, plain, tiny_voc, 0.25, save_scores=False) == 4
    assert not layout.walk_scores_dir(plain).exists()
    assert "thresholds" not in evaluate_masks(plain, tiny_voc)  # without scores: as before, no sweep
    # scores added to a folder of masks: every image is walked again, its scores kept
    assert _step(ckpt, cams, plain, tiny_voc, 0.25, save_scores=True) == 4
    assert {p.name for p in layout.walk_scores_dir(plain).iterdir()} == {f"{i}.npz" for i in ids}
    assert _step(ckpt, cams, plain, tiny_voc, 0.25, save_scores=True) == 0  # complete: skipped
    # the step at 0.4 and 0.6, each into its own folder
    steps = {t: tmp_path / f"at{t}" for t in (0.4, 0.6)}
    for t, out in steps.items():
        _step(ckpt, cams, out, tiny_voc, t, save_scores=True)
    result = evaluate_masks(plain, tiny_voc, thresholds=(0.25, 0.4, 0.6))
    assert result["masks_threshold"] == 0.25 and result["thresholds"]["0.25"]["miou"] == result["miou"]
    for t, out in steps.items():
        assert result["thresholds"][f"{t:g}"]["miou"] == evaluate_masks(out, tiny_voc)["miou"]
        for image_id in ids:  # the masks themselves, not only their mIoU
            record = read_walk_scores(walk_scores_path(layout.walk_scores_dir(plain), image_id))
            np.testing.assert_array_equal(mask_from_walk_scores(record, t), read_label_png(out / f"{image_id}.png"))
    masks = [np.stack([read_label_png(out / f"{i}.png") for i in ids]) for out in (plain, *steps.values())]
    assert (masks[0] != masks[1]).any() and (masks[1] != masks[2]).any()  # the thresholds make different masks
    assert {"best_threshold", "best_miou", "best_at_edge"} <= set(result)
    text = format_report(result)
    assert "| 0.4 |" in text and "masks as written (threshold 0.25): mIoU" in text


def _hand_written(tiny_voc: Path, tmp_path: Path) -> Path:
    """Pseudo masks and scores of the 4 tiny images, written by hand: class k's block scored 1, the rest 0.2."""
    masks = tmp_path / "masks"
    reader = build_reader("voc", str(tiny_voc), "train")
    from rpnet_pl.data.classes import voc_palette
    from rpnet_pl.utils.io import write_label_png

    for image_id in reader.ids:
        keys = np.array(reader.labels(image_id))
        rw = torch.full((len(keys), 4, 5), 0.2)
        for j in range(len(keys)):
            rw[j, 0, j] = 1.0  # 16 x 20 image at stride 4
        record = walk_scores_record(rw, keys, (16, 20), 0.25)
        write_walk_scores(walk_scores_path(layout.walk_scores_dir(masks), image_id), record)
        write_label_png(masks / f"{image_id}.png", mask_from_walk_scores(record, 0.25).astype(np.uint8), voc_palette())
    return masks


def test_stale_or_missing_scores_are_one_line_errors(tiny_voc: Path, tmp_path: Path) -> None:
    masks = _hand_written(tiny_voc, tmp_path)
    result = evaluate_masks(masks, tiny_voc, thresholds=(0.1, 0.25))
    assert result["thresholds"]["0.1"]["miou"] < result["thresholds"]["0.25"]["miou"] == result["miou"]
    assert result["best_threshold"] == 0.25 and result["best_at_edge"] == "high"
    scores = layout.walk_scores_dir(masks)
    record = read_walk_scores(walk_scores_path(scores, "2007_000001"))
    write_walk_scores(walk_scores_path(scores, "2007_000001"), {**record, "bg_threshold": np.float64(0.1)})
    with pytest.raises(DatasetError, match=r"2007_000001.npz: these scores at threshold 0.1 do not give the mask"):
        evaluate_masks(masks, tiny_voc)
    walk_scores_path(scores, "2007_000001").unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 walk score file\(s\) of split 'train' are missing"):
        evaluate_masks(masks, tiny_voc)


def test_eval_pseudo_masks_writes_the_sweep_as_eval_cam_does(tiny_voc: Path, tmp_path: Path, capsys) -> None:
    from rpnet_pl.cli import main

    masks, out = _hand_written(tiny_voc, tmp_path), tmp_path / "metrics.json"
    assert main(["eval-pseudo-masks", "--masks", str(masks), "--root", str(tiny_voc), "--thresholds", "0.1", "0.25",
                 "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert list(metrics["thresholds"]) == ["0.1", "0.25"] and metrics["best_threshold"] == 0.25
    assert set(metrics["thresholds"]["0.1"]) == {"miou", "per_class"}
    assert "best threshold 0.25: mIoU" in capsys.readouterr().out


def test_report_and_trackers_show_the_pseudo_mask_sweep_beside_the_seeds(tmp_path: Path) -> None:
    from rpnet_pl.results.report import sweep_table, write_report
    from rpnet_pl.pipeline.tracking import step_scalars

    run = tmp_path / "runs" / "run"
    for step, metrics in (("eval_cam", {"thresholds": {"0.1": {"miou": 0.4}, "0.2": {"miou": 0.5}},
                                        "best_threshold": 0.2, "best_miou": 0.5}),
                          ("eval_pseudo_masks", {"thresholds": {"0.2": {"miou": 0.6}, "0.3": {"miou": 0.7}},
                                                 "best_threshold": 0.3, "best_miou": 0.7, "best_at_edge": "high",
                                                 "miou": 0.6, "masks_threshold": 0.2})):
        (run / step).mkdir(parents=True)
        (run / step / "metrics.json").write_text(json.dumps(metrics))
    assert sweep_table(run).splitlines()[2:] == [
        "| threshold | seeds | pseudo masks |", "|---:|---:|---:|",
        "| 0.1 | 40.0 | - |", "| 0.2 | **50.0** | 60.0 |", "| 0.3 | - | **70.0** |", "",
        "pseudo masks as written (threshold 0.2): 60.0; their best threshold is the sweep's largest, the optimum "
        "may lie beyond it"]
    assert "## run\n\nBackground-threshold sweeps of run run" in write_report(tmp_path / "runs")[1]
    summary, history = step_scalars("eval_pseudo_masks", run / "eval_pseudo_masks")
    assert history == [{"threshold": 0.2, "sweep/miou": 0.6}, {"threshold": 0.3, "sweep/miou": 0.7}]
    assert (summary["miou"], summary["best_miou"], summary["best_threshold"]) == (0.6, 0.7, 0.3)
    (run / "eval_pseudo_masks" / "metrics.json").write_text(json.dumps({"miou": 0.6}))
    assert sweep_table(run) is None  # masks without saved scores: the report as before
