"""The ``pseudo_masks`` step (`rpnet pseudo-masks`): the CAM seeds random-walked over the trained
refine network's boundary map (:func:`walk`, spec "Pseudo masks"), over a split
(:func:`make_pseudo_masks`), and with ``calibration_split`` its background threshold chosen on a
labelled split (:mod:`rpnet_pl.steps.calibration`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpnet_pl.pipeline import layout
from rpnet_pl.data.classes import voc_palette
from rpnet_pl.data.datasets import build_reader
from rpnet_pl.models.irn import IRN_INFER_PAD, IRNet
from rpnet_pl.ops.params import RANDOM_WALK, RandomWalkParams
from rpnet_pl.ops.random_walk import fit_to_map, propagate_cams, sem_seg_from_rw
from rpnet_pl.utils.io import write_label_png
from rpnet_pl.utils.progress import progress_log
from rpnet_pl.steps.calibration import (calibrate_walk, calibration_line, check_calibration_inside, remake_masks,
                                         write_calibration)
from rpnet_pl.steps.cam_inference import read_cam
from rpnet_pl.steps.inference import image_shape, is_global_zero, run_per_image
from rpnet_pl.steps.ir_labels import label_is_complete
from rpnet_pl.steps.walk_scores import mask_from_walk_scores, walk_scores_path, walk_scores_record, write_walk_scores
from rpnet_pl.stages.refine import RefineStage
from rpnet_pl.pipeline.registry import PseudoMasksOptions


@torch.no_grad()
def walk(network: IRNet, image: torch.Tensor, cam_record: dict[str, Any],
         params: RandomWalkParams = RANDOM_WALK) -> torch.Tensor:
    """Random-walk one image's strided CAMs over ``network``'s boundary map (spec "Pseudo masks").

    image (1, 3, H, W) normalised; returns the walked scores (K, h4, w4), float32. Uses ``params``'
    radius, beta, exp_times and pad_to.
    """
    boundary = network.boundary(image, pad_to=params.pad_to or None).float()  # (h4, w4), flip-averaged
    cams = torch.as_tensor(cam_record["cam"], dtype=torch.float32, device=boundary.device)  # (K, h4, w4)
    return propagate_cams(fit_to_map(cams, tuple(boundary.shape)), boundary, radius=params.radius, beta=params.beta, exp_times=params.exp_times)  # fp32


def pseudo_mask(network: IRNet, image: torch.Tensor, cam_record: dict[str, Any],
                params: RandomWalkParams = RANDOM_WALK) -> np.ndarray:
    """The pseudo mask of one image: :func:`walk`, thresholded at ``params.bg_threshold``.

    image (1, 3, H, W) normalised; returns (H, W) int64 class ids (numpy).
    """
    rw = walk(network, image, cam_record, params)
    return sem_seg_from_rw(rw, cam_record["keys"], tuple(image.shape[-2:]), bg=params.bg_threshold)


@dataclass(frozen=True)
class WritePseudoMask:
    """One image's pseudo mask (a palette PNG in ``out``) from its CAM file in ``cams``, walked with
    ``params``; with ``scores`` also the walk's scores there, the mask then made from those saved
    (float16) scores so that a sweep over them reproduces it. An image whose outputs are complete is
    skipped (returns None)."""

    cams: str
    out: str
    params: RandomWalkParams = RANDOM_WALK
    scores: str | None = None

    def __call__(self, stage: RefineStage, batch: dict[str, Any]) -> str | None:
        image_id = batch["id"][0]
        path = Path(self.out) / f"{image_id}.png"
        scores_path = walk_scores_path(self.scores, image_id) if self.scores else None
        size = tuple(batch["image"].shape[-2:])
        if label_is_complete(path, size) and (scores_path is None or scores_path.is_file()):
            return None
        cam_record = read_cam(self.cams, image_id)
        if scores_path is None:
            label = pseudo_mask(stage.model, batch["image"], cam_record, self.params)
        else:
            record = walk_scores_record(walk(stage.model, batch["image"], cam_record, self.params), cam_record["keys"],
                                        size, self.params.bg_threshold)
            write_walk_scores(scores_path, record)
            label = mask_from_walk_scores(record, self.params.bg_threshold)
        write_label_png(path, label.astype(np.uint8), voc_palette())
        return image_id


def make_pseudo_masks(ckpt: str | Path, cams_dir: str | Path, out: str | Path, root: str, dataset: str = "voc",
                      split: str = "train_aug", radius: int = RANDOM_WALK.radius, beta: float = RANDOM_WALK.beta,
                      exp_times: int = RANDOM_WALK.exp_times, bg_threshold: float = RANDOM_WALK.bg_threshold,
                      pad_to: int | None = IRN_INFER_PAD, save_scores: bool = False,
                      devices: int | str = "auto", num_nodes: int = 1, accelerator: str = "auto") -> int:
    """`rpnet pseudo-masks`: pseudo masks for every image of ``split`` without complete outputs (a PNG,
    and with ``save_scores`` the walk's scores in ``out/scores``), written by
    :class:`WritePseudoMask` on the per-image driver; returns how many images were processed."""
    scores_dir = layout.walk_scores_dir(out) if save_scores else None
    work = WritePseudoMask(str(cams_dir), str(out), RandomWalkParams(radius, beta, exp_times, bg_threshold, pad_to or 0),
                           str(scores_dir) if scores_dir else None)

    def done(reader: Any, i: str) -> bool:
        return label_is_complete(Path(out) / f"{i}.png", image_shape(reader, i)) and (
            scores_dir is None or walk_scores_path(scores_dir, i).is_file())

    todo, _ = run_per_image(RefineStage, ckpt, "refine", work, "pseudo masks", root=root, dataset=dataset, split=split,
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
