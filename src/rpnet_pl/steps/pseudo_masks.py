"""The ``pseudo_masks`` step (`rpnet pseudo-masks`): the random walk of :mod:`rpnet_pl.stages.refine` over
a split (:func:`make_pseudo_masks`), and with ``calibration_split`` its background threshold chosen on a
labelled split (:mod:`rpnet_pl.steps.calibration`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rpnet_pl.pipeline import layout
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.models.irn import IRN_INFER_PAD
from rpnet_pl.ops.params import RANDOM_WALK
from rpnet_pl.utils.progress import progress_log
from rpnet_pl.steps.calibration import (calibrate_walk, calibration_line, check_calibration_inside, remake_masks,
                                         write_calibration)
from rpnet_pl.steps.inference import image_shape, is_global_zero, run_per_image
from rpnet_pl.steps.ir_labels import label_is_complete
from rpnet_pl.steps.walk_scores import walk_scores_path
from rpnet_pl.stages.refine import RefineStage
from rpnet_pl.pipeline.registry import PseudoMasksOptions


def make_pseudo_masks(ckpt: str | Path, cams_dir: str | Path, out: str | Path, root: str, dataset: str = "voc",
                      split: str = "train_aug", radius: int = RANDOM_WALK.radius, beta: float = RANDOM_WALK.beta,
                      exp_times: int = RANDOM_WALK.exp_times, bg_threshold: float = RANDOM_WALK.bg_threshold,
                      pad_to: int | None = IRN_INFER_PAD, save_scores: bool = False,
                      devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto") -> int:
    """`rpnet pseudo-masks`: pseudo masks for every image of ``split`` without complete outputs (a PNG,
    and with ``save_scores`` the walk's scores in ``out/scores``), written by
    :meth:`RefineStage.predict_step <rpnet_pl.stages.refine.RefineStage.predict_step>` on the per-image
    driver; returns how many images were processed."""
    scores_dir = layout.walk_scores_dir(out) if save_scores else None
    overrides = {"cams_dir": str(cams_dir), "out_dir": str(out), "rw_radius": radius, "rw_beta": beta,
                 "rw_exp_times": exp_times, "bg_threshold": bg_threshold, "rw_pad_to": pad_to,
                 "scores_dir": str(scores_dir) if scores_dir else None}

    def done(reader: Any, i: str) -> bool:
        return label_is_complete(Path(out) / f"{i}.png", image_shape(reader, i)) and (
            scores_dir is None or walk_scores_path(scores_dir, i).is_file())

    todo, _ = run_per_image(RefineStage, ckpt, "refine", overrides, root=root, dataset=dataset, split=split,
                            done=done, devices=devices, num_nodes=num_nodes, accelerator=accelerator)
    return todo

def pseudo_masks_step(o: PseudoMasksOptions) -> int:
    """The ``pseudo_masks`` step (`rpnet pseudo-masks`): the walk (:func:`make_pseudo_masks`) with the
    step's options; with ``calibration_split``, the scores are kept, b* is chosen on that split
    (:func:`calibrate_walk`) and every mask is made at b* (:func:`remake_masks`), on rank 0 once every
    rank has walked."""
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
