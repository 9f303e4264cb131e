"""scripts/seed_study_table.py, wide_sweep.sh and seed_study.sh: the loss-spike census, the wide-sweep column, bad folders and the study plan, on hand-written inputs."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.scripts_module import load_script

ROOT = Path(__file__).resolve().parents[1]


def _table_module():  # type: ignore[no-untyped-def]
    return load_script("seed_study_table")


def _log(path: Path, values: list[str]) -> Path:
    rows = ["epoch,step,train/loss_cls,train/loss_ss"] + [f"0,{i},{v},0.01" for i, v in enumerate(values)]
    path.write_text("\n".join(rows + ["0,99,,"]) + "\n")  # a row without Lc (e.g. a seed-monitor row) is skipped
    return path


def test_loss_spike_hand_computed(tmp_path: Path) -> None:
    loss_spike = _table_module().loss_spike
    assert loss_spike(_log(tmp_path / "a.csv", ["1.39", "0.8", "0.4"])) == (None, False)  # never above 2
    assert loss_spike(_log(tmp_path / "b.csv", ["1.39", "46.8", "3.0", "0.5"])) == (46.8, False)
    assert loss_spike(_log(tmp_path / "c.csv", ["1.39", "788", "nan", "nan"])) == (788.0, True)  # worst finite, NaN
    assert loss_spike(_log(tmp_path / "d.csv", ["1.0", "inf"])) == (None, True)  # only a non-finite value
    assert loss_spike(_log(tmp_path / "e.csv", ["1.5", "2.5"]), limit=3.0) == (None, False)
    assert loss_spike(tmp_path / "missing.csv") == (None, False)


def test_run_rows_reads_default_and_wide_sweeps(tmp_path: Path) -> None:
    """Two seeds with hand-written metrics: the default sweep's best and the wide sweep's best
    (scripts/wide_sweep.sh) are collected per seed; a seed without a wide sweep adds nothing."""
    import json

    run_rows = _table_module().run_rows
    run = tmp_path / "voclike" / "demo"
    for k, (best, thr, wide, wide_thr) in enumerate([(0.338, 0.05, 0.359, 0.02), (0.30, 0.10, None, None)]):
        cam = {"best_miou": best, "best_threshold": thr, "best_at_edge": thr == 0.05,
               "per_class_iou": {"background": 0.6, "boat": 0.2, "bus": 0.4},
               "recall": {"background": 0.7, "boat": 0.3, "bus": 0.5},
               "precision": {"background": 0.8, "boat": 0.25, "bus": 0.45}}
        (run / f"seed{k}" / "eval_cam").mkdir(parents=True)
        (run / f"seed{k}" / "eval_cam" / "metrics.json").write_text(json.dumps(cam))
        if wide is not None:
            (run / f"seed{k}" / "eval_cam_wide").mkdir()
            (run / f"seed{k}" / "eval_cam_wide" / "metrics.json").write_text(
                json.dumps({**cam, "best_miou": wide, "best_threshold": wide_thr}))
    r = run_rows(run)
    assert r["n"] == 2 and r["seeds"] == [0.338, 0.30] and r["thr"] == [0.05, 0.10] and r["edge"] == 1
    assert r["wide"] == [0.359] and r["wide_thr"] == [0.02]
    assert r["seed_rec"] == [0.4, 0.4] and r["seed_prec"] == [0.35, 0.35]  # mean over boat and bus


def test_wide_sweep_names_a_missing_or_empty_runs_folder(tmp_path: Path) -> None:
    """scripts/wide_sweep.sh: bad RUNS / DATA give a one-line error naming the folder, not a silent no-op."""
    import subprocess

    def sweep(runs: Path, data: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "scripts" / "wide_sweep.sh"), str(runs), str(data)],
                              capture_output=True, text=True)

    missing = sweep(tmp_path / "nope", tmp_path)
    assert missing.returncode == 2 and f"{tmp_path / 'nope'}: no such study runs folder" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = sweep(tmp_path / "empty", tmp_path)
    assert empty.returncode == 2 and "no <set>/<run>/seed<k>/cam/cams folders" in empty.stderr
    (tmp_path / "runs" / "voclike" / "demo" / "seed0" / "cam" / "cams").mkdir(parents=True)
    no_data = sweep(tmp_path / "runs", tmp_path / "data")
    assert no_data.returncode == 1 and f"{tmp_path / 'data' / 'voclike'}: no such dataset" in no_data.stderr
    assert "1 of 1 runs could not be scored" in no_data.stderr


def test_seed_study_big_schedules_plans_the_longer_schedule_last(tmp_path: Path) -> None:
    """scripts/seed_study.sh big_schedules: one seeds-only chain per method and seed on the 20-class set,
    whose recipe (crop 128, 8 epochs) is kept but whose epochs are overridden after it (the last --set wins).
    The CLI is replaced by a recorder, so no network is trained."""
    import os
    import stat
    import subprocess

    recorder = tmp_path / "fake_python"
    calls = tmp_path / "calls.txt"
    recorder.write_text(f'#!/usr/bin/env bash\n[ "$3" = steps ] && exec {sys.executable} "$@"\n'  # the registry
                        f'echo "$*" >> {calls}\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PYTHON=str(recorder), STUDY_WORK=str(tmp_path / "work"), EPOCHS="20", SEEDS="0 1",
               EXTRA_SET="", ONLY="", GPUS="0")  # the caller's own study knobs must not leak in
    done = subprocess.run(["bash", str(ROOT / "scripts" / "seed_study.sh"), str(tmp_path / "out"), "big_schedules"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "4 chains" in done.stdout
    pipelines = sorted(line for line in calls.read_text().splitlines() if " pipeline " in line)
    assert len(pipelines) == 4
    for line in pipelines:
        args = line.split()
        assert args[args.index("--steps") + 1:args.index("--set")] == ["classifier", "cam", "eval_cam"]
        epochs = [a for a in args if a.startswith("classifier.trainer.max_epochs=")]
        assert epochs == ["classifier.trainer.max_epochs=8", "classifier.trainer.max_epochs=20"]
        assert "classifier.data.crop_size=128" in args and f"{tmp_path / 'work' / 'data' / 'big'}" in args
    names = sorted((a.split()[a.split().index("--name") + 1], a.split()[a.split().index("--seeds") + 1]) for a in pipelines)
    assert names == [("demo-cam-e20", "0"), ("demo-cam-e20", "1"), ("demo-e20", "0"), ("demo-e20", "1")]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tgz")) == [
        "big__demo-cam-e20__seed0.tgz", "big__demo-cam-e20__seed1.tgz", "big__demo-e20__seed0.tgz", "big__demo-e20__seed1.tgz"]


def test_run_rows_reads_refinement_coverage_and_high_sweep(tmp_path: Path) -> None:
    """seed_study.sh REFINEMENT=1 outputs (eval_refinement_{learned,ground-truth}.json, confidence.txt)
    and wide_sweep.sh OUT_NAME=eval_cam_high are collected per seed and printed."""
    import json

    table = _table_module()
    run = tmp_path / "default" / "demo-pretrained"
    for k, (learned, ideal, covered) in enumerate([(0.07, 0.20, 1.0), (0.09, 0.24, 0.5)]):
        seed = run / f"seed{k}"
        seed.mkdir(parents=True)
        for source, miou in (("learned", learned), ("ground-truth", ideal)):
            (seed / f"eval_refinement_{source}.json").write_text(json.dumps(
                {"steps": {"cams": {"miou": 0.15}, "walk 2^8": {"miou": miou}, "empty": {"miou": None}}}))
        (seed / "confidence.txt").write_text(json.dumps({"covered_reference": covered, "whole_image_reference": covered}))
        (seed / "eval_cam_high").mkdir()
        (seed / "eval_cam_high" / "metrics.json").write_text(json.dumps({"best_miou": 0.18, "best_threshold": 0.7}))
    r = table.run_rows(run)
    assert r["refinement"] == {("learned", "cams"): [0.15, 0.15], ("learned", "walk 2^8"): [0.07, 0.09],
                               ("ground-truth", "cams"): [0.15, 0.15], ("ground-truth", "walk 2^8"): [0.20, 0.24]}
    assert r["coverage"] == [1.0, 0.5] and r["high"] == [0.18, 0.18] and r["high_thr"] == [0.7, 0.7]
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        table.main(tmp_path)
    text = out.getvalue()
    assert "| default | demo-pretrained | ground-truth | 15.0 ± 0.0 (n=2) | 22.0 ± 2.8 (n=2) |" in text
    assert "| default | demo-pretrained | 75.0 ± 35.4 (n=2) |" in text


def test_seed_study_plans_issue_23_regimes_with_refinement(tmp_path: Path) -> None:
    """seed_study.sh pretrained irn_imagenet: 8 whole chains (2 sets x 2 methods x 2 regimes) of the
    demo_pretrained* / demo_irn_imagenet* experiments; with REFINEMENT=1 a chain with a refine checkpoint
    is followed by eval-refinement over both boundaries, and an RPNet chain by `rpnet confidence`."""
    import os
    import stat
    import subprocess

    recorder = tmp_path / "fake_python"
    calls = tmp_path / "calls.txt"
    recorder.write_text(f'#!/usr/bin/env bash\n[ "$3" = steps ] && exec {sys.executable} "$@"\n'  # the registry
                        f'echo "$*" >> {calls}\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    run = work / "runs" / "voclike" / "demo-pretrained" / "seed0"
    (run / "refine" / "checkpoints").mkdir(parents=True)
    (run / "refine" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "classifier").mkdir()
    (run / "classifier" / "config.yaml").write_text("model:\n  method: rpnet\n")
    env = dict(os.environ, PYTHON=str(recorder), STUDY_WORK=str(work), SEEDS="0", REFINEMENT="1",
               EXTRA_SET="", ONLY="", GPUS="0")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "seed_study.sh"), str(tmp_path / "out"), "pretrained",
                           "irn_imagenet"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "8 chains" in done.stdout
    lines = calls.read_text().splitlines()
    experiments = sorted(line.split()[line.split().index("pipeline") + 1].split("/")[-1] + "@" +
                         line.split()[line.split().index("--data") + 1].split("/")[-1]
                         for line in lines if " pipeline " in line)
    assert experiments == sorted(f"{e}.yaml@{s}" for s in ("default", "voclike") for e in (
        "demo_pretrained_cam", "demo_pretrained", "demo_irn_imagenet_cam", "demo_irn_imagenet"))
    refinements = [line for line in lines if " eval-refinement " in line]
    assert len(refinements) == 2 and all(f"--ckpt {run}/refine/checkpoints/last.ckpt" in line for line in refinements)
    assert {line.split("--boundary ")[1].split()[0] for line in refinements} == {"learned", "ground-truth"}
    assert [line for line in lines if " confidence " in line] == [
        f"-m rpnet_pl.cli confidence --ckpt {run}/classifier/checkpoints/last.ckpt --root {work}/data/voclike"]


def test_ir_label_stats_hand_computed(tmp_path: Path) -> None:
    """scripts/ir_label_stats.py on a 2x3 label: one right and one wrong confident fg pixel, one bg pixel
    that is GT foreground, one ignored, one GT-ignored pixel left out; a size mismatch names the file."""
    import numpy as np
    from PIL import Image

    stats = load_script("ir_label_stats")
    label = np.array([[1, 2, 0], [0, 255, 1]])
    gt = np.array([[1, 1, 1], [0, 0, 255]])
    assert stats.ir_label_counts(label, gt) == {"pixels": 5, "fg": 2, "fg_right": 1, "gt_fg": 3, "gt_fg_covered": 1,
                                                "bg": 2, "bg_wrong": 1, "ignored": 1}
    run, data = tmp_path / "run", tmp_path / "data"
    (run / "ir_labels" / "labels").mkdir(parents=True)
    (data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug").mkdir(parents=True)
    Image.fromarray(label.astype(np.uint8)).save(run / "ir_labels" / "labels" / "a.png")
    Image.fromarray(gt.astype(np.uint8)).save(data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "a.png")
    assert stats.main(run, data) == 0
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug" / "a.png")
    assert stats.main(run, data) == 2
