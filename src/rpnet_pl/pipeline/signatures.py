"""A torch-free snapshot of the training stages' signatures, for validation before any work.

:mod:`rpnet_pl.pipeline.validate` checks a training section's ``model`` / ``data`` / ``trainer`` keys and
types against the ``__init__`` signatures of its stage, datamodule and Lightning's ``Trainer``, as
LightningCLI does when the step starts. Importing those classes costs the Lightning and torch import
(seconds), so the check reads this snapshot instead, ``signatures.json`` beside this file: per
training step and group, each argument's type as text and its default where it is plain data.

A type the snapshot cannot spell (a Lightning ``Callback``, a ``Strategy`` object) is written ``Any``:
validation accepts any value there and LightningCLI checks it when the step starts. The snapshot is
regenerated with ``python -m rpnet_pl.pipeline.signatures`` after a signature changes; ``tests/test_signatures.py``
fails while it is stale.
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

from rpnet_pl.pipeline.networks import METHOD, NETWORKS, nest_model
from rpnet_pl.pipeline.registry import STEPS, load

PATH = Path(__file__).with_name("signatures.json")
#: The class-signature groups of a training section, in the order of their classes.
GROUPS = ("model", "data", "trainer")
_PLAIN = {int: "int", float: "float", str: "str", bool: "bool", type(None): "None"}
_CONTAINERS = {list: "list", tuple: "tuple", dict: "dict", Sequence: "Sequence", Iterable: "Iterable",
               Mapping: "Mapping"}
#: jsonargparse's restricted types (PositiveInt, ...), which keep their name in the snapshot.
_RESTRICTED_MODULE = "jsonargparse.typing"


def type_text(hint: Any) -> str:
    """A type hint as text that :func:`parse_type` reads back; ``Any`` for what it cannot spell."""
    if hint is None or hint in _PLAIN:
        return _PLAIN.get(hint, "None")
    if getattr(hint, "__module__", "") == _RESTRICTED_MODULE and hasattr(hint, "__name__"):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if all(isinstance(a, (str, int, bool, type(None))) for a in args):
            return f"Literal[{', '.join(repr(a) for a in args)}]"
        return "Any"
    if origin is Union or type(hint).__name__ == "UnionType":
        parts = [type_text(a) for a in args]
        return "Any" if "Any" in parts else f"Union[{', '.join(dict.fromkeys(parts))}]"
    if origin in _CONTAINERS:
        if not args:
            return _CONTAINERS[origin]
        parts = ["..." if a is Ellipsis else type_text(a) for a in args]
        return f"{_CONTAINERS[origin]}[{', '.join(parts)}]"
    if hint in _CONTAINERS:
        return _CONTAINERS[hint]
    return "Any"


def parse_type(text: str) -> Any:
    """The type hint of a :func:`type_text` string."""
    import jsonargparse.typing as restricted

    names: dict[str, Any] = {"Any": Any, "Literal": Literal, "Union": Union, "Optional": Optional,
                             "None": None, "int": int, "float": float, "str": str, "bool": bool,
                             "list": list, "tuple": tuple, "dict": dict, "Sequence": Sequence,
                             "Iterable": Iterable, "Mapping": Mapping}
    names.update({n: getattr(restricted, n) for n in dir(restricted) if not n.startswith("_")})
    return eval(text, {"__builtins__": {}}, names)  # noqa: S307 - our own file, names above only


def _plain(value: Any) -> bool:
    try:
        return json.loads(json.dumps(value)) == value
    except (TypeError, ValueError):
        return False


def class_signature(cls: type) -> dict[str, dict[str, Any]]:
    """``{argument: {"type": text, "default": value (when plain data)}}`` of ``cls.__init__``."""
    hints = typing.get_type_hints(cls.__init__)
    out: dict[str, dict[str, Any]] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        entry: dict[str, Any] = {"type": type_text(hints.get(name, Any))}
        default = param.default
        if isinstance(default, tuple):
            default = list(default)
        if default is not param.empty and _plain(default):
            entry["default"] = default
        out[name] = entry
    return out


def flat_model_signature(step: str, stage: dict[str, dict[str, Any]],
                         networks: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The arguments an experiment's flat ``model`` section may set (:mod:`rpnet_pl.pipeline.networks`):
    the stage's own (but ``net``), every network's of the step (the default network's type and
    default where two share a name) and, where there is a choice, ``method``."""
    out = {k: v for k, v in stage.items() if k != "net"}
    for path in NETWORKS[step].values():
        for name, entry in networks[path].items():
            out.setdefault(name, entry)
    if len(NETWORKS[step]) > 1:
        names = ", ".join(repr(m) for m in NETWORKS[step])
        out[METHOD] = {"type": f"Literal[{names}]", "default": next(iter(NETWORKS[step]))}
    return dict(sorted(out.items()))


def live() -> dict[str, Any]:
    """The snapshot from the classes themselves (imports torch and Lightning): per training step its
    groups (``model`` the flat section, :func:`flat_model_signature`), and under ``_networks`` the
    argument names of each stage and network."""
    from pytorch_lightning import Trainer

    out: dict[str, Any] = {}
    names: dict[str, dict[str, list[str]]] = {}
    for name, spec in STEPS.items():
        if not spec.trains:
            continue
        stage = class_signature(load(spec.stage))
        networks = {path: class_signature(load(path)) for path in NETWORKS[name].values()}
        out[name] = {"model": flat_model_signature(name, stage, networks),
                     "data": class_signature(load(spec.datamodule)), "trainer": class_signature(Trainer)}
        names[name] = {"stage": sorted(k for k in stage if k != "net"),
                       **{path: sorted(args) for path, args in networks.items()}}
    out["_networks"] = names
    return out


@functools.lru_cache(maxsize=None)
def _stored() -> dict[str, Any]:
    return json.loads(PATH.read_text())


def snapshot() -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """The stored snapshot, ``signatures.json``: per training step, its groups."""
    return {k: v for k, v in _stored().items() if not k.startswith("_")}


def stage_args(step: str) -> list[str]:
    """The argument names of ``step``'s stage itself (not its network's)."""
    return _stored()["_networks"][step]["stage"]


def net_args(step: str) -> dict[str, list[str]]:
    """Each network class of ``step`` -> its argument names."""
    return {k: v for k, v in _stored()["_networks"][step].items() if k != "stage"}


def fit_config(step: str, config: dict[str, Any]) -> dict[str, Any]:
    """A training step's planned config with its ``model`` section nested for LightningCLI (the
    network as ``class_path`` / ``init_args``, :func:`rpnet_pl.pipeline.networks.nest_model`)."""
    if "model" not in config:
        return dict(config)
    return {**config, "model": nest_model(step, config["model"] or {}, net_args(step), stage_args(step))}


def default_of(step: str, group: str, name: str) -> Any:
    """The default of argument ``name`` of a training step's ``group`` class (torch-free)."""
    return snapshot()[step][group][name].get("default")


def default(step: str, name: str) -> Any:
    """The default of the stage's argument ``name`` of training step ``step``."""
    return default_of(step, "model", name)


def write(path: Path = PATH) -> None:
    """Regenerate the snapshot (temp file, then rename)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(live(), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else PATH)
    print(f"wrote {PATH if len(sys.argv) < 2 else sys.argv[1]}")
