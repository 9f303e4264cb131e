"""What made a step's outputs: its settings and its inputs, recorded in its ``.done`` marker, so that
a complete step is never handed back for a configuration that did not make it.

A step's *settings* are its resolved section (a training step's LightningCLI config, a per-image
step's options) flattened to ``a.b.c: value``, with the dataset and its root, less the keys that say
how it runs rather than what it computes (:data:`EXECUTION_KEYS`: logger, devices, workers, progress).
Its *inputs* are the steps it reads (:data:`rpnet_pl.pipeline.registry.STEPS` ``reads``), each by its own
identity. The *identity* is a digest of both, so a changed setting upstream changes every identity
downstream of it.

On a re-run, a complete step whose recorded identity differs from the planned one is an error that
names the keys that differ and the two ways on (``--force STEP``, or a new ``--name``). A marker
written before identities were recorded is taken as complete, as before.

Plain Python, no torch: the pipeline checks every step with it before any work.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

#: keys that say how a step runs, not what it computes: changing them never invalidates a result
EXECUTION_KEYS = frozenset({
    "trainer.logger", "trainer.default_root_dir", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
    "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy",
    "data.num_workers", "workers",
})


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"beta": 0.3}, "a": [1, 2]}`` -> ``{"model.beta": 0.3, "a": [1, 2]}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def settings(config: Mapping[str, Any], dataset: str, root: str, run: Path | str | None = None) -> dict[str, Any]:
    """The settings that make a step's outputs: its flattened ``config`` less :data:`EXECUTION_KEYS`,
    with the dataset and its root (JSON values: tuples become lists). Paths inside the ``run`` folder
    are written ``${run}/...``, so the same run reached by another path is the same configuration."""
    flat = {k: v for k, v in flatten(config).items()
            if not any(k == x or k.startswith(x + ".") for x in EXECUTION_KEYS)}
    flat.update({"dataset": dataset, "root": root})
    flat = json.loads(json.dumps(flat, sort_keys=True, default=str))
    if run is not None:
        prefix = str(run)
        flat = {k: "${run}" + v[len(prefix):] if isinstance(v, str) and (v == prefix or v.startswith(prefix + "/"))
                else v for k, v in flat.items()}
    return flat


def identity(step_settings: Mapping[str, Any], inputs: Mapping[str, str | None]) -> str:
    """A short digest of a step's settings and its inputs' identities."""
    blob = json.dumps({"settings": step_settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_marker(path: Path) -> dict[str, Any]:
    """A ``.done`` marker's record (empty when it is missing or unreadable)."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def differences(recorded: Mapping[str, Any], planned: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (``(unset)`` where one side lacks it)."""
    out = []
    for key in sorted(set(recorded) | set(planned)):
        old, new = recorded.get(key, "(unset)"), planned.get(key, "(unset)")
        if old != new:
            out.append(f"{key}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def downstream(step: str, reads: Mapping[str, Iterable[str]]) -> list[str]:
    """Every step that reads ``step``'s outputs, directly or through other steps (``reads``: step ->
    the steps it reads), in the order of ``reads``."""
    found: set[str] = {step}
    changed = True
    while changed:
        changed = False
        for name, producers in reads.items():
            if name not in found and found.intersection(producers):
                found.add(name)
                changed = True
    return [name for name in reads if name in found and name != step]


def stale_message(step: str, run: Path, changed: Sequence[str], inputs: Sequence[str]) -> str:
    """The error for a complete step made by another configuration: what differs, and the two ways on."""
    what = []
    if changed:
        what.append("settings " + "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else ""))
    if inputs:
        what.append("inputs remade since: " + ", ".join(inputs))
    return (f"{run}: step '{step}' is complete but was made with other {' and '.join(what) or 'settings'}; "
            f"re-run it with --force {step} (it and every step after it start afresh), or give this "
            "configuration a new --name")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code that makes a step's outputs: the package version, and ``+g<commit>`` (``-dirty`` with
    uncommitted changes) when the package runs from a git checkout."""
    import rpnet_pl

    version = rpnet_pl.__version__
    here = Path(__file__).resolve().parents[1]  # the package folder (this module is in pipeline/)
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return version
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit.stdout.strip()}" + ("-dirty" if dirty.stdout.strip() else "")


def code_versions(run: Path, steps: Iterable[str]) -> dict[str, str]:
    """step -> the code version its ``.done`` marker recorded, for the complete steps of ``run`` that
    recorded one."""
    out = {}
    for step in steps:
        code = read_marker(Path(run) / step / ".done").get("code")
        if code:
            out[step] = str(code)
    return out
