"""Every stage of the public RPNet / IRN / DeepLab code timed against ours, on the same inputs.

    python scripts/reference_timing.py RPNET_DIR [--irn IRN_DIR] [--deeplab DEEPLAB_DIR]
        [--size cpu|voc] [--device cpu|cuda] [--runs 3] [--warmup 1] [--stages classifier,cam,...]
        [--json OUT.json] [--markdown OUT.md]

``RPNET_DIR``: a clone of liuweide01/RPNet-Weakly-Supervised-Segmentation as published; ``IRN_DIR``:
of jiwoon-ahn/irn (without it, IRN's stages use the copy of IRN's files that the RPNet repository
ships); ``DEEPLAB_DIR``: of kazuto1011/deeplab-pytorch, the DeepLab recipe where the RPNet repository
has none (its rows are left out without it). Nothing of that code is copied into this project: its
modules are imported from the given folders, one repository at a time, and its networks, path
index, random walk and CRF are called as they are. What the reference does around them is written
here from its ``step/*.py`` and ``main.py``, op for op (its CAM resizing, argmaxes, IRN and DeepLab
losses), or is ours where the parity cases hold ours equal to it (``train_cam.py``'s Ls: our
``self_supervised_loss``; ``make_cam.py``'s max-normalisation: our ``max_normalise``).

Run-time patches, so that the reference runs on a CPU and offline (its files are not changed):

* without CUDA, ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return their object unchanged
  (``misc/indexing.py`` moves its path indices and its dense affinity to the GPU);
* no ImageNet download: every backbone constructor of ``net/resnet50.py`` and ``net/resnext.py``
  is called with ``pretrained=False`` (random weights on both sides; the cost does not depend on
  them).

Each row times a reference step and ours on the same inputs, alternating in this one process
(reference, ours, then ours, reference, ...: ``tools/bench.py``'s ``time_alternately``), after ``warmup``
untimed calls each; min and median seconds
over ``runs`` calls, and the ratio reference median / ours median (> 1: ours is faster):

* ``classifier``: one training step: RPNet's ``Net_CAM`` on a pair (its enhanced scales 0.5 / 1.5 / 2
  under no_grad), ``step/train_cam.py``'s loss, backward, ``PolyOptimizer`` step | ours: RPNet's
  ``ClassifierStage`` on one group of two, its losses and optimiser (ResNeXt-101 32x8d, as the
  reference hard-codes).
* ``cam``: one image's CAMs: ``CAM`` on the image and its flip at scales 1 / 0.5 / 1.5 / 2, then
  ``step/make_cam.py``'s strided and high-res sums and max-normalisation | ``ClassifierStage.cams``.
* ``ir_labels``: one image's IR label: ``misc.imutils.crf_inference_label`` on the fg- and
  bg-thresholded CAMs and ``step/cam_to_ir_label.py``'s combination | ``ops.cam.cam_to_ir_label``.
* ``irn``: one IRN training step (crop, radius 10): ``AffinityDisplacementLoss`` and
  ``step/train_irn.py``'s loss and 3-group ``PolyOptimizer`` | ``RefineStage``'s step (ResNet-50).
  The reference's pair labels come from its data loader workers, so they are made outside its
  timed step; ours are made inside it.
* ``pseudo_masks``: one image: ``EdgeDisplacement`` on the image and its flip, then
  ``misc.indexing.propagate_to_edge`` and ``step/make_sem_seg_labels.py``'s upsampling and argmax |
  ``RefineStage.pseudo_mask``.
* ``deeplab_train`` / ``deeplab_infer``: kazuto1011's ``DeepLabV2_ResNet101_MSC`` (scales 1 / 0.5 /
  0.75, max over them; frozen BatchNorm; its per-scale cross-entropy on PIL-resized labels, SGD
  with 3 groups) | ours, DeepLab v2 ASPP on ResNet-101 at output stride 8 (training at one scale,
  as our recipe; inference at scales 1 / 0.5 / 0.75 without flips, as the reference).

No file is read or written by either side: the per-image rows time the computation of one output.
``--size cpu`` (default) shrinks the inputs so that a 2-core CPU finishes in minutes; ``--size voc``
is the recipes' (crop 512, 500x375 images); ``--size tiny`` with ``--ours-backbone resnet18`` is
for the test that runs this script on a stand-in of the reference's interfaces.
``--allocator rpnet`` runs both sides with the host-memory setting the ``rpnet`` command applies
(``rpnet_pl.utils.host_memory.keep_freed_memory``); the default is the C library's, as a plain script of
the reference gets.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
for folder in ("src", "tools"):  # the package of this checkout, and the bench beside it
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import bench  # noqa: E402
from rpnet_pl.models.rpnet import self_supervised_loss  # noqa: E402
from rpnet_pl.ops.cam import max_normalise  # noqa: E402
from rpnet_pl.steps.cam_inference import strided_size, strided_up_size  # noqa: E402

#: The reference repositories' top-level packages: dropped from ``sys.modules`` between repositories.
REFERENCE_PACKAGES = ("net", "misc", "step", "voc12", "libs")
STAGES = ("classifier", "cam", "ir_labels", "irn", "pseudo_masks", "deeplab_train", "deeplab_infer")
Step = Callable[[], Any]


@dataclass(frozen=True)
class Sizes:
    """Input sizes of one ``--size`` profile."""

    crop: int  # classifier and IRN training crops
    image: tuple[int, int]  # (H, W) of the per-image rows
    rw_image: tuple[int, int]  # (H, W) of the random walk row (the reference's is dense: O((HW/16)^2) memory)
    deeplab_crop: int
    deeplab_batch: int
    irn_batch: int
    #: our side's backbone for every row instead of the reference's (a quick look, the script's test)
    ours_backbone: str | None = None
    pairs: int = 1  # the classifier's batch: image pairs (the reference) = groups of two (ours)

    def ours(self, backbone: str) -> str:
        return self.ours_backbone or backbone


SIZES = {
    "tiny": Sizes(crop=80, image=(40, 48), rw_image=(40, 48), deeplab_crop=41, deeplab_batch=1, irn_batch=1),
    "cpu": Sizes(crop=256, image=(188, 250), rw_image=(188, 250), deeplab_crop=161, deeplab_batch=2, irn_batch=2),
    "voc": Sizes(crop=512, image=(375, 500), rw_image=(375, 500), deeplab_crop=321, deeplab_batch=5, irn_batch=32),
}


@dataclass
class Row:
    stage: str
    input: str
    reference: list[float]
    ours: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.reference) / statistics.median(self.ours)


# -- the reference, imported from its folder -----------------------------------------------------
def _force_no_download(module: ModuleType) -> None:
    """Every function of ``module`` with a ``pretrained`` argument is called with ``pretrained=False``."""
    for name, fn in list(vars(module).items()):
        if inspect.isfunction(fn) and "pretrained" in inspect.signature(fn).parameters:
            @functools.wraps(fn)
            def offline(*args: Any, __fn: Callable = fn, **kwargs: Any) -> Any:
                bound = inspect.signature(__fn).bind(*args, **kwargs)
                bound.arguments["pretrained"] = False  # given by keyword or position
                return __fn(*bound.args, **bound.kwargs)

            setattr(module, name, offline)


@contextlib.contextmanager
def cuda_as_no_op() -> Iterator[None]:
    """``.cuda()`` returns its tensor or module unchanged while no CUDA device is present."""
    if torch.cuda.is_available():
        yield
        return
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda  # type: ignore[method-assign]


def import_reference(repo: Path, *names: str) -> list[ModuleType]:
    """Import ``names`` (``net.resnet50_cam``, ...) from the repository at ``repo``, after dropping
    whatever an earlier repository's packages left in ``sys.modules``; backbones never download."""
    if not repo.is_dir():
        raise SystemExit(f"error: {repo}: not a folder (a clone of the reference code)")
    for name in list(sys.modules):
        if name.split(".")[0] in REFERENCE_PACKAGES:
            del sys.modules[name]
    sys.path.insert(0, str(repo))
    try:
        for backbone in ("net.resnet50", "net.resnext"):
            if (repo / (backbone.replace(".", "/") + ".py")).is_file():
                _force_no_download(importlib.import_module(backbone))
        out = []
        for name in names:
            try:
                out.append(importlib.import_module(name))
            except ImportError as exc:
                raise SystemExit(f"error: {repo}: cannot import {name} ({exc})") from None
        return out
    finally:
        sys.path.remove(str(repo))


# -- timing -----------------------------------------------------------------------------------------
def time_pair(reference: Step, ours: Step, device: torch.device, runs: int,
              warmup: int) -> tuple[list[float], list[float]]:
    """Per-call seconds of both, after ``warmup`` untimed calls each, timed alternately."""
    for _ in range(warmup):
        reference()
        ours()
    times = bench.time_alternately({"reference": reference, "ours": ours}, device, iters=runs)
    return times["reference"], times["ours"]


def _images(n: int, h: int, w: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(device)


def _multi_hot(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 20, generator=gen) < 0.1).float()
    labels[:, 0] = 1.0
    return labels


# -- the rows ---------------------------------------------------------------------------------------
def classifier_row(rpnet: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    (cam_net, torchutils) = import_reference(rpnet, "net.resnet50_cam", "misc.torchutils")
    model = cam_net.Net_CAM().to(device)
    model.train()
    groups = model.trainable_parameters()
    opt = torchutils.PolyOptimizer([{"params": groups[0], "lr": bench.BENCH_LR, "weight_decay": 1e-4},
                                    {"params": groups[1], "lr": 10 * bench.BENCH_LR, "weight_decay": 1e-4}],
                                   lr=bench.BENCH_LR, weight_decay=1e-4, max_step=10 ** 6)
    c, n = sizes.crop, sizes.pairs
    img, ref = _images(n, c, c, device, 0), _images(n, c, c, device, 1)
    label, label_ref = _multi_hot(n, 0).to(device), _multi_hot(n, 1).to(device)

    def reference() -> None:
        x, y, x_cam, y_cam, cam_x, cam_y = model(img, ref)
        lc = F.multilabel_soft_margin_loss(x, label) + F.multilabel_soft_margin_loss(y, label_ref)
        # train_cam.py's Ls on both images: ours, which the rpnet_head parity cases hold equal to it
        ls = (self_supervised_loss(x_cam, cam_x, label, lam=10.0)
              + self_supervised_loss(y_cam, cam_y, label_ref, lam=10.0))
        opt.zero_grad()
        (lc + ls).backward()
        opt.step()

    ours = bench.classifier_step("rpnet", sizes.ours("resnext101"), c, n, 2, device)
    return reference, ours, f"crop {c}, {n} pair(s), ResNeXt-101 32x8d"


def cam_row(rpnet: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    (cam_net,) = import_reference(rpnet, "net.resnet50_cam")
    model = cam_net.CAM().to(device)
    model.eval()  # as make_cam.py (the reference's train() override returns None and leaves the mode)
    h, w = sizes.image
    image = _images(1, h, w, device)
    scales = (1.0, 0.5, 1.5, 2.0)
    keys = torch.tensor([0, 14])

    def reference() -> None:
        with torch.no_grad():
            outputs = []
            for s in scales:
                x = F.interpolate(image, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
                outputs.append(model(torch.cat([x, x.flip(-1)]), None))
            strided = torch.stack([F.interpolate(o[None], strided_size((h, w), 4), mode="bilinear",
                                                 align_corners=False)[0] for o in outputs]).sum(0)
            high = torch.stack([F.interpolate(o[:, None], strided_up_size((h, w), 16), mode="bilinear",
                                              align_corners=False) for o in outputs]).sum(0)[:, 0, :h, :w]
            max_normalise(strided[keys]), max_normalise(high[keys])  # make_cam.py's (the cam_postprocess parity cases)

    ours = bench.cam_step("rpnet", sizes.ours("resnext101"), (h, w), scales, device)
    return reference, ours, f"{w}x{h}, scales 1/0.5/1.5/2 + flip, 2 classes"


def ir_labels_row(irn: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    from rpnet_pl.ops.cam import cam_to_ir_label
    from rpnet_pl.ops.crf import crf_inference_label
    from rpnet_pl.ops.params import IR_LABELS

    (imutils,) = import_reference(irn, "misc.imutils")
    h, w = sizes.image
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cams = rng.random((2, h, w)).astype(np.float32)
    keys = np.array([0, 14])
    fg, bg = IR_LABELS.fg_threshold, IR_LABELS.bg_threshold

    def reference() -> None:
        ids = np.pad(keys + 1, (1, 0))
        fg_conf = ids[imutils.crf_inference_label(image, np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)),
                                                                         constant_values=fg), 0), n_labels=len(ids))]
        bg_conf = ids[imutils.crf_inference_label(image, np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)),
                                                                         constant_values=bg), 0), n_labels=len(ids))]
        conf = fg_conf.copy()
        conf[fg_conf == 0] = 255
        conf[bg_conf + fg_conf == 0] = 0

    def ours() -> None:
        cam_to_ir_label(cams, keys, image, fg_thres=fg, bg_thres=bg, crf_fn=crf_inference_label)

    return reference, ours, f"{w}x{h}, 2 classes, CRF 10 iterations x 2"


def irn_row(irn: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    irn_net, indexing, torchutils = import_reference(irn, "net.resnet50_irn", "misc.indexing", "misc.torchutils")
    c, b = sizes.crop, sizes.irn_batch
    with cuda_as_no_op():
        path_index = indexing.PathIndex(radius=10, default_size=(c // 4, c // 4))
        model = irn_net.AffinityDisplacementLoss(path_index).to(device)
    model.train()
    groups = model.trainable_parameters()
    lr = bench.BENCH_LR
    mults = (1, 10, 2)  # train_irn.py: edge 1x, displacement 10x (RPNet's copy: its non-local blocks 2x)
    opt = torchutils.PolyOptimizer([{"params": g, "lr": m * lr, "weight_decay": 1e-4} for g, m in zip(groups, mults)],
                                   lr=lr, weight_decay=1e-4, max_step=10 ** 6)
    img = _images(b, c, c, device)
    gen = torch.Generator().manual_seed(0)
    shape = (b,) + tuple(path_index.dst_indices.shape)
    kind = torch.randint(0, 3, shape, generator=gen)  # each pair: background, foreground or negative
    bg_pos, fg_pos, neg = ((kind == k).float().to(device) for k in range(3))

    def reference() -> None:
        pos_aff, neg_aff, dp_fg, dp_bg = model(img, True)
        pos = (torch.sum(bg_pos * pos_aff) / (torch.sum(bg_pos) + 1e-5) / 2
               + torch.sum(fg_pos * pos_aff) / (torch.sum(fg_pos) + 1e-5) / 2)
        neg_loss = torch.sum(neg * neg_aff) / (torch.sum(neg) + 1e-5)
        dp_fg_loss = torch.sum(dp_fg * fg_pos[:, None]) / (2 * torch.sum(fg_pos) + 1e-5)
        dp_bg_loss = torch.sum(dp_bg * bg_pos[:, None]) / (2 * torch.sum(bg_pos) + 1e-5)
        opt.zero_grad()
        ((pos + neg_loss) / 2 + (dp_fg_loss + dp_bg_loss) / 2).backward()
        opt.step()

    ours = bench.irn_step(sizes.ours("resnet50"), c, b, 10, device)
    return reference, ours, f"crop {c}, batch {b}, radius 10, ResNet-50"


def pseudo_masks_row(irn: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    from rpnet_pl.ops.params import RANDOM_WALK

    irn_net, indexing = import_reference(irn, "net.resnet50_irn", "misc.indexing")
    model = irn_net.EdgeDisplacement().to(device)
    model.eval()
    h, w = sizes.rw_image
    h4, w4 = strided_size((h, w), 4)
    image = _images(1, h, w, device)
    cams = torch.rand(2, h4, w4, generator=torch.Generator().manual_seed(0)).to(device)
    keys = np.array([0, 14])

    def reference() -> None:
        with torch.no_grad(), cuda_as_no_op():
            edge, _ = model(torch.cat([image, image.flip(-1)]))
            rw = indexing.propagate_to_edge(cams, edge, beta=RANDOM_WALK.beta, exp_times=RANDOM_WALK.exp_times,
                                            radius=5)
            up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[..., 0, :h, :w]
            up = up / torch.max(up)
            pred = torch.argmax(F.pad(up, (0, 0, 0, 0, 1, 0), value=RANDOM_WALK.bg_threshold), dim=0).cpu().numpy()
            np.pad(keys + 1, (1, 0))[pred]

    ours = bench.pseudo_mask_step(sizes.ours("resnet50"), (h, w), 2, 5, RANDOM_WALK.beta, RANDOM_WALK.exp_times, device,
                                  cams=cams.cpu())
    return reference, ours, f"{w}x{h} (map {w4}x{h4}), 2 classes, {2 ** RANDOM_WALK.exp_times} RW steps"


def _deeplab_reference(deeplab: Path, device: torch.device) -> torch.nn.Module:
    (models,) = import_reference(deeplab, "libs.models")
    model = models.DeepLabV2_ResNet101_MSC(n_classes=21)
    return model.to(device)


def deeplab_train_row(deeplab: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    from PIL import Image

    model = _deeplab_reference(deeplab, device)
    model.train()
    model.base.freeze_bn()
    lr = bench.BENCH_LR
    named = list(model.named_parameters())  # main.py's groups: backbone 1x, ASPP weights 10x, ASPP biases 20x
    backbone = [p for n, p in named if not n.startswith("base.aspp")]
    weights = [p for n, p in named if n.startswith("base.aspp") and n.endswith("weight")]
    biases = [p for n, p in named if n.startswith("base.aspp") and n.endswith("bias")]
    opt = torch.optim.SGD([{"params": backbone, "lr": lr}, {"params": weights, "lr": 10 * lr},
                           {"params": biases, "lr": 20 * lr, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9, weight_decay=5e-4)
    c, b = sizes.deeplab_crop, sizes.deeplab_batch
    images = _images(b, c, c, device)
    labels = bench.blocky_labels(b, c, c, 20, torch.Generator().manual_seed(0))
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)

    def reference() -> None:
        opt.zero_grad()
        loss = 0
        for logit in model(images):
            hh, ww = logit.shape[-2:]
            resized = torch.as_tensor(np.stack([np.asarray(Image.fromarray(lab.float().numpy()).resize(
                (ww, hh), resample=Image.NEAREST)) for lab in labels])).long()
            loss = loss + criterion(logit, resized.to(device))
        loss.backward()
        opt.step()

    ours = bench.deeplab_train_step(sizes.ours("resnet101"), c, b, "aspp", 8, device)
    return reference, ours, f"crop {c}, batch {b}, ResNet-101, OS 8"


def deeplab_infer_row(deeplab: Path, sizes: Sizes, device: torch.device) -> tuple[Step, Step, str]:
    model = _deeplab_reference(deeplab, device)
    model.eval()
    h, w = sizes.image
    image = _images(1, h, w, device)

    def reference() -> None:
        with torch.no_grad():
            logits = F.interpolate(model(image), size=(h, w), mode="bilinear", align_corners=False)
            F.softmax(logits, dim=1)[0].argmax(0)

    ours = bench.deeplab_infer_step(sizes.ours("resnet101"), (h, w), (1.0, 0.5, 0.75), "aspp", 8, device, num_classes=21,
                                    flip=False)
    return reference, ours, f"{w}x{h}, scales 1/0.5/0.75, ResNet-101, OS 8"


ROWS: dict[str, tuple[Callable[..., tuple[Step, Step, str]], str]] = {
    "classifier": (classifier_row, "rpnet"),
    "cam": (cam_row, "rpnet"),
    "ir_labels": (ir_labels_row, "irn"),
    "irn": (irn_row, "irn"),
    "pseudo_masks": (pseudo_masks_row, "irn"),
    "deeplab_train": (deeplab_train_row, "deeplab"),
    "deeplab_infer": (deeplab_infer_row, "deeplab"),
}


# -- the table ----------------------------------------------------------------------------------
def markdown(rows: Sequence[Row], device: str, machine: str) -> str:
    lines = [f"Reference vs ours, one process, alternating, {device} ({machine}); seconds a call, "
             "min / median; ratio = reference median / ours median (> 1: ours faster).", "",
             "| stage | input | reference (s) | ours (s) | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.input} | {min(r.reference):.3f} / {statistics.median(r.reference):.3f} | "
                     f"{min(r.ours):.3f} / {statistics.median(r.ours):.3f} | {r.ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rpnet", type=Path, help="clone of the public RPNet code")
    p.add_argument("--irn", type=Path, help="clone of jiwoon-ahn/irn (default: the RPNet clone's copy of its files)")
    p.add_argument("--deeplab", type=Path, help="clone of kazuto1011/deeplab-pytorch (DeepLab rows)")
    p.add_argument("--size", choices=sorted(SIZES), default="cpu")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    p.add_argument("--pairs", type=int, default=1, help="the classifier row's batch, in image pairs")
    p.add_argument("--ours-backbone", help="our side's backbone in every row (default: the reference's)")
    p.add_argument("--allocator", choices=("default", "rpnet"), default="default",
                   help="host memory: the C library's (default) or the rpnet command's, for both sides")
    p.add_argument("--json", type=Path, help="also write the timings as JSON")
    p.add_argument("--markdown", type=Path, help="also write the table")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in ROWS]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if args.runs < 1 or args.warmup < 0 or args.pairs < 1:
        p.error("--runs and --pairs must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    repos = {"rpnet": args.rpnet, "irn": args.irn or args.rpnet, "deeplab": args.deeplab}
    device = torch.device(args.device)
    sizes = replace(SIZES[args.size], ours_backbone=args.ours_backbone, pairs=args.pairs)
    if args.allocator == "rpnet":
        from rpnet_pl.utils.host_memory import keep_freed_memory

        keep_freed_memory()
    rows: list[Row] = []
    for stage in stages:
        build, repo = ROWS[stage]
        if repos[repo] is None:
            print(f"skip {stage}: no --{repo} clone given", file=sys.stderr)
            continue
        torch.manual_seed(0)
        start = time.time()
        try:
            reference, ours, what = build(repos[repo], sizes, device)
        except AttributeError as exc:  # a clone of another version: a class or function the row calls is absent
            print(f"error: {repos[repo]}: {stage}: the reference code lacks what this row calls ({exc})",
                  file=sys.stderr)
            return 2
        ref_t, our_t = time_pair(reference, ours, device, args.runs, args.warmup)
        if args.ours_backbone:
            what += f"; ours on {args.ours_backbone}"
        rows.append(Row(stage, what, ref_t, our_t))
        print(f"{stage}: reference {statistics.median(ref_t):.3f} s, ours {statistics.median(our_t):.3f} s "
              f"({rows[-1].ratio:.2f}x; {time.time() - start:.0f} s)", flush=True)
        del reference, ours
    if not rows:
        print("error: no stage was timed", file=sys.stderr)
        return 2
    machine = bench.machine_info().describe()
    text = markdown(rows, f"{args.device}, {args.allocator} allocator", machine)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "size": args.size, "machine": machine,
                                         "rows": [{**asdict(r), "ratio": r.ratio} for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
