"""The commands and configs every experiment file plans are those recorded in ``tests/data/plans.json``
(first written before the step registry, by the code of commit c0937f2; ``python tests/test_plans.py``
writes it again from today's code: do that only for an intended change, and say which in the commit).

Each experiment is planned as ``make voc-...`` / ``make demo`` plans it (CPU, one process), as a
2-node x 2-GPU seeded W&B run, and each ablation sweep's variants on the experiment it starts from."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from rpnet_pl.results.ablations import get_sweep, run_name, sweeps
from rpnet_pl.pipeline.config import load_experiment
from rpnet_pl.pipeline.runner import plan

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "plans.json"
EXPERIMENTS = sorted(p.name for p in (ROOT / "experiments").glob("*.yaml"))
MODES = {
    "cpu": {"logger": "csv"},
    "ddp-seeded": {"logger": "wandb", "gpus": 2, "nodes": 2, "seed": 3, "tags": ["t"]},
}


def _plain(steps: list, runs: Path) -> list[dict]:
    def norm(value):
        if isinstance(value, str):
            return value.replace(str(runs), "RUNS").replace(sys.executable, "PYTHON")
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value]
        return value

    return [{"name": s.name, "argv": norm(list(s.argv)), "folder": norm(str(s.folder)),
             "config": norm(s.config), "optional_split": norm(s.optional_split)} for s in steps]


def current_plans(runs: Path) -> dict[str, list[dict]]:
    os.environ.pop("WANDB_API_KEY", None)
    os.environ["WANDB_MODE"] = "offline"
    out: dict[str, list[dict]] = {}
    for name in EXPERIMENTS:
        cfg = load_experiment(ROOT / "experiments" / name)
        for mode, kwargs in MODES.items():
            out[f"{name} {mode}"] = _plain(plan(cfg, runs_dir=runs, **kwargs), runs)
    for sweep_name in sweeps():
        sweep = get_sweep(sweep_name)
        for variant in sweep.variants:
            cfg = load_experiment(ROOT / "experiments" / "voc_resnext50.yaml", list(variant.overrides))
            cfg["name"] = run_name(sweep_name, variant)
            out[f"ablation {sweep_name} {variant.label}"] = _plain(
                plan(cfg, runs_dir=runs, logger="csv", steps=list(sweep.steps)), runs)
    return out


@pytest.fixture(scope="module")
def plans_now(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    return json.loads(json.dumps(current_plans(tmp_path_factory.mktemp("plans") / "runs")))


def test_the_same_plans_are_made(plans_now: dict) -> None:
    assert sorted(plans_now) == sorted(json.loads(GOLDEN.read_text()))


@pytest.mark.parametrize("key", sorted(json.loads(GOLDEN.read_text())) if GOLDEN.is_file() else [])
def test_every_plan_is_the_recorded_one(key: str, plans_now: dict) -> None:
    assert plans_now[key] == json.loads(GOLDEN.read_text())[key]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plans = current_plans(Path(tmp) / "runs")
    GOLDEN.write_text(json.dumps(plans, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(plans)} plans to {GOLDEN}")
