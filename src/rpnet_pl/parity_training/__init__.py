"""Training parity: a stage trained K optimiser steps by the public code and by ours, from the same
initial weights on the same fixed batches, gives the same per-step losses, final weights and
per-group learning rates.

A training case stores a *recipe*, not megabytes of weights: the reference network's initial
tensors are :func:`seeded_state` of its parameter names and shapes (each tensor filled from a seed
derived from the case's seed and the tensor's name), so both sides rebuild the same numbers. The
generator scripts (``scripts/training_parity_*.py``) run the public code; the checkers of this
package run ours. Each group's module registers ``GROUPS`` entries in the format of
:data:`rpnet_pl.parity.GROUPS` (required keys, checker).
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor


def tensor_seed(seed: int, name: str) -> int:
    """The seed of one named tensor: the case's ``seed`` and the name's CRC-32, so a tensor's values
    do not depend on which other tensors a network has or on their order."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def seeded_tensor(name: str, shape: Iterable[int], seed: int) -> Tensor:
    """One float32 tensor of ``shape`` for the parameter or buffer ``name`` (a state-dict key):

    * ``*running_var``: uniform in [0.5, 1.5]; ``*running_mean``: N(0, 0.1^2);
    * ``*num_batches_tracked``: 0;
    * a 1-d ``*weight`` (a norm's scale): 1 + N(0, 0.1^2); a ``*bias``: N(0, 0.1^2);
    * any other tensor (convolution, linear): N(0, 2 / fan_in), He's initialisation, so activations
      keep their scale through a deep network.
    """
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(tensor_seed(seed, name))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf == "running_var":
        return torch.rand(shape, generator=g) + 0.5
    normal = torch.randn(shape, generator=g)
    if leaf == "running_mean" or leaf == "bias":
        return 0.1 * normal
    if leaf == "weight" and len(shape) == 1:
        return 1.0 + 0.1 * normal
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(shape[0], 1)
    return normal * (2.0 / fan_in) ** 0.5


def seeded_state(shapes: Mapping[str, Iterable[int]], seed: int) -> dict[str, Tensor]:
    """:func:`seeded_tensor` for every ``name -> shape`` of a state dict."""
    return {name: seeded_tensor(name, shape, seed) for name, shape in shapes.items()}


def seed_module(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every parameter and buffer of ``module`` (its ``state_dict`` keys) from :func:`seeded_state`;
    returns the module."""
    state = module.state_dict()
    module.load_state_dict(seeded_state({k: v.shape for k, v in state.items()}, seed))
    return module


def checksums(state: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Per-tensor checksums of a state dict: ``(sum, sum of squares, sum of |x|)`` in float64, a few
    bytes each instead of the tensor, sensitive to any single value that moved."""
    out = {}
    for name, t in state.items():
        x = t.detach().double().cpu()
        out[name] = np.array([x.sum().item(), (x * x).sum().item(), x.abs().sum().item()])
    return out


def normalised_images(images: np.ndarray) -> Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 with torchvision's ImageNet normalisation
    (float64 arithmetic, as the reference's ``TorchvisionNormalize``, stored as float32)."""
    from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = (np.asarray(images, dtype=np.float64) / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x.astype(np.float32), -1, -3)))


class _TimmWithBlocks:
    """timm as :mod:`rpnet_pl.models.backbones` sees it, with ResNets built with ``blocks`` per stage."""

    def __init__(self, timm_module: Any, blocks: tuple[int, ...]) -> None:
        self._timm, self._blocks = timm_module, blocks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._timm, name)

    def create_model(self, *args: Any, **kwargs: Any) -> Any:
        return self._timm.create_model(*args, layers=list(self._blocks), **kwargs)


@contextlib.contextmanager
def resnet_blocks(blocks: Iterable[int]) -> Iterator[None]:
    """Within the block, :func:`~rpnet_pl.models.backbones.build_backbone` builds ResNets with
    ``blocks`` bottlenecks per stage (timm's ``layers``, e.g. (1, 1, 1, 1)), as the generators build
    the reference's."""
    from rpnet_pl.models import backbones

    original = backbones.timm
    backbones.timm = _TimmWithBlocks(original, tuple(int(b) for b in blocks))
    try:
        yield
    finally:
        backbones.timm = original


def stage_optimizer(stage: Any, max_step: int) -> tuple[Any, Any, bool]:
    """A stage's own ``configure_optimizers`` outside a Trainer (``max_step``: what it reads as the
    trainer's ``estimated_stepping_batches``): (optimiser, scheduler, whether the scheduler steps per
    optimiser step)."""
    from types import SimpleNamespace

    stage._trainer = SimpleNamespace(estimated_stepping_batches=int(max_step))
    try:
        config = stage.configure_optimizers()
    finally:
        stage._trainer = None
    scheduler = config["lr_scheduler"]
    return config["optimizer"], scheduler["scheduler"], scheduler.get("interval", "epoch") == "step"


def optimiser_step(stage: Any, opt: Any, sched: Any, per_step: bool, batch: Any) -> tuple[list[float], dict]:
    """One training step as Lightning runs it: the groups' learning rates it uses, then zero_grad,
    the stage's ``training_losses``, backward, the optimiser step and, when it steps per optimiser
    step, the scheduler. Returns (the learning rates, the loss terms)."""
    lrs = [g["lr"] for g in opt.param_groups]
    opt.zero_grad()
    terms = stage.training_losses(batch)
    terms["loss"].backward()
    opt.step()
    if per_step:
        sched.step()
    return lrs, terms


#: group -> (required keys, checker); filled by the per-stage modules below
GROUPS: dict[str, tuple[tuple[str, ...], Callable[..., list]]] = {}


def _register() -> None:
    """Import every module of this package: each adds its groups to :data:`GROUPS`."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
