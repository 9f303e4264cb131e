"""Resume that works: a real training subprocess is killed after its first ``last.ckpt``; the re-run
resumes from that checkpoint's step and ends where an uninterrupted run ends."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.utils.io import process_umask
from rpnet_pl.pipeline.runner import plan, run_steps
from tests.test_pipeline_end_to_end import tiny_experiment

EPOCHS = 3


def _wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 600.0) -> None:
    """Poll until ``path`` exists; fail if the process ends first (or after ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    while not path.is_file():
        assert proc.poll() is None, f"training ended (exit {proc.returncode}) before writing {path}"
        assert time.monotonic() < deadline, f"no {path} after {limit_s} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_training_step_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    _, exp = tiny_experiment(tmp_path)
    cfg = yaml.safe_load(exp.read_text())
    cfg["classifier"]["trainer"]["max_epochs"] = EPOCHS
    exp.write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    folder = runs / "tiny" / "classifier"
    last = folder / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rpnet_pl.cli", "pipeline", str(exp), "--runs", str(runs),
                             "--logger", "none", "--steps", "classifier"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(last, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its `rpnet fit` child, as a preemption does
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished
    assert not (folder / ".done").exists()
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    first_log = (folder / "log.txt").read_text()
    total = int(re.search(r"training from step 0/(\d+) \(3 epoch", first_log).group(1))
    assert 0 < killed_at < total
    assert last.stat().st_mode & 0o777 == 0o666 & ~process_umask()  # 0644 under umask 022, not 0600
    for noise in ("Tip:", "LightningCLI's args parameter", "LeafSpec", "will override existing callbacks"):
        assert noise not in first_log  # library chatter kept out of the log

    assert run_steps(plan(load_experiment(exp), runs_dir=runs, logger="none", steps=["classifier"])) == ["classifier"]
    resumed_log = (folder / "log.txt").read_text()[len(first_log):]
    assert f"--ckpt_path {last}" in resumed_log
    assert re.search(rf"resumed at epoch \d+, step {killed_at}/{total}\b", resumed_log)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == total
    # the per-epoch progress lines of the resumed run reach the last epoch and the last step
    assert re.search(rf"epoch {EPOCHS}/{EPOCHS} step {total}/{total} loss [\d.e+-]+ .*lr [\d.e+-]+ "
                     rf"images/s [\d.e+-]+ ETA 0:00:00", resumed_log)
    assert (folder / ".done").is_file()
