"""The run-folder layout, said once: where each step of ``rpnet pipeline`` writes, and where the
next step, ``rpnet report`` and the ablation sweeps read.

::

    RUNS/<name>/[seed<k>/]
      classifier/   config.yaml, checkpoints/last.ckpt, log.txt, .done
      cam/cams/     ID.npy CAM records (rpnet cam)
      eval_cam/     metrics.json
      ir_labels/labels/     ID.png IR labels (+ calibration.json, with ir_labels.calibration_split)
      refine/       config.yaml, checkpoints/last.ckpt (stage 2, IRN boundary refinement)
      pseudo_masks/masks/   ID.png pseudo masks (+ scores/ID.npz: the walk's scores, with --save-scores;
                            + calibration.json, with pseudo_masks.calibration_split)
      eval_pseudo_masks/    metrics.json
      segmenter/    config.yaml, checkpoints/last.ckpt
      eval_seg/     metrics.json (+ pred/, pred_crf/)
      predict_seg/  the benchmark's files

The steps themselves (their order, commands, and which of these paths each reads and writes) are
declared in :mod:`rpnet_pl.pipeline.registry`.

Plain Python, no imports of the rest of the package: every layer may read it.
"""
from __future__ import annotations

from pathlib import Path

METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
CONFIG = "config.yaml"
DONE = ".done"
#: The per-image steps' output folders (inside the step's folder).
CAMS = "cams"
LABELS = "labels"
MASKS = "masks"
#: The walk's class scores kept beside the pseudo masks (``rpnet pseudo-masks --save-scores``).
SCORES = "scores"
#: The thresholds a calibrated step chose on a labelled split, beside its outputs (``calibration_split``).
CALIBRATION = "calibration.json"


def step_dir(run: str | Path, step: str) -> Path:
    """The folder of one step of a run."""
    return Path(run) / step


def walk_scores_dir(masks_dir: str | Path) -> Path:
    """Where ``rpnet pseudo-masks --save-scores`` keeps the walk's scores of a folder of pseudo masks
    (and where ``rpnet eval-pseudo-masks`` looks for them): ``<masks>/scores``."""
    return Path(masks_dir) / SCORES


def calibration_path(out_dir: str | Path) -> Path:
    """Where a calibrated per-image step (``ir_labels``, ``pseudo_masks`` with ``calibration_split``)
    records its sweep and the thresholds it used: ``<out>/calibration.json``, beside its outputs."""
    return Path(out_dir) / CALIBRATION


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
