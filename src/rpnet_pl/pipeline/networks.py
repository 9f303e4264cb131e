"""Each training stage is given its network: which class, and which of a section's keys are its.

An experiment's training section stays flat (``classifier.model.beta: 0.5``, ``method: rpnet``): one
key per setting, overridden as ``classifier.model.beta=0.1``. The config a training step is started
with (its ``config.yaml``, LightningCLI's) names the network as a class and its arguments::

    model:
      net:
        class_path: rpnet_pl.models.rpnet.RPNet
        init_args: {backbone: resnext50, beta: 0.5, ...}
      lr: 0.02

:func:`nest_model` makes the second from the first; :func:`flat_model` reads either back flat. The
classifier's class is chosen by ``method`` (RPNet or the CAM baseline); a key of the other method's
network (``beta`` in a CAM-baseline run) is left out, as that network has no such setting.

Plain Python (no torch): the pipeline nests with the argument names of the signature snapshot
(:mod:`rpnet_pl.pipeline.signatures`); a stage rebuilt from an older, flat checkpoint nests with the
classes' own signatures.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

from rpnet_pl.pipeline.registry import STEPS

#: training step -> {method: network class}, from each step's declaration (``StepSpec.networks``); the
#: first entry is the default. Only the classifier has a choice.
NETWORKS: Mapping[str, Mapping[str, str]] = {name: dict(spec.networks) for name, spec in STEPS.items() if spec.networks}
#: The flat key that chooses the classifier's network.
METHOD = "method"


def network_class(step: str, model: Mapping[str, Any]) -> str:
    """The class path of ``step``'s network for a flat ``model`` section (``method`` chooses)."""
    choices = NETWORKS[step]
    method = model.get(METHOD, next(iter(choices))) if len(choices) > 1 else next(iter(choices))
    if method not in choices:
        raise ValueError(f"{step}.model.{METHOD}: {method!r} is not one of {sorted(choices)}")
    return choices[method]


def method_of(step: str, class_path: str) -> str:
    """The method whose network ``class_path`` is (the inverse of :func:`network_class`)."""
    for method, path in NETWORKS[step].items():
        if path == class_path:
            return method
    raise ValueError(f"{class_path!r} is not a network of {step} ({sorted(NETWORKS[step].values())})")


def nest_model(step: str, model: Mapping[str, Any], net_args: Mapping[str, Collection[str]],
               stage_args: Collection[str]) -> dict[str, Any]:
    """A flat ``model`` section -> the stage's arguments with ``net: {class_path, init_args}``.

    ``net_args``: each network class of the step (:data:`NETWORKS`) -> its argument names;
    ``stage_args``: the stage's own argument names. A key of the chosen network goes to its
    ``init_args``, a stage key stays, ``method`` and the other networks' keys are left out; any
    other key is an error (validation names it first, with the file).
    """
    path = network_class(step, model)
    others = {k for p, names in net_args.items() if p != path for k in names}
    nested: dict[str, Any] = {}
    init: dict[str, Any] = {}
    for key, value in model.items():
        if key in net_args[path]:
            init[key] = value
        elif key in stage_args:
            nested[key] = value
        elif key != METHOD and key not in others:
            raise ValueError(f"{step}.model.{key}: neither the stage's nor its network's argument")
    return {"net": {"class_path": path, "init_args": init}, **nested}


def flat_model(step: str, model: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` section as the experiment writes it: ``net``'s ``init_args`` beside the stage's
    keys, and for the classifier ``method`` from the class. A flat section is returned as it is."""
    net = model.get("net")
    if not isinstance(net, Mapping) or "class_path" not in net:
        return dict(model)
    flat = {k: v for k, v in model.items() if k != "net"}
    flat.update(net.get("init_args") or {})
    if len(NETWORKS[step]) > 1:
        flat[METHOD] = method_of(step, net["class_path"])
    return flat


__all__ = ["METHOD", "NETWORKS", "flat_model", "method_of", "nest_model", "network_class"]
