"""A run folder that cannot lie: one writer at a time (rpnet_pl.pipeline.run_lock), results tied to the
settings and inputs that made them (rpnet_pl.pipeline.provenance), and --force that starts afresh."""
from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rpnet_pl.cli import main
from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.pipeline.runner import PlannedStep, identities, plan, run_steps
from rpnet_pl.pipeline.provenance import differences, downstream, flatten, identity, settings
from rpnet_pl.pipeline.run_lock import RunLocked, run_lock

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


# -- provenance: pure functions --------------------------------------------------------------------
def test_settings_flatten_drop_execution_keys_and_name_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "demo"
    cfg = {"model": {"beta": 0.3, "scales": (1.0, 0.5)}, "trainer": {"max_epochs": 5, "devices": 4, "logger": {"a": 1}},
           "data": {"num_workers": 8, "label_dir": str(run / "ir_labels" / "labels")}, "workers": 2}
    assert flatten({"a": {"b": {"c": 1}}, "d": {}}) == {"a.b.c": 1, "d": {}}
    assert settings(cfg, "voc", "/data/voc", run) == {
        "model.beta": 0.3, "model.scales": [1.0, 0.5], "trainer.max_epochs": 5,
        "data.label_dir": "${run}/ir_labels/labels", "dataset": "voc", "root": "/data/voc"}
    # the same run reached by another path is the same configuration
    assert settings(cfg, "voc", "/data/voc", run) == settings(
        {**cfg, "data": {"label_dir": f"{tmp_path}/runs/demo/ir_labels/labels"}}, "voc", "/data/voc", Path(f"{tmp_path}/runs/demo"))


def test_identity_depends_on_settings_and_inputs_only() -> None:
    a = identity({"x": 1, "y": [1, 2]}, {"cam": "abc"})
    assert a == identity({"y": [1, 2], "x": 1}, {"cam": "abc"})  # key order is no difference
    assert len({a, identity({"x": 2, "y": [1, 2]}, {"cam": "abc"}), identity({"x": 1, "y": [1, 2]}, {"cam": "abd"})}) == 3


def test_differences_and_downstream() -> None:
    assert differences({"b": 0.5, "c": 1, "old": 2}, {"b": 0.1, "c": 1, "new": 3}) == [
        "b: 0.5 -> 0.1", "new: (unset) -> 3", "old: 2 -> (unset)"]
    reads = {"a": (), "b": ("a",), "c": ("b",), "d": (), "e": ("c", "d")}
    assert downstream("a", reads) == ["b", "c", "e"]
    assert downstream("d", reads) == ["e"]
    assert downstream("e", reads) == []


# -- the lock -----------------------------------------------------------------------------------
_HOLDS = """
import sys, time
from pathlib import Path
from rpnet_pl.pipeline.run_lock import run_lock
with run_lock(Path(sys.argv[1]), command="rpnet pipeline exp.yaml"):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDS, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_named_the_first_and_a_dead_one_is_taken_over(tmp_path: Path, caplog) -> None:
    run = tmp_path / "runs" / "demo"
    first = _holder(run)
    try:
        with pytest.raises(RunLocked, match=rf"{run}: in use by rpnet pipeline exp\.yaml \(pid {first.pid} on "):
            with run_lock(run):
                pass
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding it: no clean-up runs
        first.wait()
    with caplog.at_level(logging.WARNING), run_lock(run):
        pass
    (took,) = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert took.startswith(f"{run}: took over the lock left by rpnet pipeline exp.yaml (pid {first.pid} on "
                           f"{socket.gethostname()}, since ") and took.endswith(" UTC), which is no longer running")
    with run_lock(run):  # released cleanly: nothing to take over
        pass
    assert (run / ".rpnet-lock").read_text() == ""


def test_two_pipelines_on_one_run_folder(tiny_voc: Path, tmp_path: Path, capsys) -> None:
    """The second `rpnet pipeline` stops in seconds naming the first; once it is killed, the next run goes."""
    runs = tmp_path / "runs"
    first = _holder(runs / "two")
    try:
        start = time.monotonic()
        assert main(["pipeline", str(EXPERIMENTS / "demo.yaml"), "--name", "two", "--data", str(tiny_voc), "--runs",
                     str(runs), "--steps", "classifier", "--logger", "none", "--set", "classifier.data.batch_size=2"]) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - start < 30
        assert err.startswith(f"error: {runs / 'two'}: in use by rpnet pipeline exp.yaml (pid {first.pid} on ")
        assert err.count("\n") == 1
    finally:
        first.kill()
        first.wait()
    with run_lock(runs / "two"):  # taken over
        pass


def test_a_dry_run_takes_no_lock(tmp_path: Path) -> None:
    step = PlannedStep("a", [sys.executable, "-c", "pass"], tmp_path / "run" / "a")
    assert run_steps([step], dry_run=True) == ["a"]
    assert not (tmp_path / "run").exists()


# -- results keyed by what made them ---------------------------------------------------------------
def _step(run: Path, name: str, code: str = "pass", inputs: tuple[str, ...] = (), kind: str = "per_image",
          **values) -> PlannedStep:
    return PlannedStep(name, [sys.executable, "-c", code], run / name, dict(values), kind=kind,
                       settings=settings(values, "voc", "/d", run), inputs=inputs)


def test_a_changed_setting_of_a_complete_step_is_an_error_before_any_work(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ran = tmp_path / "ran.txt"
    log_it = f"open({str(ran)!r}, 'a').write('{{}}\\n')"
    chain = lambda beta, thr: [_step(run, "classifier", log_it.format("classifier"), kind="train", beta=beta),  # noqa: E731
                               _step(run, "cam", log_it.format("cam"), ("classifier",), scales=[1.0]),
                               _step(run, "eval_cam", log_it.format("eval_cam"), ("cam",), threshold=thr)]
    assert run_steps(chain(0.5, 0.1)) == ["classifier", "cam", "eval_cam"]
    marker = yaml.safe_load((run / "classifier" / ".done").read_text())
    assert marker["settings"] == {"beta": 0.5, "dataset": "voc", "root": "/d"} and marker["inputs"] == {}
    assert yaml.safe_load((run / "cam" / ".done").read_text())["inputs"] == {"classifier": marker["identity"]}
    assert run_steps(chain(0.5, 0.1)) == []  # same settings: complete
    with pytest.raises(ConfigError, match=r"step 'classifier' is complete but was made with other settings beta: "
                                          r"0\.5 -> 0\.1; re-run it with --force classifier .* or give this "
                                          r"configuration a new --name"):
        run_steps(chain(0.1, 0.1))
    assert ran.read_text() == "classifier\ncam\neval_cam\n"  # nothing ran
    # a changed setting downstream leaves the upstream steps done, and is named at its own step
    with pytest.raises(ConfigError, match=r"step 'eval_cam' is complete but was made with other settings "
                                          r"threshold: 0\.1 -> 0\.2"):
        run_steps(chain(0.5, 0.2))
    assert run_steps(chain(0.5, 0.2), force=["eval_cam"]) == ["eval_cam"]
    # forcing the classifier re-runs everything after it
    assert run_steps(chain(0.1, 0.2), force=["classifier"]) == ["classifier", "cam", "eval_cam"]
    assert run_steps(chain(0.1, 0.2)) == []


def test_an_input_remade_elsewhere_is_named(tmp_path: Path) -> None:
    """cam re-run alone with other scales: eval_cam, not planned then, lost its marker; and a step that
    reads a remade input it did not see is stale by its inputs."""
    run = tmp_path / "run"
    cam = lambda scales: _step(run, "cam", "pass", scales=scales)  # noqa: E731
    ev = _step(run, "eval_cam", "pass", ("cam",), threshold=0.1)
    assert run_steps([cam([1.0]), ev]) == ["cam", "eval_cam"]
    assert run_steps([cam([1.0, 0.5])], force=["cam"]) == ["cam"]
    assert not (run / "eval_cam" / ".done").exists()  # downstream of a forced step: no longer complete
    assert run_steps([cam([1.0, 0.5]), ev]) == ["eval_cam"]
    # a marker of an input remade by hand (another identity) makes its reader stale
    (run / "cam" / ".done").write_text(yaml.safe_dump({"argv": [], "identity": "0" * 16, "settings": {}}))
    with pytest.raises(ConfigError, match=r"step 'eval_cam' is complete but was made with other inputs remade "
                                          r"since: cam"):
        run_steps([ev])


def test_markers_without_a_record_stay_complete(tmp_path: Path) -> None:
    """Runs made before identities were recorded resume as before."""
    step = _step(tmp_path / "run", "eval_cam", "raise SystemExit(1)", threshold=0.1)
    step.folder.mkdir(parents=True)
    step.done_marker.write_text(yaml.safe_dump({"argv": ["x"], "seconds": 1.0}))
    assert run_steps([step]) == []


def test_force_retrains_a_finished_training_step_from_scratch(tmp_path: Path) -> None:
    seen = tmp_path / "argv.txt"
    code = f"import sys; open({str(seen)!r}, 'w').write(' '.join(sys.argv[1:]))"
    step = PlannedStep("classifier", [sys.executable, "-c", code, "fit", "classifier"], tmp_path / "run" / "classifier",
                       kind="train")
    last = step.folder / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"a slimmed checkpoint: weights only")
    step.done_marker.write_text(yaml.safe_dump({"argv": [], "seconds": 1.0}))
    assert run_steps([step], force=["classifier"]) == ["classifier"]
    assert seen.read_text() == "fit classifier"  # no --ckpt_path: the optimiser starts afresh
    assert not last.exists() and step.is_done()


def test_force_outside_steps_is_added_to_them(tmp_path: Path, monkeypatch) -> None:
    """`--steps eval_cam --force cam` runs cam, then eval_cam."""
    import rpnet_pl.pipeline.runner as pipeline

    got: list[list[str]] = []
    monkeypatch.setattr(pipeline, "run_steps", lambda steps, **kw: got.append([s.name for s in steps]) or [])
    assert main(["pipeline", str(EXPERIMENTS / "demo.yaml"), "--runs", str(tmp_path), "--steps", "eval_cam",
                 "--force", "cam", "--dry-run", "--logger", "none"]) == 0
    assert got == [["cam", "eval_cam"]]


def test_pipeline_names_the_changed_key_of_a_real_experiment(tmp_path: Path, capsys) -> None:
    cfg = load_experiment(EXPERIMENTS / "demo.yaml")
    steps = plan(cfg, runs_dir=tmp_path, logger="none")
    ident = identities(steps)
    clf = steps[0]
    clf.folder.mkdir(parents=True)
    clf.done_marker.write_text(yaml.safe_dump({"argv": clf.argv, "identity": ident["classifier"], "inputs": {},
                                               "settings": clf.settings}))
    argv = ["pipeline", str(EXPERIMENTS / "demo.yaml"), "--runs", str(tmp_path), "--logger", "none", "--dry-run",
            "--steps", "classifier"]
    assert main(argv) == 0 and "skip" not in capsys.readouterr().err  # unchanged: complete
    assert main(argv + ["--set", "classifier.model.beta=0.1"]) == 2
    err = capsys.readouterr().err
    assert "step 'classifier' is complete but was made with other settings model.beta: 0.5 -> 0.1;" in err
    assert err.count("\n") == 1
    assert main(argv + ["--set", "classifier.trainer.log_every_n_steps=1", "classifier.data.num_workers=3"]) == 0


def test_a_listed_image_that_is_missing_stops_the_pipeline_before_work(tmp_path: Path, capsys) -> None:
    """An id of the test list without its image: named before the classifier trains (it failed when the
    test export started)."""
    from tests.conftest import make_voc_tree

    items = {"2007_000001": [1], "2007_000002": [1, 2], "2007_000003": [2], "2007_000004": [15]}
    voc = make_voc_tree(tmp_path / "voc", items, splits={"train": list(items), "train_aug": list(items),
                                                          "val": list(items)[:2], "test": ["2008_000009"]})
    argv = ["pipeline", str(EXPERIMENTS / "demo.yaml"), "--data", str(tmp_path / "voc"), "--runs", str(tmp_path / "runs"),
            "--logger", "none", "--set", "classifier.data.batch_size=2"]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"error: {voc / 'ImageSets' / 'Segmentation' / 'test.txt'}: 1 id(s) have no "
                                       f"image in {voc / 'JPEGImages'} (first: 2008_000009)\n")
    assert not (tmp_path / "runs" / "demo" / "classifier").exists()


def test_the_report_marks_a_run_made_by_two_code_versions(tmp_path: Path) -> None:
    from rpnet_pl.pipeline.provenance import code_version
    from rpnet_pl.results.report import write_report

    run = tmp_path / "runs" / "demo"
    for step, code in (("classifier", "0.1.0+gaaaaaaa"), ("cam", "0.1.0+gbbbbbbb"), ("eval_cam", None)):
        (run / step).mkdir(parents=True)
        (run / step / ".done").write_text(yaml.safe_dump({"argv": [], **({"code": code} if code else {})}))
    (run / "eval_cam" / "metrics.json").write_text('{"best_miou": 0.5, "best_threshold": 0.2}')
    _, text = write_report(tmp_path / "runs")
    assert "**Runs whose steps were made by different code versions**" in text
    assert "- demo: classifier 0.1.0+gaaaaaaa, cam 0.1.0+gbbbbbbb\n" in text
    (run / "cam" / ".done").write_text(yaml.safe_dump({"argv": [], "code": "0.1.0+gaaaaaaa"}))
    assert "different code versions" not in write_report(tmp_path / "runs")[1]
    assert code_version().startswith("0.1.0")  # this checkout: +g<commit>, -dirty with changes


def test_a_command_run_by_hand_into_a_run_takes_its_lock(tmp_path: Path, monkeypatch) -> None:
    """`rpnet eval-cam --out runs/demo/eval_cam/metrics.json` while a pipeline holds runs/demo: one line
    naming the holder; the pipeline's own step processes (RPNET_RUN_LOCK) and outputs outside any run
    pass."""
    from rpnet_pl.pipeline.run_lock import HELD, output_lock, run_of

    run = tmp_path / "runs" / "demo"
    out = run / "eval_cam" / "metrics.json"
    assert run_of(out) is None  # no run there yet: nothing to lock
    first = _holder(run)
    try:
        assert run_of(out) == run.resolve()
        with pytest.raises(RunLocked, match=rf"in use by rpnet pipeline exp\.yaml \(pid {first.pid} "):
            with output_lock(out, "rpnet eval-cam"):
                pass
        monkeypatch.setenv(HELD, str(run.resolve()))  # started by the holder itself
        with output_lock(out, "rpnet eval-cam"):
            pass
        monkeypatch.delenv(HELD)
        assert main(["eval-cam", "--cams", str(run / "cam" / "cams"), "--root", str(tmp_path), "--out", str(out)]) == 2
        with output_lock(tmp_path / "elsewhere" / "metrics.json", "rpnet eval-cam"):
            pass
    finally:
        first.kill()
        first.wait()
