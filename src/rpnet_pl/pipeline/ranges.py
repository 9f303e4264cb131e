"""Value ranges the types do not say: a crop of 0 pixels is an ``int`` too.

A value out of its range would fail later, deep inside a library (albumentations' ``InitSchema``
on ``crop_size: 0``), or worse, succeed with nothing done (``max_epochs: 0`` trains no step). The
ranges of the training sections' ``model`` / ``data`` / ``trainer`` arguments are this module's
:data:`TRAINING` table; a per-image option carries its own (``steps.option(..., range=)``).
:mod:`rpnet_pl.pipeline.validate` checks both before any step runs, and ``rpnet fit`` checks a training
section again when it starts (a stage run alone). Torch-free.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rpnet_pl.utils.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (``<`` where open); ``None`` and the ``also`` values (e.g. -1:
    unlimited) always pass. A list or tuple passes when every element does."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    also: tuple[Any, ...] = ()

    def admits(self, value: Any) -> bool:
        if value is None or (not isinstance(value, (list, tuple)) and value in self.also):
            return True
        if isinstance(value, (list, tuple)):
            return all(self.admits(v) for v in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # the type check names wrong types
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        text = (f"in [{self.low:g}, {self.high:g}]" if low and self.high is not None and not self.low_open
                else " and ".join(p for p in (low, None if self.high is None else f"<= {self.high:g}") if p))
        also = "".join(f"{a!r} or " for a in self.also)
        return f"{also}a value {text}"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
#: Lightning's epoch / step limits: -1 is unlimited, 0 trains nothing
STEPS_LIMIT = Range(1, also=(-1,))

#: group -> argument -> range, for every training step (an argument a stage does not have is skipped)
TRAINING: Mapping[str, Mapping[str, Range]] = {
    "model": {
        "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "momentum": FRACTION, "poly_power": NON_NEGATIVE,
        "mid": POSITIVE, "sigma": POSITIVE, "gaussian_size": POSITIVE, "lam": NON_NEGATIVE,
        "enhanced_scales": POSITIVE, "levels": POSITIVE, "boundary_radius": POSITIVE, "eval_scales": POSITIVE,
        "seed_monitor_threshold": FRACTION, "checkpoint_every_n_steps": POSITIVE,
        "progress_every_n_steps": POSITIVE, "new_layer_lr_mult": POSITIVE, "displacement_lr_mult": POSITIVE,
        "attention_lr_mult": POSITIVE,
    },
    "data": {
        "batch_size": POSITIVE, "crop_size": POSITIVE, "group_size": Range(1, 8), "long_side": POSITIVE,
        "scale": POSITIVE, "hflip": FRACTION, "color_jitter": NON_NEGATIVE, "data_volume": Range(0, 1, True),
        "num_workers": NON_NEGATIVE,
    },
    "trainer": {
        "max_epochs": STEPS_LIMIT, "max_steps": STEPS_LIMIT, "min_epochs": NON_NEGATIVE, "min_steps": NON_NEGATIVE,
        "accumulate_grad_batches": POSITIVE, "log_every_n_steps": POSITIVE, "num_nodes": POSITIVE,
        "check_val_every_n_epoch": POSITIVE,
    },
}


def check(key: str, value: Any, rule: Range | None) -> None:
    """Raise ConfigError ``key: expected <range>, got <value>`` when ``value`` is out of ``rule``."""
    if rule is not None and not rule.admits(value):
        raise ConfigError(f"{key}: expected {rule}, got {value!r}")


def check_training(groups: Mapping[str, Any], prefix: str = "") -> None:
    """The ``model`` / ``data`` / ``trainer`` values of a training section against :data:`TRAINING`."""
    for group, values in groups.items():
        for name, value in (values or {}).items() if isinstance(values, Mapping) else ():
            check(f"{prefix}{group}.{name}", value, TRAINING.get(group, {}).get(name))
