"""The import graph of ``rpnet_pl`` (read from the source with ``ast``): no cycle, no private name
imported from another module, and the layering of style.md (ops below models below stages)."""
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
    """``report`` imports ``steps.cam_inference`` only inside functions; the graph must still hold it."""
    assert "rpnet_pl.steps.cam_inference" in _graph()["rpnet_pl.results.report"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_no_private_name_imported_across_modules() -> None:
    bad = [f"{m}:{line} imports {name} from {target}" for m in MODULES for target, name, line in _imports(m)
           if name is not None and name.startswith("_") and target != m]
    assert bad == []


def _violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in _graph().items() if m == layer or m.startswith(layer + ".")
            for t in sorted(targets) if any(t == f or t.startswith(f + ".") for f in forbidden)]


def test_ops_import_neither_models_nor_stages() -> None:
    assert _violations("rpnet_pl.ops", ("rpnet_pl.models", "rpnet_pl.stages")) == []


def test_models_do_not_import_stages() -> None:
    assert _violations("rpnet_pl.models", ("rpnet_pl.stages",)) == []


def test_the_run_layout_and_step_options_import_nothing_heavy() -> None:
    """``layout``, ``ops.params`` and the step registry are read by the CLI's parser and by every layer:
    they import no other rpnet_pl module but each other."""
    for module in ("rpnet_pl.pipeline.layout", "rpnet_pl.ops.params", "rpnet_pl.pipeline.registry"):
        assert _graph()[module] <= {"rpnet_pl.ops.params", "rpnet_pl.ops", "rpnet_pl.pipeline.layout", "rpnet_pl",
                                    "rpnet_pl.pipeline.ranges", "rpnet_pl.utils.errors"}, module


def test_run_folder_names_are_written_only_in_layout() -> None:
    """The run-folder file names are string constants of :mod:`rpnet_pl.pipeline.layout` alone (the pipeline,
    report, ablations and stages build their paths with it)."""
    names = {"metrics.json", "last.ckpt", "checkpoints", "config.yaml", ".done", "cams", "labels", "masks"}
    found = []
    readers = ("rpnet_pl.pipeline.runner", "rpnet_pl.results.report", "rpnet_pl.results.summary", "rpnet_pl.results.ablations", "rpnet_pl.cli",
               "rpnet_pl.stages")
    for module, path in MODULES.items():
        if not module.startswith(readers):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / "name"
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and side.value in names:
                        found.append(f"{module}:{node.lineno} {side.value!r}")
    assert found == []
