"""Deprecated: stage 2 is :mod:`rpnet_pl.stages.refine` (``RefineStage``) and its diagnostic
:mod:`rpnet_pl.steps.eval_refinement`. The old names still import from here for one release, each
with a one-line warning naming the new one."""
from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any

log = logging.getLogger(__name__)

#: old name -> (new module, new name)
MOVED = {
    "AffinityStage": ("rpnet_pl.stages.refine", "RefineStage"),
    "make_sem_seg_labels": ("rpnet_pl.steps.pseudo_masks", "make_pseudo_masks"),
    "irn_losses": ("rpnet_pl.stages.refine", "irn_losses"),
    "irn_objective": ("rpnet_pl.stages.refine", "irn_objective"),
    "stride4_labels": ("rpnet_pl.stages.refine", "stride4_labels"),
    "nearest_indices": ("rpnet_pl.stages.refine", "nearest_indices"),
    "refinement_steps": ("rpnet_pl.steps.eval_refinement", "refinement_steps"),
    "refinement_breakdown": ("rpnet_pl.steps.eval_refinement", "refinement_breakdown"),
    "format_breakdown": ("rpnet_pl.steps.eval_refinement", "format_breakdown"),
    "BOUNDARY_SOURCES": ("rpnet_pl.steps.eval_refinement", "BOUNDARY_SOURCES"),
}


def __getattr__(name: str) -> Any:
    """The new object for an old name, with a deprecation warning (logged and ``warnings``)."""
    if name not in MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = MOVED[name]
    message = f"rpnet_pl.stages.affinity.{name} is deprecated; use {module}.{new}"
    log.warning(message)
    warnings.warn(message, DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), new)
