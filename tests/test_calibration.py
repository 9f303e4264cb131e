"""Thresholds calibrated on a labelled split (rpnet_pl.steps.calibration): the rule, the IR labels'
and the walk's calibration on tiny hand-made data, the experiment's ``thresholds: calibrated``, its
validation lines and the provenance of a calibrated step."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rpnet_pl.pipeline import layout
from rpnet_pl.pipeline.config import dump_yaml, load_experiment
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.errors import ConfigError, DatasetError
from rpnet_pl.utils.io import read_label_png
from rpnet_pl.ops.cam import ir_label_thresholds
from rpnet_pl.pipeline.runner import check_complete_steps, identities, plan
from rpnet_pl.steps.cam_inference import cam_path, write_cam
from rpnet_pl.steps.evaluate import evaluate_masks
from rpnet_pl.steps.ir_labels import ir_labels_step, make_ir_labels
from rpnet_pl.steps.pseudo_masks import pseudo_masks_step
from rpnet_pl.steps.walk_scores import read_walk_scores, walk_scores_path
from rpnet_pl.pipeline.registry import IRLabelsOptions, PseudoMasksOptions
from rpnet_pl.pipeline.validate import check_environment, check_tree
from tests.conftest import save_stage_checkpoint, tiny_refine_stage

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


# -- the rule --------------------------------------------------------------------------------------
def test_the_rule_gives_back_vocs_thresholds_from_vocs_best_seed_threshold() -> None:
    assert ir_label_thresholds(0.15) == (0.3, 0.05)
    assert ir_label_thresholds(0.24) == (0.48, 0.08)  # by hand: 2 x 0.24, 0.24 / 3
    assert ir_label_thresholds(0.1) == (0.2, 0.033333)  # rounded to 6 decimals
    with pytest.raises(ValueError, match="seed threshold must lie in"):
        ir_label_thresholds(1.5)


# -- ir_labels -------------------------------------------------------------------------------------
def _hand_made_cams(root: Path, out: Path) -> None:
    """High-res CAMs whose seeds are exact at background threshold 0.15 only: each class's 4x4 ground-truth
    block scores 0.155 (1.0 at its 2x2 centre), the other pixels 0.12 in rows 0-6 and 0.02 below. At 0.1
    the 0.12 pixels turn foreground, at 0.16 the 0.155 ones background; every other threshold is worse."""
    reader = build_reader("voc", root, "train_aug")
    for image_id in reader.ids:
        keys = reader.labels(image_id)
        high = np.full((len(keys), 16, 20), 0.02, dtype=np.float32)
        high[:, :7] = 0.12
        for j in range(len(keys)):
            c0 = 1 + 4 * j
            high[j, 1:5, c0:c0 + 4] = 0.155
            high[j, 2:4, c0 + 1:c0 + 3] = 1.0
        write_cam(out, image_id, {"keys": np.asarray(keys, np.int64), "cam": high[:, ::4, ::4], "high_res": high})


def _ir_options(root: Path, cams: Path, out: Path, **kw) -> IRLabelsOptions:
    return IRLabelsOptions(root=str(root), cams=str(cams), out=str(out), crf=False, workers=0, **kw)


def test_ir_labels_calibrated_on_a_split_take_the_seeds_best_threshold(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    _hand_made_cams(tiny_voc, cams)
    out = tmp_path / "calibrated"
    # the fixed thresholds given are replaced by the calibrated ones
    assert ir_labels_step(_ir_options(tiny_voc, cams, out, calibration_split="train", fg_threshold=0.9,
                                      bg_threshold=0.5)) == 0
    record = json.loads(layout.calibration_path(out).read_text())
    assert (record["step"], record["split"], record["n_images"]) == ("ir_labels", "train", 4)
    assert record["best_threshold"] == 0.15 and record["best_miou"] == 1.0 and record["best_at_edge"] is None
    assert record["used"] == {"fg_threshold": 0.3, "bg_threshold": 0.05}
    assert record["sweep"]["0.15"] == 1.0 and record["sweep"]["0.1"] < 1.0 and record["sweep"]["0.16"] < 1.0
    # the IR labels are those of the fixed thresholds 0.30 / 0.05
    fixed = tmp_path / "fixed"
    make_ir_labels(cams, fixed, tiny_voc, fg_threshold=0.3, bg_threshold=0.05, crf=False, workers=0)
    for image_id in build_reader("voc", tiny_voc, "train_aug").ids:
        np.testing.assert_array_equal(read_label_png(out / f"{image_id}.png"),
                                      read_label_png(fixed / f"{image_id}.png"))
    b = read_label_png(out / "2007_000002.png")  # {1, 2}: centres fg, rows 7+ bg (0.02 < 0.05), the rest 255
    assert b[2, 2] == 1 and b[2, 6] == 2 and b[10, 10] == 0 and b[1, 1] == 255 and b[5, 15] == 255


def test_a_calibration_split_without_cams_is_one_line_before_work(tiny_voc: Path, tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    _hand_made_cams(tiny_voc, cams)
    cam_path(cams, "2007_000003").unlink()
    with pytest.raises(DatasetError, match=r"cams: no CAM file for 1 of the 4 images of the calibration split 'train' "
                                           r"\(first: 2007_000003.npy\); the cam step's split must include"):
        ir_labels_step(_ir_options(tiny_voc, cams, tmp_path / "ir", calibration_split="train"))
    assert not (tmp_path / "ir").exists()


# -- pseudo_masks ----------------------------------------------------------------------------------
def _checkpoint_and_cams(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    ckpt = save_stage_checkpoint(tiny_refine_stage(), tmp_path / "irn.ckpt")
    cams, rng = tmp_path / "cams", np.random.default_rng(0)
    for image_id in (reader := build_reader("voc", str(root), "train")).ids:
        keys = np.array(reader.labels(image_id), dtype=np.int64)
        cam = rng.uniform(0, 0.3, (len(keys), 4, 5)).astype(np.float32)
        for j in range(len(keys)):  # 1.0 on the stride-4 cells of class j's block: the best threshold is inside
            cam[j, 0:2, j] = 1.0
        write_cam(cams, image_id, {"keys": keys, "cam": cam, "high_res": np.zeros((len(keys), 16, 20), np.float16)})
    return ckpt, cams


def _walk_options(root: Path, ckpt: Path, cams: Path, out: Path, **kw) -> PseudoMasksOptions:
    return PseudoMasksOptions(root=str(root), ckpt=str(ckpt), cams=str(cams), out=str(out), split="train", radius=2,
                              exp_times=2, pad_to=0, devices="1", accelerator="cpu", **kw)


def test_calibrated_pseudo_masks_are_the_steps_masks_at_the_best_threshold(tiny_voc: Path, tmp_path: Path) -> None:
    ckpt, cams = _checkpoint_and_cams(tiny_voc, tmp_path)
    ids = build_reader("voc", str(tiny_voc), "train").ids
    out = tmp_path / "calibrated"
    assert pseudo_masks_step(_walk_options(tiny_voc, ckpt, cams, out, calibration_split="train")) == 0
    record = json.loads(layout.calibration_path(out).read_text())
    b_star = record["used"]["bg_threshold"]
    assert record["step"] == "pseudo_masks" and record["best_threshold"] == b_star != 0.25  # the masks were remade
    assert record["sweep"][f"{b_star:g}"] == record["best_miou"] == max(m for m in record["sweep"].values() if m)
    # the step run with bg_threshold b* directly (its masks from the kept scores) makes the same masks
    fixed = tmp_path / "fixed"
    pseudo_masks_step(_walk_options(tiny_voc, ckpt, cams, fixed, bg_threshold=b_star, save_scores=True))
    assert not layout.calibration_path(fixed).exists()
    for image_id in ids:
        np.testing.assert_array_equal(read_label_png(out / f"{image_id}.png"),
                                      read_label_png(fixed / f"{image_id}.png"))
        scores = read_walk_scores(walk_scores_path(layout.walk_scores_dir(out), image_id))
        assert float(scores["bg_threshold"]) == b_star
    # eval-pseudo-masks reads the calibrated folder: the masks as written are those at b*, its best
    result = evaluate_masks(out, tiny_voc)
    assert result["masks_threshold"] == b_star == result["best_threshold"] and result["miou"] == record["best_miou"]
    # a re-run is complete: nothing walked, nothing remade, the same b*
    assert pseudo_masks_step(_walk_options(tiny_voc, ckpt, cams, out, calibration_split="train")) == 0
    assert json.loads(layout.calibration_path(out).read_text()) == record


def test_a_calibration_split_outside_the_walks_split_is_one_line_before_work(tiny_voc: Path, tmp_path: Path) -> None:
    (tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/small.txt").write_text("2007_000001\n")
    with pytest.raises(DatasetError, match=r"pseudo_masks.calibration_split 'train': 3 of its 4 images are not in the "
                                           r"step's split 'small' \(first: 2007_000002\)"):
        pseudo_masks_step(PseudoMasksOptions(root=str(tiny_voc), ckpt=str(tmp_path / "none.ckpt"), cams=str(tmp_path),
                                             out=str(tmp_path / "masks"), split="small", calibration_split="train"))


# -- the experiment: thresholds: calibrated ---------------------------------------------------------
def _experiment(tmp_path: Path, **top) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"extends": str(EXPERIMENTS / "demo.yaml"), **top}))
    return path


def test_thresholds_calibrated_sets_the_walks_calibration_split_and_ir_labels_opt_in(tmp_path: Path) -> None:
    fixed = load_experiment(EXPERIMENTS / "demo.yaml")
    assert "calibration_split" not in fixed["ir_labels"] and "calibration_split" not in fixed["pseudo_masks"]
    cfg = load_experiment(_experiment(tmp_path, thresholds="calibrated"))  # default: the split eval_cam scores
    assert cfg["pseudo_masks"]["calibration_split"] == "train"
    assert "calibration_split" not in cfg["ir_labels"]                     # the IR labels keep the spec's
    cfg = load_experiment(_experiment(tmp_path, thresholds="calibrated", calibration={"split": "val"},
                                      ir_labels={"calibration_split": "held_out"}))   # the rule, opted in
    assert cfg["pseudo_masks"]["calibration_split"] == "val" and cfg["ir_labels"]["calibration_split"] == "held_out"
    cfg = load_experiment(EXPERIMENTS / "demo.yaml", ["thresholds=calibrated", "calibration.split=val",
                                                      "ir_labels.calibration_split=val"])
    check_tree(cfg)
    steps = {s.name: s for s in plan(cfg, runs_dir=tmp_path / "runs")}
    for name in ("ir_labels", "pseudo_masks"):
        argv = steps[name].argv
        assert argv[argv.index("--calibration-split") + 1] == "val"
        assert steps[name].settings["calibration_split"] == "val"
    assert "--calibration-split" not in steps["cam"].argv and "calibration_split" not in steps["refine"].settings
    steps = {s.name: s for s in plan(load_experiment(EXPERIMENTS / "demo.yaml", ["thresholds=calibrated"]),
                                     runs_dir=tmp_path / "runs")}
    assert "--calibration-split" not in steps["ir_labels"].argv and "--calibration-split" in steps["pseudo_masks"].argv
    # a section the experiment lacks is not added (it would add a step)
    cfg = load_experiment(EXPERIMENTS / "demo.yaml", ["thresholds=calibrated"])
    del cfg["pseudo_masks"]
    from rpnet_pl.pipeline.config import expand_thresholds

    expand_thresholds(cfg)
    assert "pseudo_masks" not in cfg


@pytest.mark.parametrize("overrides, message", [
    (["thresholds=calibratd"], r"thresholds: expected fixed or calibrated, got 'calibratd' \(str\)"),
    (["calibration.split=val"], r"calibration: set, but thresholds is 'fixed'; set thresholds: calibrated"),
    (["thresholds=calibrated", "calibration.splt=val"], r"unknown key 'calibration.splt' \(did you mean 'split'\?\)"),
    (["thresholds=calibrated", "calibration.split=3"], r"calibration.split: expected a split name, got 3 \(int\)"),
])
def test_bad_threshold_settings_are_one_line(overrides: list[str], message: str) -> None:
    cfg = load_experiment(EXPERIMENTS / "demo.yaml", overrides)
    with pytest.raises(ConfigError, match=message):
        check_tree(cfg)


def test_a_calibration_split_absent_from_the_dataset_is_one_line_before_work(tiny_voc: Path, tmp_path: Path) -> None:
    cfg = load_experiment(EXPERIMENTS / "demo.yaml", [f"dataset.root={tiny_voc}", "thresholds=calibrated",
                                                      "calibration.split=held_out"])
    steps = plan(cfg, runs_dir=tmp_path / "runs", steps=["ir_labels", "pseudo_masks"])
    with pytest.raises(DatasetError, match=r"calibration.split: no split 'held_out' in .*held_out.txt not found"):
        check_environment(cfg, steps, tmp_path / "runs" / "demo", network=lambda: True, make_run_dir=False)
    from rpnet_pl.data.splits import needed_splits

    assert needed_splits(cfg, "voc")["held_out"] == ["pseudo_masks"]  # `rpnet data check` asks for it


def test_a_changed_calibration_split_makes_the_calibrated_step_stale(tmp_path: Path) -> None:
    def planned(*overrides: str):
        return plan(load_experiment(EXPERIMENTS / "demo.yaml", list(overrides)), runs_dir=tmp_path, steps=["ir_labels"])

    made = planned("thresholds=calibrated", "ir_labels.calibration_split=train")
    step = made[0]
    step.folder.mkdir(parents=True)
    dump_yaml({"identity": identities(made)["ir_labels"], "inputs": {"cam": None}, "settings": step.settings},
              step.done_marker)
    check_complete_steps(planned("thresholds=calibrated", "ir_labels.calibration_split=train"))  # the same: complete
    with pytest.raises(ConfigError, match=r"step 'ir_labels' is complete but was made with other settings "
                                          r"calibration_split: train -> val"):
        check_complete_steps(planned("thresholds=calibrated", "ir_labels.calibration_split=val"))
    with pytest.raises(ConfigError, match=r"calibration_split: train -> \(unset\)"):
        check_complete_steps(planned())
