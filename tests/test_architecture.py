"""The import graph of ``rpnet_pl`` (read from the source with ``ast``): no cycle, no private name
imported from another module, and the layering of style.md by folder, in pipeline order:
utils < data < ops < models < stages < steps < pipeline, results < cli (with parity).
The torch-free declarations (the step registry, run-folder layout, ranges, experiment config, seed
folders, the per-image defaults of ``ops.params`` and the backbone names) may be read by every layer."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rpnet_pl"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported rpnet_pl module, imported name or None, line) for every import of ``module``,
    at module level or inside a function; relative imports resolved."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "rpnet_pl"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "rpnet_pl":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (base, a.name, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_function_level_imports() -> None:
    """``figures`` imports ``steps.cam_inference`` only inside functions; the graph must still hold it."""
    assert "rpnet_pl.steps.cam_inference" in _graph()["rpnet_pl.results.figures"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_private_name_imported_across_modules() -> None:
    bad = [f"{m}:{line} imports {name} from {target}" for m in MODULES for target, name, line in _imports(m)
           if name is not None and name.startswith("_") and target != m]
    assert bad == []


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in _graph().items() if _in(m, layer)
            for t in sorted(targets) if any(_in(t, f) for f in forbidden)]


P = "rpnet_pl"
#: Plain Python, no torch, importing only each other and utils/: every layer may read them.
DECLARATIONS = {f"{P}.pipeline.registry", f"{P}.pipeline.layout", f"{P}.pipeline.ranges", f"{P}.pipeline.config",
                f"{P}.pipeline.networks",
                f"{P}.pipeline.seeds", f"{P}.ops.params", f"{P}.backbone_names"}
#: Package __init__ files (docstrings, or models/'s re-exports), imported on the way to a submodule.
PACKAGES = {P, f"{P}.utils", f"{P}.data", f"{P}.ops", f"{P}.pipeline", f"{P}.stages", f"{P}.steps", f"{P}.results"}
#: The folders in pipeline order, each with the folders it may import (besides the declarations).
MAY_IMPORT = {
    "utils": ("utils",),
    "data": ("utils", "data"),
    "ops": ("utils", "data", "ops"),
    "models": ("utils", "data", "ops", "models"),
    "stages": ("utils", "data", "ops", "models", "stages"),
    "steps": ("utils", "data", "ops", "models", "stages", "steps"),
    "pipeline": ("utils", "data", "ops", "models", "stages", "steps", "pipeline"),
    "results": ("utils", "data", "ops", "models", "stages", "steps", "pipeline", "results"),
}
#: Imports against the layering that the code still has, each named (the list may only shrink): the
#: seed monitor makes its CAMs with ``steps.cam_inference``; ``pipeline.tracking`` reads a finished
#: step's numbers with ``results.summary``.
KNOWN_EXCEPTIONS = {
    (f"{P}.stages.seed_monitor", f"{P}.steps.cam_inference"),
    (f"{P}.pipeline.tracking", f"{P}.results.summary"),
}
#: The LightningModules, one per training stage.
STAGE_MODULES = (f"{P}.stages.classifier", f"{P}.stages.refine", f"{P}.stages.segmenter")


def test_ops_import_neither_models_nor_stages() -> None:
    assert _violations(f"{P}.ops", (f"{P}.models", f"{P}.stages")) == []


def test_models_do_not_import_stages() -> None:
    assert _violations(f"{P}.models", (f"{P}.stages",)) == []


def test_each_folder_imports_only_the_folders_below_it() -> None:
    """Per folder: what it may import (:data:`MAY_IMPORT`), the declarations, and nothing else of ours
    but the imports named in :data:`KNOWN_EXCEPTIONS`. In particular ops imports neither models, stages
    nor steps; models never stages, steps, pipeline or results; stages never steps (but the exceptions),
    pipeline or results; steps never pipeline's runner side or results."""
    bad = []
    for m, targets in _graph().items():
        folder = m.split(".")[1] if m.count(".") >= 1 else None
        if folder not in MAY_IMPORT or m in DECLARATIONS:
            continue
        for t in sorted(targets - DECLARATIONS - PACKAGES):
            if not any(_in(t, f"{P}.{f}") for f in MAY_IMPORT[folder]) and (m, t) not in KNOWN_EXCEPTIONS:
                bad.append(f"{m} imports {t}")
    assert bad == []


def test_the_known_exceptions_are_still_imports() -> None:
    """An exception that the code no longer needs is struck from the list (the list only shrinks)."""
    graph = _graph()
    assert [(m, t) for m, t in sorted(KNOWN_EXCEPTIONS) if t not in graph[m]] == []


def test_the_declarations_import_only_each_other_and_utils() -> None:
    for module in DECLARATIONS:
        assert _graph()[module] <= DECLARATIONS | PACKAGES | {t for t in MODULES if _in(t, f"{P}.utils")}, module


def test_the_top_is_imported_by_nothing_below_it() -> None:
    """``cli`` is imported by no module; ``parity`` and ``parity_training`` only by ``cli`` and each other;
    the benchmark harness lives in tools/, outside the package."""
    graph = _graph()
    importers = {t: {m for m in graph if t in graph[m]} for t in MODULES}
    assert importers[f"{P}.cli"] == set()
    assert f"{P}.bench" not in MODULES
    parity = {m for m in MODULES if _in(m, f"{P}.parity") or _in(m, f"{P}.parity_training")}
    for m in parity:
        assert importers[m] <= parity | {f"{P}.cli"}, m


def test_a_stage_talks_to_the_next_only_through_files() -> None:
    """No training stage imports another, and a per-image step imports at most one of them (the stage
    whose checkpoint it reads)."""
    graph = _graph()
    for m in STAGE_MODULES:
        assert graph[m] & set(STAGE_MODULES) == set(), m
    for m in (m for m in MODULES if _in(m, f"{P}.steps")):
        assert len(graph[m] & set(STAGE_MODULES)) <= 1, m


def test_the_run_layout_and_step_options_import_nothing_heavy() -> None:
    """``layout``, ``ops.params`` and the step registry are read by the CLI's parser and by every layer:
    they import no other rpnet_pl module but each other."""
    for module in (f"{P}.pipeline.layout", f"{P}.ops.params", f"{P}.pipeline.registry"):
        assert _graph()[module] <= {f"{P}.ops.params", f"{P}.ops", f"{P}.pipeline.layout", P, f"{P}.pipeline",
                                    f"{P}.pipeline.ranges", f"{P}.utils", f"{P}.utils.errors"}, module


def test_run_folder_names_are_written_only_in_layout() -> None:
    """The run-folder file names are string constants of :mod:`rpnet_pl.pipeline.layout` alone (the
    pipeline's runner, the results, the cli, the stages and the per-image steps build their paths with it)."""
    names = {"metrics.json", "last.ckpt", "checkpoints", "config.yaml", ".done", "cams", "labels", "masks"}
    found = []
    readers = (f"{P}.pipeline.runner", f"{P}.results",
               f"{P}.cli", f"{P}.stages", f"{P}.steps")
    for module, path in MODULES.items():
        if not module.startswith(readers):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / "name"
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and side.value in names:
                        found.append(f"{module}:{node.lineno} {side.value!r}")
    assert found == []
