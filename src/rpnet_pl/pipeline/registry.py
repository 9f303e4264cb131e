"""The pipeline's steps, each declared once: what it is, how it runs, what it reads and writes.

A step is the unit a user thinks in (``classifier``, ``cam``, ... ``predict_seg``). Its name is the
section of the experiment YAML that configures it and its folder in the run (:mod:`rpnet_pl.pipeline.layout`).
Everything that needs to know the steps reads them from :data:`STEPS`: the ``rpnet`` subcommands
(:func:`add_options`), the validation of an experiment (:mod:`rpnet_pl.pipeline.validate`), the plan of a run
(:func:`rpnet_pl.pipeline.runner.plan`), the checkpoint guess (:mod:`rpnet_pl.stages.checkpoints`), and the
shell scripts and Makefile (``rpnet steps``).

Training steps name their LightningModule and datamodule as import strings; per-image steps a
frozen options dataclass whose fields are the command's options, spelt the same in the YAML
section, on the command line (``--bg-threshold``) and in the step function's arguments. Their
defaults come from :mod:`rpnet_pl.ops.params`, the one home of the method's numbers.

Plain Python, no torch: the CLI's parser and the validation import it before any work.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from rpnet_pl.pipeline import layout
from rpnet_pl.ops.params import CAM_INFERENCE, IR_LABELS, PROB_CRF, RANDOM_WALK, REFINEMENT_EXP_TIMES, SEG_INFERENCE
from rpnet_pl.pipeline.ranges import FRACTION, NON_NEGATIVE, POSITIVE, Range, check

StepKind = Literal["train", "per_image", "evaluate", "export"]


def option(default: Any = MISSING, help: str = "", *, pipeline: bool = False, choices: Sequence[str] = (),
           valid: Range | None = None) -> Any:
    """A field of a step's options: its command-line ``help``; ``pipeline``: set by ``rpnet pipeline``
    (inputs, outputs, dataset, devices), not by the experiment's YAML section; ``valid``: its range."""
    return field(default=default, metadata={"help": help, "pipeline": pipeline, "choices": tuple(choices),
                                            "valid": valid})


# -- the options of the per-image commands --------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """The dataset an image-wise command reads: ``--dataset``, ``--root``, ``--split``."""

    dataset: Literal["voc", "coco"] = option("voc", "dataset layout", pipeline=True)
    root: str = option(help="dataset root (see `rpnet data check`)", pipeline=True)
    split: str = option("train_aug", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")


@dataclass(frozen=True, kw_only=True)
class DeviceOptions:
    """Lightning's device options of the commands that run a network (DDP when more than one)."""

    devices: str = option("auto", "devices per node (DDP when more than one)", pipeline=True)
    num_nodes: int = option(1, "nodes (DDP)", pipeline=True, valid=POSITIVE)
    accelerator: str = option("auto", "cpu, gpu or auto (Lightning's names)", pipeline=True)

    @property
    def lightning_devices(self) -> int | str:
        """``devices`` as Lightning takes it (a count, or a name such as ``auto``)."""
        return int(self.devices) if str(self.devices).isdigit() else self.devices


@dataclass(frozen=True, kw_only=True)
class CRFOptions:
    """DeepLab-style denseCRF post-processing (defaults: ``PROB_CRF``)."""

    crf_iters: int = option(PROB_CRF.t, "denseCRF mean-field iterations", valid=POSITIVE)
    crf_pos_w: float = option(PROB_CRF.pos_w, "denseCRF smoothness kernel weight", valid=POSITIVE)
    crf_pos_xy: float = option(PROB_CRF.pos_xy, "denseCRF smoothness kernel width (pixels)", valid=POSITIVE)
    crf_bi_w: float = option(PROB_CRF.bi_w, "denseCRF appearance kernel weight", valid=POSITIVE)
    crf_bi_xy: float = option(PROB_CRF.bi_xy, "denseCRF appearance kernel width (pixels)", valid=POSITIVE)
    crf_bi_rgb: float = option(PROB_CRF.bi_rgb, "denseCRF appearance kernel colour width", valid=POSITIVE)

    @property
    def crf_params(self) -> dict[str, float]:
        """The keyword arguments of :func:`rpnet_pl.ops.crf.crf_inference_prob`."""
        return {"t": self.crf_iters, "pos_w": self.crf_pos_w, "pos_xy": self.crf_pos_xy, "bi_w": self.crf_bi_w,
                "bi_xy": self.crf_bi_xy, "bi_rgb": self.crf_bi_rgb}


@dataclass(frozen=True, kw_only=True)
class CamOptions(DataOptions, DeviceOptions):
    """`rpnet cam`: multi-scale, flip-averaged CAMs of a split (spec "CAM inference")."""

    ckpt: str = option(help="classifier checkpoint (runs/<exp>/classifier/checkpoints/last.ckpt), or a state "
                       "dict of the public RPNet/IRN code (e.g. sess/res50_cam.pth)", pipeline=True)
    out: str = option(help="output folder, one ID.npy per image", pipeline=True)
    scales: tuple[float, ...] = option(CAM_INFERENCE.scales, "input scales, summed", valid=POSITIVE)
    flip: bool = option(CAM_INFERENCE.flip, "horizontal-flip averaging")
    backbone: str | None = option(None, "backbone of a reference-code checkpoint (default: read from its "
                                  "tensor shapes)")


@dataclass(frozen=True, kw_only=True)
class EvalCamOptions(DataOptions):
    """`rpnet eval-cam`: seed mIoU over a background-threshold sweep."""

    cams: str = option(help="folder of ID.npy CAM files (`rpnet cam`)", pipeline=True)
    split: str = option("train", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")
    thresholds: tuple[float, ...] | None = option(None, "background thresholds (default 0.05..0.60 and 0.16)", valid=FRACTION)
    strided: bool = option(False, "score the stride-4 CAMs (upsampled) instead of the high-res ones")
    out: str | None = option(None, "write the metrics as JSON here", pipeline=True)


@dataclass(frozen=True, kw_only=True)
class IRLabelsOptions(DataOptions):
    """`rpnet ir-labels`: confident foreground / background / 255 from high-res CAMs (spec "Stage 2")."""

    cams: str = option(help="folder of ID.npy CAM files (`rpnet cam`)", pipeline=True)
    out: str = option(help="output folder, one ID.png per image", pipeline=True)
    fg_threshold: float = option(IR_LABELS.fg_threshold, "background score of the map whose foreground is "
                                 "kept (confident foreground)", valid=FRACTION)
    bg_threshold: float = option(IR_LABELS.bg_threshold, "background score of the map whose background is "
                                 "kept (confident background)", valid=FRACTION)
    crf: bool = option(True, "denseCRF on each thresholded map (--no-crf: threshold only)")
    workers: int | None = option(None, "CPU processes (default: the usable cores; 0 = inline)", valid=NON_NEGATIVE)
    calibration_split: str | None = option(None, "labelled split whose CAM seeds choose the two thresholds instead: "
                                           "eval-cam's sweep over its images gives the best background threshold "
                                           "t*, and fg_threshold = 2 t*, bg_threshold = t* / 3 (VOC: 0.15 -> "
                                           "0.30 / 0.05); recorded in OUT/calibration.json. Its images need CAM "
                                           "files (the cam step's split must include it)")


@dataclass(frozen=True, kw_only=True)
class WalkOptions:
    """The random walk from CAM seeds over the boundary map (defaults: ``RANDOM_WALK``)."""

    radius: int = option(RANDOM_WALK.radius, "affinity radius of the random walk (stride-4 pixels)", valid=POSITIVE)
    beta: float = option(RANDOM_WALK.beta, "affinity power of the random walk", valid=POSITIVE)
    bg_threshold: float = option(RANDOM_WALK.bg_threshold, "background score of the seeds before the walk", valid=FRACTION)
    pad_to: int = option(RANDOM_WALK.pad_to, "zero-pad each image to this square before the boundary network, "
                         "as IRN does (512 for VOC-size images; 0: no padding)", valid=NON_NEGATIVE)


@dataclass(frozen=True, kw_only=True)
class PseudoMasksOptions(DataOptions, DeviceOptions, WalkOptions):
    """`rpnet pseudo-masks`: boundary map -> random walk on the CAM seeds (spec "Pseudo masks")."""

    ckpt: str = option(help="refine checkpoint (runs/<exp>/refine/checkpoints/last.ckpt)", pipeline=True)
    cams: str = option(help="CAM folder written by `rpnet cam`", pipeline=True)
    out: str = option(help="output folder, one palette PNG per image", pipeline=True)
    exp_times: int = option(RANDOM_WALK.exp_times, "random walk of 2**exp_times steps", valid=NON_NEGATIVE)
    save_scores: bool = option(False, "also keep the walk's class scores (stride 4, float16, OUT/scores/ID.npz), "
                               "from which `rpnet eval-pseudo-masks` sweeps the background threshold without "
                               "walking again; the masks are then made from those scores. Costs disk: about 2 bytes "
                               "per class and stride-4 pixel, some 40 KB a VOC image, GBs for COCO's train set")
    calibration_split: str | None = option(None, "labelled split whose walk scores choose bg_threshold instead: the "
                                           "scores are kept (as --save-scores), eval-pseudo-masks' sweep over this "
                                           "split's images gives the best threshold b*, and every mask is made at "
                                           "b*; recorded in OUT/calibration.json. Its images must be in --split")


@dataclass(frozen=True, kw_only=True)
class EvalMasksOptions(DataOptions):
    """`rpnet eval-pseudo-masks`: mIoU of any folder of label PNGs (and, over the walk's saved scores, of
    a background-threshold sweep)."""

    masks: str = option(help="folder of ID.png label maps", pipeline=True)
    split: str = option("train", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")
    ignore_pred: bool = option(False, "leave out pixels predicted 255 (IR labels)")
    all_images: bool = option(False, "every id of the split, also those without a class label")
    thresholds: tuple[float, ...] | None = option(None, "background thresholds swept over the walk's saved scores, "
                                                  "when MASKS/scores exists (`rpnet pseudo-masks --save-scores`; "
                                                  "default 0.05..0.60 and 0.16)", valid=FRACTION)
    out: str | None = option(None, "write the metrics as JSON here", pipeline=True)


@dataclass(frozen=True, kw_only=True)
class EvalSegOptions(DataOptions, DeviceOptions, CRFOptions):
    """`rpnet eval-seg`: segmenter mIoU with and without denseCRF."""

    ckpt: str = option(help="segmenter checkpoint (runs/<exp>/segmenter/checkpoints/last.ckpt)", pipeline=True)
    out: str = option(help="output folder", pipeline=True)
    split: str = option("val", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")
    scales: tuple[float, ...] = option(SEG_INFERENCE.scales, "test scales whose scores are averaged", valid=POSITIVE)
    flip: bool = option(SEG_INFERENCE.flip, "horizontal-flip test-time augmentation")
    crf: bool = option(True, "also evaluate the denseCRF-refined predictions")


@dataclass(frozen=True, kw_only=True)
class PredictSegOptions(EvalSegOptions):
    """`rpnet predict-seg`: the benchmark's files (VOC server layout, or COCO's)."""

    root: str | None = option(None, "dataset root (see `rpnet data check`)", pipeline=True)
    split: str = option("test", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")
    crf: bool = option(True, "write the denseCRF-refined predictions (the benchmark's)")
    images: str | None = option(None, "predict every image of this folder instead of a dataset split "
                                "(--root is then ignored; output in OUT/predictions)")


@dataclass(frozen=True, kw_only=True)
class EvalRefinementOptions(DataOptions, WalkOptions):
    """`rpnet eval-refinement` (a diagnosis, not a pipeline step): pseudo-mask mIoU after each
    refinement step."""

    ckpt: str = option(help="refine checkpoint (runs/<exp>/refine/checkpoints/last.ckpt)")
    cams: str = option(help="CAM folder written by `rpnet cam`")
    split: str = option("train", "image list (VOC: ImageSets/Segmentation/SPLIT.txt)")
    exp_times: tuple[int, ...] = option(REFINEMENT_EXP_TIMES, "walks of 2**e steps to score", valid=NON_NEGATIVE)
    boundary: Literal["learned", "ground-truth"] = option(
        "learned", "ground-truth: walk over the ideal boundary drawn from each mask instead of IRN's (what the "
        "walk can do with these seeds when the boundary is right)")
    out: str | None = option(None, "write the result as JSON here")


# -- options <-> argparse -------------------------------------------------------------------------
def _hints(options: type) -> dict[str, Any]:
    return typing.get_type_hints(options)


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without ``None``, whether ``None`` is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def option_fields(options: type, *, pipeline: bool | None = None) -> list[dataclasses.Field]:
    """The fields of an options dataclass (``pipeline``: only those the pipeline sets / only the
    others)."""
    return [f for f in dataclasses.fields(options) if pipeline is None or f.metadata.get("pipeline") == pipeline]


def yaml_types(options: type) -> dict[str, tuple[Any, Any]]:
    """name -> (type, default) of the options an experiment's YAML section may set."""
    hints = _hints(options)
    return {f.name: (hints[f.name], f.default) for f in option_fields(options, pipeline=False)}


def add_options(parser: argparse.ArgumentParser, options: type) -> None:
    """One ``--name`` per field of ``options`` (``--no-name`` for booleans, several values for tuples,
    the choices of a ``Literal``); fields without a default are required."""
    hints = _hints(options)
    order = {"required": 0, "own": 1, "pipeline": 2}
    ranked = sorted(dataclasses.fields(options), key=lambda f: order[
        "required" if f.default is MISSING else "pipeline" if f.metadata.get("pipeline") else "own"])
    for f in ranked:
        hint, _ = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.default is MISSING:
            kwargs.update(required=True, default=argparse.SUPPRESS)
        elif f.default is None:  # no "(default: None)" in the help; from_namespace fills it in
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(hint) is tuple:
            kwargs.update(nargs="+", type=typing.get_args(hint)[0])
        elif typing.get_origin(hint) is Literal:
            kwargs["choices"] = typing.get_args(hint)
        elif hint in (int, float):
            kwargs["type"] = hint
        parser.add_argument(flag, **kwargs)


def at_least(low: int) -> Any:
    """An argparse type: an integer >= ``low`` (argparse names the option in its error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def from_namespace(options: type, args: argparse.Namespace) -> Any:
    """The options dataclass of a parsed command line (lists become tuples)."""
    values = {f.name: getattr(args, f.name, f.default) for f in dataclasses.fields(options)}
    for f in dataclasses.fields(options):
        check(f"--{f.name.replace('_', '-')}", values[f.name], f.metadata.get("valid"))
    return options(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# -- the registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSpec:
    """One step of the pipeline.

    ``reads``: (where, step) pairs: the output of ``step`` (:func:`output_path`) is given to this one
    as ``--where`` (per-image steps) or as the dotted config key ``where`` (training steps).
    ``output``: what later steps read, relative to the step's folder ('' : the folder itself).
    ``devices``: the command runs a network, on the pipeline's devices. ``optional_split``: the step
    is skipped, with one line, when the dataset has no such split (the test export). ``networks``
    (training steps): (method, class path) of the networks its stage may be given, the default first
    (:mod:`rpnet_pl.pipeline.networks`).
    """

    name: str
    kind: StepKind
    help: str
    command: str | None = None
    options: type | None = None
    run: str | None = None
    stage: str | None = None
    datamodule: str | None = None
    networks: tuple[tuple[str, str], ...] = ()
    reads: tuple[tuple[str, str], ...] = ()
    output: str = ""
    devices: bool = False
    optional_split: bool = False

    @property
    def trains(self) -> bool:
        return self.kind == "train"

    @property
    def default_split(self) -> str:
        """The split the step reads when its section says none (training: the datamodules' default)."""
        if self.options is None:
            return "train_aug"
        return next(f.default for f in dataclasses.fields(self.options) if f.name == "split")


CHECKPOINT = f"{layout.CHECKPOINTS}/{layout.LAST_CKPT}"

CLASSIFIER = StepSpec(
    "classifier", "train", "stage 1: the RPNet (or CAM baseline) classifier",
    stage="rpnet_pl.stages.classifier:ClassifierStage", datamodule="rpnet_pl.data.datamodules:GroupDataModule",
    networks=(("rpnet", "rpnet_pl.models.rpnet.RPNet"), ("cam", "rpnet_pl.models.cam_net.CAMNet")),
    output=CHECKPOINT)
CAM = StepSpec(
    "cam", "per_image", "multi-scale + flip CAM seeds of a split from a classifier checkpoint",
    command="cam", options=CamOptions, run="rpnet_pl.steps.cam:cam_step",
    reads=(("ckpt", "classifier"),), output=layout.CAMS, devices=True)
EVAL_CAM = StepSpec(
    "eval_cam", "evaluate", "mIoU of CAM seeds against the ground truth, over a threshold sweep",
    command="eval-cam", options=EvalCamOptions, run="rpnet_pl.steps.evaluate:eval_cam_step",
    reads=(("cams", "cam"),), output=layout.METRICS)
IR_LABELS_STEP = StepSpec(
    "ir_labels", "per_image", "IR labels (confident fg / bg / 255) from high-res CAMs, with denseCRF",
    command="ir-labels", options=IRLabelsOptions, run="rpnet_pl.steps.ir_labels:ir_labels_step",
    reads=(("cams", "cam"),), output=layout.LABELS)
REFINE = StepSpec(
    "refine", "train", "stage 2: IRN's boundary network, trained on the IR labels",
    stage="rpnet_pl.stages.refine:RefineStage", datamodule="rpnet_pl.data.datamodules:LabelledDataModule",
    networks=(("irn", "rpnet_pl.models.irn.IRNet"),), reads=(("data.label_dir", "ir_labels"),), output=CHECKPOINT)
PSEUDO_MASKS = StepSpec(
    "pseudo_masks", "per_image", "pseudo masks: boundary map -> random walk on the CAM seeds",
    command="pseudo-masks", options=PseudoMasksOptions, run="rpnet_pl.steps.pseudo_masks:pseudo_masks_step",
    reads=(("ckpt", "refine"), ("cams", "cam")), output=layout.MASKS, devices=True)
EVAL_PSEUDO_MASKS = StepSpec(
    "eval_pseudo_masks", "evaluate", "mIoU of label PNGs (pseudo masks, predictions) against the ground truth",
    command="eval-pseudo-masks", options=EvalMasksOptions, run="rpnet_pl.steps.evaluate:eval_masks_step",
    reads=(("masks", "pseudo_masks"),), output=layout.METRICS)
SEGMENTER = StepSpec(
    "segmenter", "train", "stage 3: DeepLab trained on the pseudo masks",
    stage="rpnet_pl.stages.segmenter:SegmenterStage", datamodule="rpnet_pl.data.datamodules:LabelledDataModule",
    networks=(("deeplab", "rpnet_pl.models.deeplab.DeepLabNet"),), reads=(("data.label_dir", "pseudo_masks"),), output=CHECKPOINT)
EVAL_SEG = StepSpec(
    "eval_seg", "evaluate", "segmenter mIoU with and without denseCRF",
    command="eval-seg", options=EvalSegOptions, run="rpnet_pl.steps.segmentation:eval_seg_step",
    reads=(("ckpt", "segmenter"),), devices=True)
PREDICT_SEG = StepSpec(
    "predict_seg", "export", "segmenter predictions for the benchmark",
    command="predict-seg", options=PredictSegOptions, run="rpnet_pl.steps.segmentation:predict_seg_step",
    reads=(("ckpt", "segmenter"),), devices=True, optional_split=True)

#: Every step, in the order of a run.
STEPS: dict[str, StepSpec] = {s.name: s for s in (CLASSIFIER, CAM, EVAL_CAM, IR_LABELS_STEP, REFINE, PSEUDO_MASKS,
                                                  EVAL_PSEUDO_MASKS, SEGMENTER, EVAL_SEG, PREDICT_SEG)}
#: Step names in order.
STEP_ORDER: tuple[str, ...] = tuple(STEPS)
#: The training steps (LightningCLI sections ``model`` / ``data`` / ``trainer``).
TRAIN_STEPS: tuple[str, ...] = tuple(s.name for s in STEPS.values() if s.trains)
#: Image-wise commands that are not steps of a run.
EVAL_REFINEMENT = StepSpec(
    "eval_refinement", "evaluate", "diagnose boundary refinement: pseudo-mask mIoU and foreground share after "
    "each step (CAMs alone, x (1 - boundary), random walks of 2^e steps)",
    command="eval-refinement", options=EvalRefinementOptions, run="rpnet_pl.steps.eval_refinement:eval_refinement_step")
COMMANDS: dict[str, StepSpec] = {s.command: s for s in (*STEPS.values(), EVAL_REFINEMENT) if s.command}


def output_path(run: str | Path, step: str) -> Path:
    """What ``step`` of ``run`` writes for the steps after it (a checkpoint, a folder, metrics)."""
    folder = layout.step_dir(run, step)
    return folder / STEPS[step].output if STEPS[step].output else folder


def load(ref: str) -> Any:
    """The object of an import string ``module:name`` (or LightningCLI's ``module.name``)."""
    import importlib

    module, name = ref.split(":") if ":" in ref else ref.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def unknown_steps(names: Sequence[str]) -> list[str]:
    """The names in ``names`` that are not steps."""
    return [n for n in names if n not in STEPS]


def step_lines(until: str | None = None, distributed: bool = False, long: bool = False) -> list[str]:
    """`rpnet steps`: the step names in order (``until``: up to and including that step; ``distributed``:
    only those that run on every process of a multi-process job); ``long``: also each step's kind,
    command and help, tab-separated."""
    names = list(STEPS)
    if until:
        names = names[:names.index(until) + 1]
    if distributed:
        names = [n for n in names if STEPS[n].trains or STEPS[n].devices]
    if not long:
        return names
    return [f"{n}\t{s.kind}\t{'rpnet fit ' + n if s.trains else 'rpnet ' + str(s.command)}\t{s.help}"
            for n, s in ((n, STEPS[n]) for n in names)]
