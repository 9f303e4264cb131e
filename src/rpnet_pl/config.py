"""Experiment YAML: one file per experiment, saying only what differs from the file it ``extends``.

An experiment has one section per pipeline step. Training sections (``classifier``, ``refine``,
``segmenter``) are LightningCLI configs (``model``, ``data``, ``trainer``); the other sections hold the
options of the inference/eval commands. The top-level ``dataset`` block (``name``, ``root``) is copied
into every ``data`` section so the data root is said once (and ``DATA=`` overrides it).

Overrides use dotted keys: ``classifier.model.beta=0.1`` (values parsed as YAML).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from rpnet_pl.errors import ConfigError
from rpnet_pl.steps import TRAIN_STEPS

#: The dataset of an experiment whose ``dataset`` block names none.
DEFAULT_DATASET = "voc"
#: Its root (``dataset.root``; ``--data`` / ``DATA=`` override it).
DEFAULT_ROOT = "data/voc"


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive dict merge; ``override`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_experiment(path: str | Path, overrides: Iterable[str] = (), _seen: tuple[Path, ...] = ()) -> dict:
    """Read an experiment, resolving ``extends`` chains (relative to the including file)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: circular 'extends'")
    data = read_yaml(path)
    parents = data.pop("extends", None)
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else (parents or []):
        target = path.parent / str(parent)
        if target.is_dir():
            raise ConfigError(f"{path}: extends {parent!r}, which is a folder ({target}); name an experiment file in it")
        if not target.is_file():
            raise ConfigError(f"{path}: extends {parent!r}, which is not there ({target})")
        merged = deep_merge(merged, load_experiment(path.parent / parent, (), (*_seen, path)))
    merged = deep_merge(merged, data)
    for ov in overrides:
        apply_override(merged, ov)
    if not _seen:
        merged.setdefault("name", path.stem.replace("_", "-"))
        propagate_dataset(merged)
    return merged


def apply_override(cfg: dict, override: str) -> None:
    """Set ``a.b.c=value`` in place (value parsed as YAML)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {p} is not a mapping")
    node[parts[-1]] = yaml.safe_load(raw)


def propagate_dataset(cfg: dict) -> None:
    """Copy ``dataset.name``/``dataset.root`` into each training section's ``data``."""
    ds = cfg.get("dataset") or {}
    for stage in TRAIN_STEPS:
        if isinstance(cfg.get(stage), dict):
            data = cfg[stage].setdefault("data", {})
            if "name" in ds:
                data["dataset"] = ds["name"]
            if "root" in ds:
                data["root"] = str(ds["root"])


def section(cfg: dict, name: str) -> dict[str, Any]:
    """A step's section (empty dict when absent)."""
    val = cfg.get(name) or {}
    if not isinstance(val, dict):
        raise ConfigError(f"section {name!r} must be a mapping")
    return val


def dump_yaml(data: dict, path: str | Path) -> Path:
    """Write ``data`` as YAML atomically."""
    from rpnet_pl.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
