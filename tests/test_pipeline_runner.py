"""The pipeline runner: plan from YAML, skip complete steps, stop on failure, dry run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.utils.errors import CheckpointError
from rpnet_pl.pipeline.runner import PlannedStep, StepFailed, plan, run_steps
from rpnet_pl.pipeline.registry import STEP_ORDER

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _py_step(tmp: Path, name: str, code: str) -> Step:
    return PlannedStep(name, [sys.executable, "-c", code], tmp / name, {"x": 1})


def test_plan_of_the_base_experiment_lists_every_step_in_order(tmp_path: Path) -> None:
    cfg = load_experiment(EXPERIMENTS / "base.yaml", ["dataset.root=/data/voc"])
    steps = plan(cfg, runs_dir=tmp_path, logger="csv")
    assert [s.name for s in steps] == list(STEP_ORDER)
    by = {s.name: s for s in steps}
    assert by["classifier"].argv[3:6] == ["fit", "classifier", "--config"]
    assert by["classifier"].config["data"]["root"] == "/data/voc"
    assert by["classifier"].config["trainer"]["default_root_dir"] == str(tmp_path / "base" / "classifier")
    assert by["refine"].config["data"]["label_dir"] == str(tmp_path / "base" / "ir_labels" / "labels")
    assert by["segmenter"].config["data"]["label_dir"] == str(tmp_path / "base" / "pseudo_masks" / "masks")
    cam = by["cam"].argv
    assert cam[cam.index("--ckpt") + 1].endswith("classifier/checkpoints/last.ckpt")
    assert cam[cam.index("--scales") + 1:cam.index("--scales") + 5] == ["1.0", "0.5", "1.5", "2.0"]
    assert "--crf" in by["predict_seg"].argv


def test_run_placeholder_is_substituted(tmp_path: Path) -> None:
    cfg = load_experiment(EXPERIMENTS / "base.yaml",
                          ["refine.model.weights=${run}/classifier/checkpoints/last.ckpt"])
    steps = {s.name: s for s in plan(cfg, runs_dir=tmp_path, logger="none")}
    assert steps["refine"].config["model"]["weights"] == str(tmp_path / "base/classifier/checkpoints/last.ckpt")


def test_gpus_and_nodes_reach_trainer_and_inference(tmp_path: Path) -> None:
    cfg = load_experiment(EXPERIMENTS / "base.yaml")
    steps = {s.name: s for s in plan(cfg, runs_dir=tmp_path, gpus=4, nodes=2, logger="none")}
    tr = steps["classifier"].config["trainer"]
    assert (tr["devices"], tr["num_nodes"], tr["strategy"], tr["accelerator"]) == (4, 2, "ddp", "gpu")
    cam = steps["cam"].argv
    assert cam[cam.index("--devices") + 1] == "4" and cam[cam.index("--num-nodes") + 1] == "2"


def test_completed_steps_are_skipped_and_failure_stops_the_chain(tmp_path: Path) -> None:
    marker = tmp_path / "ran.txt"
    write = f"open({str(marker)!r}, 'a').write('{{}}\\n')"
    steps = [_py_step(tmp_path, "a", write.format("a")), _py_step(tmp_path, "b", "import sys; sys.exit(3)"),
             _py_step(tmp_path, "c", write.format("c"))]
    with pytest.raises(StepFailed, match=r"step 'b' failed \(exit 3\); log: .*b/log\.txt"):
        run_steps(steps)
    assert marker.read_text() == "a\n"  # c never ran
    assert steps[0].is_done() and not steps[1].is_done() and not steps[2].is_done()
    assert (tmp_path / "a" / "config.yaml").is_file()  # resolved config saved beside the outputs
    steps[1] = _py_step(tmp_path, "b", "pass")
    assert run_steps(steps) == ["b", "c"]  # a is complete and skipped
    assert marker.read_text() == "a\nc\n"
    assert run_steps(steps, force=["a"]) == ["a"]


def test_dry_run_prints_and_runs_nothing(tmp_path: Path, capsys) -> None:
    steps = [_py_step(tmp_path, "a", "raise SystemExit(1)")]
    assert run_steps(steps, dry_run=True) == ["a"]
    assert "raise SystemExit(1)" in capsys.readouterr().out
    assert not (tmp_path / "a").exists()


def test_interrupted_training_step_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    """A fit step whose folder holds checkpoints/last.ckpt (killed mid-run) is re-run with --ckpt_path."""
    seen = tmp_path / "argv.txt"
    code = f"import sys; open({str(seen)!r}, 'w').write(' '.join(sys.argv[1:]))"
    # argv laid out like the real one: python -m rpnet_pl.cli fit STAGE ...
    step = PlannedStep("classifier", [sys.executable, "-c", code, "fit", "classifier"], tmp_path / "classifier",
                       kind="train")
    (step.folder / "checkpoints").mkdir(parents=True)
    run_steps([step])
    assert "--ckpt_path" not in seen.read_text()  # no checkpoint yet: a fresh start
    step.done_marker.unlink()  # as if killed before finishing
    last = step.folder / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 1}, last)
    run_steps([step])
    assert seen.read_text().endswith(f"fit classifier --ckpt_path {last}")
    # a checkpoint cut short (a full disk, a killed copy) is named before the step starts
    step.done_marker.unlink()
    last.write_bytes(last.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match=rf"^{last}: truncated or unreadable resume checkpoint \(BadZipFile: "
                                              r".*\); delete it to restart this step from scratch$"):
        run_steps([step])


def test_a_failed_step_shows_its_cause_not_only_its_log(tmp_path: Path) -> None:
    code = ("import sys; print('usage: rpnet fit [-h] ...'); print('  --model.beta BETA  ...'); "
            "print('error: Parser key \"model\": no option \"betta\"', file=sys.stderr); "
            "print('see the usage above'); sys.exit(2)")
    with pytest.raises(StepFailed, match=r"^step 'a' failed \(exit 2\): error: Parser key \"model\": no option "
                                         r"\"betta\"; log: .*a/log\.txt$"):
        run_steps([_py_step(tmp_path, "a", code)])
    code = "import logging; logging.basicConfig(); logging.error('noise'); raise ValueError('/x.jpg: broken')"
    with pytest.raises(StepFailed, match=r"failed \(exit 1\): ValueError: /x\.jpg: broken; log: "):
        run_steps([_py_step(tmp_path, "b", code)])


def test_progress_lines_of_a_step_reach_the_terminal_and_the_log(tmp_path: Path, caplog) -> None:
    code = ("import sys; print('INFO rpnet_pl.progress: epoch 1/2 step 5/10 loss 0.5 ETA 0:00:09', file=sys.stderr);"
            " print('INFO other: chatter', file=sys.stderr)")
    with caplog.at_level("INFO", logger="rpnet_pl.pipeline"):
        run_steps([_py_step(tmp_path, "a", code)])
    echoed = [r.getMessage() for r in caplog.records if r.name == "rpnet_pl.pipeline"]
    assert "a: epoch 1/2 step 5/10 loss 0.5 ETA 0:00:09" in echoed
    assert not any("chatter" in line for line in echoed if not line.startswith("run a:"))
    log_text = (tmp_path / "a" / "log.txt").read_text()
    assert "epoch 1/2 step 5/10" in log_text and "INFO other: chatter" in log_text


def test_failure_cause_of_a_killed_step_names_the_signal() -> None:
    from rpnet_pl.pipeline.runner import failure_cause

    progress = ["INFO rpnet_pl.progress: epoch 1/5 step 10/50 loss 0.3"]
    assert failure_cause(progress, -9).startswith("killed by SIGKILL (out of memory?")
    assert failure_cause(progress, 1) == ""
    assert failure_cause(["Traceback (most recent call last):", '  File "x.py", line 1',
                          "torch.OutOfMemoryError: CUDA out of memory."], 1) == \
        "torch.OutOfMemoryError: CUDA out of memory."


def test_each_seed_is_its_own_run_folder(tmp_path: Path) -> None:
    cfg = load_experiment(EXPERIMENTS / "demo.yaml", ["dataset.root=/data/voc"])
    by = {s.name: s for s in plan(cfg, runs_dir=tmp_path, logger="wandb", seed=1)}
    run = tmp_path / "demo" / "seed1"
    assert by["classifier"].folder == run / "classifier" and by["predict_seg"].folder == run / "predict_seg"
    clf = by["classifier"].config
    assert clf["seed_everything"] == 1 and clf["data"]["seed"] == 1 and by["segmenter"].config["data"]["seed"] == 1
    assert by["refine"].config["model"]["weights"] == str(run / "classifier/checkpoints/last.ckpt")
    cam = by["cam"].argv
    assert cam[cam.index("--out") + 1] == str(run / "cam" / "cams")
    wandb = clf["trainer"]["logger"]["init_args"]
    assert (wandb["group"], wandb["name"]) == ("demo", "demo/seed1/classifier")
    assert "seed1" in wandb["tags"]
    single = {s.name: s for s in plan(cfg, runs_dir=tmp_path, logger="wandb")}  # no seed: as before
    assert single["classifier"].folder == tmp_path / "demo" / "classifier"
    assert "seed_everything" not in single["classifier"].config
    assert single["classifier"].config["trainer"]["logger"]["init_args"]["name"] == "demo/classifier"


def test_pipeline_seeds_skip_complete_seeds_independently(tmp_path: Path, capsys) -> None:
    from rpnet_pl.cli import main

    argv = ["pipeline", str(EXPERIMENTS / "demo.yaml"), "--runs", str(tmp_path), "--logger", "none",
            "--data", "/data/voc", "--steps", "classifier", "cam", "--seeds", "0", "1", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for k in (0, 1):
        assert f"--config {tmp_path}/demo/seed{k}/classifier/config.yaml" in out
        assert f"--out {tmp_path}/demo/seed{k}/cam/cams" in out
    for step in ("classifier", "cam"):  # seed 0 complete: only seed 1 would run
        (tmp_path / "demo" / "seed0" / step).mkdir(parents=True)
        (tmp_path / "demo" / "seed0" / step / ".done").write_text("argv: []\n")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "seed0" not in out and f"{tmp_path}/demo/seed1/cam/cams" in out


def test_test_export_is_skipped_without_a_test_split(tiny_voc: Path, tmp_path: Path, caplog) -> None:
    (tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").unlink()
    cfg = load_experiment(EXPERIMENTS / "base.yaml", [f"dataset.root={tiny_voc}"])
    export = [s for s in plan(cfg, runs_dir=tmp_path, logger="none") if s.name == "predict_seg"][0]
    assert export.optional_split == ("voc", str(tiny_voc), "test")
    never = PlannedStep("predict_seg", [sys.executable, "-c", "raise SystemExit(5)"], tmp_path / "predict_seg",
                 optional_split=export.optional_split)
    with caplog.at_level("WARNING"):
        assert run_steps([never]) == []
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1 and lines[0].startswith("skip predict_seg: no test split in ")
    assert "test.txt not found" in lines[0] and "--steps predict_seg" in lines[0]
    assert not never.folder.exists() and not never.is_done()  # skipped, not marked complete
    # with the split present the step runs (and here fails, as its command says)
    (tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").write_text("2007_000001\n")
    with pytest.raises(StepFailed):
        run_steps([never])
