"""The options of the per-image step commands (`rpnet cam`, `eval-cam`, `ir-labels`, `pseudo-masks`,
`eval-pseudo-masks`, `eval-seg`, `predict-seg`, and `eval-refinement`), said once: :mod:`rpnet_pl.cli` adds them to its
subcommands and :mod:`rpnet_pl.validate` checks an experiment's step sections against them, without
either importing the other. Defaults come from :mod:`rpnet_pl.ops.params`."""
from __future__ import annotations

import argparse
import functools
from typing import Callable

from rpnet_pl.ops.params import IR_LABELS, PROB_CRF, RANDOM_WALK, REFINEMENT_EXP_TIMES


def add_pad_arg(p: argparse.ArgumentParser) -> None:
    """``--pad-to`` of the boundary network at inference (default: ``RANDOM_WALK.pad_to``)."""
    p.add_argument("--pad-to", type=int, default=RANDOM_WALK.pad_to, help="zero-pad each image to this square before "
                   "the boundary network, as IRN does (512 for VOC-size images; 0: no padding)")


def add_walk_args(p: argparse.ArgumentParser) -> None:
    """``--radius``, ``--beta`` and ``--bg-threshold`` of the random walk (defaults: ``RANDOM_WALK``)."""
    p.add_argument("--radius", type=int, default=RANDOM_WALK.radius,
                   help="affinity radius of the random walk (stride-4 pixels)")
    p.add_argument("--beta", type=float, default=RANDOM_WALK.beta, help="affinity power")
    p.add_argument("--bg-threshold", type=float, default=RANDOM_WALK.bg_threshold,
                   help="background score of the seeds before the walk")


def add_data_args(p: argparse.ArgumentParser, split: str, root_required: bool = True) -> None:
    """``--dataset``, ``--root`` and ``--split`` (default ``split``)."""
    p.add_argument("--dataset", choices=("voc", "coco"), default="voc", help="dataset layout")
    p.add_argument("--root", required=root_required, help="dataset root (see `rpnet data check`)")
    p.add_argument("--split", default=split, help="image list (VOC: ImageSets/Segmentation/SPLIT.txt)")


def add_device_args(p: argparse.ArgumentParser) -> None:
    """``--devices``, ``--num-nodes`` and ``--accelerator`` (Lightning's)."""
    p.add_argument("--devices", default="auto", help="devices per node (DDP when more than one)")
    p.add_argument("--num-nodes", type=int, default=1, help="nodes (DDP)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (Lightning's names)")


def add_crf_args(p: argparse.ArgumentParser) -> None:
    """The DeepLab-style denseCRF options (defaults: ``PROB_CRF``); :func:`crf_params` reads them back."""
    g = p.add_argument_group("denseCRF (deeplab-style post-processing)")
    g.add_argument("--crf-iters", type=int, default=PROB_CRF.t, help="mean-field iterations")
    g.add_argument("--crf-pos-w", type=float, default=PROB_CRF.pos_w, help="smoothness kernel weight")
    g.add_argument("--crf-pos-xy", type=float, default=PROB_CRF.pos_xy, help="smoothness kernel width (pixels)")
    g.add_argument("--crf-bi-w", type=float, default=PROB_CRF.bi_w, help="appearance kernel weight")
    g.add_argument("--crf-bi-xy", type=float, default=PROB_CRF.bi_xy, help="appearance kernel width (pixels)")
    g.add_argument("--crf-bi-rgb", type=float, default=PROB_CRF.bi_rgb, help="appearance kernel colour width")


def add_cam_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet cam`."""
    p.add_argument("--ckpt", required=True, help="classifier checkpoint (runs/<exp>/classifier/checkpoints/last.ckpt), "
                   "or a state dict of the public RPNet/IRN code (e.g. sess/res50_cam.pth)")
    p.add_argument("--out", required=True, help="output folder, one ID.npy per image")
    add_data_args(p, "train_aug")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5, 1.5, 2.0],
                   help="input scales, summed (default: 1.0 0.5 1.5 2.0)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip averaging")
    p.add_argument("--backbone", default=None, help="backbone of a reference-code checkpoint (default: read from "
                   "its tensor shapes)")
    add_device_args(p)


def add_eval_cam_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet eval-cam`."""
    p.add_argument("--cams", required=True, help="folder of ID.npy CAM files (`rpnet cam`)")
    add_data_args(p, "train")
    p.add_argument("--thresholds", type=float, nargs="+", help="background thresholds (default 0.05..0.60 and 0.16)")
    p.add_argument("--strided", action="store_true", help="score the stride-4 CAMs (upsampled) instead of high-res")
    p.add_argument("--out", help="write the metrics as JSON here")


def add_ir_labels_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet ir-labels`."""
    p.add_argument("--cams", required=True, help="folder of ID.npy CAM files (`rpnet cam`)")
    p.add_argument("--out", required=True, help="output folder, one ID.png per image")
    add_data_args(p, "train_aug")
    p.add_argument("--fg-threshold", type=float, default=IR_LABELS.fg_threshold,
                   help="background score of the map whose foreground is kept (confident foreground)")
    p.add_argument("--bg-threshold", type=float, default=IR_LABELS.bg_threshold,
                   help="background score of the map whose background is kept (confident background)")
    p.add_argument("--no-crf", action="store_true", help="threshold only, no denseCRF")
    p.add_argument("--workers", type=int, default=None, help="CPU processes (default: all cores; 0 = inline)")


def add_eval_pseudo_masks_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet eval-pseudo-masks` (any folder of label PNGs)."""
    p.add_argument("--masks", required=True, help="folder of ID.png label maps")
    add_data_args(p, "train")
    p.add_argument("--ignore-pred", action="store_true", help="leave out pixels predicted 255 (IR labels)")
    p.add_argument("--all-images", action="store_true", help="every id of the split, also those without a class label")
    p.add_argument("--out", help="write the metrics as JSON here")


def add_pseudo_masks_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet pseudo-masks`."""
    p.add_argument("--ckpt", required=True, help="refine checkpoint (runs/<exp>/refine/checkpoints/last.ckpt)")
    p.add_argument("--cams", required=True, help="CAM folder written by `rpnet cam`")
    p.add_argument("--out", required=True, help="output folder, one palette PNG per image")
    add_data_args(p, "train_aug")
    add_walk_args(p)
    p.add_argument("--exp-times", type=int, default=RANDOM_WALK.exp_times, help="random walk of 2**exp_times steps")
    add_pad_arg(p)
    add_device_args(p)


def add_eval_refinement_args(p: argparse.ArgumentParser) -> None:
    """Options of `rpnet eval-refinement`."""
    p.add_argument("--ckpt", required=True, help="refine checkpoint (runs/<exp>/refine/checkpoints/last.ckpt)")
    p.add_argument("--cams", required=True, help="CAM folder written by `rpnet cam`")
    add_data_args(p, "train")
    p.add_argument("--exp-times", type=int, nargs="+", default=list(REFINEMENT_EXP_TIMES),
                   help="walks of 2**e steps to score")
    add_walk_args(p)
    p.add_argument("--boundary", choices=["learned", "ground-truth"], default="learned",
                   help="ground-truth: walk over the ideal boundary drawn from each mask instead of IRN's "
                        "(what the walk can do with these seeds when the boundary is right)")
    add_pad_arg(p)
    p.add_argument("--out", help="write the result as JSON here")


def _add_segmenter_args(p: argparse.ArgumentParser, name: str, split: str) -> None:
    """Options of `rpnet eval-seg` and `rpnet predict-seg` (``name``), ``split`` their default split."""
    p.add_argument("--ckpt", required=True, help="segmenter checkpoint (runs/<exp>/segmenter/checkpoints/last.ckpt)")
    p.add_argument("--out", required=True, help="output folder")
    add_data_args(p, split, root_required=name == "eval-seg")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="test scales whose scores are averaged")
    p.add_argument("--no-flip", action="store_true", help="no horizontal-flip test-time augmentation")
    if name == "eval-seg":
        p.add_argument("--no-crf", action="store_true", help="skip the with-CRF evaluation")
    else:
        p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True,
                       help="write the denseCRF-refined predictions (the benchmark's)")
        p.add_argument("--images", help="predict every image of this folder instead of a dataset split "
                                        "(--root is then ignored; output in OUT/predictions)")
    add_crf_args(p)
    add_device_args(p)


def crf_params(args: argparse.Namespace) -> dict[str, float]:
    """The keyword arguments of :func:`rpnet_pl.ops.crf.crf_inference_prob` from :func:`add_crf_args`' options."""
    return {"t": args.crf_iters, "pos_w": args.crf_pos_w, "pos_xy": args.crf_pos_xy, "bi_w": args.crf_bi_w,
            "bi_xy": args.crf_bi_xy, "bi_rgb": args.crf_bi_rgb}


add_eval_seg_args = functools.partial(_add_segmenter_args, name="eval-seg", split="val")
add_predict_seg_args = functools.partial(_add_segmenter_args, name="predict-seg", split="test")

#: `rpnet` subcommand -> the function that adds its options.
STEP_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "cam": add_cam_args,
    "eval-cam": add_eval_cam_args,
    "ir-labels": add_ir_labels_args,
    "pseudo-masks": add_pseudo_masks_args,
    "eval-pseudo-masks": add_eval_pseudo_masks_args,
    "eval-seg": add_eval_seg_args,
    "predict-seg": add_predict_seg_args,
}


def step_parser(command: str) -> argparse.ArgumentParser:
    """A parser holding the options of one per-image step command (no handler)."""
    parser = argparse.ArgumentParser(prog=f"rpnet {command}")
    STEP_ARGS[command](parser)
    return parser
