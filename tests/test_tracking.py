"""W&B runs of the steps' results and of the report's tables (rpnet_pl.pipeline.tracking), read back from the
offline record files."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from rpnet_pl.cli import main
from rpnet_pl.pipeline.tracking import confusion_rows, log_step, log_tables, markdown_tables, per_class_rows
from tests.wandb_records import offline_runs

A, B, C, D = "2007_000001", "2007_000002", "2007_000003", "2007_000004"


def test_markdown_tables_are_read_with_their_titles() -> None:
    text = ("# report\n\n## Table I: seeds\n\n| run | seeds |\n|---|---:|\n| a | 60.0 ± 4.0 (n=3) |\n| b | - |\n\n"
            "TABLE II: beta\n\n| beta | mIoU |\n|---|---|\n| 0.1 | 43.0 |\n")
    assert markdown_tables(text) == [
        ("Table I: seeds", ["run", "seeds"], [["a", "60.0 ± 4.0 (n=3)"], ["b", "-"]]),
        ("TABLE II: beta", ["beta", "mIoU"], [["0.1", "43.0"]]),
    ]


def test_per_class_and_confusion_rows() -> None:
    metrics = {"per_class_iou": {"background": 0.5, "cat": None}, "precision": {"background": 0.9},
               "recall": {"background": 0.6, "cat": 0.0}, "confusion": [[5, 1], [0, 2]]}
    assert per_class_rows(metrics) == [["background", 0.5, 0.9, 0.6], ["cat", None, None, 0.0]]
    assert confusion_rows(metrics) == [["background", "background", 5], ["background", "cat", 1], ["cat", "cat", 2]]
    assert confusion_rows({"per_class_iou": {"a": 1.0}}) == []  # older metrics.json: no matrix


def _done(folder: Path, argv: list[str], seconds: float = 2.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".done").write_text(yaml.safe_dump({"argv": argv, "seconds": seconds}))


def _tiny_run(runs: Path, voc_root: Path) -> Path:
    """A run folder as the pipeline leaves it, written by hand: the ground truth as its pseudo masks
    (mIoU 1), a seed sweep, a classifier config."""
    from rpnet_pl.data.datasets import build_reader
    from rpnet_pl.data.classes import voc_palette
    from rpnet_pl.utils.io import write_label_png

    run = runs / "voc-rpnet"
    (run / "classifier").mkdir(parents=True)
    (run / "classifier" / "config.yaml").write_text("model:\n  method: rpnet\n  beta: 0.3\n")
    _done(run / "classifier", ["rpnet", "fit", "classifier"])
    reader = build_reader("voc", voc_root, "train_aug")
    masks = run / "pseudo_masks" / "masks"
    for i in reader.ids:
        write_label_png(masks / f"{i}.png", reader.mask(i), voc_palette())
    _done(run / "pseudo_masks", ["rpnet", "pseudo-masks", "--root", str(voc_root), "--dataset", "voc",
                                 "--split", "train_aug"], seconds=2.0)
    names = {"background": 1.0, "aeroplane": 1.0}
    (run / "eval_pseudo_masks").mkdir()
    (run / "eval_pseudo_masks" / "metrics.json").write_text(json.dumps(
        {"miou": 1.0, "per_class_iou": names, "precision": names, "recall": names, "confusion": [[10, 0], [0, 3]]}))
    _done(run / "eval_pseudo_masks", ["rpnet", "eval-pseudo-masks"])
    (run / "eval_cam").mkdir()
    (run / "eval_cam" / "metrics.json").write_text(json.dumps(
        {"thresholds": {"0.1": {"miou": 0.4}, "0.2": {"miou": 0.5}}, "best_threshold": 0.2, "best_miou": 0.5,
         "per_class_iou": names}))
    _done(run / "eval_cam", ["rpnet", "eval-cam"])
    return run


def test_report_relogs_every_step_and_its_tables(tiny_voc: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = tmp_path / "runs"
    _tiny_run(runs, tiny_voc)
    assert main(["report", str(runs), "--wandb"]) == 0
    by_job = {r.job_type: r for r in offline_runs(runs)}
    assert set(by_job) == {"pseudo_masks", "eval_pseudo_masks", "eval_cam", "report"}  # training: its logger's
    assert {r.group for r in by_job.values()} == {"voc-rpnet", "report"}
    masks = by_job["pseudo_masks"]
    assert masks.name == "voc-rpnet/pseudo_masks" and masks.config["classifier"]["model"]["beta"] == 0.3
    assert masks.summary["images"] == 4 and masks.summary["images_per_s"] == pytest.approx(2.0)
    assert masks.summary[f"samples/{A}/_type"] == "image-file"
    assert {masks.summary[f"samples/{A}/masks/{k}/_type"] for k in ("prediction", "ground_truth")} == {"mask"}
    class_labels = masks.config["_wandb"]["mask/class_labels"]  # W&B keeps the labels of each mask here
    labels = class_labels[f"samples/{A}_wandb_delimeter_ground_truth"]["value"]
    assert labels["15"] == "person" and labels["255"] == "ignore" and len(labels) == 22
    assert any(p.name.endswith(".mask.png") for p in masks.media)
    ev = by_job["eval_pseudo_masks"]
    assert ev.summary["miou"] == 1.0 and ev.summary["per_class/_type"] == "table-file"
    table = json.loads(next(p for p in ev.media if p.name.startswith("per_class")).read_text())
    assert table["columns"] == ["class", "iou", "precision", "recall"] and table["data"][0] == ["background", 1, 1, 1]
    assert any(p.name.startswith("confusion_matrix") for p in ev.media)
    sweep = by_job["eval_cam"]
    assert [(h["threshold"], h["sweep/miou"]) for h in sweep.history if "threshold" in h] == [(0.1, 0.4), (0.2, 0.5)]
    assert sweep.summary["best_miou"] == 0.5 and sweep.summary["best_threshold"] == 0.2
    report = by_job["report"]
    assert any(k.startswith("Table_I_") for k in report.summary), report.summary.keys()


def test_a_wandb_failure_is_one_warning_and_the_step_stays_done(tmp_path: Path, monkeypatch, caplog) -> None:
    import wandb

    from rpnet_pl.pipeline.runner import PlannedStep, run_steps

    def broken(**kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wandb, "init", broken)
    folder = tmp_path / "run" / "eval_cam"
    step = PlannedStep("eval_cam", [sys.executable, "-c", "pass"], folder, kind="evaluate",
                       wandb={"group": "run", "name": "run/eval_cam"})
    with caplog.at_level(logging.WARNING):
        assert run_steps([step]) == ["eval_cam"]
    assert (folder / ".done").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["W&B: run/eval_cam not logged (OSError: [Errno 28] No space left on device)"]
    assert log_tables(tmp_path, "| a |\n|---|\n| 1 |\n", group="g", name="t") is False


def test_a_step_not_done_is_not_logged(tmp_path: Path) -> None:
    assert log_step(tmp_path / "run", "eval_cam", group="g", name="n") is False
    assert not (tmp_path / "run").exists()


def test_step_scalars_are_what_every_logger_gets(tiny_voc: Path, tmp_path: Path) -> None:
    from rpnet_pl.pipeline.tracking import log_scalars, step_scalars

    run = _tiny_run(tmp_path / "runs", tiny_voc)
    summary, history = step_scalars("eval_cam", run / "eval_cam")
    assert history == [{"threshold": 0.1, "sweep/miou": 0.4}, {"threshold": 0.2, "sweep/miou": 0.5}]
    assert summary == {"seconds": 2.0, "best_miou": 0.5, "best_threshold": 0.2, "iou/background": 1.0,
                       "iou/aeroplane": 1.0}
    summary, _ = step_scalars("pseudo_masks", run / "pseudo_masks")
    assert summary == {"seconds": 2.0, "images": 4, "images_per_s": 2.0}
    from rpnet_pl.steps.calibration import write_calibration  # a calibrated step: its thresholds too

    write_calibration(run / "pseudo_masks" / "masks", {"best_threshold": 0.4, "best_miou": 0.6,
                                                        "used": {"bg_threshold": 0.4}})
    summary, _ = step_scalars("pseudo_masks", run / "pseudo_masks")
    assert summary == {"seconds": 2.0, "images": 4, "images_per_s": 2.0, "calibration/best_threshold": 0.4,
                       "calibration/best_miou": 0.6, "calibration/bg_threshold": 0.4}
    log_scalars(run / "eval_cam", "eval_cam", "csv")
    import csv

    rows = list(csv.DictReader((run / "eval_cam" / "csv" / "metrics.csv").open()))
    assert [r["sweep/miou"] for r in rows[:2]] == ["0.4", "0.5"] and rows[-1]["best_miou"] == "0.5"


def test_progress_lines_become_history(tiny_voc: Path, tmp_path: Path, monkeypatch) -> None:
    from rpnet_pl.pipeline.tracking import progress_row

    assert progress_row("pseudo masks: 40/180 images, 11 images/s, ETA 0:00:12") == \
        {"images_done": 40, "images_total": 180, "images_per_s": 11.0}
    assert progress_row("epoch 1/20 step 3/60 loss 1.0") is None
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = _tiny_run(tmp_path / "runs", tiny_voc)
    lines = [f"pseudo masks: {d}/4 images, {r} images/s, ETA 0:00:01" for d, r in ((2, 1.5), (4, 2.0))]
    assert log_step(run, "pseudo_masks", group="g", name="n", progress=lines + ["a line that is no progress"],
                    samples=False)
    (logged,) = offline_runs(run / "pseudo_masks")
    assert [(h["progress/images_done"], h["progress/images_per_s"]) for h in logged.history
            if "progress/images_done" in h] == [(2, 1.5), (4, 2.0)]
    assert logged.exit_code == 0


# A per-image step that prints a progress line, then waits (at most 60 s) for the pipeline to have
# logged it: it ends (exit ARGV[2]) only if the line reached W&B while it was running.
_WAITS_FOR_ITS_PROGRESS = """
import pathlib, sys, time
print("rpnet_pl.progress: pseudo masks: 1/2 images, 0.5 images/s, ETA 0:00:02", flush=True)
flag = pathlib.Path(sys.argv[1])
for _ in range(600):
    if flag.exists():
        print("rpnet_pl.progress: pseudo masks: 2/2 images, 1.0 images/s, ETA 0:00:00", flush=True)
        sys.exit(int(sys.argv[2]))
    time.sleep(0.1)
sys.exit(9)
"""


@pytest.mark.parametrize("exit_code", [0, 1])
def test_progress_reaches_wandb_while_the_step_runs(tmp_path: Path, monkeypatch, exit_code: int) -> None:
    """A running per-image step's progress is logged as it comes, not once the step ends; a
    step that fails leaves its W&B run closed as failed (and the failure is the step's)."""
    from rpnet_pl.pipeline.runner import PlannedStep, StepFailed, run_steps
    from rpnet_pl.pipeline.tracking import StepRun

    monkeypatch.setenv("WANDB_MODE", "offline")
    flag = tmp_path / "logged"
    seen: list[str] = []

    def progress(self: StepRun, line: str) -> None:
        StepRun_progress(self, line)
        seen.append(line)
        flag.touch()  # the step waits for this: the line was logged while it ran

    StepRun_progress = StepRun.progress
    monkeypatch.setattr(StepRun, "progress", progress)
    folder = tmp_path / "run" / "pseudo_masks"
    step = PlannedStep("pseudo_masks", [sys.executable, "-c", _WAITS_FOR_ITS_PROGRESS, str(flag), str(exit_code)],
                       folder, wandb={"group": "run", "name": "run/pseudo_masks", "config": {"seed": 0}})
    if exit_code == 0:
        assert run_steps([step]) == ["pseudo_masks"]
    else:
        with pytest.raises(StepFailed, match="step 'pseudo_masks' failed \\(exit 1\\)"):
            run_steps([step])
    assert (folder / ".done").is_file() == (exit_code == 0)
    assert seen == ["pseudo masks: 1/2 images, 0.5 images/s, ETA 0:00:02",
                    "pseudo masks: 2/2 images, 1.0 images/s, ETA 0:00:00"]
    (logged,) = offline_runs(folder)
    assert logged.job_type == "pseudo_masks" and logged.group == "run" and logged.config["seed"] == 0
    assert [(h["progress/images_done"], h["progress/images_total"]) for h in logged.history] == [(1, 2), (2, 2)]
    assert logged.exit_code == exit_code


# A training step's W&B run as Lightning's WandbLogger leaves it: opened, logged, closed at exit.
_LOGS_AND_EXITS = """
import sys, wandb
run = wandb.init(dir=sys.argv[1], mode="offline", job_type="classifier", settings=wandb.Settings(silent=True))
run.log({"train/loss": 1.5})
"""


def test_a_step_s_wandb_run_is_on_disk_when_the_step_ends(tmp_path: Path, monkeypatch) -> None:
    """The pipeline process has a W&B service (a per-image step's run started it); a step process must
    not share it: there, a run closed at exit stays a 7-byte header until the pipeline ends."""
    from rpnet_pl.pipeline.runner import PlannedStep, run_steps
    from rpnet_pl.pipeline.tracking import finish_run, start_run
    from tests.wandb_records import records

    monkeypatch.setenv("WANDB_MODE", "offline")
    finish_run(start_run(tmp_path / "earlier", name="r/eval_cam", group="r", job_type="eval_cam"), "r/eval_cam")
    folder = tmp_path / "run" / "classifier"
    folder.mkdir(parents=True)
    step = PlannedStep("classifier", [sys.executable, "-c", _LOGS_AND_EXITS, str(folder)], folder, kind="train")
    assert run_steps([step]) == ["classifier"]
    (record_file,) = folder.rglob("run-*.wandb")
    kinds = [r.WhichOneof("record_type") for r in records(record_file)]  # read at once, no waiting
    assert "run" in kinds and "history" in kinds and kinds[-1] == "exit", kinds
