"""scripts/slurm_pipeline.sbatch end to end on one machine: a stand-in srun (tests/bin/srun) starts
two local tasks with SLURM's variables, Lightning's SLURM environment makes them one 2-rank DDP group
on CPUs (gloo), and one step of each kind runs: training on every task, per-image sharded over the
tasks, evaluation on one task, then the report. (The whole chain in one process is
tests/test_pipeline_end_to_end.py; two processes training and writing CAMs, tests/test_pipeline_ddp.py.)"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_pipeline_end_to_end import tiny_experiment

REPO = Path(__file__).resolve().parents[1]
RPNET = Path(sys.executable).parent / "rpnet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or not RPNET.exists(), reason="needs bash and the rpnet script")
def test_sbatch_script_runs_each_kind_of_step_as_two_slurm_tasks(tmp_path: Path) -> None:
    data, exp = tiny_experiment(tmp_path)
    runs = tmp_path / "runs"
    env = {**os.environ, "PATH": f"{REPO / 'tests' / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NTASKS": "2",
           "SLURM_JOB_NAME": "rpnet-test", "SLURM_JOB_ID": "4242", "SLURM_NODELIST": "127.0.0.1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "ACCELERATOR": "cpu", "LOGGER": "csv", "RUNS": str(runs), "RPNET": str(RPNET),
           "STEPS": "classifier cam eval_cam"}
    done = subprocess.run(["bash", str(REPO / "scripts" / "slurm_pipeline.sbatch"), str(exp), str(data)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    run = runs / "tiny"
    logs = "".join(p.read_text() for p in sorted(run.glob("*/log*.txt")))
    assert done.returncode == 0, done.stderr[-3000:] + logs[-3000:]
    assert sorted(p.parent.name for p in run.glob("*/.done")) == ["cam", "classifier", "eval_cam"]
    # the training steps formed one 2-process group from SLURM's variables
    cls_log = (run / "classifier" / "log.txt").read_text() + (run / "classifier" / "log.rank1.txt").read_text()
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in cls_log and "GLOBAL_RANK: 0, MEMBER: 1/2" in cls_log
    # the sharded steps wrote every image
    ids = (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert sorted(p.stem for p in (run / "cam" / "cams").glob("*.npy")) == sorted(ids)
    assert (runs / "report.md").is_file() and "| tiny |" in (runs / "report.md").read_text()
