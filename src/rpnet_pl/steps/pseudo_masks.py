"""The ``pseudo_masks`` step (`rpnet pseudo-masks`): the random walk of :mod:`rpnet_pl.stages.refine` over
a split, and with ``calibration_split`` its background threshold chosen on a labelled split
(:mod:`rpnet_pl.steps.calibration`).
"""
from __future__ import annotations

from rpnet_pl.pipeline import layout
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.utils.progress import progress_log
from rpnet_pl.steps.calibration import (calibrate_walk, calibration_line, check_calibration_inside, remake_masks,
                                         write_calibration)
from rpnet_pl.steps.inference import is_global_zero
from rpnet_pl.stages.refine import make_pseudo_masks
from rpnet_pl.pipeline.registry import PseudoMasksOptions


def pseudo_masks_step(o: PseudoMasksOptions) -> int:
    """The ``pseudo_masks`` step (`rpnet pseudo-masks`): the walk
    (:func:`~rpnet_pl.stages.refine.make_pseudo_masks`) with the step's options; with
    ``calibration_split``, the scores are kept, b* is chosen on that split (:func:`calibrate_walk`) and
    every mask is made at b* (:func:`remake_masks`), on rank 0 once every rank has walked."""
    calibrated = o.calibration_split is not None
    if calibrated:
        check_calibration_inside(o.dataset, o.root, o.calibration_split, o.split)
    save_scores = o.save_scores or calibrated
    n = make_pseudo_masks(o.ckpt, o.cams, o.out, root=o.root, dataset=o.dataset, split=o.split, radius=o.radius,
                          beta=o.beta, exp_times=o.exp_times, bg_threshold=o.bg_threshold, pad_to=o.pad_to or None,
                          save_scores=save_scores, devices=o.lightning_devices, num_nodes=o.num_nodes,
                          accelerator=o.accelerator)
    print(f"wrote {n} pseudo mask(s) to {o.out}" + (f" (scores in {layout.walk_scores_dir(o.out)})"
                                                     if save_scores else ""))
    if calibrated and is_global_zero():
        record = calibrate_walk(o.out, o.root, o.dataset, o.calibration_split)
        ids = build_reader(o.dataset, o.root, o.split, weak=True).ids
        remade = remake_masks(o.out, ids, record["used"]["bg_threshold"])
        print(f"remade {remade} pseudo mask(s) at the calibrated threshold; wrote {write_calibration(o.out, record)}")
        progress_log.info(calibration_line(record))
    return 0
