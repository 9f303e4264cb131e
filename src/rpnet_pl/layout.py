"""The run-folder layout, said once: where each step of ``rpnet pipeline`` writes, and where the
next step, ``rpnet report`` and the ablation sweeps read.

::

    RUNS/<name>/[seed<k>/]
      classifier/   config.yaml, checkpoints/last.ckpt, log.txt, .done
      cam/cams/     ID.npy CAM records (rpnet cam)
      eval_cam/     metrics.json
      ir_labels/labels/   ID.png IR labels
      affinity/     config.yaml, checkpoints/last.ckpt
      sem_seg/masks/      ID.png pseudo masks
      eval_sem_seg/ metrics.json
      segmenter/    config.yaml, checkpoints/last.ckpt
      eval_seg/     metrics.json (+ pred/, pred_crf/)
      predict_seg/  the benchmark's files

Plain Python, no imports of the rest of the package: every layer may read it.
"""
from __future__ import annotations

from pathlib import Path

#: Steps in order; a name here is also the section of the experiment YAML that configures it and
#: the step's folder in the run.
STEP_ORDER = ("classifier", "cam", "eval_cam", "ir_labels", "affinity", "sem_seg", "eval_sem_seg",
              "segmenter", "eval_seg", "predict_seg")
#: `rpnet` subcommand of each per-image step.
STEP_COMMANDS = {"cam": "cam", "eval_cam": "eval-cam", "ir_labels": "ir-labels", "sem_seg": "sem-seg-labels",
                 "eval_sem_seg": "eval-sem-seg", "eval_seg": "eval-seg", "predict_seg": "predict-seg"}

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
CONFIG = "config.yaml"
DONE = ".done"


def step_dir(run: Path, step: str) -> Path:
    """The folder of one step of a run."""
    return Path(run) / step


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
    """The metrics an evaluation step wrote (``eval_cam``, ``eval_sem_seg``, ``eval_seg``)."""
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
    """Pseudo masks of ``rpnet sem-seg-labels``: one ``ID.png`` per image."""
    return step_dir(run, "sem_seg") / "masks"
