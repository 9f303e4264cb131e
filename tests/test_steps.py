"""The step registry: every step declared once, with its command, layout entry and validation."""
from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from rpnet_pl.pipeline import layout
from rpnet_pl.cli import build_parser, main
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.pipeline.runner import _flags
from rpnet_pl.pipeline.registry import (COMMANDS, STEP_ORDER, STEPS, CamOptions, PseudoMasksOptions, add_options,
                            from_namespace, option_fields, output_path)
from rpnet_pl.pipeline.validate import check_tree

SRC = Path(__file__).resolve().parents[1] / "src" / "rpnet_pl"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", STEP_ORDER)
def test_every_step_has_its_command_layout_entry_and_validation(name: str, tmp_path: Path) -> None:
    spec = STEPS[name]
    commands = _subcommands()
    if spec.trains:
        fit = next(a for a in commands["fit"]._actions if a.dest == "stage")
        assert name in fit.choices
        assert spec.stage and spec.datamodule and spec.options is None
    else:
        assert spec.command in commands and COMMANDS[spec.command] is spec
        dests = {a.dest for a in commands[spec.command]._actions}
        assert {f.name for f in dataclasses.fields(spec.options)} <= dests
        assert ":" in str(spec.run)
    # layout: its output lies in its own folder; what it reads comes from earlier steps
    run = tmp_path / "run"
    assert output_path(run, name).is_relative_to(layout.step_dir(run, name))
    for _, producer in spec.reads:
        assert STEP_ORDER.index(producer) < STEP_ORDER.index(name)
    # validation: an empty section passes, an unknown key is named with the step
    check_tree({name: {}})
    with pytest.raises(ConfigError, match=rf"^unknown key '{name}\.no_such_option'"):
        check_tree({name: {"no_such_option": 1}})


def test_an_option_has_one_spelling_from_yaml_to_the_function() -> None:
    """A YAML section goes through the pipeline's flags and the command's parser into the options
    dataclass unchanged: every YAML key is the dataclass field of the same name."""
    section = {"split": "val", "radius": 3, "beta": 2.5, "exp_times": 4, "bg_threshold": 0.3, "pad_to": 0,
               "save_scores": True, "calibration_split": "train"}
    parser = argparse.ArgumentParser()
    add_options(parser, PseudoMasksOptions)
    args = parser.parse_args(["--ckpt", "c", "--cams", "k", "--out", "o", "--root", "r", *_flags(section)])
    opts = from_namespace(PseudoMasksOptions, args)
    assert {k: getattr(opts, k) for k in section} == section
    assert {f.name for f in option_fields(PseudoMasksOptions, pipeline=False)} == set(section)
    # booleans: `flip: false` in YAML is `--no-flip`, a list is several values and comes back a tuple
    parser = argparse.ArgumentParser()
    add_options(parser, CamOptions)
    base = ["--ckpt", "c", "--out", "o", "--root", "r"]
    opts = from_namespace(CamOptions, parser.parse_args(base + _flags({"flip": False, "scales": [1.0, 0.5]})))
    assert (opts.flip, opts.scales, opts.backbone) == (False, (1.0, 0.5), None)
    assert from_namespace(CamOptions, parser.parse_args(base)) == CamOptions(ckpt="c", out="o", root="r")


def _string_constants(path: Path) -> set[str]:
    """The string literals of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


def test_each_step_name_is_a_literal_in_at_most_two_files() -> None:
    """The registry and the step's own module name a step; everything else reads the registry
    (``cam`` and ``classifier`` also name a method and a network, so they are left out)."""
    files = {p: _string_constants(p) for p in SRC.rglob("*.py")}
    for name in STEP_ORDER:
        if name in ("cam", "classifier"):
            continue
        holders = sorted(str(p.relative_to(SRC)) for p, consts in files.items() if name in consts)
        assert "pipeline/registry.py" in holders and len(holders) <= 2, (name, holders)


def test_rpnet_steps_lists_the_registry_for_scripts(capsys) -> None:
    assert main(["steps"]) == 0
    assert capsys.readouterr().out.split() == list(STEP_ORDER)
    assert main(["steps", "--until", "eval_cam"]) == 0
    assert capsys.readouterr().out.split() == ["classifier", "cam", "eval_cam"]
    assert main(["steps", "--distributed"]) == 0
    assert capsys.readouterr().out.split() == ["classifier", "cam", "refine", "pseudo_masks", "segmenter",
                                               "eval_seg", "predict_seg"]


def test_a_typo_in_force_or_steps_is_an_error(capsys, tmp_path: Path) -> None:
    exp = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
    assert main(["pipeline", str(exp), "--runs", str(tmp_path), "--dry-run", "--force", "camm"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --force: unknown step(s) camm; the steps are "
                                               + ", ".join(STEP_ORDER))
