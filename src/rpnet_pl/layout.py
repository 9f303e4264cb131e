"""The run-folder layout, said once: where each step of ``rpnet pipeline`` writes, and where the
next step, ``rpnet report`` and the ablation sweeps read.

::

    RUNS/<name>/[seed<k>/]
      classifier/   config.yaml, checkpoints/last.ckpt, log.txt, .done
      cam/cams/     ID.npy CAM records (rpnet cam)
      eval_cam/     metrics.json
      ir_labels/labels/     ID.png IR labels
      refine/       config.yaml, checkpoints/last.ckpt (stage 2, IRN boundary refinement)
      pseudo_masks/masks/   ID.png pseudo masks
      eval_pseudo_masks/    metrics.json
      segmenter/    config.yaml, checkpoints/last.ckpt
      eval_seg/     metrics.json (+ pred/, pred_crf/)
      predict_seg/  the benchmark's files

Stage 2 and its steps had other names before (``affinity``, ``sem_seg``, ``eval_sem_seg``; the
commands ``sem-seg-labels`` and ``eval-sem-seg``): :data:`OLD_STEP_NAMES` and :data:`OLD_COMMANDS`
map them to the new ones for one release, and :func:`step_dir` finds a run folder written under
the old name.

Plain Python, no imports of the rest of the package: every layer may read it.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Steps in order; a name here is also the section of the experiment YAML that configures it and
#: the step's folder in the run.
STEP_ORDER = ("classifier", "cam", "eval_cam", "ir_labels", "refine", "pseudo_masks", "eval_pseudo_masks",
              "segmenter", "eval_seg", "predict_seg")
#: `rpnet` subcommand of each per-image step.
STEP_COMMANDS = {"cam": "cam", "eval_cam": "eval-cam", "ir_labels": "ir-labels", "pseudo_masks": "pseudo-masks",
                 "eval_pseudo_masks": "eval-pseudo-masks", "eval_seg": "eval-seg", "predict_seg": "predict-seg"}
#: Deprecated step names (config sections, ``--steps``, ``--force``, ``--set``, run folders, `rpnet fit`)
#: -> the current ones; accepted for one release.
OLD_STEP_NAMES = {"affinity": "refine", "sem_seg": "pseudo_masks", "eval_sem_seg": "eval_pseudo_masks"}
#: Deprecated `rpnet` subcommands -> the current ones; accepted for one release.
OLD_COMMANDS = {"sem-seg-labels": "pseudo-masks", "eval-sem-seg": "eval-pseudo-masks"}

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
CONFIG = "config.yaml"
DONE = ".done"


def deprecation(old: str, new: str, what: str) -> str:
    """The one-line message of a deprecated name."""
    return f"{what} '{old}' is deprecated, use '{new}' (the old name is accepted until the next release)"


def current_step(name: str, what: str = "step") -> str:
    """The current name of a step or config section; an old one (:data:`OLD_STEP_NAMES`) is
    translated with a logged deprecation warning naming the new one."""
    new = OLD_STEP_NAMES.get(name)
    if new is None:
        return name
    log.warning(deprecation(name, new, what))
    return new


def old_step_dir(run: Path, step: str) -> Path | None:
    """The folder of ``step`` under its old name, when a run written before the rename has it and
    has no folder under the new name (None otherwise)."""
    run = Path(run)
    if (run / step).exists():
        return None
    for old, new in OLD_STEP_NAMES.items():
        if new == step and (run / old).is_dir():
            return run / old
    return None


def step_dir(run: Path, step: str) -> Path:
    """The folder of one step of a run (the old-named folder of a run from before the rename, see
    :func:`old_step_dir`)."""
    return old_step_dir(run, step) or Path(run) / step


def step_checkpoint(folder: Path) -> Path:
    """The resume / hand-over checkpoint in a training step's folder: ``checkpoints/last.ckpt``."""
    return Path(folder) / CHECKPOINTS / LAST_CKPT


def checkpoint(run: Path, stage: str) -> Path:
    """The resume / hand-over checkpoint of a run's training step: ``<stage>/checkpoints/last.ckpt``."""
    return step_checkpoint(step_dir(run, stage))


def config_path(run: Path, step: str) -> Path:
    """The resolved config a training step ran with."""
    return step_dir(run, step) / CONFIG


def metrics_path(run: Path, step: str) -> Path:
    """The metrics an evaluation step wrote (``eval_cam``, ``eval_pseudo_masks``, ``eval_seg``)."""
    return step_dir(run, step) / METRICS


def done_marker(run: Path, step: str) -> Path:
    """The file whose presence says a step is complete."""
    return step_dir(run, step) / DONE


def cams_dir(run: Path) -> Path:
    """CAM records of ``rpnet cam``: one ``ID.npy`` per image."""
    return step_dir(run, "cam") / "cams"


def ir_labels_dir(run: Path) -> Path:
    """IR labels of ``rpnet ir-labels``: one ``ID.png`` per image."""
    return step_dir(run, "ir_labels") / "labels"


def pseudo_masks_dir(run: Path) -> Path:
    """Pseudo masks of ``rpnet pseudo-masks``: one ``ID.png`` per image."""
    return step_dir(run, "pseudo_masks") / "masks"
