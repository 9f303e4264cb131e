"""Each random-walk, IR-label and CRF default is written once (in ``rpnet_pl.ops.params``), and the
CLI, the stages and the ops all read it."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, Iterator

import pytest

from rpnet_pl.cli import build_parser
from rpnet_pl.ops.params import IR_LABELS, LABEL_CRF, PROB_CRF, RANDOM_WALK, REFINEMENT_EXP_TIMES
from rpnet_pl.pipeline.registry import COMMANDS, from_namespace

SRC = Path(__file__).resolve().parents[1] / "src" / "rpnet_pl"

# (names a default of this concept goes by anywhere in the source, its value)
CONCEPTS: dict[str, tuple[set[str], Any]] = {
    "walk radius": ({"radius", "rw_radius"}, 5),
    "walk beta": ({"beta", "rw_beta"}, 10.0),
    "walk exp_times": ({"exp_times", "rw_exp_times"}, 8),
    "walk bg threshold": ({"bg_threshold", "bg"}, 0.25),
    "IRN inference pad": ({"pad_to", "rw_pad_to", "irn_infer_pad"}, 512),
    "refinement exp_times": ({"exp_times", "refinement_exp_times"}, (0, 2, 8)),
    "CAM scales": ({"scales", "cam_scales", "enhanced_scales"}, (1.0, 0.5, 1.5, 2.0)),
    "IR-label fg threshold": ({"fg_threshold", "fg_thres"}, 0.30),
    "IR-label bg threshold": ({"bg_threshold", "bg_thres"}, 0.05),
    "label CRF gt_prob": ({"gt_prob", "crf_gt_prob"}, 0.7),
    "label CRF gauss_sxy": ({"gauss_sxy"}, 3.0),
    "label CRF gauss_compat": ({"gauss_compat"}, 3.0),
    "label CRF bi_sxy": ({"bi_sxy"}, 50.0),
    "label CRF bi_srgb": ({"bi_srgb"}, 5.0),
    "label CRF bi_compat": ({"bi_compat"}, 10.0),
    # both CRFs run 10 iterations: one default each (LabelCRFParams.t, ProbCRFParams.t), see SHARED
    "CRF iterations": ({"t", "crf_iters", "crf_t"}, 10),
    "prob CRF pos_w": ({"pos_w", "crf_pos_w"}, 3.0),
    "prob CRF pos_xy": ({"pos_xy", "crf_pos_xy"}, 3.0),
    "prob CRF bi_w": ({"bi_w", "crf_bi_w"}, 4.0),
    "prob CRF bi_xy": ({"bi_xy", "crf_bi_xy"}, 67.0),
    "prob CRF bi_rgb": ({"bi_rgb", "crf_bi_rgb"}, 3.0),
}
#: concepts whose value two steps own separately, each once: how many defaults to expect
SHARED = {"CRF iterations": 2}


def _literal(node: ast.AST | None) -> Any:
    """The value of a literal default (numbers, tuples / lists of numbers), else None."""
    if node is None:
        return None
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, tuple)):
        return None
    return value


def _defaults(tree: ast.AST) -> Iterator[tuple[str, Any, int]]:
    """(name, literal default, line) for every keyword default, dataclass field, argparse
    ``default=`` and module-level constant of the tree."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            positional = a.posonlyargs + a.args
            for arg, default in zip(positional[len(positional) - len(a.defaults):], a.defaults):
                yield arg.arg, _literal(default), default.lineno
            for arg, default in zip(a.kwonlyargs, a.kw_defaults):
                if default is not None:
                    yield arg.arg, _literal(default), default.lineno
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    yield stmt.target.id, _literal(stmt.value), stmt.lineno
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            for kw in node.keywords:
                if kw.arg == "default" and flags:
                    dest = next((f for f in flags if f.startswith("--")), flags[0]).lstrip("-").replace("-", "_")
                    yield dest, _literal(kw.value), kw.value.lineno
        elif isinstance(node, ast.Module):
            for stmt in node.body:
                if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                    for t in targets:
                        if isinstance(t, ast.Name) and stmt.value is not None:
                            yield t.id.lower(), _literal(stmt.value), stmt.lineno


def _all_defaults() -> list[tuple[str, Any, str]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        for name, value, line in _defaults(ast.parse(path.read_text(), filename=str(path))):
            if value is not None:
                out.append((name, value, f"{path.relative_to(SRC)}:{line}"))
    return out


def test_the_scan_finds_argparse_and_signature_defaults() -> None:
    """The collector itself sees the kinds of default it is meant to police."""
    tree = ast.parse("def f(a, radius: int = 5, *, t=10): ...\n"
                     "p.add_argument('--bg-threshold', type=float, default=0.25)\n"
                     "class P:\n    beta: float = 10.0\n"
                     "IRN_INFER_PAD = 512\n")
    found = {(n, v) for n, v, _ in _defaults(tree)}
    assert {("radius", 5), ("t", 10), ("bg_threshold", 0.25), ("beta", 10.0), ("irn_infer_pad", 512)} <= found


@pytest.mark.parametrize("concept", sorted(CONCEPTS))
def test_each_default_is_written_once(concept: str) -> None:
    names, value = CONCEPTS[concept]
    where = [loc for name, v, loc in _all_defaults()
             if name in names and isinstance(v, tuple) == isinstance(value, tuple) and v == value]
    expected = SHARED.get(concept, 1)
    assert len(where) == expected, f"{concept} = {value!r} is a default in {len(where)} places: {where}"
    assert all(loc.startswith("ops/params.py:") for loc in where), where


def _parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def _signature_defaults(fn: Any) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_random_walk_cli_defaults_equal_the_op_and_stage_defaults() -> None:
    from rpnet_pl.models.irn import IRN_INFER_PAD
    from rpnet_pl.ops.random_walk import propagate_cams, sem_seg_from_rw, transition_matrix_sparse
    from rpnet_pl.steps.eval_refinement import eval_refinement, refinement_breakdown, refinement_steps
    from rpnet_pl.stages.refine import RefineStage
    from rpnet_pl.steps.pseudo_masks import WritePseudoMask, make_pseudo_masks

    op = _signature_defaults(propagate_cams)
    assert (op["radius"], op["beta"], op["exp_times"]) == (RANDOM_WALK.radius, RANDOM_WALK.beta, RANDOM_WALK.exp_times)
    assert _signature_defaults(transition_matrix_sparse)["beta"] == RANDOM_WALK.beta
    assert _signature_defaults(sem_seg_from_rw)["bg"] == RANDOM_WALK.bg_threshold
    assert IRN_INFER_PAD == RANDOM_WALK.pad_to

    walk = _signature_defaults(WritePseudoMask)["params"]
    assert (walk.radius, walk.beta, walk.exp_times, walk.bg_threshold, walk.pad_to) == (
        op["radius"], op["beta"], op["exp_times"], RANDOM_WALK.bg_threshold, RANDOM_WALK.pad_to)
    assert not {"rw_radius", "bg_threshold", "rw_pad_to"} & set(_signature_defaults(RefineStage.__init__))

    cli = _parse("pseudo-masks", "--ckpt", "c", "--cams", "x", "--out", "o", "--root", "r")
    fn = _signature_defaults(make_pseudo_masks)
    for key in ("radius", "beta", "exp_times", "bg_threshold", "pad_to"):
        assert getattr(cli, key) == fn[key] == getattr(RANDOM_WALK, key), key

    cli = _parse("eval-refinement", "--ckpt", "c", "--cams", "x", "--root", "r")
    steps = _signature_defaults(refinement_steps)
    assert (cli.radius, cli.beta, cli.bg_threshold, cli.pad_to) == (
        steps["radius"], steps["beta"], steps["bg"], RANDOM_WALK.pad_to)
    assert tuple(cli.exp_times) == tuple(steps["exp_times"]) == tuple(
        _signature_defaults(refinement_breakdown)["exp_times"]) == REFINEMENT_EXP_TIMES
    driver = _signature_defaults(eval_refinement)
    assert (cli.radius, cli.beta, cli.bg_threshold, cli.pad_to) == (
        driver["radius"], driver["beta"], driver["bg_threshold"], driver["pad_to"])
    assert tuple(driver["exp_times"]) == REFINEMENT_EXP_TIMES


def test_ir_label_cli_defaults_equal_the_op_and_stage_defaults() -> None:
    from rpnet_pl.ops.cam import cam_to_ir_label
    from rpnet_pl.steps.ir_labels import ir_label, make_ir_labels

    cli = _parse("ir-labels", "--cams", "x", "--out", "o", "--root", "r")
    op = _signature_defaults(cam_to_ir_label)
    assert (cli.fg_threshold, cli.bg_threshold) == (op["fg_thres"], op["bg_thres"]) == (
        IR_LABELS.fg_threshold, IR_LABELS.bg_threshold)
    for fn in (ir_label, make_ir_labels):
        d = _signature_defaults(fn)
        assert (d["fg_threshold"], d["bg_threshold"]) == (cli.fg_threshold, cli.bg_threshold)


@pytest.mark.parametrize("command", ["eval-seg", "predict-seg"])
def test_crf_cli_defaults_equal_the_op_defaults(command: str) -> None:
    from rpnet_pl.ops.crf import crf_inference_label, crf_inference_prob

    cli = _parse(command, "--ckpt", "c", "--out", "o", "--root", "r")
    assert from_namespace(COMMANDS[command].options, cli).crf_params == _signature_defaults(crf_inference_prob) == vars(PROB_CRF)
    assert _signature_defaults(crf_inference_label) == vars(LABEL_CRF)
