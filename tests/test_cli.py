"""The `rpnet` command stays thin: `pipeline` and `ablation` share one set of run flags, and the step
list of `rpnet steps` is a pure function of the registry."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from rpnet_pl.cli import build_parser, main
from rpnet_pl.pipeline.experiment import RunFlags, run_flags
from rpnet_pl.pipeline.registry import STEPS, step_lines

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._subparsers._group_actions)  # the COMMAND sub-parsers
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_pipeline_and_ablation_share_the_run_flags() -> None:
    shared = {"--data", "--runs", "--gpus", "--nodes", "--accelerator", "--logger", "--set", "--seeds", "--dry-run"}
    assert shared <= _flags("pipeline") and shared <= _flags("ablation")
    args = build_parser().parse_args(["ablation", "beta", "x.yaml", "--accelerator", "cpu", "--gpus", "2",
                                      "--set", "a.b=1", "--seeds", "1", "0", "1"])
    flags = run_flags(args)
    assert flags == RunFlags(accelerator="cpu", gpus=2, overrides=("a.b=1",), seeds=(1, 0, 1))
    assert flags.seed_list() == [1, 0] and RunFlags().seed_list() == [None]
    assert RunFlags(data="/d").with_data(["x=1"]) == ["x=1", "dataset.root=/d"]
    defaults = run_flags(build_parser().parse_args(["pipeline", "x.yaml"]))
    assert defaults == RunFlags() and {f.name for f in fields(RunFlags)} == set(vars(defaults))


def test_ablation_plans_on_the_accelerator_given(capsys, tmp_path: Path) -> None:
    assert main(["ablation", "gaussian", str(EXPERIMENTS / "base.yaml"), "--runs", str(tmp_path), "--logger", "none",
                 "--gpus", "2", "--accelerator", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" fit classifier ") == 2 and "--accelerator cpu" in out


def test_step_lines() -> None:
    assert step_lines() == list(STEPS)
    assert step_lines(until="cam") == ["classifier", "cam"]
    assert step_lines(until="ir_labels", distributed=True) == ["classifier", "cam"]
    assert step_lines(until="cam", long=True)[1].split("\t")[:3] == ["cam", "per_image", "rpnet cam"]


def test_the_cli_module_stays_short() -> None:
    """Parsing and one call per command: the work lives in the layers below."""
    assert len((ROOT / "src" / "rpnet_pl" / "cli.py").read_text().splitlines()) < 300
