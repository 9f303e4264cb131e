"""No silent success, no late failure: a step that did nothing fails with one line and is
not marked done; values a later step would reject are named before the first step; the environment
(runs folder, disk, Ctrl-C / SIGTERM) ends in one line, never a traceback."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from rpnet_pl.cli import main
from rpnet_pl.data.synthetic import generate_synthetic_voc
from rpnet_pl.data.voc import read_split, split_line_id
from rpnet_pl.utils.errors import ConfigError, IncompleteStepError
from rpnet_pl.pipeline.ranges import FRACTION, POSITIVE, STEPS_LIMIT, Range
from rpnet_pl.pipeline.validate import check_tree

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "experiments" / "demo.yaml"


# -- ranges: rejected before any work, naming the key ---------------------------------------------
def test_range_admits_and_says_what_it_expects() -> None:
    assert POSITIVE.admits(1) and POSITIVE.admits(0.5) and not POSITIVE.admits(0) and not POSITIVE.admits(-2)
    assert FRACTION.admits(0) and FRACTION.admits(1) and not FRACTION.admits(1.01)
    assert STEPS_LIMIT.admits(-1) and STEPS_LIMIT.admits(None) and not STEPS_LIMIT.admits(0)
    assert POSITIVE.admits([1.0, 0.5]) and not POSITIVE.admits([1.0, 0.0])
    assert Range(1, 8).admits(8) and not Range(1, 8).admits(9)
    assert POSITIVE.admits("x")  # a wrong type is the type check's to name
    assert str(POSITIVE) == "a value > 0" and str(FRACTION) == "a value in [0, 1]"
    assert str(STEPS_LIMIT) == "-1 or a value >= 1" and str(Range(0, 1, True)) == "a value > 0 and <= 1"


@pytest.mark.parametrize("key, bad, message", [
    ("classifier.data.crop_size", 0, "expected a value > 0, got 0"),
    ("classifier.data.group_size", 9, "expected a value in [1, 8], got 9"),
    ("classifier.trainer.max_epochs", 0, "expected -1 or a value >= 1, got 0"),
    ("refine.trainer.max_steps", 0, "expected -1 or a value >= 1, got 0"),
    ("segmenter.data.batch_size", -4, "expected a value > 0, got -4"),
    ("refine.model.boundary_radius", 0, "expected a value > 0, got 0"),
    ("classifier.model.lr", 0, "expected a value > 0, got 0"),
    ("pseudo_masks.radius", 0, "expected a value > 0, got 0"),
    ("cam.scales", [1.0, -0.5], "expected a value > 0, got [1.0, -0.5]"),
    ("ir_labels.fg_threshold", 1.5, "expected a value in [0, 1], got 1.5"),
    ("eval_seg.crf_iters", 0, "expected a value > 0, got 0"),
])
def test_out_of_range_values_are_named_before_any_step(key: str, bad, message: str) -> None:
    top, *rest = key.split(".")
    tree: dict = {}
    node = tree.setdefault(top, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = bad
    with pytest.raises(ConfigError) as err:
        check_tree(tree)
    assert str(err.value) == f"{key}: {message}"


def test_lightning_special_values_pass() -> None:
    check_tree({"classifier": {"trainer": {"max_epochs": None, "max_steps": -1}},
                "refine": {"trainer": {"max_epochs": -1}}})


def test_rpnet_fit_checks_the_ranges_when_it_starts(tmp_path: Path, capsys) -> None:
    """A stage run alone (no pipeline validation before it) still names the key, not albumentations."""
    assert main(["fit", "classifier", "--data.crop_size", "0", "--trainer.default_root_dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: classifier.data.crop_size: expected a value > 0, got 0"


# -- a training step that trained nothing -----------------------------------------------------------
def _trainer(**kw) -> SimpleNamespace:
    base = dict(global_step=0, max_epochs=1, max_steps=-1, num_training_batches=0, callbacks=[],
                datamodule=SimpleNamespace(hparams={"split": "train_aug", "batch_size": 8}),
                train_dataloader=SimpleNamespace(dataset=list(range(6))))
    return SimpleNamespace(**{**base, **kw})


def test_a_fit_without_an_optimiser_step_says_why() -> None:
    from rpnet_pl.stages.common import check_trained

    with pytest.raises(IncompleteStepError) as err:
        check_trained("classifier", _trainer())
    assert str(err.value) == ("classifier: trained no optimiser step: the training split 'train_aug' gives no "
                              "batch (6 images, data.batch_size 8 per process; an incomplete batch is dropped); "
                              "no checkpoint written, the step is not done")
    with pytest.raises(IncompleteStepError, match=r"^refine: trained no optimiser step: trainer.max_epochs is 0"):
        check_trained("refine", _trainer(max_epochs=0, num_training_batches=3))


def test_a_fit_without_its_checkpoint_is_not_done(tmp_path: Path) -> None:
    from rpnet_pl.stages.common import LastCheckpoint, check_trained

    saver = LastCheckpoint(tmp_path / "checkpoints")
    with pytest.raises(IncompleteStepError, match=r"ended without its checkpoint .*last\.ckpt"):
        check_trained("segmenter", _trainer(global_step=5, callbacks=[saver]))
    saver.path.parent.mkdir()
    saver.path.write_bytes(b"x")
    check_trained("segmenter", _trainer(global_step=5, callbacks=[saver]))


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory) -> Path:
    """The issue's example: 8 images of 32 px, 2 classes (6 in train_aug)."""
    data = tmp_path_factory.mktemp("synth")
    generate_synthetic_voc(data, images=8, size=32, classes=2, seed=0)
    return data


def test_a_split_smaller_than_one_batch_fails_before_any_step(small_synth: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    argv = ["pipeline", str(DEMO), "--data", str(small_synth), "--runs", str(runs), "--logger", "none",
            "--steps", "classifier", "cam", "--set", "classifier.trainer.max_epochs=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: classifier.data.batch_size: 8 per process x 1 process(es) is more than the 6 "
                          "images of train_aug: no batch would be made"), err
    assert not runs.exists()


@pytest.mark.slow
def test_rpnet_fit_that_trains_nothing_exits_non_zero(small_synth: Path, tmp_path: Path, capsys) -> None:
    """Past the pipeline's check (a stage run alone): Lightning's 'No training batches' is an error."""
    argv = ["fit", "classifier", "--model.net.backbone", "resnet18", "--model.net.pretrained", "false",
            "--data.root", str(small_synth), "--data.batch_size", "8", "--data.crop_size", "32",
            "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: classifier: trained no optimiser step: the training split 'train_aug' gives no batch (6 images")
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_ir_labels_that_wrote_nothing_fail(tiny_voc: Path, tmp_path: Path, monkeypatch) -> None:
    from rpnet_pl.steps import ir_labels
    from tests.test_stages_ir_labels import crafted_cams

    crafted_cams(tiny_voc, tmp_path / "cams")
    monkeypatch.setattr(ir_labels, "_do_one", lambda image_id: 0)  # a writer that silently writes nothing
    with pytest.raises(IncompleteStepError, match=r"IR labels of 4 of the 4 images of 'train_aug' were not "
                                                  r"written \(first: 2007_000001\)"):
        ir_labels.make_ir_labels(tmp_path / "cams", tmp_path / "ir", tiny_voc, crf=False, workers=0)


# -- names and folders the user gives ---------------------------------------------------------------
def test_report_of_a_missing_or_empty_folder_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "no_such_runs")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {tmp_path / 'no_such_runs'}: no such runs folder (the --runs / RUNS= of the pipeline)"
    assert not (tmp_path / "no_such_runs").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no run found in it" in capsys.readouterr().err
    assert not (tmp_path / "empty" / "report.md").exists()


def test_a_runs_path_that_is_a_file_or_cannot_be_made(small_synth: Path, tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    base = ["pipeline", str(DEMO), "--data", str(small_synth), "--logger", "none", "--steps", "classifier",
            "--set", "classifier.data.batch_size=2"]
    assert main([*base, "--runs", str(afile / "runs")]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {afile}: is a file, not a folder: the runs go under it (--runs, RUNS=)"
    assert main([*base, "--runs", "/proc/no_such/runs"]) == 2  # a tree nobody can write, even root
    assert capsys.readouterr().err.strip().startswith("error: /proc/no_such")


def test_a_full_disk_is_one_line(monkeypatch, capsys) -> None:
    import rpnet_pl.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/cam/cams/2007_000001.npy")

    monkeypatch.setattr(cli, "_steps", full)
    assert main(["steps"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "error: /runs/x/cam/cams/2007_000001.npy: No space left on device (nothing half-written is kept")


# -- formats people have --------------------------------------------------------------------------------
def test_deeplab_style_two_column_lists_are_read(tiny_voc: Path) -> None:
    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    assert split_line_id("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png") == "2007_000032"
    assert split_line_id("2007_000032") == "2007_000032" and split_line_id("  ") == ""
    (voc / "ImageSets" / "Segmentation" / "two.txt").write_text(
        "/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
        "JPEGImages/2007_000003.jpg SegmentationClassAug/2007_000003.png\n")
    assert read_split(voc, "two") == ["2007_000001", "2007_000003"]


def test_data_check_says_which_mask_folder_each_split_is_read_from(tiny_voc: Path, capsys) -> None:
    assert main(["data", "check", str(tiny_voc)]) == 0
    out = capsys.readouterr().out
    assert "| masks read from |" in out
    assert "| val | 4 | 4 | SegmentationClassAug/ (4) |" in out


# -- Ctrl-C and SIGTERM ---------------------------------------------------------------------------------
def test_a_stopped_command_says_where_and_how_to_resume(monkeypatch, capsys) -> None:
    import rpnet_pl.cli as cli
    from rpnet_pl.utils.errors import Stopped

    def interrupted(args):
        raise Stopped(signal.SIGINT, "step 'cam' (log: runs/x/cam/log.txt)")

    monkeypatch.setattr(cli, "_pipeline", interrupted)
    assert main(["pipeline", str(DEMO)]) == 130
    assert capsys.readouterr().err.strip() == (
        "stopped: Ctrl-C during step 'cam' (log: runs/x/cam/log.txt); re-run the same command to resume: "
        "complete steps are skipped, training resumes from its checkpoints/last.ckpt")
    assert signal.getsignal(signal.SIGINT) is not None  # the handlers are put back


def test_ctrl_c_before_a_resume_point_says_the_step_restarts(tmp_path: Path, monkeypatch) -> None:
    """A training step stopped before it wrote checkpoints/last.ckpt has nothing to resume from: the
    line says so (with a checkpoint, the command's usual resume line stands)."""
    from rpnet_pl.utils.terminal import stopped_line
    from rpnet_pl.utils.errors import Stopped
    from rpnet_pl.pipeline.runner import PlannedStep, run_steps

    def handler(signum, frame):  # as the rpnet command's
        raise Stopped(signum)

    previous = signal.signal(signal.SIGINT, handler)
    code = "import os, signal, time; os.kill(os.getppid(), signal.SIGINT); time.sleep(30)"
    step = PlannedStep("classifier", [sys.executable, "-c", code], tmp_path / "classifier", kind="train")
    try:
        with pytest.raises(Stopped) as stopped:
            run_steps([step])
    finally:
        signal.signal(signal.SIGINT, previous)
    line = stopped_line(stopped.value, "pipeline")
    assert line == (f"Ctrl-C during step 'classifier' (log: {step.log_path}); it had written no checkpoints/last.ckpt "
                    "yet, so re-running the same command restarts it from scratch (complete steps are skipped)")
    assert not step.is_done()


@pytest.mark.slow
def test_sigterm_to_the_pipeline_stops_its_step_and_marks_nothing_done(small_synth: Path, tmp_path: Path) -> None:
    """SIGTERM sent to the pipeline process alone (a scheduler's kill): it is passed on to the running
    training step, both stop with one line each, exit 143, no done marker; no traceback anywhere."""
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "rpnet_pl.cli", "pipeline", str(DEMO), "--data", str(small_synth), "--runs",
            str(runs), "--logger", "none", "--steps", "classifier", "--set", "classifier.data.batch_size=2",
            "classifier.trainer.max_epochs=50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    log = runs / "demo" / "classifier" / "log.txt"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.is_file() and "training from step" in log.read_text()):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped: SIGTERM during step 'classifier' (log: ")
    assert "Traceback" not in err and "Traceback" not in log.read_text()
    assert "stopped: SIGTERM during `rpnet fit`" in log.read_text()  # the step's own line, in its log
    assert not (runs / "demo" / "classifier" / ".done").exists()


def test_sync_batchnorm_on_cpus_is_named_before_the_fit() -> None:
    from rpnet_pl.pipeline.validate import check_sync_batchnorm

    step = SimpleNamespace(name="classifier", trains=True, config={"trainer": {"sync_batchnorm": True,
                                                                               "accelerator": "cpu"}})
    with pytest.raises(ConfigError, match=r"^classifier\.trainer\.sync_batchnorm: needs GPUs"):
        check_sync_batchnorm([step])
    step.config["trainer"]["accelerator"] = "gpu"
    check_sync_batchnorm([step])


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "-1"], "argument --gpus: expected an integer >= 0, got -1"),
    (["--nodes", "0"], "argument --nodes: expected an integer >= 1, got 0"),
    (["--seeds", "1", "-2"], "argument --seeds: expected an integer >= 0, got -2"),
])
def test_device_and_seed_counts_are_checked(flags: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", str(DEMO), "--dry-run", *flags])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
