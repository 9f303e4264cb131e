"""Experiment YAML: one file per experiment, saying only what differs from the file it ``extends``.

An experiment has one section per pipeline step. Training sections (``classifier``, ``refine``,
``segmenter``) are LightningCLI configs (``model``, ``data``, ``trainer``); the other sections hold the
options of the inference/eval commands. The top-level ``dataset`` block (``name``, ``root``) is copied
into every ``data`` section so the data root is said once (and ``DATA=`` overrides it).

Overrides use dotted keys: ``classifier.model.beta=0.1`` (values parsed as YAML).

``thresholds: calibrated`` (default ``fixed``) sets the ``calibration_split`` of the ``pseudo_masks``
section to ``calibration.split`` (default: the split ``eval_cam`` scores), so that the walk's background
threshold is chosen on that labelled split (:mod:`rpnet_pl.steps.calibration`). The IR labels keep the
spec's thresholds unless ``ir_labels.calibration_split`` is set too (the rule fg = 2 t*, bg = t* / 3:
docs/results.md, "Thresholds on a new dataset", says where it helped and where it failed).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.pipeline.registry import EVAL_CAM, PSEUDO_MASKS, TRAIN_STEPS

#: The dataset of an experiment whose ``dataset`` block names none.
DEFAULT_DATASET = "voc"
#: Its root (``dataset.root``; ``--data`` / ``DATA=`` override it).
DEFAULT_ROOT = "data/voc"
#: ``thresholds:``: each step's own numbers (VOC's), or chosen on a labelled split.
THRESHOLD_MODES = ("fixed", "calibrated")
#: The steps whose ``calibration_split`` ``thresholds: calibrated`` sets (``ir_labels`` only when its
#: section sets one itself: its rule helped on one set and failed on another).
CALIBRATED_STEPS = (PSEUDO_MASKS.name,)


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
        expand_thresholds(merged)
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


def calibration_split(cfg: dict) -> str:
    """The split ``thresholds: calibrated`` calibrates on: ``calibration.split``, default the split
    ``eval_cam`` scores (``train`` for VOC), as the papers choose their thresholds."""
    calibration, scored = cfg.get("calibration"), cfg.get(EVAL_CAM.name)
    if isinstance(calibration, dict) and calibration.get("split"):
        return str(calibration["split"])
    if isinstance(scored, dict) and scored.get("split"):
        return str(scored["split"])
    return EVAL_CAM.default_split


def expand_thresholds(cfg: dict) -> None:
    """``thresholds: calibrated``: set ``calibration_split`` (:func:`calibration_split`) in each section
    of :data:`CALIBRATED_STEPS` the experiment has, unless the section sets its own. ``fixed`` (or no
    key) changes nothing; another value is :func:`rpnet_pl.pipeline.validate.check_tree`'s error."""
    if cfg.get("thresholds") != "calibrated":
        return
    split = calibration_split(cfg)
    for step in CALIBRATED_STEPS:
        if step in cfg and (cfg[step] is None or isinstance(cfg[step], dict)):
            cfg[step] = {**(cfg[step] or {})}
            cfg[step].setdefault("calibration_split", split)


def section(cfg: dict, name: str) -> dict[str, Any]:
    """A step's section (empty dict when absent)."""
    val = cfg.get(name) or {}
    if not isinstance(val, dict):
        raise ConfigError(f"section {name!r} must be a mapping")
    return val


def dump_yaml(data: dict, path: str | Path) -> Path:
    """Write ``data`` as YAML atomically."""
    from rpnet_pl.utils.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
