"""The whole chain trained by the public RPNet code and by ours on the same VOC-layout dataset, from
the same initial weights, seed by seed: CAM seeds, IR labels and pseudo masks side by side.

    python scripts/reference_training.py REF_DIR DATA --out OUT [--seeds 0 1 2] [--sides reference ours]
        [--crop 128] [--blocks 1 1 1 1] [--cam-epochs 5] [--irn-epochs 3] [--markdown TABLE.md]

``REF_DIR``: a clone of liuweide01/RPNet-Weakly-Supervised-Segmentation as published (its
``step/train_cam.py``, ``make_cam.py``, ``cam_to_ir_label.py``, ``train_irn.py``,
``make_sem_seg_labels.py``, ``net/resnet50_cam.py`` and its copy of IRN's ``net/resnet50_irn.py``).
``DATA``: a dataset in the VOC layout (``VOCdevkit/VOC2012`` with ``ImageSets/Segmentation/
train_aug.txt`` and ``train.txt``, ids ``YYYY_NNNNNN`` as VOC's), e.g. ``rpnet data synth``'s.

The reference side runs the public code's own ``run(args)`` of each step, in a process of its own per
seed, with ``run_sample.py``'s arguments. Nothing of it is copied: it is imported from ``REF_DIR``;
run-time patches only (its files are not changed):

* a CPU: ``.cuda()`` is a no-op, ``torch.cuda.device_count()`` is 1, ``cuda.device(i)`` an empty
  context and ``multiprocessing.spawn`` calls its function in the process itself, once per process
  it would start;
* the dataset: ``voc12/cls_labels.npy``, ``voc12/train_aug.txt``, ``voc12/train.txt`` and the
  per-class partner lists ``voc12/list/full/<c + 1>.txt`` are written for ``DATA`` into the working
  folder (the lists hold the integer form of the ids: today's numpy's ``loadtxt`` does not read
  ``2007_000032`` as an integer); ``get_img_path`` reads ``JPEGImages/<id>.jpg``; without ``imageio``
  installed, a stand-in reads and writes with PIL;
* the size, scaled by ``--crop`` / 512 as ours: ``train_cam.py``'s ``resize_long=(320, 640)`` and
  ``crop_size=512``, ``--irn_crop_size`` and ``EdgeDisplacement``'s padding to 512 (ours:
  ``classifier.data.long_side`` / ``crop_size``, ``refine.data.crop_size``, ``pseudo_masks.pad_to``);
* the depth: ResNeXt and ResNet with ``--blocks`` bottlenecks per stage (ResNeXt 32x4d, our
  ``resnext50``; IRN's ResNet-50 strides), on both sides (ours through
  ``rpnet_pl.parity_training.resnet_blocks`` in every step process);
* the initial weights: no ImageNet download. Each seed's networks are built by the reference's own
  constructors under ``torch.manual_seed(seed)`` and saved (``init/classifier.pth``,
  ``init/irn.pth``); both sides start from these files (ours: ``classifier.model.weights``,
  ``refine.model.weights``, read by ``models.reference_weights``).

Ours: ``rpnet pipeline`` of an experiment written here, ``base.yaml`` (the recipe) with only the
sizes, epochs and initial weights above, steps ``classifier cam ir_labels refine pseudo_masks``.

Both sides' outputs are scored by the same code (``rpnet_pl.steps.evaluate``) on the ``train``
split, the reference's ``chainer_eval_set``: its ``eval_cam.py`` and ``eval_sem_seg.py`` read VOC
through chainercv, which is not installed here. The reference's CAM files number their classes from 0
(``keys``, torch tensors), ours from 1: ``read_cam`` reads them as ours. Per side and seed, ``OUT/<side>/seed<k>/result.json``
holds the recipe and the scores; a result is reused only for the same recipe. The table: mean ± std
over the seeds of the CAM seeds' best mIoU, the IR labels' confident-foreground precision and recall,
the pseudo masks' mIoU, and the refinement's change (pseudo masks minus CAM seeds).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import subprocess
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402

SIDES = ("reference", "ours")
REFERENCE_PACKAGES = ("net", "misc", "step", "voc12")
#: the reference's steps, in run_sample.py's order (its eval steps are scored here instead)
REFERENCE_STEPS = ("train_cam", "make_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels")
OUR_STEPS = ("classifier", "cam", "ir_labels", "refine", "pseudo_masks")
EVAL_SPLIT = "train"
RECIPE_CROP = 512  # the reference's crops and IRN's inference padding
RECIPE_LONG_SIDE = (320, 640)  # train_cam.py's resize_long


@dataclass(frozen=True)
class Recipe:
    """``run_sample.py``'s settings that a run here changes (sizes scaled by ``crop / 512``)."""

    crop: int = 128
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    cam_batch: int = 8
    cam_epochs: int = 5
    irn_batch: int = 32
    irn_epochs: int = 3
    #: SGD momentum of both optimisers; None: the reference's own (``PolyOptimizer`` passes its weight
    #: decay, 1e-4, into SGD's momentum slot). 0.9 is a from-scratch switch, set on both sides.
    momentum: float | None = None

    @property
    def long_side(self) -> tuple[int, int]:
        return tuple(round(s * self.crop / RECIPE_CROP) for s in RECIPE_LONG_SIDE)  # type: ignore[return-value]


# -- the dataset as the reference reads it -------------------------------------------------------------
def integer_id(image_id: str) -> int:
    """``2007_000032`` -> 2007000032, the reference's ``load_img_name_list`` form (``decode_int_filename``
    turns it back); any other id is one line naming it."""
    head, _, tail = image_id.partition("_")
    if not (len(head) == 4 and head.isdigit() and tail.isdigit() and len(tail) == 6):
        raise SystemExit(f"error: image id {image_id!r}: the reference reads ids of the form YYYY_NNNNNN only")
    return int(head + tail)


def write_reference_lists(work: Path, data: Path) -> dict[str, Any]:
    """The reference's ``voc12/`` files for ``data`` in ``work``: ``train_aug.txt`` and ``train.txt``
    (integer ids), ``cls_labels.npy`` (integer id -> multi-hot over the foreground classes) and
    ``list/full/<c + 1>.txt`` (the ids of the train_aug images of class c: ``get_ref_img``'s partner
    candidates). Returns the class count and the id lists."""
    from rpnet_pl.data.datasets import build_reader

    readers = {split: build_reader("voc", data, split) for split in ("train_aug", EVAL_SPLIT)}
    voc12 = work / "voc12"
    (voc12 / "list" / "full").mkdir(parents=True, exist_ok=True)
    classes = readers["train_aug"].num_classes - 1
    labels = {}
    for split, reader in readers.items():
        (voc12 / f"{split}.txt").write_text("".join(f"{integer_id(i)}\n" for i in reader.ids))
        labels.update({integer_id(i): reader.multi_hot(i) for i in reader.ids})
    np.save(voc12 / "cls_labels.npy", labels)
    train_aug = readers["train_aug"]
    for c in range(classes):
        ids = [i for i in train_aug.ids if train_aug.multi_hot(i)[c] > 0]
        (voc12 / "list" / "full" / f"{c + 1}.txt").write_text("".join(f"{i}\n" for i in ids))
    return {"classes": classes, "train_aug": list(train_aug.ids), EVAL_SPLIT: list(readers[EVAL_SPLIT].ids)}


# -- run-time patches ----------------------------------------------------------------------------------
def pil_imageio() -> types.ModuleType:
    """A stand-in ``imageio`` (``imread``, ``imwrite``, ``imsave``) on PIL, for a machine without it."""
    from PIL import Image

    module = types.ModuleType("imageio")
    module.imread = lambda path: np.asarray(Image.open(path))  # type: ignore[attr-defined]

    def imwrite(path: str, array: np.ndarray) -> None:
        Image.fromarray(np.asarray(array)).save(path)

    module.imwrite = module.imsave = imwrite  # type: ignore[attr-defined]
    return module


def in_process_spawn(fn: Callable[..., Any], args: tuple = (), nprocs: int = 1, **_: Any) -> None:
    """``torch.multiprocessing.spawn`` without processes: ``fn(i, *args)`` for each process index."""
    for i in range(nprocs):
        fn(i, *args)


@contextlib.contextmanager
def reference_on_cpu(ref: Path, work: Path, recipe: Recipe) -> Iterator[dict[str, types.ModuleType]]:
    """Import the reference's networks and steps from ``ref`` with ``work`` as the working folder (its
    ``voc12/`` files), patched as the module docstring says; yields the modules by name."""
    import torch

    for name in list(sys.modules):
        if name.split(".")[0] in REFERENCE_PACKAGES:
            del sys.modules[name]
    try:
        import imageio  # noqa: F401
    except ImportError:
        sys.modules["imageio"] = pil_imageio()
    cwd = os.getcwd()
    sys.path.insert(0, str(ref))
    os.chdir(work)
    saved = {"tensor": torch.Tensor.cuda, "module": torch.nn.Module.cuda, "count": torch.cuda.device_count}
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.cuda.device_count = lambda: 1
    try:
        modules = {n: importlib.import_module(n) for n in (
            "net.resnext", "net.resnet50", "net.resnet50_cam", "net.resnet50_irn", "voc12.dataloader", "misc.torchutils",
            *(f"step.{s}" for s in REFERENCE_STEPS))}
        patch_reference(modules, recipe)
        yield modules
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved["tensor"], saved["module"]  # type: ignore[method-assign]
        torch.cuda.device_count = saved["count"]
        os.chdir(cwd)
        sys.path.remove(str(ref))


def patch_reference(m: dict[str, types.ModuleType], recipe: Recipe) -> None:
    """The patches of the module docstring, on the imported modules ``m``."""
    resnext, resnet, voc = m["net.resnext"], m["net.resnet50"], m["voc12.dataloader"]
    blocks = list(recipe.blocks)
    resnext.resnext101_32x8d = lambda pretrained=False, **kw: resnext.ResNet(
        resnext.Bottleneck, blocks, groups=32, width_per_group=4)
    resnet.resnet50 = lambda pretrained=False, strides=(2, 2, 2, 2), **kw: resnet.ResNet(
        resnet.Bottleneck, blocks, strides=strides)

    def jpeg_path(name: Any, root: str) -> str:
        name = name if isinstance(name, str) else voc.decode_int_filename(name)
        return os.path.join(root, "JPEGImages", name + ".jpg")

    voc.get_img_path = jpeg_path
    scale = recipe.crop / RECIPE_CROP
    classification = voc.VOC12ClassificationDataset

    def scaled_classification(*args: Any, **kwargs: Any) -> Any:  # train_cam.py's hard-coded sizes
        if kwargs.get("resize_long"):
            kwargs["resize_long"] = tuple(round(s * scale) for s in kwargs["resize_long"])
        if kwargs.get("crop_size"):
            kwargs["crop_size"] = round(kwargs["crop_size"] * scale)
        return classification(*args, **kwargs)

    voc.VOC12ClassificationDataset = scaled_classification
    m["step.make_sem_seg_labels"].DataLoader = size_as_one_tensor_loader
    if recipe.momentum is not None:
        poly = m["misc.torchutils"].PolyOptimizer
        built = poly.__init__

        def with_momentum(self: Any, *args: Any, **kwargs: Any) -> None:
            built(self, *args, **kwargs)
            for group in self.param_groups:
                group["momentum"] = recipe.momentum

        poly.__init__ = with_momentum
    no_device = types.SimpleNamespace(device=lambda index: contextlib.nullcontext())
    for step in REFERENCE_STEPS:
        module = m[f"step.{step}"]
        if hasattr(module, "multiprocessing"):
            module.multiprocessing = types.SimpleNamespace(spawn=in_process_spawn)
        if hasattr(module, "cuda"):
            module.cuda = no_device


def size_as_one_tensor_loader(*args: Any, **kwargs: Any) -> Any:
    """``make_sem_seg_labels.py``'s ``DataLoader``, whose batch holds ``size`` as one tensor ``[H, W]``
    rather than ``[tensor([H]), tensor([W])]``: its ``np.asarray(pack['size'])[0]`` is then a scalar,
    as the numpy of its time made of a one-element array (today's refuses it as a slice bound)."""
    from torch.utils.data import DataLoader, default_collate

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        out = default_collate(batch)
        out["size"] = torch_tensor([b["size"] for b in batch][0])
        return out

    return DataLoader(*args, collate_fn=collate, **kwargs)


def torch_tensor(values: Any) -> Any:
    import torch

    return torch.as_tensor(values)


def reference_args(work: Path, data: Path, recipe: Recipe) -> argparse.Namespace:
    """``run_sample.py``'s defaults, with this run's sizes, epochs and folders."""
    voc_root = resolve_voc(data)
    return argparse.Namespace(
        num_workers=0, voc12_root=str(voc_root) + "/", train_list="voc12/train_aug.txt", val_list="voc12/train.txt",
        infer_list="voc12/train_aug.txt", chainer_eval_set=EVAL_SPLIT,
        cam_network="net.resnet50_cam", cam_crop_size=recipe.crop, cam_batch_size=recipe.cam_batch,
        cam_num_epoches=recipe.cam_epochs, cam_learning_rate=0.02, cam_weight_decay=1e-4, cam_eval_thres=0.15,
        cam_scales=(1.0, 0.5, 1.5, 2.0), conf_fg_thres=0.30, conf_bg_thres=0.05,
        irn_network="net.resnet50_irn", irn_crop_size=recipe.crop, irn_batch_size=recipe.irn_batch,
        irn_num_epoches=recipe.irn_epochs, irn_learning_rate=0.1, irn_weight_decay=1e-4,
        beta=10, exp_times=8, ins_seg_bg_thres=0.25, sem_seg_bg_thres=0.25,
        cam_weights_name=str(work / "sess" / "res50_cam.pth"), irn_weights_name=str(work / "sess" / "res50_irn.pth"),
        cam_out_dir=str(work / "result" / "cam"), ir_label_out_dir=str(work / "result" / "ir_label"),
        sem_seg_out_dir=str(work / "result" / "sem_seg"))


def resolve_voc(data: Path) -> Path:
    from rpnet_pl.data.voc import resolve_voc_root

    return Path(resolve_voc_root(data))


def initial_weights(m: dict[str, types.ModuleType], work: Path, recipe: Recipe, seed: int) -> dict[str, Path]:
    """The seed's networks as the reference's constructors build them (``torch.manual_seed(seed)``
    first), saved for both sides: ``init/classifier.pth`` (``Net_CAM``), ``init/irn.pth``
    (``AffinityDisplacementLoss`` with the crop's path index)."""
    import torch

    from misc import indexing  # the reference's, on sys.path inside reference_on_cpu

    out = {"classifier": work / "init" / "classifier.pth", "irn": work / "init" / "irn.pth"}
    out["classifier"].parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(m["net.resnet50_cam"].Net_CAM().state_dict(), out["classifier"])
    torch.manual_seed(seed + 1)
    path_index = indexing.PathIndex(radius=10, default_size=(recipe.crop // 4, recipe.crop // 4))
    torch.save(m["net.resnet50_irn"].AffinityDisplacementLoss(path_index).state_dict(), out["irn"])
    return out


def networks(m: dict[str, types.ModuleType], init: dict[str, Path], recipe: Recipe) -> None:
    """The modules the steps import by ``args.cam_network`` / ``args.irn_network``: the reference's
    networks, where ``Net_CAM`` and ``AffinityDisplacementLoss`` start from ``init``'s weights and
    ``EdgeDisplacement`` pads to the scaled crop (the reference's own modules are left as they are:
    their classes name themselves in ``super()``)."""
    import torch

    cam, irn = m["net.resnet50_cam"], m["net.resnet50_irn"]

    def start_from(build: Callable[..., Any], path: Path) -> Callable[..., Any]:
        def built(*args: Any) -> Any:
            model = build(*args)
            model.load_state_dict(torch.load(path), strict=True)
            return model
        return built

    seeded_cam = types.ModuleType("seeded_resnet50_cam")
    seeded_cam.Net_CAM, seeded_cam.CAM = start_from(cam.Net_CAM, init["classifier"]), cam.CAM
    seeded_irn = types.ModuleType("seeded_resnet50_irn")
    seeded_irn.AffinityDisplacementLoss = start_from(irn.AffinityDisplacementLoss, init["irn"])
    pad = round(RECIPE_CROP * recipe.crop / RECIPE_CROP)
    seeded_irn.EdgeDisplacement = lambda: irn.EdgeDisplacement(crop_size=pad, stride=4)
    sys.modules.update({"seeded_resnet50_cam": seeded_cam, "seeded_resnet50_irn": seeded_irn})


def run_reference_chain(ref: Path, data: Path, work: Path, recipe: Recipe, seed: int) -> None:
    """The reference's five steps for one seed in ``work`` (its ``voc12/`` lists written first)."""
    import torch

    write_reference_lists(work, data)
    args = reference_args(work, data, recipe)
    for d in ("sess", "result/cam", "result/ir_label", "result/sem_seg"):
        (work / d).mkdir(parents=True, exist_ok=True)
    with reference_on_cpu(ref, work, recipe) as m:
        init = initial_weights(m, work, recipe, seed)
        networks(m, init, recipe)
        args.cam_network, args.irn_network = "seeded_resnet50_cam", "seeded_resnet50_irn"
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for step in REFERENCE_STEPS:
            args.num_workers = 1 if step == "cam_to_ir_label" else 0  # processes it spawns / loader workers
            start = time.perf_counter()
            m[f"step.{step}"].run(args)
            print(f"reference seed {seed}: step.{step} {time.perf_counter() - start:.0f} s", flush=True)
        (work / "cam_weights_file").write_text(args.cam_weights_name + ".pth\n")


# -- ours ------------------------------------------------------------------------------------------------
SITECUSTOMIZE = '''"""Written by scripts/reference_training.py: every step process builds ResNets with the blocks of
RPNET_REFERENCE_BLOCKS per stage, as the reference side's."""
import os

if os.environ.get("RPNET_REFERENCE_BLOCKS"):
    from rpnet_pl.parity_training import resnet_blocks

    BLOCKS = resnet_blocks(int(b) for b in os.environ["RPNET_REFERENCE_BLOCKS"].split(","))
    BLOCKS.__enter__()  # kept open for the process's life (a collected context would undo it)
'''


def our_experiment(init: dict[str, Path], data: Path, recipe: Recipe) -> dict[str, Any]:
    """``base.yaml`` with the run's sizes, epochs, initial weights (and momentum, when set), nothing else."""
    experiment = {
        "extends": str(ROOT / "experiments" / "base.yaml"),
        "name": "ours",
        "dataset": {"root": str(data)},
        "classifier": {"model": {"pretrained": False, "weights": str(init["classifier"])},
                       "data": {"crop_size": recipe.crop, "long_side": list(recipe.long_side),
                                "batch_size": recipe.cam_batch, "num_workers": 0},
                       "trainer": {"max_epochs": recipe.cam_epochs}},
        "refine": {"model": {"pretrained": False, "weights": str(init["irn"])},
                   "data": {"crop_size": recipe.crop, "batch_size": recipe.irn_batch, "num_workers": 0},
                   "trainer": {"max_epochs": recipe.irn_epochs}},
        "pseudo_masks": {"pad_to": recipe.crop},
    }
    if recipe.momentum is not None:
        for stage in ("classifier", "refine"):
            experiment[stage]["model"]["momentum"] = recipe.momentum
    return experiment


def run_our_chain(data: Path, work: Path, init: dict[str, Path], recipe: Recipe, seed: int) -> Path:
    """``rpnet pipeline`` of :func:`our_experiment` for one seed; returns the run folder."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    experiment = work / "ours.yaml"
    experiment.write_text(yaml.safe_dump(our_experiment(init, data, recipe), sort_keys=False))
    (work / "site").mkdir(exist_ok=True)
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, RPNET_REFERENCE_BLOCKS=",".join(map(str, recipe.blocks)),
               PYTHONPATH=os.pathsep.join([str(work / "site"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "-m", "rpnet_pl.cli", "pipeline", str(experiment), "--data", str(data),
            "--runs", str(work / "runs"), "--logger", "none", "--seeds", str(seed), "--steps", *OUR_STEPS]
    print("ours seed", seed, ":", " ".join(argv), flush=True)
    subprocess.run(argv, env=env, check=True)
    from rpnet_pl.pipeline.seeds import seed_dir_name

    return work / "runs" / "ours" / seed_dir_name(seed)


# -- scores ----------------------------------------------------------------------------------------------
def score(data: Path, cams: Path, ir_labels: Path, masks: Path) -> dict[str, float]:
    """The same scores for either side's outputs on the ``train`` split: the CAM seeds' best mIoU and
    its background threshold, the IR labels' confident-foreground precision and recall (pixels they
    leave out ignored), the pseudo masks' mIoU; percentages."""
    from rpnet_pl.data.datasets import build_reader
    from rpnet_pl.steps.evaluate import evaluate_cams, evaluate_masks, foreground_precision_recall

    cam = evaluate_cams(cams, data, split=EVAL_SPLIT)
    ids = build_reader("voc", data, EVAL_SPLIT).ids
    ir = evaluate_masks(ir_labels, data, split=EVAL_SPLIT, ignore_pred=True)
    precision, recall = foreground_precision_recall(ir["confusion"])
    pm = evaluate_masks(masks, data, split=EVAL_SPLIT)
    return {"cam_miou": 100 * cam["best_miou"], "cam_threshold": cam["best_threshold"],
            "ir_precision": 100 * precision, "ir_recall": 100 * recall, "pseudo_miou": 100 * pm["miou"],
            "refinement_change": 100 * (pm["miou"] - cam["best_miou"]),
            "flat_cams": 100 * float(np.mean([flat_cams(cams / f"{i}.npy") for i in ids]))}


def flat_cams(path: Path) -> bool:
    """Whether an image's CAMs are flat: each class map zero everywhere or positive everywhere on the
    stride-4 grid (a classifier that has not learnt where its classes are)."""
    from rpnet_pl.utils.io import load_npy

    cams = np.asarray(load_npy(path)["cam"], dtype=np.float32)
    return bool(all((c > 0).all() or (c <= 0).all() for c in cams))


COLUMNS = (("cam_miou", "CAM seeds mIoU"), ("ir_precision", "IR labels fg precision"),
           ("ir_recall", "IR labels fg recall"), ("pseudo_miou", "pseudo masks mIoU"),
           ("refinement_change", "pseudo masks - seeds"), ("flat_cams", "flat CAMs (% of images)"))


def mean_std(values: Sequence[float]) -> str:
    """``m ± s`` (sample standard deviation; a single value alone). A seed without a value (NaN: e.g. a
    precision of IR labels with no confident foreground) is left out and the count said."""
    v = np.asarray(values, dtype=np.float64)
    kept = v[np.isfinite(v)]
    if len(kept) == 0:
        return "-"
    text = f"{kept.mean():.1f}" if len(kept) == 1 else f"{kept.mean():.1f} ± {kept.std(ddof=1):.1f}"
    return text if len(kept) == len(v) else f"{text} (n={len(kept)})"


def table(results: dict[str, list[dict[str, Any]]], dataset: str) -> str:
    """One markdown table: a row per side with its seeds and the mean ± std of each column."""
    lines = ["| set | side | seeds | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for side in SIDES:
        rows = results.get(side) or []
        if not rows:
            continue
        seeds = ", ".join(str(r["seed"]) for r in rows)
        cells = [mean_std([r["scores"][key] for r in rows]) for key, _ in COLUMNS]
        lines.append(f"| {dataset} | {side} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- driver ----------------------------------------------------------------------------------------------
def result_path(out: Path, side: str, seed: int) -> Path:
    return out / side / f"seed{seed}" / "result.json"


def reusable(path: Path, recipe: Recipe, data: Path) -> dict[str, Any] | None:
    """The stored result when it was made with this recipe on this dataset, else None."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    made_with = {**asdict(Recipe()), **stored.get("recipe", {})}  # keys added since: their defaults
    same = json.loads(json.dumps(made_with)) == json.loads(json.dumps(asdict(recipe))) and \
        stored.get("data") == str(data.resolve())
    return stored if same else None


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def side_scores(data: Path, out: Path, side: str, seed: int) -> dict[str, float]:
    """:func:`score` of one side's outputs of one seed (the reference's CAM files renumbered first)."""
    from rpnet_pl.pipeline.registry import output_path
    from rpnet_pl.pipeline.seeds import seed_dir_name

    if side == "reference":
        res = out / "reference" / f"seed{seed}" / "result"
        return score(data, res / "cam", res / "ir_label", res / "sem_seg")  # read_cam renumbers its CAM keys
    run = out / "ours" / f"seed{seed}" / "runs" / "ours" / seed_dir_name(seed)
    return score(data, output_path(run, "cam"), output_path(run, "ir_labels"), output_path(run, "pseudo_masks"))


def one_seed(ref: Path, data: Path, out: Path, recipe: Recipe, seed: int, sides: Sequence[str]) -> dict[str, Any]:
    """Both sides of one seed (the reference's in a child process of its own); their results. A stored
    result of the same recipe is reused, re-scored from its outputs when it lacks a column."""
    ref_work = out / "reference" / f"seed{seed}"
    found = {side: reusable(result_path(out, side, seed), recipe, data) for side in sides}
    init = {"classifier": ref_work / "init" / "classifier.pth", "irn": ref_work / "init" / "irn.pth"}
    common = {"seed": seed, "recipe": asdict(recipe), "data": str(data.resolve())}
    for side in sides:
        if found[side] is not None and not all(key in found[side]["scores"] for key, _ in COLUMNS):
            found[side]["scores"] = side_scores(data, out, side, seed)
            write_json(result_path(out, side, seed), found[side])
    if "reference" in sides and found["reference"] is None:
        ref_work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, __file__, str(ref), str(data), "--out", str(out), "--seeds", str(seed),
                        "--crop", str(recipe.crop), "--blocks", *map(str, recipe.blocks),
                        "--cam-epochs", str(recipe.cam_epochs), "--irn-epochs", str(recipe.irn_epochs),
                        "--cam-batch", str(recipe.cam_batch), "--irn-batch", str(recipe.irn_batch),
                        *(["--momentum", str(recipe.momentum)] if recipe.momentum is not None else []),
                        "--child-reference"], check=True)
        found["reference"] = {**common, "scores": side_scores(data, out, "reference", seed)}
        write_json(result_path(out, "reference", seed), found["reference"])
    if "ours" in sides and found["ours"] is None:
        if not all(p.is_file() for p in init.values()):
            raise SystemExit(f"error: {ref_work / 'init'}: no initial weights of seed {seed}; run the reference "
                             "side of this seed first (--sides reference ours)")
        run_our_chain(data, out / "ours" / f"seed{seed}", init, recipe, seed)
        found["ours"] = {**common, "scores": side_scores(data, out, "ours", seed)}
        write_json(result_path(out, "ours", seed), found["ours"])
    return found


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref_dir", type=Path, help="clone of the public RPNet code")
    p.add_argument("data", type=Path, help="dataset root in the VOC layout")
    p.add_argument("--out", type=Path, required=True, help="working folder (results, both sides' run folders)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--crop", type=int, default=Recipe.crop, help="the recipe's 512 crop scaled to this")
    p.add_argument("--blocks", type=int, nargs=4, default=list(Recipe.blocks))
    p.add_argument("--cam-epochs", type=int, default=Recipe.cam_epochs)
    p.add_argument("--irn-epochs", type=int, default=Recipe.irn_epochs)
    p.add_argument("--cam-batch", type=int, default=Recipe.cam_batch)
    p.add_argument("--irn-batch", type=int, default=Recipe.irn_batch)
    p.add_argument("--momentum", type=float, help="SGD momentum of both sides' optimisers (default: the reference's)")
    p.add_argument("--markdown", type=Path, help="write the table here too")
    p.add_argument("--child-reference", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not (args.ref_dir / "step" / "train_cam.py").is_file() or not (args.ref_dir / "net" / "resnet50_irn.py").is_file():
        raise SystemExit(f"error: {args.ref_dir}: not a clone of the public RPNet code (no step/train_cam.py "
                         "or net/resnet50_irn.py)")
    if not (args.data.is_dir()):
        raise SystemExit(f"error: {args.data}: no such dataset folder")
    recipe = Recipe(crop=args.crop, blocks=tuple(args.blocks), cam_batch=args.cam_batch, cam_epochs=args.cam_epochs,
                    irn_batch=args.irn_batch, irn_epochs=args.irn_epochs, momentum=args.momentum)
    from rpnet_pl.utils.errors import ConfigError, DatasetError

    try:
        write_reference_lists(args.out.resolve() / "lists", args.data.resolve())  # the dataset checked before any work
        if args.child_reference:
            for seed in args.seeds:
                run_reference_chain(args.ref_dir.resolve(), args.data.resolve(),
                                    (args.out / "reference" / f"seed{seed}").resolve(), recipe, seed)
            return 0
        results: dict[str, list[dict[str, Any]]] = {}
        for seed in args.seeds:
            for side, found in one_seed(args.ref_dir.resolve(), args.data.resolve(), args.out.resolve(), recipe, seed,
                                        args.sides).items():
                results.setdefault(side, []).append(found)
                print(f"{side} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in found["scores"].items()),
                      flush=True)
    except (ConfigError, DatasetError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except subprocess.CalledProcessError as exc:
        side = "the reference side" if "--child-reference" in exc.cmd else "our pipeline"
        raise SystemExit(f"error: {side} failed (exit {exc.returncode}); its output is above") from None
    text = table(results, args.data.name)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
