"""Thresholds calibrated on a labelled split: ``calibration_split`` of the ``ir_labels`` and
``pseudo_masks`` steps (``thresholds: calibrated`` in an experiment sets both).

VOC's thresholds (IR labels: fg 0.30 / bg 0.05; the walk's background 0.25) were chosen for CAMs
whose best seed threshold is about 0.15; on a dataset whose CAMs peak elsewhere they cut the masks.
A calibrated step chooses them on the labelled images of a split, with the sweeps the evaluation
steps run:

* ``ir_labels``: eval-cam's sweep over the split's CAM seeds
  (:func:`~rpnet_pl.steps.evaluate.evaluate_cams`) gives the best background threshold t*, and
  :func:`~rpnet_pl.ops.cam.ir_label_thresholds` the IR labels' two thresholds (2 t*, t* / 3);
* ``pseudo_masks``: the walk's scores are kept (as ``--save-scores``), eval-pseudo-masks' sweep over
  the split's scores (:func:`~rpnet_pl.steps.evaluate.sweep_walk_scores`) gives the best background
  threshold b*, and every mask is made at b* from its scores
  (:func:`~rpnet_pl.steps.walk_scores.mask_from_walk_scores`, the masks the step makes at b*).

Each writes ``calibration.json`` beside its outputs (:func:`rpnet_pl.pipeline.layout.calibration_path`), once
its outputs are complete: the split, the sweep (threshold -> mIoU), the best threshold and whether it
lies at the sweep's edge, and the thresholds used (:func:`calibration_record`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rpnet_pl.pipeline import layout
from rpnet_pl.data.classes import IGNORE_INDEX, voc_palette
from rpnet_pl.data.datasets import DatasetName, build_reader
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import write_json, write_label_png
from rpnet_pl.ops.cam import ThresholdSweep, ir_label_thresholds
from rpnet_pl.utils.progress import CountProgress
from rpnet_pl.steps.cam_inference import cam_path
from rpnet_pl.steps.evaluate import DEFAULT_THRESHOLDS, evaluate_cams, sweep_json, sweep_walk_scores
from rpnet_pl.steps.walk_scores import mask_from_walk_scores, read_walk_scores, walk_scores_path, write_walk_scores
from rpnet_pl.pipeline.registry import IR_LABELS_STEP, PSEUDO_MASKS

log = logging.getLogger(__name__)


def calibration_record(step: str, split: str, dataset: str, n_images: int, sweep: dict[str, Any],
                       used: dict[str, float]) -> dict[str, Any]:
    """What ``calibration.json`` holds: the ``step`` and the ``split`` it calibrated on, the ``sweep``
    (threshold -> mIoU, from a :func:`~rpnet_pl.steps.evaluate.sweep_json`), its ``best_threshold``,
    ``best_miou`` and ``best_at_edge`` ("low" / "high" / None), and the thresholds ``used``."""
    return {"step": step, "split": split, "dataset": dataset, "n_images": n_images,
            "sweep": {t: v["miou"] for t, v in sweep["thresholds"].items()},
            "best_threshold": sweep["best_threshold"], "best_miou": sweep["best_miou"],
            "best_at_edge": sweep["best_at_edge"], "used": dict(used)}


def write_calibration(out_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write a step's :func:`calibration_record` to ``<out>/calibration.json`` (atomic)."""
    return write_json(layout.calibration_path(out_dir), record)


def calibration_line(record: dict[str, Any]) -> str:
    """The one line a calibrated step logs: ``ir_labels calibrated on train (12 images): best background
    threshold 0.15 (mIoU 52.3%), fg_threshold 0.3, bg_threshold 0.05``; a best at the sweep's edge
    says so."""
    best, m = record["best_threshold"], record["best_miou"]
    used = ", ".join(f"{k} {v:g}" for k, v in record["used"].items())
    line = (f"{record['step']} calibrated on {record['split']} ({record['n_images']} images): best background "
            f"threshold {best:g} (mIoU {'-' if m is None else f'{100 * m:.1f}%'}), {used}")
    if record["best_at_edge"]:
        line += (f"; the best is the sweep's {'largest' if record['best_at_edge'] == 'high' else 'smallest'} "
                 "threshold, the optimum may lie beyond it")
    return line


# -- ir_labels ------------------------------------------------------------------------------------
def calibrate_ir_labels(cams_dir: str | Path, root: str | Path, dataset: DatasetName, split: str) -> dict[str, Any]:
    """The IR labels' thresholds chosen on ``split``: eval-cam's sweep over its labelled images' CAMs
    (:func:`~rpnet_pl.steps.evaluate.evaluate_cams`, high-res CAMs, the default thresholds) gives t*,
    :func:`~rpnet_pl.ops.cam.ir_label_thresholds` the two thresholds. Returns the
    :func:`calibration_record` (``used``: ``fg_threshold``, ``bg_threshold``). An image of the split
    without a CAM file is a DatasetError before the sweep."""
    ids = build_reader(dataset, root, split, weak=True).ids
    missing = [i for i in ids if not cam_path(cams_dir, i).is_file()]
    if missing:
        raise DatasetError(f"{cams_dir}: no CAM file for {len(missing)} of the {len(ids)} images of the calibration "
                           f"split {split!r} (first: {cam_path(cams_dir, missing[0]).name}); the cam step's split "
                           "must include the calibration split")
    result = evaluate_cams(cams_dir, root, dataset=dataset, split=split, thresholds=DEFAULT_THRESHOLDS)
    fg, bg = ir_label_thresholds(result["best_threshold"])
    if fg >= 1.0:
        log.warning("%s: the seeds' best threshold %g gives fg_threshold %g, above every CAM: the IR labels will "
                    "have no confident foreground", split, result["best_threshold"], fg)
    return calibration_record(IR_LABELS_STEP.name, split, dataset, result["n_images"], result,
                              {"fg_threshold": fg, "bg_threshold": bg})


# -- pseudo_masks ---------------------------------------------------------------------------------
def check_calibration_inside(dataset: DatasetName, root: str | Path, calibration_split: str, split: str) -> None:
    """The calibration split's labelled images are among ``split``'s, whose walk scores the step keeps
    (DatasetError naming the first one that is not)."""
    calibration = build_reader(dataset, root, calibration_split, weak=True).ids
    walked = set(build_reader(dataset, root, split, weak=True).ids)
    outside = [i for i in calibration if i not in walked]
    if outside:
        raise DatasetError(f"pseudo_masks.calibration_split {calibration_split!r}: {len(outside)} of its "
                           f"{len(calibration)} images are not in the step's split {split!r} (first: {outside[0]}), "
                           "so the walk makes no scores for them; calibrate on a split inside it")


def calibrate_walk(masks_dir: str | Path, root: str | Path, dataset: DatasetName, split: str,
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """The walk's background threshold chosen on ``split``: eval-pseudo-masks' sweep over the saved
    scores (``<masks>/scores``) of its labelled images, each thresholded as the step does it
    (:func:`~rpnet_pl.steps.evaluate.sweep_walk_scores`). Returns the :func:`calibration_record`
    (``used``: ``bg_threshold``, the best threshold b*)."""
    reader = build_reader(dataset, root, split, weak=True)
    scores_dir = layout.walk_scores_dir(masks_dir)
    sweep = ThresholdSweep(thresholds, reader.num_classes, IGNORE_INDEX)
    progress = CountProgress("calibrate walk", len(reader.ids))
    for image_id in reader.ids:
        sweep_walk_scores(sweep, walk_scores_path(scores_dir, image_id), None, reader.mask(image_id))
        progress.update()
    result = sweep_json(sweep, reader.class_names)
    return calibration_record(PSEUDO_MASKS.name, split, dataset, len(reader.ids), result,
                              {"bg_threshold": result["best_threshold"]})


def remake_masks(masks_dir: str | Path, ids: Sequence[str], bg: float) -> int:
    """Make each image's pseudo mask at background threshold ``bg`` from its saved scores, as the step
    makes it (:func:`~rpnet_pl.steps.walk_scores.mask_from_walk_scores`), and record ``bg`` in the scores
    file (so that eval-pseudo-masks finds the mask its scores give). An image whose scores already say
    ``bg`` is left as it is: the mask is written before the scores, so an interrupted pass redoes only
    what it had not finished. Returns how many masks were written."""
    scores_dir, palette, written = layout.walk_scores_dir(masks_dir), voc_palette(), 0
    progress = CountProgress("calibrated masks", len(ids))
    for image_id in ids:
        path = walk_scores_path(scores_dir, image_id)
        record = read_walk_scores(path)
        if float(record["bg_threshold"]) != float(bg):
            write_label_png(Path(masks_dir) / f"{image_id}.png", mask_from_walk_scores(record, bg).astype(np.uint8),
                            palette)
            write_walk_scores(path, {**record, "bg_threshold": np.float64(bg)})
            written += 1
        progress.update()
    return written
