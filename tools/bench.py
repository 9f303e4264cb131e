"""`python tools/bench.py` (`make bench`): throughput (images/s) and peak memory of every stage, training
and inference. A developer tool beside the package, not installed with it.

One measurement function per (stage, phase), each on synthetic random tensors (no dataset); the
step each one times is built by a public ``*_step`` function (:func:`classifier_step`, :func:`cam_step`,
:func:`irn_step`, :func:`pseudo_mask_step`, :func:`deeplab_train_step`, :func:`deeplab_infer_step`),
which ``scripts/reference_timing.py`` times against the public code:

* :func:`classifier_train` : one optimiser step of RPNet or the IRN CAM baseline on ``batch``
  groups of ``group_size`` images (``batch * group_size`` images a step, crop 512 in the paper);
* :func:`cam_inference` : multi-scale + flip CAMs of one full-size image (the plain branch);
* :func:`irn_train` : one IRN step (affinity + displacement losses, frozen backbone; crop 512);
* :func:`pseudo_mask_inference` : boundary map, random walk and argmax of one VOC-size image
  (500x375, stride-4 map 125x94);
* :func:`deeplab_train` : one DeepLab-LargeFOV step (cross-entropy, crop 321);
* :func:`deeplab_inference` : multi-scale + flip softmax of one full-size image.

Every case runs the stage's own code, so the benchmark cannot drift from what trains and predicts:
a training case builds the stage's LightningModule (:class:`~rpnet_pl.stages.common.StageModule`)
and times :meth:`~rpnet_pl.stages.common.StageModule.training_losses` (what ``training_step``
minimises), the backward pass and a step of the optimiser and scheduler of
:meth:`~rpnet_pl.stages.common.StageModule.make_optimizer` (the stage's own groups, momentum and
weight decay; ``lr`` 1e-6 so random data stays finite); an inference case times what the per-image
step runs on the trained network (``multiscale_cam`` of the ``cam`` step, ``pseudo_mask`` of the
``pseudo_masks`` step, ``multiscale_probs`` of ``eval_seg``) without the file write. ``bf16`` puts the whole step under autocast,
as ``trainer.precision: bf16-mixed`` does.

Timing: ``warmup`` untimed calls, then at least ``iters`` timed calls (more, up to ``10 * iters``,
until ``min_time`` seconds have been timed); the throughput is images per call over the *median*
call time. Each call is timed on ``torch.utils.benchmark``'s clock (on CUDA synchronised before and
after) and the median is its ``Measurement``'s (:func:`time_once`, :func:`median_seconds`).

Peak memory covers the whole case (model, optimiser state, inputs, warm-up and timed calls) above
what was in use just before it:

* CUDA: ``torch.cuda.max_memory_allocated`` (reset per case) minus ``memory_allocated`` before;
* CPU (Linux): the kernel's peak resident set size ``VmHWM``, reset per case by writing ``5`` to
  ``/proc/self/clear_refs``, minus ``VmRSS`` before (freed heap is first returned with
  ``malloc_trim``); exact peak of the process, no sampling;
* CPU elsewhere: growth of ``getrusage(RUSAGE_SELF).ru_maxrss``, a lower bound (it only counts
  growth above the process's earlier peak).

Weights are random (``pretrained=False``): throughput does not depend on them.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import logging
import resource
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rpnet_pl.utils.cpus import usable_cpus
from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.utils.host_memory import proc_status_kib, release_freed_memory
from rpnet_pl.ops.params import CAM_INFERENCE, RANDOM_WALK
from rpnet_pl.stages.common import StageModule
from rpnet_pl.stages.checkpoints import build_stage

Step = Callable[[], None]

log = logging.getLogger(__name__)


# =================================================================================================
# Results and profiles
# =================================================================================================
@dataclass
class BenchResult:
    """One measured case. ``batch`` is images per call; ``images_per_s`` = batch / median call time."""

    stage: str
    phase: str
    backbone: str
    input: str
    batch: int
    images_per_s: float
    peak_mib: float
    seconds_per_iter: float
    iters: int
    device: str
    precision: str
    memory_method: str


@dataclass(frozen=True)
class Profile:
    """Sizes of every case. ``classifier_batch`` counts groups (images = batch * group_size),
    as the classifier's data loader does; ``image_size`` (H, W) is the inference image."""

    name: str
    classifier_backbone: str
    irn_backbone: str
    deeplab_backbone: str
    classifier_crop: int = 512
    classifier_batch: int = 8
    group_size: int = 2
    irn_crop: int = 512
    irn_batch: int = 32
    deeplab_crop: int = 321
    deeplab_batch: int = 10
    image_size: tuple[int, int] = (375, 500)
    cam_scales: tuple[float, ...] = CAM_INFERENCE.scales
    seg_scales: tuple[float, ...] = (1.0, 0.75, 1.25)
    cam_channels: int = 2
    iters: int = 10
    warmup: int = 2
    min_time: float = 0.3
    device: str = "cuda"
    #: memory layouts the classifier pair is timed in (False: contiguous, True: channels-last);
    #: ``--channels-last`` times it in channels-last only
    pair_layouts: tuple[bool, ...] = (False,)


#: ``cpu``: the tiny backbone at the paper's crop sizes with small batches (a few minutes on a
#: small CPU, docs/benchmarks.md); ``gpu``: the paper's backbones and batch sizes.
PROFILES: dict[str, Profile] = {
    "cpu": Profile(name="cpu", classifier_backbone="resnet18", irn_backbone="resnet18", deeplab_backbone="resnet18",
                   classifier_batch=2, irn_batch=2, deeplab_batch=2, iters=3, warmup=1, min_time=0.0,
                   device="cpu", pair_layouts=(False, True)),
    "gpu": Profile(name="gpu", classifier_backbone="resnext50", irn_backbone="resnet50", deeplab_backbone="resnet50"),
}

#: Case names, in the order they run (see :func:`run_profile`).
CASES = ("classifier-rpnet", "classifier-cam", "cam", "irn", "pseudo-mask", "deeplab-train", "deeplab-infer")


# =================================================================================================
# Measurement
# =================================================================================================
def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return proc_status_kib("VmHWM") is not None
    except OSError:
        return False


def _ru_maxrss_kib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform == "darwin" else float(rss)  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Context manager: ``peak_mib`` = peak memory of the block above what was in use at its start
    (see the module docstring for the method on each device); ``method`` names it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self.method = ""
        self._base = 0.0
        self._hwm = False

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            self._base = float(torch.cuda.memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "torch.cuda.max_memory_allocated"
        else:
            release_freed_memory()  # so the RSS baseline is the memory in use
            self._hwm = _reset_peak_rss()
            if self._hwm:
                self._base = float(proc_status_kib("VmRSS") or 0) * 1024
                self.method = "peak RSS (VmHWM reset via /proc/self/clear_refs)"
            else:
                self._base = _ru_maxrss_kib() * 1024
                self.method = "ru_maxrss growth (lower bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = float(torch.cuda.max_memory_allocated(self.device))
        elif self._hwm:
            peak = float(proc_status_kib("VmHWM") or 0) * 1024
        else:
            peak = _ru_maxrss_kib() * 1024
        self.peak_mib = max(0.0, peak - self._base) / 2 ** 20


def time_once(step: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``step`` on the clock of :mod:`torch.utils.benchmark` (its ``timer``),
    ``device`` synchronised before and after so the time covers the call's queued GPU work.

    ``Timer.timeit`` and ``blocked_autorange`` are not used: both run their own warm-up calls
    before every measurement (``timeit(number=1)`` three calls per timed one), and
    ``blocked_autorange`` picks its own number of calls, where the profiles fix ``warmup`` and
    ``iters``; :func:`median_seconds` hands our per-call times to its ``Measurement``."""
    from torch.utils import benchmark

    _sync(device)
    start = benchmark.timer()
    step()
    _sync(device)
    return benchmark.timer() - start


def median_seconds(times: Sequence[float], label: str = "step()") -> float:
    """The median of per-call ``times`` as :class:`torch.utils.benchmark.Measurement` computes it
    (the two middle calls averaged for an even count); the whole measurement is logged at debug level."""
    from torch.utils import benchmark

    m = benchmark.Measurement(number_per_run=1, raw_times=list(times),
                              task_spec=benchmark.TaskSpec(stmt=label, setup="", num_threads=torch.get_num_threads()))
    log.debug("%s", m)
    return float(m.median)


def measure(build: Callable[[], Step], device: torch.device, iters: int = 3, warmup: int = 1,
            min_time: float = 0.0) -> tuple[float, float, int, str]:
    """Build a case (``build()`` makes the model and inputs and returns the step to time), run
    ``warmup`` untimed steps, then at least ``iters`` timed ones (up to ``10 * iters`` until
    ``min_time`` seconds are timed). Returns (median seconds a step, peak MiB, timed steps,
    memory method)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    times: list[float] = []
    with PeakMemory(device) as mem:
        step = build()
        for _ in range(max(0, warmup)):
            step()
        _sync(device)
        while len(times) < iters or (sum(times) < min_time and len(times) < 10 * iters):
            times.append(time_once(step, device))
        del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return median_seconds(times), mem.peak_mib, len(times), mem.method


def time_alternately(steps: dict[str, Step], device: torch.device, iters: int = 3,
                     min_time: float = 0.0) -> dict[str, list[float]]:
    """Per-call seconds of each of ``steps``, timed in turn so that all see the same machine state
    (load, clocks, caches), the order reversed every other round (a b, b a, a b, ...) so that
    neither always runs first, in the state the other left: at least ``iters`` rounds, up to
    ``10 * iters`` until ``min_time`` seconds are timed in all. Warm-up is the caller's."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    rounds = 0
    while rounds < iters or (sum(map(sum, times.values())) < min_time and rounds < 10 * iters):
        for name, step in (order if rounds % 2 == 0 else order[::-1]):
            times[name].append(time_once(step, device))
        rounds += 1
    return times


def _autocast(device: torch.device, bf16: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _images(n: int, h: int, w: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Normalised-looking random images (n, 3, h, w)."""
    return torch.randn(n, 3, h, w, generator=gen).to(device)


def _multi_hot(n: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """(n, classes) multi-hot float labels with at least one class each."""
    labels = (torch.rand(n, classes, generator=gen) < 2.0 / classes).float()
    labels[torch.arange(n), torch.randint(0, classes, (n,), generator=gen)] = 1.0
    return labels


def blocky_labels(n: int, h: int, w: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    """(n, h, w) int64 label maps of 32x32 blocks: background, a few classes, some 255 (ignore)."""
    hb, wb = -(-h // 32), -(-w // 32)
    small = torch.randint(0, classes + 1, (n, hb, wb), generator=gen)
    small[torch.rand(n, hb, wb, generator=gen) < 0.15] = 255
    return small.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, :h, :w].contiguous()


#: Learning rate of the benchmarked stages: random data with the recipes' rates can diverge to
#: non-finite values within a few steps; the step's cost does not depend on it.
BENCH_LR = 1e-6


def _train_step(stage: StageModule, batch: dict[str, torch.Tensor], dev: torch.device, bf16: bool) -> Step:
    """One optimiser step of ``stage`` as its ``training_step`` takes it: the stage's losses on ``batch``,
    backward, the stage's optimiser and per-step scheduler."""
    stage.setup("fit")  # channels_last, as the Trainer does
    stage.to(dev).train()
    opt, sched = stage.make_optimizer(max_steps=10 ** 6)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, bf16):
            loss = stage.training_losses(batch)["loss"]
        loss.backward()
        opt.step()
        sched.step()

    return step


def _eval_stage(stage: StageModule, dev: torch.device) -> StageModule:
    """``stage`` ready for prediction on ``dev`` (channels_last applied, eval mode)."""
    stage.setup("predict")
    return stage.to(dev).eval()


def _result(stage: str, phase: str, backbone: str, input_: str, batch: int, device: torch.device, bf16: bool,
            timing: tuple[float, float, int, str], channels_last: bool = False) -> BenchResult:
    sec, peak, n, method = timing
    return BenchResult(stage=stage, phase=phase, backbone=backbone, input=input_, batch=batch,
                       images_per_s=batch / sec, peak_mib=peak, seconds_per_iter=sec, iters=n,
                       device=str(device), precision=("bf16 autocast" if bf16 else "fp32") + (", channels_last" if channels_last else ""),
                       memory_method=method)


def _scales_text(scales: Sequence[float]) -> str:
    return "/".join(f"{s:g}" for s in scales)


# =================================================================================================
# The cases
# =================================================================================================
def _classifier_build(method: str, backbone: str, crop: int, batch: int, group_size: int, dev: torch.device,
                      bf16: bool, channels_last: bool, num_classes: int) -> Callable[[], Step]:
    def build() -> Step:
        gen = torch.Generator().manual_seed(0)
        stage = build_stage("classifier", method=method, backbone=backbone, pretrained=False, num_classes=num_classes,  # type: ignore[arg-type]
                                lr=BENCH_LR, channels_last=channels_last)
        n = batch * group_size
        images = _images(n, crop, crop, dev, gen).reshape(batch, group_size, 3, crop, crop)
        labels = _multi_hot(n, num_classes, gen).to(dev).reshape(batch, group_size, num_classes)
        return _train_step(stage, {"images": images, "labels": labels}, dev, bf16)

    return build


def classifier_step(method: str, backbone: str, crop: int, batch: int, group_size: int, dev: torch.device,
                    bf16: bool = False, channels_last: bool = False, num_classes: int = 20) -> Step:
    """One optimiser step of the classifier on ``batch`` random groups of ``group_size`` crops."""
    return _classifier_build(method, backbone, crop, batch, group_size, dev, bf16, channels_last, num_classes)()


def _classifier_name(method: str) -> str:
    return "classifier (RPNet)" if method == "rpnet" else "classifier (CAM baseline)"


def classifier_train(method: str = "rpnet", backbone: str = "resnet18", crop: int = 512, batch: int = 1,
                     group_size: int = 2, iters: int = 3, warmup: int = 1, device: str | torch.device = "cpu",
                     bf16: bool = False, channels_last: bool = False, min_time: float = 0.0, num_classes: int = 20) -> BenchResult:
    """One SGD step (forward with losses, backward, update) of the classifier on ``batch`` groups
    of ``group_size`` images at ``crop`` (RPNet runs its enhanced scales 0.5/1.5/2 too)."""
    dev = resolve_device(str(device))
    build = _classifier_build(method, backbone, crop, batch, group_size, dev, bf16, channels_last, num_classes)
    return _result(_classifier_name(method), "train", backbone, f"crop {crop}, {batch} group(s) of {group_size}",
                   batch * group_size, dev, bf16, measure(build, dev, iters, warmup, min_time), channels_last)


def classifier_pair(backbone: str = "resnet18", crop: int = 512, batch: int = 1, group_size: int = 2, iters: int = 3,
                    warmup: int = 1, device: str | torch.device = "cpu", bf16: bool = False,
                    channels_last: bool = False, min_time: float = 0.0,
                    num_classes: int = 20) -> tuple[BenchResult, BenchResult]:
    """RPNet's and the baseline's training steps timed *alternately* in one loop (RPNet, baseline,
    RPNet, ...), so both see the same machine state (load, clocks, caches); the ratio of the two
    medians is what a plain side-by-side timing gives. Peak memory is measured per model during
    its warm-up steps (at least one). Returns (RPNet result, baseline result)."""
    dev = resolve_device(str(device))
    steps, peaks, method_name = {}, {}, ""
    for method in ("rpnet", "cam"):
        with PeakMemory(dev) as mem:
            steps[method] = _classifier_build(method, backbone, crop, batch, group_size, dev, bf16, channels_last,
                                              num_classes)()
            for _ in range(max(1, warmup)):
                steps[method]()
            _sync(dev)
        peaks[method], method_name = mem.peak_mib, mem.method
    times = time_alternately(steps, dev, iters, min_time)
    del steps
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    size = f"crop {crop}, {batch} group(s) of {group_size}"
    rp, cam = (_result(_classifier_name(m), "train", backbone, size, batch * group_size, dev, bf16,
                       (median_seconds(times[m], _classifier_name(m)), peaks[m], len(times[m]), method_name + "; timed alternately"),
                       channels_last) for m in ("rpnet", "cam"))
    return rp, cam


def cam_step(method: str, backbone: str, image_size: tuple[int, int], scales: Sequence[float], dev: torch.device,
             bf16: bool = False, channels_last: bool = False, num_classes: int = 20) -> Step:
    """The multi-scale + flip CAMs of one random (H, W) image, as ``rpnet cam`` computes them."""
    from rpnet_pl.steps.cam_inference import multiscale_cam

    gen = torch.Generator().manual_seed(0)
    stage = _eval_stage(build_stage("classifier", method=method, backbone=backbone, pretrained=False,  # type: ignore[arg-type]
                                        num_classes=num_classes, channels_last=channels_last), dev)
    image = _images(1, *image_size, dev, gen)

    def step() -> None:
        with torch.no_grad(), _autocast(dev, bf16):
            multiscale_cam(stage.model.cam, image, tuple(scales), True)

    return step


def cam_inference(method: str = "rpnet", backbone: str = "resnet18", image_size: tuple[int, int] = (375, 500),
                  scales: Sequence[float] = CAM_INFERENCE.scales, iters: int = 3, warmup: int = 1,
                  device: str | torch.device = "cpu", bf16: bool = False, channels_last: bool = False, min_time: float = 0.0,
                  num_classes: int = 20) -> BenchResult:
    """Multi-scale + flip CAMs (strided and high-res) of one (H, W) image with the plain branch."""
    dev = resolve_device(str(device))
    h, w = image_size
    def build() -> Step:
        return cam_step(method, backbone, image_size, scales, dev, bf16, channels_last, num_classes)

    name = "CAM seeds (RPNet)" if method == "rpnet" else "CAM seeds (CAM baseline)"
    return _result(name, "inference", backbone, f"{w}x{h}, scales {_scales_text(scales)} + flip", 1, dev, bf16,
                   measure(build, dev, iters, warmup, min_time), channels_last)


def irn_step(backbone: str, crop: int, batch: int, radius: int, dev: torch.device, bf16: bool = False,
             channels_last: bool = False, num_classes: int = 20) -> Step:
    """One optimiser step of the refine stage on ``batch`` random crops with blocky IR labels."""

    gen = torch.Generator().manual_seed(0)
    stage = build_stage("refine", backbone=backbone, pretrained=False, boundary_radius=radius, lr=BENCH_LR,
                        channels_last=channels_last)
    images = _images(batch, crop, crop, dev, gen)
    labels = blocky_labels(batch, crop, crop, num_classes, gen).to(dev)
    return _train_step(stage, {"image": images, "label": labels}, dev, bf16)


def irn_train(backbone: str = "resnet18", crop: int = 512, batch: int = 2, radius: int = 10, iters: int = 3,
              warmup: int = 1, device: str | torch.device = "cpu", bf16: bool = False, channels_last: bool = False,
              min_time: float = 0.0, num_classes: int = 20) -> BenchResult:
    """One IRN step as :class:`rpnet_pl.stages.refine.RefineStage` takes it: boundary and
    displacement branches on the frozen backbone, affinity + displacement losses at ``radius``."""
    dev = resolve_device(str(device))
    def build() -> Step:
        return irn_step(backbone, crop, batch, radius, dev, bf16, channels_last, num_classes)

    return _result("IRN (boundary + displacement)", "train", backbone, f"crop {crop}, radius {radius}", batch, dev,
                   bf16, measure(build, dev, iters, warmup, min_time), channels_last)


def pseudo_mask_step(backbone: str, image_size: tuple[int, int], channels: int, radius: int, beta: float,
                     exp_times: int, dev: torch.device, bf16: bool = False, channels_last: bool = False,
                     cams: torch.Tensor | None = None) -> Step:
    """The pseudo mask of one random (H, W) image from ``channels`` random stride-4 CAMs (or ``cams``)."""
    from rpnet_pl.ops.params import RandomWalkParams
    from rpnet_pl.steps.pseudo_masks import pseudo_mask

    h, w = image_size
    h4, w4 = (h - 1) // 4 + 1, (w - 1) // 4 + 1
    gen = torch.Generator().manual_seed(0)
    stage = _eval_stage(build_stage("refine", backbone=backbone, pretrained=False, channels_last=channels_last), dev)
    params = RandomWalkParams(radius=radius, beta=beta, exp_times=exp_times)
    image = _images(1, h, w, dev, gen)
    cam = cams if cams is not None else torch.rand(channels, h4, w4, generator=gen)
    record = {"cam": cam.to(dev), "keys": torch.arange(1, cam.shape[0] + 1)}

    def step() -> None:
        with torch.no_grad(), _autocast(dev, bf16):
            pseudo_mask(stage.model, image, record, params)

    return step


def pseudo_mask_inference(backbone: str = "resnet18", image_size: tuple[int, int] = (375, 500), channels: int = 2,
                          radius: int = RANDOM_WALK.radius, beta: float = RANDOM_WALK.beta,
                          exp_times: int = RANDOM_WALK.exp_times, iters: int = 3, warmup: int = 1,
                          device: str | torch.device = "cpu", bf16: bool = False, channels_last: bool = False,
                          min_time: float = 0.0) -> BenchResult:
    """Pseudo mask of one (H, W) image: flip-averaged boundary map (padded to 512 as IRN), random
    walk of ``channels`` stride-4 CAMs (``2 ** exp_times`` steps, radius 5), upsampling and argmax."""
    dev = resolve_device(str(device))
    h, w = image_size
    h4, w4 = (h - 1) // 4 + 1, (w - 1) // 4 + 1

    def build() -> Step:
        return pseudo_mask_step(backbone, image_size, channels, radius, beta, exp_times, dev, bf16, channels_last)

    return _result("pseudo masks (boundary + random walk)", "inference", backbone,
                   f"{w}x{h} (map {w4}x{h4}), {channels} classes, {2 ** exp_times} RW steps", 1, dev, bf16,
                   measure(build, dev, iters, warmup, min_time), channels_last)


def deeplab_train_step(backbone: str, crop: int, batch: int, head: str, output_stride: int, dev: torch.device,
                       bf16: bool = False, channels_last: bool = False, num_classes: int = 21) -> Step:
    """One optimiser step of the segmenter on ``batch`` random crops with blocky labels."""

    gen = torch.Generator().manual_seed(0)
    stage = build_stage("segmenter", head=head, backbone=backbone, pretrained=False, num_classes=num_classes,  # type: ignore[arg-type]
                           output_stride=output_stride, lr=BENCH_LR, channels_last=channels_last)
    images = _images(batch, crop, crop, dev, gen)
    labels = blocky_labels(batch, crop, crop, num_classes - 1, gen).to(dev)
    return _train_step(stage, {"image": images, "label": labels}, dev, bf16)


def deeplab_train(backbone: str = "resnet18", crop: int = 321, batch: int = 2, head: str = "largefov",
                  output_stride: int = 8, iters: int = 3, warmup: int = 1, device: str | torch.device = "cpu",
                  bf16: bool = False, channels_last: bool = False, min_time: float = 0.0, num_classes: int = 21) -> BenchResult:
    """One SGD step (momentum 0.9) of DeepLab on ``batch`` crops: logits upsampled to the crop,
    cross-entropy ignoring 255, as :class:`rpnet_pl.stages.segmenter.SegmenterStage`."""
    dev = resolve_device(str(device))

    def build() -> Step:
        return deeplab_train_step(backbone, crop, batch, head, output_stride, dev, bf16, channels_last,
                                  num_classes)

    name = "DeepLab-LargeFOV" if head == "largefov" else "DeepLab v2 ASPP"
    return _result(name, "train", backbone, f"crop {crop}, OS {output_stride}", batch, dev, bf16,
                   measure(build, dev, iters, warmup, min_time), channels_last)


def deeplab_infer_step(backbone: str, image_size: tuple[int, int], scales: Sequence[float], head: str,
                       output_stride: int, dev: torch.device, bf16: bool = False, channels_last: bool = False,
                       num_classes: int = 21, flip: bool = True) -> Step:
    """Multi-scale (+ flip) softmax and argmax of one random (H, W) image (no CRF)."""
    from rpnet_pl.stages.segmenter import multiscale_probs

    gen = torch.Generator().manual_seed(0)
    stage = _eval_stage(build_stage("segmenter", head=head, backbone=backbone, pretrained=False,  # type: ignore[arg-type]
                                       num_classes=num_classes, output_stride=output_stride,
                                       channels_last=channels_last), dev)
    image = _images(1, *image_size, dev, gen)

    def step() -> None:
        with torch.no_grad(), _autocast(dev, bf16):
            multiscale_probs(stage.model, image, tuple(scales), flip).argmax(0)

    return step


def deeplab_inference(backbone: str = "resnet18", image_size: tuple[int, int] = (375, 500),
                      scales: Sequence[float] = (1.0, 0.75, 1.25), head: str = "largefov", output_stride: int = 8,
                      iters: int = 3, warmup: int = 1, device: str | torch.device = "cpu", bf16: bool = False, channels_last: bool = False,
                      min_time: float = 0.0, num_classes: int = 21) -> BenchResult:
    """Multi-scale + flip softmax and argmax of one (H, W) image (no CRF)."""
    dev = resolve_device(str(device))
    h, w = image_size

    def build() -> Step:
        return deeplab_infer_step(backbone, image_size, scales, head, output_stride, dev, bf16, channels_last,
                                  num_classes)

    name = "DeepLab-LargeFOV" if head == "largefov" else "DeepLab v2 ASPP"
    return _result(name, "inference", backbone, f"{w}x{h}, scales {_scales_text(scales)} + flip, OS {output_stride}",
                   1, dev, bf16, measure(build, dev, iters, warmup, min_time), channels_last)


def run_case(case: str, profile: Profile, device: str | torch.device, bf16: bool = False,
             channels_last: bool = False) -> BenchResult:
    """Run one of :data:`CASES` with ``profile``'s sizes on ``device``."""
    p = profile
    common = dict(iters=p.iters, warmup=p.warmup, device=device, bf16=bf16, min_time=p.min_time,
                  channels_last=channels_last)
    if case in ("classifier-rpnet", "classifier-cam"):
        return classifier_train(case.split("-")[1], p.classifier_backbone, p.classifier_crop, p.classifier_batch,
                                p.group_size, **common)
    if case == "cam":
        return cam_inference("rpnet", p.classifier_backbone, p.image_size, p.cam_scales, **common)
    if case == "irn":
        return irn_train(p.irn_backbone, p.irn_crop, p.irn_batch, **common)
    if case == "pseudo-mask":
        return pseudo_mask_inference(p.irn_backbone, p.image_size, p.cam_channels, **common)
    if case == "deeplab-train":
        return deeplab_train(p.deeplab_backbone, p.deeplab_crop, p.deeplab_batch, **common)
    if case == "deeplab-infer":
        return deeplab_inference(p.deeplab_backbone, p.image_size, p.seg_scales, **common)
    raise ConfigError(f"unknown bench case {case!r} ({', '.join(CASES)})")


def step_ratios(results: Sequence[BenchResult]) -> dict[str, float]:
    """Seconds of one RPNet training step over one CAM-baseline step (same batch, same run), per
    precision / layout label (``fp32``, ``fp32, channels_last``) that has both cases."""
    by: dict[str, dict[str, BenchResult]] = {}
    for r in results:
        if r.phase == "train":
            by.setdefault(r.precision, {})[r.stage] = r
    ratios = {}
    for label, cases in by.items():
        rp, cam = cases.get("classifier (RPNet)"), cases.get("classifier (CAM baseline)")
        if rp is not None and cam is not None and cam.seconds_per_iter > 0:
            ratios[label] = rp.seconds_per_iter / cam.seconds_per_iter
    return ratios


def step_ratio(results: Sequence[BenchResult]) -> float | None:
    """The first of :func:`step_ratios`, or None when no layout has both cases."""
    return next(iter(step_ratios(results).values()), None)


def ratio_lines(results: Sequence[BenchResult]) -> list[str]:
    """One line per layout: ``RPNet / CAM-baseline training step (same run, same batch[, label]): Nx``."""
    ratios = step_ratios(results)
    return [f"RPNet / CAM-baseline training step (same run, same batch{', ' + label if len(ratios) > 1 else ''}): "
            f"**{ratio:.1f}x**" for label, ratio in ratios.items()]


def step_breakdown(method: str = "rpnet", backbone: str = "resnet18", crop: int = 512, batch: int = 1,
                   group_size: int = 2, device: str | torch.device = "cpu", bf16: bool = False, warmup: int = 1,
                   num_classes: int = 20, channels_last: bool = False) -> list[tuple[str, float]]:
    """Where one classifier training step spends its time: ``torch.profiler`` over one step (after
    ``warmup``), summed per named scope (``rpnet/...`` or ``cam/...`` inside the model; ``step/...``
    for forward, backward and the optimiser). Returns (scope, milliseconds) in first-seen order;
    scopes nest (``step/forward`` contains the model's scopes). On a GPU every scope synchronises
    the device at its ends, so each is wall-clock time of the GPU work in it (the step is slower
    than unprofiled; compare the shares)."""
    from torch.profiler import ProfilerActivity, profile

    from rpnet_pl.models.rpnet import timed_scope

    dev = resolve_device(str(device))
    sync = dev.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    stage = build_stage("classifier", method=method, backbone=backbone, pretrained=False, num_classes=num_classes,  # type: ignore[arg-type]
                            lr=BENCH_LR, channels_last=channels_last)
    stage.setup("fit")
    stage.to(dev).train()
    stage.model.sync_scopes = sync
    opt, sched = stage.make_optimizer(max_steps=10 ** 6)
    n = batch * group_size
    images = _images(n, crop, crop, dev, gen).reshape(batch, group_size, 3, crop, crop)
    labels = _multi_hot(n, num_classes, gen).to(dev).reshape(batch, group_size, num_classes)
    batch_ = {"images": images, "labels": labels}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with timed_scope("step/forward", sync), _autocast(dev, bf16):
            loss = stage.training_losses(batch_)["loss"]
        with timed_scope("step/backward", sync):
            loss.backward()
        with timed_scope("step/optimizer", sync):
            opt.step()
            sched.step()

    for _ in range(max(0, warmup)):
        step()
    _sync(dev)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        _sync(dev)
    rows: dict[str, float] = {}
    for ev in prof.key_averages():
        if ev.key.startswith(("step/", "rpnet/", "cam/")):
            rows[ev.key] = rows.get(ev.key, 0.0) + ev.cpu_time_total / 1000.0
    order = ["step/forward", "rpnet/backbone scale 1", "rpnet/head scale 1", "rpnet/backbone extra scales",
             "rpnet/head extra scales", "rpnet/losses", "cam/backbone", "cam/head", "step/backward", "step/optimizer"]
    return [(k, rows[k]) for k in order if k in rows] + [(k, v) for k, v in rows.items() if k not in order]


def format_breakdown(rows: Sequence[tuple[str, float]], title: str) -> str:
    """A markdown table of :func:`step_breakdown`'s rows with each scope's share of the step."""
    total = sum(ms for k, ms in rows if k.startswith("step/")) or 1.0
    lines = [f"{title}", "", "| scope | ms | share of the step |", "|---|---:|---:|"]
    lines += [f"| {k} | {ms:.0f} | {100 * ms / total:.0f} % |" for k, ms in rows]
    return "\n".join(lines)


def get_profile(name: str, iters: int | None = None, warmup: int | None = None, backbone: str | None = None,
                **sizes: object) -> Profile:
    """A copy of :data:`PROFILES` ``[name]`` with the given overrides (``backbone`` sets all three;
    ``sizes`` are other :class:`Profile` fields, e.g. ``classifier_crop=64``)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown bench profile {name!r} ({', '.join(PROFILES)})")
    changes: dict[str, object] = {k: v for k, v in sizes.items() if v is not None}
    if iters is not None:
        changes["iters"] = iters
    if warmup is not None:
        changes["warmup"] = warmup
    if backbone:
        changes.update(classifier_backbone=backbone, irn_backbone=backbone, deeplab_backbone=backbone)
    return replace(PROFILES[name], **changes)


def run_profile(profile: Profile, device: str | torch.device = "auto", bf16: bool = False,
                cases: Sequence[str] | None = None,
                on_result: Callable[[BenchResult], None] | None = None,
                channels_last: bool = False) -> list[BenchResult]:
    """Every case of ``cases`` (default :data:`CASES`) in order; ``on_result`` is called after each."""
    results = []
    todo = list(cases or CASES)
    if "classifier-rpnet" in todo and "classifier-cam" in todo:  # the pair is timed alternately
        p = profile
        for layout in ((True,) if channels_last else p.pair_layouts):
            pair = classifier_pair(p.classifier_backbone, p.classifier_crop, p.classifier_batch, p.group_size,
                                   p.iters, p.warmup, device, bf16, layout, p.min_time)
            for res in pair:
                results.append(res)
                if on_result is not None:
                    on_result(res)
        todo = [c for c in todo if c not in ("classifier-rpnet", "classifier-cam")]
    for case in todo:
        res = run_case(case, profile, device, bf16, channels_last)
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


# =================================================================================================
# Report
# =================================================================================================
@dataclass
class MachineInfo:
    """What the numbers were measured on."""

    cpu: str
    cores: int
    usable_cores: int
    torch_threads: int
    ram_gib: float
    torch: str
    python: str
    gpus: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line naming the machine."""
        cpu = (f"{self.cpu}, {self.cores} logical cores ({self.usable_cores} usable, torch threads "
               f"{self.torch_threads}), {self.ram_gib:.1f} GiB RAM")
        gpu = "; GPU: " + ", ".join(self.gpus) if self.gpus else "; no CUDA GPU"
        return f"{cpu}{gpu}; torch {self.torch}, Python {self.python}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return 0.0


def machine_info() -> MachineInfo:
    """CPU model (``/proc/cpuinfo``), cores, RAM, CUDA GPUs (name and memory), torch version."""
    usable = usable_cpus()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append(f"{props.name} ({props.total_memory / 2 ** 30:.1f} GiB)")
    return MachineInfo(cpu=_cpu_model(), cores=os.cpu_count() or 1, usable_cores=usable,
                       torch_threads=torch.get_num_threads(), ram_gib=_ram_gib(), torch=torch.__version__,
                       python=platform.python_version(), gpus=gpus)


def markdown_table(results: Sequence[BenchResult]) -> str:
    """The results as a markdown table (stage, phase, backbone, input, batch, images/s, peak MiB)."""
    lines = ["| stage | phase | backbone | input | batch | images/s | peak memory (MiB) |",
             "|---|---|---|---|---:|---:|---:|"]
    mixed = len({r.precision for r in results}) > 1  # e.g. the CPU profile's pair in both layouts
    for r in results:
        ips = f"{r.images_per_s:.3g}" if r.images_per_s < 100 else f"{r.images_per_s:.0f}"
        input_ = f"{r.input} ({r.precision})" if mixed else r.input
        lines.append(f"| {r.stage} | {r.phase} | {r.backbone} | {input_} | {r.batch} | {ips} | {r.peak_mib:.0f} |")
    return "\n".join(lines)


BENCH_HEADER = """# Benchmarks

`make bench` (or `python tools/bench.py`) measures every stage of the pipeline, training and inference, on
synthetic random tensors (no dataset, random weights), and appends one dated section per run here.

* **Cases.** Classifier training step (RPNet and the IRN CAM baseline; a step is `batch` groups of
  `k` images, RPNet including its no-grad enhanced scales 0.5/1.5/2), multi-scale + flip CAM
  inference on a 500x375 image, IRN training step (affinity + displacement losses, frozen
  backbone), pseudo-mask inference (flip-averaged boundary map, sparse random walk of 2^8 steps on
  the 125x94 stride-4 map, argmax), DeepLab-LargeFOV training step and multi-scale + flip
  inference. Training steps include the backward pass and the SGD update.
* **Throughput** is images per step over the median step time (after warm-up steps); `batch` is
  images per step (inference: one image, all its scales and flips). Each step is timed on
  `torch.utils.benchmark`'s clock with the device synchronised before and after it, and the
  median is that of its `Measurement` over the timed steps.
* **Peak memory** is the peak over the case (model, optimiser state, inputs, every step) above what
  was in use before it: `torch.cuda.max_memory_allocated` on a GPU; on a CPU the kernel's peak
  resident set size (`VmHWM`, reset per case through `/proc/self/clear_refs`), or the growth of
  `ru_maxrss` where that reset is unavailable (a lower bound).
* **Profiles.** `cpu`: ResNet-18 for every stage at the paper's crop sizes (classifier 512, IRN 512,
  DeepLab 321) with small batches, 3 timed steps (about 2 minutes on 2 cores). `gpu`: the paper's
  networks and batch sizes: classifier ResNeXt-50, 8 groups of 2 at 512; IRN ResNet-50, batch 32 at
  512; DeepLab-LargeFOV ResNet-50 (output stride 8), batch 10 at 321; at least 10 timed steps and
  0.3 s per case. `--bf16` runs the networks under bfloat16 autocast.

Run: `make bench` (the CPU profile, then the GPU profile when `torch.cuda.is_available()`), or
`python tools/bench.py --profile cpu|gpu [--device cpu|cuda] [--iters N] [--bf16] [--out docs/benchmarks.md]`.
Speeds depend on the machine and its load; compare numbers only within one section.

GPU numbers are pending a run on a GPU machine (`make bench` there writes them below).
"""


def section_heading(profile: Profile, device: str) -> str:
    """The heading of a profile's section (one per profile and device: a new run replaces it)."""
    return f"## `make bench`: profile `{profile.name}` on {device}"


def format_section(results: Sequence[BenchResult], profile: Profile, command: str,
                   machine: MachineInfo | None = None, allocator: str | None = None) -> str:
    """A markdown section: machine, command, settings (``allocator``: how the host allocator
    treated freed memory, see :mod:`rpnet_pl.utils.host_memory`) and the table."""
    machine = machine or machine_info()
    device = results[0].device if results else "?"
    precision = " / ".join(dict.fromkeys(r.precision for r in results)) if results else "fp32"
    memory = results[0].memory_method if results else "?"
    lines = [
        section_heading(profile, device),
        "",
        f"- Machine: {machine.describe()}",
        f"- Command: `{command}`",
        f"- Precision: {precision}; timing: median of >= {profile.iters} step(s) after {profile.warmup} warm-up "
        f"step(s); peak memory: {memory}",
        *([f"- Host allocator: {allocator}"] if allocator else []),
        "",
        markdown_table(results),
        "",
    ]
    for line in ratio_lines(results):
        lines += [line, ""]
    return "\n".join(lines)


def write_section(path: str | os.PathLike, section: str, header: str = BENCH_HEADER) -> Path:
    """Put ``section`` into the markdown file at ``path`` (created with ``header`` when missing): it
    replaces the section with the same ``## `` heading, up to the next ``## `` heading, or is appended
    when there is none (the file holds the current figures, git the earlier ones). Atomic: the new
    text is written to a temporary file and renamed."""
    from rpnet_pl.utils.io import atomic_path

    path = Path(path)
    old = path.read_text() if path.is_file() else header
    heading = section.split("\n", 1)[0]
    lines = old.rstrip("\n").split("\n")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before, after = "\n".join(lines[:start]), "\n".join(lines[end:])
        text = before.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + ("\n" + after + "\n" if after else "")
    else:
        text = old.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


# =================================================================================================
# Command line
# =================================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/bench.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="throughput (images/s) and peak memory per stage, training and inference "
                                "-> its section of docs/benchmarks.md (replaced by the next run of the same profile "
                                "and device)")
    p.add_argument("--system-malloc", action="store_true", help="keep glibc's default treatment of freed memory "
                   "(rpnet_pl.utils.host_memory; by default freed host memory is kept for reuse, as `rpnet` does)")
    p.add_argument("--profile", choices=("cpu", "gpu", "auto"), default="auto",
                   help="cpu: ResNet-18, paper crops, small batches; gpu: the paper's backbones and batch sizes; "
                   "auto: gpu when CUDA is available")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: the profile's device")
    p.add_argument("--iters", type=int, default=None, help="timed steps per case (default: the profile's)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default: the profile's)")
    p.add_argument("--backbone", help="one backbone for every stage instead of the profile's")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (what the trainers' precision: "
                   "bf16-mixed does)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights (what model.channels_last does) for "
                   "every case (default: contiguous; the cpu profile times the classifier pair in both layouts)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms for each "
                   "convolution shape (torch.backends.cudnn.benchmark; Lightning's Trainer(benchmark=True)); off by "
                   "default, as in training")
    p.add_argument("--breakdown", action="store_true", help="also profile one RPNet and one baseline training "
                   "step (torch.profiler) and print where the time goes")
    p.add_argument("--cases", nargs="+", choices=CASES, help="only these cases")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default="docs/benchmarks.md", help="markdown file the section is written to")
    out.add_argument("--no-write", dest="out", action="store_const", const=None, help="print only")
    return p


def bench(args: argparse.Namespace, kept_freed_memory: bool = False) -> None:
    """Run the profile of the parsed command line: prints the table and writes its section to ``args.out``."""
    name = args.profile if args.profile != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    profile = get_profile(name, iters=args.iters, warmup=args.warmup, backbone=args.backbone)
    requested = profile.device if args.device == "auto" else args.device
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"profile {name!r} on CUDA, but torch sees no CUDA device (--profile cpu or --device cpu)")
    device = resolve_device(requested)
    command = ["python", "tools/bench.py", *(["--system-malloc"] if args.system_malloc else []), "--profile", name,
               "--device", device.type, "--iters", str(profile.iters), "--warmup", str(profile.warmup)]
    if args.backbone:
        command += ["--backbone", args.backbone]
    command += [flag for flag, on in (("--bf16", args.bf16), ("--channels-last", args.channels_last),
                                      ("--cudnn-benchmark", args.cudnn_benchmark)) if on]
    if args.cases:
        command += ["--cases", *args.cases]
    command += ["--out", str(args.out)] if args.out else ["--no-write"]
    print(f"bench: profile {name} on {device}: {', '.join(args.cases) if args.cases else 'every case'}", flush=True)

    def progress(r: BenchResult) -> None:
        print(f"  {r.stage} / {r.phase}: {r.images_per_s:.3g} images/s, {r.peak_mib:.0f} MiB peak "
              f"({r.iters} timed step(s), {r.seconds_per_iter:.3g} s each)", flush=True)

    cudnn_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)  # Lightning's default (Trainer(benchmark=None)): off
    try:
        results = run_profile(profile, device, bf16=args.bf16, cases=args.cases, on_result=progress,
                              channels_last=args.channels_last)
    finally:
        torch.backends.cudnn.benchmark = cudnn_before
    print()
    print(markdown_table(results))
    for line in ratio_lines(results):
        print("\n" + line.replace("**", ""))
    breakdowns = []
    if args.breakdown:
        layout = args.channels_last or profile.pair_layouts[-1]  # the profile's last (CPU: channels-last)
        for method in ("rpnet", "cam"):
            rows = step_breakdown(method, profile.classifier_backbone, profile.classifier_crop,
                                  profile.classifier_batch, profile.group_size, device, args.bf16,
                                  channels_last=layout)
            breakdowns.append(format_breakdown(rows, f"Profile of one {method} training step "
                                                     f"({profile.classifier_backbone}, crop {profile.classifier_crop}, "
                                                     f"{profile.classifier_batch} group(s) of {profile.group_size}, "
                                                     f"{'channels_last' if layout else 'contiguous'}):"))
            print("\n" + breakdowns[-1])
    if args.out:
        allocator = ("freed memory kept for reuse (glibc mallopt, `rpnet_pl.utils.host_memory`)"
                     if kept_freed_memory else "the C library's default")
        section = format_section(results, profile, " ".join(command + (["--breakdown"] if args.breakdown else [])),
                                 allocator=allocator)
        section = "\n\n".join([section.rstrip("\n"), *breakdowns]) + "\n"
        print(f"\nwritten to {write_section(args.out, section)}")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: exit 0, or 2 with one line on a setting this machine cannot run."""
    from rpnet_pl.utils.host_memory import keep_freed_memory

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kept = False if args.system_malloc else keep_freed_memory()
    try:
        bench(args, kept_freed_memory=kept)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "BENCH_HEADER", "BenchResult", "CASES", "MachineInfo", "PROFILES", "PeakMemory", "Profile",
    "blocky_labels", "cam_inference", "cam_step", "classifier_step", "classifier_train", "deeplab_infer_step",
    "deeplab_inference", "deeplab_train", "deeplab_train_step", "format_section", "get_profile", "irn_step",
    "irn_train", "machine_info", "markdown_table", "measure", "pseudo_mask_inference", "pseudo_mask_step",
    "resolve_device", "run_case", "run_profile", "section_heading", "time_alternately", "write_section",
    "build_parser", "bench", "main",
]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
