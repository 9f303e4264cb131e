"""The default numbers of the per-image steps, each said once.

One small frozen dataclass per step; the ops' signatures, the stages' arguments and the CLI's
``default=`` all read from the module-level instances below, so a change here reaches all of
them. Plain Python only (no torch, no pydensecrf): the CLI imports it to build its parser.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RandomWalkParams:
    """Pseudo masks from CAM seeds (spec "Pseudo masks", IRN's ``make_sem_seg_labels``).

    ``radius``: affinity radius in stride-4 pixels; ``beta``: power of the affinities;
    ``exp_times``: a walk of ``2 ** exp_times`` steps; ``bg_threshold``: constant background score
    of the walked CAMs before the argmax; ``pad_to``: square the boundary network's input is
    zero-padded to at inference (IRN's 512 crop; ``None`` or 0: no padding).
    """

    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    bg_threshold: float = 0.25
    pad_to: int = 512


@dataclass(frozen=True)
class IRLabelParams:
    """IR labels from high-res CAMs (spec "Stage 2", IRN's ``cam_to_ir_label``): background score
    of the map whose foreground is kept (``fg_threshold``) and of the map whose background is kept
    (``bg_threshold``)."""

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05


@dataclass(frozen=True)
class LabelCRFParams:
    """denseCRF on a hard label map (IR labels; IRN's ``crf_inference_label``): ``t`` mean-field
    iterations, unary trusting each label with ``gt_prob``, Gaussian and bilateral kernels."""

    t: int = 10
    gt_prob: float = 0.7
    gauss_sxy: float = 3.0
    gauss_compat: float = 3.0
    bi_sxy: float = 50.0
    bi_srgb: float = 5.0
    bi_compat: float = 10.0


@dataclass(frozen=True)
class ProbCRFParams:
    """DeepLab-style denseCRF on class probabilities (spec "Stage 3"): ``t`` iterations, smoothness
    kernel weight ``pos_w`` and width ``pos_xy``, appearance kernel weight ``bi_w``, width ``bi_xy``
    and colour width ``bi_rgb``."""

    t: int = 10
    pos_w: float = 3.0
    pos_xy: float = 3.0
    bi_w: float = 4.0
    bi_xy: float = 67.0
    bi_rgb: float = 3.0


@dataclass(frozen=True)
class CAMInferenceParams:
    """Multi-scale CAM inference (spec "CAM inference", IRN's ``make_cam``): the input ``scales``
    whose CAMs are summed, each also on the flipped image when ``flip``."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True


@dataclass(frozen=True)
class SegInferenceParams:
    """The segmenter's test-time augmentation (``rpnet eval-seg`` / ``predict-seg``): scores averaged
    over ``scales`` (and flips when ``flip``); the recipe's experiments set their own scales."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = True


RANDOM_WALK = RandomWalkParams()
IR_LABELS = IRLabelParams()
LABEL_CRF = LabelCRFParams()
PROB_CRF = ProbCRFParams()
CAM_INFERENCE = CAMInferenceParams()
SEG_INFERENCE = SegInferenceParams()

#: ``rpnet eval-cam``'s background-threshold sweep (also the calibration's and the seed monitor's):
#: 0.05 .. 0.60 in steps of 0.05, plus IRN's 0.16 (0.15 is on the grid).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(sorted({round(0.05 * i, 2) for i in range(1, 13)} | {0.16}))

#: ``rpnet eval-refinement``: the walks of ``2 ** e`` steps it scores by default.
REFINEMENT_EXP_TIMES: tuple[int, ...] = (0, 2, 8)
