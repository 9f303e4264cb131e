"""Write the training-parity cases of the classifier: ``train_classifier_rpnet_<i>.npz`` (RPNet's
``step/train_cam.py``) and ``train_classifier_cam_<i>.npz`` (IRN's ``step/train_cam.py``, the baseline).

    python scripts/training_parity_classifier.py REF_DIR [--irn IRN_DIR] --out src/rpnet_pl/parity_cases
        [--seeds 0 1] [--steps 10] [--max-step 12] [--size 64] [--blocks 1 1 1 1] [--groups rpnet cam]

``REF_DIR``: a clone of liuweide01/RPNet-Weakly-Supervised-Segmentation as published (its
``net/resnet50_cam.py``, ``net/resnext.py``, ``net/Gaussian.py``, ``misc/torchutils.py``); ``IRN_DIR``:
of jiwoon-ahn/irn (``net/resnet50_cam.py``, ``net/resnet50.py``, ``misc/torchutils.py``; default
``REF_DIR/../irn``). Nothing of that code is copied: its modules are imported from those folders and
called as they are; what its training scripts do around the network (the optimiser's construction,
the loss, the step) is written here from ``step/train_cam.py``, op for op.

Run-time patches (its files are not changed):

* ``.cuda()`` is a no-op without CUDA, and no backbone constructor downloads ImageNet weights
  (``scripts/reference_timing.py``'s ``import_reference``); ``DataParallel`` is left out (on one
  device it calls the network as it is);
* fewer blocks: RPNet's ``resnext.resnext101_32x8d`` builds ``resnext.ResNet`` with
  ``Bottleneck``, ``--blocks`` per stage, 32 groups of width 4 (ResNeXt-50 32x4d, our ``base.yaml``'s
  ``resnext50``); IRN's ``resnet50.resnet50`` builds ``resnet50.ResNet(Bottleneck, --blocks,
  strides=(2, 2, 2, 1))`` (ResNet-50, ``voc_baseline_resnet50.yaml``'s ``resnet50``). The frozen
  stem, ``FixedBatchNorm``, the stage-2 detach, the non-local blocks and the no-grad extra scales are
  the reference's own;
* RPNet's part masks: the module's ``F`` is a view of ``torch.nn.functional`` whose ``dropout`` calls
  the real one and records which positions it kept (the case's ``part_keep_<j>``, replayed by ours).
  The draws come from the global generator, seeded with ``seed``; a run whose loss is not finite
  (the reference divides by the max of a thinned mask that kept nothing: 0 / 0) is redrawn from the
  next generator seed.

Inputs: ``--size`` x ``--size`` images (uint8, smooth random patterns) of 2 pairs (RPNet) or 4 images
(the baseline), multi-hot labels (each pair shares a class). Initial weights:
``rpnet_pl.parity_training.seeded_state`` of the reference's own state-dict names. The learning rates
are those our experiments use (``--rpnet-lr`` 0.02 is also RPNet's ``run_sample.py`` default;
``--cam-lr`` 0.02 is our ``voc_baseline_resnet50.yaml``'s, IRN's own ``run_sample.py`` says 0.1),
weight decay 1e-4, ``PolyOptimizer`` over ``--max-step`` steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "src", ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from reference_timing import cuda_as_no_op, import_reference  # noqa: E402
from rpnet_pl.parity_training import checksums, seeded_state  # noqa: E402
from rpnet_pl.parity_training.classifier import (UNCOMPARED, normalised_images, part_keep_layout,  # noqa: E402
                                                 reference_names_to_ours)

WEIGHT_DECAY = 1e-4
NUM_CLASSES = 20


class RecordingFunctional:
    """``torch.nn.functional`` as the reference module sees it, with ``dropout`` recorded."""

    def __init__(self) -> None:
        self.draws: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    def dropout(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = F.dropout(*args, **kwargs)
        self.draws.append(out.detach().clone())
        return out


# -- inputs ----------------------------------------------------------------------------------------
def make_images(n: int, size: int, gen: np.random.Generator) -> np.ndarray:
    """(n, size, size, 3) uint8: a few coloured blobs on a smooth background, some pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3))
    for i in range(n):
        img = gen.uniform(0, 255, 3) * (0.5 + 0.5 * np.sin(2 * np.pi * (gen.uniform(0.5, 2) * xx[..., None]
                                                                           + gen.uniform(0, 1, 3))))
        for _ in range(int(gen.integers(1, 4))):
            cy, cx, r = gen.uniform(0.2, 0.8), gen.uniform(0.2, 0.8), gen.uniform(0.08, 0.25)
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
            img = np.where(blob, gen.uniform(0, 255, 3), img)
        out[i] = img + gen.normal(0, 8, img.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_pair_labels(pairs: int, gen: np.random.Generator) -> np.ndarray:
    """(pairs, 2, C) multi-hot: each pair shares one class, each image has 1-3 classes."""
    labels = np.zeros((pairs, 2, NUM_CLASSES), dtype=np.float32)
    for b in range(pairs):
        common = int(gen.integers(NUM_CLASSES))
        for j in range(2):
            labels[b, j, common] = 1
            labels[b, j, gen.choice(NUM_CLASSES, int(gen.integers(0, 3)), replace=False)] = 1
    return labels


# -- the reference -----------------------------------------------------------------------------------
def seed_reference(model: torch.nn.Module, kind: str, seed: int) -> list[str]:
    """Load ``seeded_state`` of the reference's own names into ``model`` (the names that map to ours;
    aliases share their tensors, unused modules and the Gaussian kernel keep their values). Returns
    those names."""
    state = model.state_dict()
    names = reference_names_to_ours(list(state), kind)
    from rpnet_pl.models.reference_weights import map_reference_state_dict

    unmatched = map_reference_state_dict({k: v for k, v in state.items()}, kind=kind).unmatched
    if unmatched:
        raise SystemExit(f"error: reference keys that map to nothing of ours: {unmatched[:8]}")
    model.load_state_dict(seeded_state({k: state[k].shape for k in names}, seed), strict=False)
    return list(names)


def poly_optimizer(torchutils: Any, model: Any, lr: float, max_step: int) -> Any:
    """``step/train_cam.py``'s optimiser: ``PolyOptimizer`` over ``trainable_parameters()``, the backbone at
    ``lr``, the new layers at ``10 lr``, each group with the weight decay."""
    groups = model.trainable_parameters()
    return torchutils.PolyOptimizer([
        {"params": groups[0], "lr": lr, "weight_decay": WEIGHT_DECAY},
        {"params": groups[1], "lr": 10 * lr, "weight_decay": WEIGHT_DECAY},
    ], lr=lr, weight_decay=WEIGHT_DECAY, max_step=max_step)


def rpnet_loss(out: tuple, label: torch.Tensor, label_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """RPNet ``step/train_cam.py``'s loss, op for op: Lc of x and y, then for each of x and y the
    squared difference of the label-masked, max-normalised plain and enhanced maps, times 10."""
    x, y, x_cam, y_cam, cam_x, cam_y = out
    n, c = x_cam.shape[:2]
    loss1 = F.multilabel_soft_margin_loss(x, label)
    loss2 = F.multilabel_soft_margin_loss(y, label_ref)

    def normalised(m: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        m = F.relu(m)
        peak = torch.max(m.view(n, c, -1), dim=-1)[0].view(n, c, 1, 1) + 1e-5
        return F.relu(m - 1e-5, inplace=True) / peak * lab[:, :, None, None]

    loss_x = torch.mean(torch.pow(normalised(x_cam, label) - normalised(cam_x, label), 2)) * 10
    loss_y = torch.mean(torch.pow(normalised(y_cam, label_ref) - normalised(cam_y, label_ref), 2)) * 10
    return {"loss_cls_x": loss1, "loss_cls_y": loss2, "loss_ls_x": loss_x, "loss_ls_y": loss_y,
            "total_loss": loss1 + loss2 + loss_x + loss_y}


def build_reference(repo: Path, kind: str, blocks: list[int]) -> tuple[torch.nn.Module, Any]:
    """The reference network (``Net_CAM`` of RPNet, ``Net`` of IRN) with ``blocks`` per stage, and its
    ``misc.torchutils``."""
    cam, torchutils = import_reference(repo, "net.resnet50_cam", "misc.torchutils")
    if kind == "rpnet":
        resnext = sys.modules["net.resnext"]
        resnext.resnext101_32x8d = lambda pretrained=False, **kw: resnext.ResNet(
            resnext.Bottleneck, list(blocks), groups=32, width_per_group=4)
        return cam.Net_CAM(), torchutils
    resnet = sys.modules["net.resnet50"]
    resnet.resnet50 = lambda pretrained=False, strides=(2, 2, 2, 2), **kw: resnet.ResNet(
        resnet.Bottleneck, list(blocks), strides=strides)
    return cam.Net(), torchutils


def run_reference(repo: Path, kind: str, seed: int, blocks: list[int], steps: int, max_step: int, lr: float,
                  images: np.ndarray, labels: np.ndarray, draw_seed: int) -> dict[str, Any]:
    """K steps of the reference's training loop; per-step losses and learning rates, the part-mask draws,
    the tensors per group with a gradient, the initial and final state."""
    model, torchutils = build_reference(repo, kind, blocks)
    names = seed_reference(model, kind, seed)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = poly_optimizer(torchutils, model, lr, max_step)
    model.train()  # the reference's override: freezes the stem, leaves every module in training mode
    recorder = RecordingFunctional()
    if kind == "rpnet":
        sys.modules["net.resnet50_cam"].F = recorder
    x = normalised_images(images)
    lab = torch.from_numpy(labels)
    torch.manual_seed(draw_seed)
    losses: dict[str, list[float]] = {}
    lrs = []
    with cuda_as_no_op():
        for _ in range(steps):
            if kind == "rpnet":
                terms = rpnet_loss(model(x[:, 0], x[:, 1]), lab[:, 0], lab[:, 1])
            else:
                terms = {"total_loss": F.multilabel_soft_margin_loss(model(x.flatten(0, 1)), lab.flatten(0, 1))}
            optimizer.zero_grad()
            terms["total_loss"].backward()
            optimizer.step()
            lrs.append([g["lr"] for g in optimizer.param_groups])  # the rate this step used
            for k, v in terms.items():
                losses.setdefault(k, []).append(float(v.detach()))
    trained = [sum(p.grad is not None for p in g["params"]) for g in optimizer.param_groups]
    momentum = {g["momentum"] for g in optimizer.param_groups}
    if len(momentum) != 1:
        raise SystemExit(f"error: the reference's groups have different momenta {momentum}")
    return {"names": names, "losses": losses, "group_lr": np.asarray(lrs), "group_trained": np.asarray(trained),
            "momentum": momentum.pop(),
            "draws": recorder.draws, "initial": initial, "state": model.state_dict()}


def make_case(repo: Path, kind: str, seed: int, args: argparse.Namespace) -> dict[str, np.ndarray]:
    gen = np.random.default_rng(1000 + seed)
    if kind == "rpnet":
        labels = make_pair_labels(2, gen)
        images = make_images(4, args.size, gen).reshape(2, 2, args.size, args.size, 3)
        lr = args.rpnet_lr
    else:
        labels = make_pair_labels(2, gen)  # four images, read as two groups of two by ours
        images = make_images(4, args.size, gen).reshape(2, 2, args.size, args.size, 3)
        lr = args.cam_lr
    for attempt in range(20):
        ref = run_reference(repo, kind, seed, args.blocks, args.steps, args.max_step, lr, images, labels,
                            draw_seed=seed * 100 + attempt)
        if all(np.isfinite(v).all() for v in ref["losses"].values()):
            break
        print(f"{kind} seed {seed}: non-finite reference loss with draw seed {seed * 100 + attempt}, redrawing")
    else:
        raise SystemExit(f"error: {kind} seed {seed}: no finite run in 20 draws")

    to_ours = reference_names_to_ours(ref["names"], kind)
    final = {to_ours[k]: ref["state"][k] for k in ref["names"]}
    compared = [k for k in final if not k.endswith("num_batches_tracked") and not k.startswith(UNCOMPARED)]
    counters = sorted(k for k in final if k.endswith("num_batches_tracked") and not k.startswith(UNCOMPARED))
    by_ours = {v: k for k, v in to_ours.items()}
    final_sums = checksums({k: final[k] for k in compared})
    update_sums = checksums({k: final[k].double() - ref["initial"][by_ours[k]].double() for k in compared})
    case: dict[str, Any] = {
        "seed": np.asarray(seed), "images": images, "labels": labels, "blocks": np.asarray(args.blocks),
        "steps": np.asarray(args.steps), "max_step": np.asarray(args.max_step), "lr": np.asarray(lr),
        "momentum": np.asarray(ref["momentum"]),
        "init_names": np.asarray(ref["names"]),
        "group_lr": ref["group_lr"], "group_trained": ref["group_trained"],
        "checksum_names": np.asarray(compared), "checksums": np.stack([final_sums[k] for k in compared]),
        "update_checksums": np.stack([update_sums[k] for k in compared]),
        "counter_names": np.asarray(counters), "counters": np.asarray([int(final[k]) for k in counters]),
        **{k: np.asarray(v, dtype=np.float64) for k, v in ref["losses"].items()},
    }
    if kind == "rpnet":
        case["loss_cls"] = case["loss_cls_x"] + case["loss_cls_y"]
        case["loss_ss"] = case["loss_ls_x"] + case["loss_ls_y"]
        scales = (1.0, 0.5, 1.5, 2.0)  # Net_CAM's: the pass with gradient, then the three without
        case["scales"] = np.asarray(scales)
        draws = ref["draws"]
        per_pass = 4
        if len(draws) != args.steps * len(scales) * per_pass:
            raise SystemExit(f"error: {len(draws)} dropout draws, expected {args.steps * len(scales) * per_pass}")
        passes = [part_keep_layout(draws[i:i + per_pass]) for i in range(0, len(draws), per_pass)]
        for j in range(len(scales)):
            case[f"part_keep_{j}"] = np.stack(passes[j::len(scales)])  # (steps, 2, B, 2, h, w)
    return case


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ref_dir", type=Path, help="clone of the public RPNet code")
    p.add_argument("--irn", type=Path, default=None, help="clone of jiwoon-ahn/irn (default REF_DIR/../irn)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--max-step", type=int, default=12)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--rpnet-lr", type=float, default=2e-5)
    p.add_argument("--cam-lr", type=float, default=2e-5)
    p.add_argument("--groups", nargs="+", choices=("rpnet", "cam"), default=["rpnet", "cam"])
    args = p.parse_args(argv)
    irn = args.irn or args.ref_dir.parent / "irn"
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    for kind in args.groups:
        repo = args.ref_dir if kind == "rpnet" else irn
        for i, seed in enumerate(args.seeds):
            case = make_case(repo, kind, seed, args)
            path = args.out / f"train_classifier_{kind}_{i}.npz"
            np.savez_compressed(path, **case)
            print(f"{path}: {path.stat().st_size // 1024} KB, total loss {case['total_loss'][0]:.5f} -> "
                  f"{case['total_loss'][-1]:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
