"""The offline-run reader of the W&B tests (tests/wandb_records.py) waits for W&B's service to flush a
finished run's record file: it is written after ``run.finish()`` returns."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from rpnet_pl.pipeline.tracking import finish_run, start_run
from tests.wandb_records import read_run, records


@pytest.fixture(scope="module")
def finished_run_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a finished offline run's record file (job type ``eval_cam``, group ``g``, closed as failed)."""
    folder = tmp_path_factory.mktemp("wandb")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    try:
        run = start_run(folder, name="g/eval_cam", group="g", job_type="eval_cam", config={"seed": 3})
        run.log({"x": 1.0})
        finish_run(run, "g/eval_cam", failed=True)
    finally:
        mp.undo()
    (path,) = folder.rglob("run-*.wandb")
    read_run(path.parent)  # once flushed
    return path.read_bytes()


def _header_only(tmp_path: Path, full: bytes) -> Path:
    """A run folder whose record file is as W&B's service leaves it between ``finish()`` and its flush."""
    folder = tmp_path / "offline-run-x"
    folder.mkdir()
    (folder / "run-x.wandb").write_bytes(full[:7])
    assert records(folder / "run-x.wandb") == []
    return folder


def test_a_run_flushed_after_the_read_starts_is_read_whole(finished_run_file: bytes, tmp_path: Path) -> None:
    folder = _header_only(tmp_path, finished_run_file)
    flush = threading.Timer(0.4, (folder / "run-x.wandb").write_bytes, (finished_run_file,))
    flush.start()
    run = read_run(folder)
    flush.join()
    assert (run.job_type, run.group, run.config["seed"], run.exit_code) == ("eval_cam", "g", 3, 1)
    assert [h["x"] for h in run.history] == [1.0]


def test_a_run_never_flushed_is_an_error_naming_its_file(finished_run_file: bytes, tmp_path: Path) -> None:
    folder = _header_only(tmp_path, finished_run_file)
    with pytest.raises(AssertionError, match=r"run-x\.wandb: no exit record after 0 s \(0 records\)"):
        read_run(folder, timeout=0.3)
