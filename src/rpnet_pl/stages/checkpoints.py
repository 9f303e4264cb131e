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
from rpnet_pl.pipeline.networks import NETWORKS, nest_model
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


def nested(step: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's hyper-parameters (or a flat ``model`` section) as the stage takes them: ``net``
    (class path and arguments) and the stage's own; an older checkpoint's flat ones are nested by the
    classes' signatures (:func:`rpnet_pl.pipeline.networks.nest_model`)."""
    own = {k: v for k, v in hparams.items() if k in _own_keys(hparams)}
    if isinstance(own.get("net"), dict) and "class_path" in own["net"]:
        return own
    net_args = {path: _init_names(load(path)) for path in NETWORKS[step].values()}
    return nest_model(step, own, net_args, _init_names(_stage_class(step)) - {"net"})


def guess_stage(hparams: dict[str, Any]) -> str | None:
    """The stage whose network and arguments a checkpoint's hyper-parameters are (None: no stage's)."""
    for name in TRAIN_STEPS:
        try:
            args = nested(name, hparams)
        except ValueError:
            continue
        if args["net"]["class_path"] in NETWORKS[name].values() and set(args) - {"net"} <= _init_names(_stage_class(name)):
            return name
    return None


def build_network(step: str, config: dict[str, Any], **overrides: Any) -> Any:
    """The network ``config`` (``{"class_path", "init_args"}``) names, with ``overrides``; only a class
    of ``step``'s networks (:data:`~rpnet_pl.pipeline.networks.NETWORKS`) is built."""
    path = config["class_path"]
    if path not in NETWORKS[step].values():
        raise ValueError(f"{path!r} is not a network of {step} ({sorted(NETWORKS[step].values())})")
    return load(path)(**{**(config.get("init_args") or {}), **overrides})


def build_stage(step: str, **model: Any) -> Any:
    """The stage of training step ``step`` from a flat ``model`` section, as an experiment writes it
    (``method``, the network's and the stage's keys): its network built and given to it."""
    args = nested(step, model)
    return _stage_class(step)(net=build_network(step, args.pop("net")), **args)


def load_stage_checkpoint(cls: type[T], ckpt: str | Path, stage: str, **overrides: Any) -> T:
    """The stage ``cls`` of ``ckpt``: its network rebuilt from the checkpoint's ``net`` (with
    ``overrides`` of the network's arguments, e.g. ``pretrained=False``), the stage given it, the
    weights loaded. One-line errors naming ``ckpt``: missing, unreadable, not a Lightning checkpoint,
    of another stage, or weights that do not fit the network the checkpoint names."""
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
    other = guess_stage(hparams)
    if other != stage:
        what = f"{_a(other)} checkpoint" if other else "not a checkpoint of any rpnet stage"
        net = hparams.get("net")
        foreign = sorted(_own_keys(hparams) - _init_names(cls))
        if not foreign and isinstance(net, dict) and net.get("class_path") not in NETWORKS[stage].values():
            why = f"its network {net.get('class_path')!r} is none of the {stage}'s"
        else:
            why = f"its hyper-parameters {foreign[:3]} are not the {stage}'s"
        raise CheckpointError(f"{path}: {what}, not {_a(stage)} one ({why}); pass "
                              f"runs/<experiment>/{stage}/checkpoints/last.ckpt")
    args = nested(stage, hparams)
    net_config = args.pop("net")
    try:
        module = cls(net=build_network(stage, net_config, **overrides), **args)  # type: ignore[call-arg]
        module.load_state_dict(raw["state_dict"])  # type: ignore[attr-defined]
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        backbone = (net_config.get("init_args") or {}).get("backbone", "?")
        raise CheckpointError(f"{path}: its weights do not fit {_a(stage)} with backbone "
                              f"{backbone!r} ({first[:160]})") from None
    return module


__all__ = ["RETIRED_HPARAMS", "build_network", "build_stage", "guess_stage", "load_stage_checkpoint", "nested"]


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

