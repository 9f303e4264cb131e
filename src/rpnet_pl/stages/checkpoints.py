"""Load a stage from the checkpoint given to ``--ckpt``, or say in one line why it is the wrong one.

A checkpoint of another stage (a refine checkpoint passed to ``rpnet cam``) or whose weights do
not fit the backbone its hyper-parameters name would otherwise end in a deep traceback from
``load_state_dict``; here it is a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

from rpnet_pl.utils.errors import CheckpointError
from rpnet_pl.pipeline.registry import STEPS, TRAIN_STEPS, load

T = TypeVar("T")



def _init_names(cls: type) -> set[str]:
    return {n for n in inspect.signature(cls.__init__).parameters if n != "self"}


#: Hyper-parameters that older checkpoints hold and the stages no longer take: the per-image steps'
#: settings and output folders, now each step's options (``cam``: scales, flip, out; ``pseudo_masks``:
#: the walk's radius, beta, exp_times, bg_threshold, pad_to, the CAM and output folders;
#: ``eval_seg`` / ``predict_seg``: output folders, CRF, label format). Loading drops them.
RETIRED_HPARAMS = frozenset({
    "cam_scales", "cam_flip", "cam_out",
    "rw_radius", "rw_beta", "rw_exp_times", "bg_threshold", "rw_pad_to", "cams_dir", "out_dir", "scores_dir",
    "pred_dir", "crf_dir", "crf_params", "label_format",
})


def _own_keys(hparams: dict[str, Any]) -> set[str]:
    """The stage's hyper-parameters, without the ones LightningCLI adds (``_instantiator``, ...) and
    the retired ones (:data:`RETIRED_HPARAMS`)."""
    return {k for k in hparams if not k.startswith("_") and k not in RETIRED_HPARAMS}


def _stage_class(name: str) -> type:
    return load(STEPS[name].stage)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def guess_stage(hparams: dict[str, Any]) -> str | None:
    """The stage whose ``__init__`` accepts every hyper-parameter of a checkpoint (None: no stage's)."""
    for name in TRAIN_STEPS:
        if _own_keys(hparams) <= _init_names(_stage_class(name)):
            return name
    return None


def load_stage_checkpoint(cls: type[T], ckpt: str | Path, stage: str, **overrides: Any) -> T:
    """``cls.load_from_checkpoint(ckpt, map_location="cpu", **overrides)`` with one-line errors naming
    ``ckpt``: missing, unreadable, not a Lightning checkpoint, of another stage, or weights that do not
    fit the backbone the checkpoint names."""
    import torch

    path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{path}: {stage} checkpoint not found (train it with `rpnet fit {stage}`)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hparams = dict(raw.get("hyper_parameters") or {})
    foreign = sorted(_own_keys(hparams) - _init_names(cls))
    if foreign:
        other = guess_stage(hparams)
        what = f"{_a(other)} checkpoint" if other else "not a checkpoint of any rpnet stage"
        raise CheckpointError(f"{path}: {what}, not {_a(stage)} one (its hyper-parameters {foreign[:3]} are not the "
                           f"{stage}'s); pass runs/<experiment>/{stage}/checkpoints/last.ckpt")
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", **overrides)  # type: ignore[attr-defined]
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise CheckpointError(f"{path}: its weights do not fit {_a(stage)} with backbone "
                           f"{hparams.get('backbone', '?')!r} ({first[:160]})") from None


__all__ = ["RETIRED_HPARAMS", "guess_stage", "load_stage_checkpoint"]


#: What a finished training step's checkpoint no longer needs: the optimiser's state (momentum
#: buffers, as large as the weights) is only for resuming that step.
RESUME_ONLY_KEYS = ("optimizer_states",)


def slim_checkpoint(path: str | Path) -> int:
    """Drop the resume-only state from a finished step's checkpoint, atomically; returns the bytes
    saved (0 when there was nothing to drop). The weights, hyper-parameters and loop counters stay,
    so every later step (and ``load_from_checkpoint``) reads it as before; resuming *that* training
    step again would restart its optimiser."""
    import torch

    from rpnet_pl.utils.io import atomic_path

    path = Path(path)
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or not any(ckpt.get(k) for k in RESUME_ONLY_KEYS):
        return 0
    before = path.stat().st_size
    for key in RESUME_ONLY_KEYS:
        ckpt.pop(key, None)
    with atomic_path(path) as tmp:
        torch.save(ckpt, str(tmp))
    return before - path.stat().st_size

