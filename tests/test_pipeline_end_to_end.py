"""The whole chain on a tiny synthetic VOC set: classifier -> CAMs -> eval -> IR labels -> IRN ->
pseudo masks -> eval -> DeepLab -> eval (with/without CRF) -> test export, then resume/skip."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.data.classes import voc_palette
from rpnet_pl.data.synthetic import generate_synthetic_voc
from rpnet_pl.pipeline.runner import plan, run_steps
from rpnet_pl.pipeline.registry import STEP_ORDER
from rpnet_pl.results.report import write_report

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

TINY = {
    "classifier": {"model": {"backbone": "resnet18", "pretrained": False, "freeze_early": False, "mid": 16,
                             "enhanced_scales": [1.0, 0.5]},
                   "data": {"batch_size": 4, "crop_size": 48, "long_side": [40, 64], "num_workers": 0},
                   "trainer": {"max_epochs": 1}},
    "cam": {"scales": [1.0]},
    "ir_labels": {"workers": 1},
    "refine": {"model": {"backbone": "resnet18", "pretrained": False,
                           "weights": "${run}/classifier/checkpoints/last.ckpt", "boundary_radius": 5},
                 "data": {"batch_size": 4, "crop_size": 48, "num_workers": 0}, "trainer": {"max_epochs": 1}},
    "segmenter": {"model": {"backbone": "resnet18", "pretrained": False, "output_stride": 16},
                  "data": {"batch_size": 4, "crop_size": 48, "num_workers": 0, "val_split": None},
                  "trainer": {"max_steps": 3}},
    "eval_seg": {"scales": [1.0]},
}


def tiny_experiment(tmp_path: Path) -> tuple[Path, Path]:
    """A 12-image synthetic VOC set and an experiment ``tiny`` on it: (dataset root, YAML path)."""
    data = tmp_path / "synth"
    generate_synthetic_voc(data, images=12, size=48, classes=3, seed=0, test_images=2)
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({"extends": str(EXPERIMENTS / "base.yaml"), "name": "tiny",
                                   "dataset": {"root": str(data)}, **TINY}))
    return data, exp


@pytest.mark.slow
def test_whole_chain_then_resume(tmp_path: Path, monkeypatch, capsys) -> None:
    from rpnet_pl.cli import main
    from tests.wandb_records import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    data, exp = tiny_experiment(tmp_path)
    cfg = load_experiment(exp)
    runs = tmp_path / "runs"
    steps = plan(cfg, runs_dir=runs, logger="wandb")
    assert run_steps(steps) == list(STEP_ORDER)
    run = runs / "tiny"
    # W&B (offline): one run per step in the experiment's group, the evaluations' numbers in the summaries
    tracked = {r.job_type: r for r in offline_runs(run)}
    assert set(tracked) == set(STEP_ORDER) and {r.group for r in tracked.values()} == {"tiny"}
    assert tracked["eval_cam"].summary["best_miou"] == json.loads((run / "eval_cam/metrics.json").read_text())[
        "best_miou"]
    assert "with_crf/miou" in tracked["eval_seg"].summary and "miou" in tracked["eval_pseudo_masks"].summary
    assert any(k.endswith("/masks/prediction/_type") for k in tracked["pseudo_masks"].summary)
    ids_aug = (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert sorted(p.stem for p in (run / "cam/cams").glob("*.npy")) == sorted(ids_aug)
    for name in ("eval_cam", "eval_pseudo_masks"):
        m = json.loads((run / name / "metrics.json").read_text())
        assert 0.0 <= (m.get("best_miou", m.get("miou"))) <= 1.0
    seg = json.loads((run / "eval_seg/metrics.json").read_text())
    assert set(seg) == {"without_crf", "with_crf"}
    # IR labels and pseudo masks are palette PNGs with the VOC palette
    from PIL import Image

    with Image.open(next((run / "pseudo_masks/masks").glob("*.png"))) as im:
        assert im.mode == "P" and np.array_equal(np.array(im.getpalette()[:63]).reshape(21, 3), voc_palette()[:21])
    test_ids = (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").read_text().split()
    export = run / "predict_seg/results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.stem for p in export.glob("*.png")) == sorted(test_ids)
    # every step left its resolved config or argv and a .done marker
    assert all((run / s / ".done").is_file() for s in STEP_ORDER)
    assert (run / "classifier/config.yaml").is_file()
    # a completed chain is skipped entirely
    assert run_steps(plan(cfg, runs_dir=runs, logger="csv")) == []
    # steps interrupted after writing (no marker): a corrupted CAM file and a lost pseudo mask are
    # redone, and only they; the same settings give the same identities, so nothing else re-runs
    victim = sorted((run / "cam/cams").glob("*.npy"))[0]
    victim.write_bytes(b"corrupt")
    lost = sorted((run / "pseudo_masks/masks").glob("*.png"))[0]
    lost.unlink()
    for name in ("cam", "pseudo_masks"):
        (run / name / ".done").unlink()
    assert run_steps(plan(cfg, runs_dir=runs, logger="csv")) == ["cam", "pseudo_masks"]
    assert "wrote 1 CAM file" in (run / "cam/log.txt").read_text().splitlines()[-1]
    assert lost.is_file()
    # the second method, the CAM baseline, through the steps where it differs, with --logger wandb;
    # then the report's tables go to W&B, and no step already logged as it ran is logged again
    baseline = tmp_path / "tiny_cam.yaml"
    baseline.write_text(yaml.safe_dump({"extends": str(exp), "name": "tiny-cam",
                                        "classifier": {"model": {"method": "cam"}}}))
    seeds_only = ["classifier", "cam", "eval_cam"]
    assert run_steps(plan(load_experiment(baseline), runs_dir=runs, logger="wandb", steps=seeds_only)) == seeds_only
    cam_runs = {r.job_type: r for r in offline_runs(runs / "tiny-cam")}
    assert set(cam_runs) == set(seeds_only) and {r.group for r in cam_runs.values()} == {"tiny-cam"}
    assert cam_runs["eval_cam"].summary["best_miou"] == json.loads(
        (runs / "tiny-cam/eval_cam/metrics.json").read_text())["best_miou"]
    assert cam_runs["eval_cam"].config["experiment"] == "tiny-cam"
    assert main(["report", str(runs), "--wandb"]) == 0
    said = capsys.readouterr().out
    assert "W&B: 1 run(s) logged (offline" in said and "9 step(s) already had their W&B run" in said, said
    (report,) = offline_runs(runs / "wandb-report")
    assert report.job_type == "report"
    table_i = next(k for k in report.summary if k.startswith("Table_I_") and k.endswith("/_type"))
    rows = json.loads(next(p for p in report.media if p.name.startswith(table_i.split("/")[0])).read_text())["data"]
    assert {r[0] for r in rows} >= {"tiny", "tiny-cam"}, rows
    text = (runs / "report.md").read_text()
    assert "| tiny | rpnet |" in text and "| tiny-cam | cam |" in text
    # what a person sees in the dashboard: the per-class tables and the masks with their class names
    assert tracked["eval_pseudo_masks"].summary["per_class/_type"] == "table-file"
    assert tracked["eval_seg"].summary["with_crf/per_class/_type"] == "table-file"
    labels = next(iter(tracked["pseudo_masks"].config["_wandb"]["mask/class_labels"].values()))["value"]
    assert labels["1"] == "aeroplane" and labels["255"] == "ignore"


@pytest.mark.slow
def test_tree_without_test_split_completes_all_but_the_export(tmp_path: Path, capsys, caplog) -> None:
    """VOC trainval + SBD as people keep it (no test.txt): `data check` passes, every step but the
    test export completes (one seed, into seed0/), the export is skipped with one line, the report reads."""
    from rpnet_pl.cli import main

    data = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(data), "--images", "12", "--size", "48", "--classes", "3"]) == 0
    (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").unlink()
    capsys.readouterr()
    assert main(["data", "check", str(data)]) == 0
    assert "| test | absent |" in capsys.readouterr().out
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({"extends": str(EXPERIMENTS / "base.yaml"), "name": "tiny",
                                   "dataset": {"root": str(data)}, **TINY}))
    runs = tmp_path / "runs"
    with caplog.at_level("INFO"):
        assert main(["pipeline", str(exp), "--runs", str(runs), "--logger", "csv", "--seeds", "0"]) == 0
    run = runs / "tiny" / "seed0"
    assert all((run / s / ".done").is_file() for s in STEP_ORDER if s != "predict_seg")
    assert not (run / "predict_seg").exists()
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skip predict_seg")]
    assert len(skips) == 1 and "no test split" in skips[0] and "--steps predict_seg" in skips[0]
    assert yaml.safe_load((run / "classifier/config.yaml").read_text())["seed_everything"] == 0
    _, text = write_report(runs)
    assert "| tiny | rpnet |" in text and "(n=1)" in text
    assert "](overlays-tiny-seed0.png)" in text
