"""A non-editable install works: the wheel holds every package (data/, stages/ included), the parity
cases and the `rpnet` entry point. Built and installed into a fresh venv whose only other entry on
sys.path is this environment's site-packages (for torch and the rest), then run from outside the
source tree: `rpnet --help`, `rpnet parity`, `rpnet data synth` and one short training stage."""
from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_end_to_end import EXPERIMENTS, TINY

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_in_a_fresh_venv(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                  "-w", str(wheels)], cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("rpnet_pl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("rpnet_pl/data/__init__.py", "rpnet_pl/data/voc.py", "rpnet_pl/stages/__init__.py",
                 "rpnet_pl/stages/classifier.py", "rpnet_pl/parity_cases/rpnet_head_0.npz", "rpnet_pl/parity.py"):
        assert must in names, must
    # developer tools and study scripts stay beside the package
    assert not [n for n in names if n.startswith(("tools/", "scripts/")) or n.endswith("bench.py")]

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path).returncode == 0
    py = venv / "bin" / "python"
    venv_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          cwd=tmp_path).stdout.strip())
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")  # torch & co., not rpnet_pl
    inst = _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    assert inst.returncode == 0, inst.stderr[-2000:]
    where = _run([str(py), "-c", "import rpnet_pl; print(rpnet_pl.__file__)"], cwd=tmp_path)
    assert where.stdout.strip().startswith(str(venv_site)), where.stdout + where.stderr

    rpnet = str(venv / "bin" / "rpnet")
    help_ = _run([rpnet, "--help"], cwd=tmp_path)
    assert help_.returncode == 0 and "parity" in help_.stdout and "pipeline" in help_.stdout
    parity = _run([rpnet, "parity"], cwd=tmp_path)
    shipped = len(list((ROOT / "src" / "rpnet_pl" / "parity_cases").glob("*.npz")))  # every case runs from the wheel
    assert parity.returncode == 0 and f"{shipped} passed, 0 failed" in parity.stdout, parity.stdout + parity.stderr
    data = tmp_path / "synth"
    synth = _run([rpnet, "data", "synth", "--out", str(data), "--images", "12", "--size", "48", "--classes", "3"],
                 cwd=tmp_path)
    assert synth.returncode == 0, synth.stderr[-2000:]
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump({"extends": str(EXPERIMENTS / "base.yaml"), "name": "tiny",
                                   "dataset": {"root": str(data)}, **TINY}))
    fit = _run([rpnet, "pipeline", str(exp), "--runs", str(tmp_path / "runs"), "--logger", "none", "--accelerator",
                "cpu", "--steps", "classifier", "cam"], cwd=tmp_path, timeout=600)
    assert fit.returncode == 0, fit.stdout[-2000:] + fit.stderr[-2000:]
    assert (tmp_path / "runs/tiny/classifier/checkpoints/last.ckpt").is_file()
    assert len(list((tmp_path / "runs/tiny/cam/cams").glob("*.npy"))) == len(
        (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split())
