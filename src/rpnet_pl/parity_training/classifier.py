"""Training parity of the classifier (stage 1): groups ``train_classifier_rpnet`` (RPNet's
``step/train_cam.py`` with its ``Net_CAM``) and ``train_classifier_cam`` (IRN's ``step/train_cam.py``
with its CAM ``Net``, the baseline) against our :class:`~rpnet_pl.stages.classifier.ClassifierStage`,
K optimiser steps from the same initial weights on the same fixed batch.

The reference side (``scripts/training_parity_classifier.py``) runs the public networks with a
backbone of fewer blocks (ResNeXt-50 32x4d for RPNet, ResNet-50 for IRN, ``blocks`` per stage, layer 4
at stride 1 without dilation, ``FixedBatchNorm``), their ``train()`` (stem frozen), their
``trainable_parameters()`` under ``PolyOptimizer`` (backbone at ``lr``, new layers at ``10 lr``, each
group with its weight decay; the optimiser's ``weight_decay`` argument lands in SGD's momentum slot,
so momentum 1e-4, and its ``momentum`` 0.9 is the poly power), and the loss of its training script:
for RPNet Lc(x) + Lc(y) + 10 Ls(x) + 10 Ls(y), the enhanced maps averaged over the scales 1, 0.5, 1.5
and 2 (the last three without gradient, every pass updating the non-local blocks' running statistics).

Our side is the stage as the experiment builds it (the ``classifier.model`` section of
``experiments/base.yaml`` for RPNet, of ``experiments/voc_baseline_resnet50.yaml`` for the baseline;
the stage's own defaults where the repository's ``experiments/`` is not there, e.g. an installed
package), with the same fewer-block timm backbone: its ``configure_optimizers`` (a stand-in trainer
gives the number of steps) and ``training_losses``, stepped as Lightning does (the scheduler after
every optimiser step). Initial weights: :func:`~rpnet_pl.parity_training.seeded_state` of the
reference's names, mapped to ours by :func:`~rpnet_pl.models.reference_weights.map_reference_state_dict`.
One setting comes from the case instead of the experiment:

* ``lr`` (2e-5 in the shipped cases, both sides): from seeded weights (He-initialised, BatchNorm
  statistics at random, the non-local blocks not starting as the identity) the logits are large
  (first loss 5 to 17) and the recipe's 0.02 diverges in three steps (measured: 16.5, 1327, 3.2e5,
  NaN); at 2e-5 the loss falls smoothly (16.5 -> 1.1 in 10 steps) and float32 rounding is not
  amplified. The new layers' 10x, the weight decay, the momentum and the poly power are the
  experiment's. ``momentum`` (the reference's effective 1e-4, read from its optimiser) is stored in
  the case: with the textbook's 0.9 or with 0.0 the RPNet cases fail (the loss terms by 3e-5
  relative, the head's updates by 1e-2), which is why the experiments' default is 1e-4.

The part masks. RPNet's part prototype thins the confidence mask with ``F.dropout`` (16 draws a
step: levels 4 and 2, anchor and reference image, four scales). The generator records which
positions each draw kept, and our side replays them: :func:`replay_part_masks` stands in for
:func:`rpnet_pl.models.rpnet.part_mask` and returns ``mask * keep`` in the order our head asks
(per scale: level 2, then level 4, the group's anchor and reference images interleaved); a run
that asks for more or fewer draws (other scales or levels) is an error. Which positions are kept
is the only thing taken from the reference; the masks, prototypes and everything after them are
computed by each side.

Checks, and their float32 tolerances (measured worst errors of the shipped cases in brackets):

* ``initial_weights``: our tensors that got no seeded value (0);
* ``group_trained`` (groups,): tensors of each optimiser group that received a gradient, equal (a
  stem that trains, or a stage behind the detach, is an extra one);
* ``group_lr`` (K, groups): the learning rate of each group at each step (the one the step used;
  the last row is the final one), ``rtol 1e-6`` (0): both sides compute ``lr (1 - t / max_step) **
  0.9`` in float64;
* the loss terms (K,) at every step, ``rtol 1e-4, atol 1e-5`` (2.7e-6 relative): RPNet ``loss_cls``
  (Lc(x) + Lc(y), the stage's term), ``loss_ss`` (10 Ls(x) + 10 Ls(y)), each member's share
  ``loss_cls_x|y``, ``loss_ls_x|y`` (ours recomputed from the maps ``training_losses`` returns) and
  ``total_loss``; the baseline ``total_loss``. The first step differs by rounding only (folded
  BatchNorm in the no-grad passes, the associative non-local product, summation order), the later
  ones by that carried through smooth steps;
* ``weights.frozen``: tensors the reference never changes (stem, stages 1-2, the backbone's
  BatchNorm statistics), counted where ours moved: 0;
* ``updates.<part>`` (``backbone``, ``head``, ``statistics``): per-tensor checksums
  (:func:`~rpnet_pl.parity_training.checksums`) of the change ``final - initial``, each divided by the
  reference change's own mass (the sum and the sum of ``|x|`` by the sum of ``|x|``, the sum of squares
  by itself), ``atol 1e-3`` (5.8e-5, a backbone BatchNorm bias that barely moves): the change is K
  steps of ``lr`` times a gradient, so a momentum of 0.9, a wrong learning rate or a weight without
  its gradient moves it by far more;
* ``weights.final``: the final checksums divided by the reference tensor's mass, ``atol 1e-4``
  (3.3e-6, the non-local blocks' running statistics, which are almost all update);
* ``num_batches_tracked``: equal (each non-local block counts its passes: one per scale).

Left out of the checksums: the running statistics of RPNet's *plain* non-local blocks
(``self_atten_x|y.W.1``): the reference runs the plain branch at the three extra scales too (its
outputs discarded) and so updates them four times a step, ours once. Neither side reads them: with
the reference's ``attention_norm: batch`` the blocks always normalise with the pass's statistics.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from rpnet_pl.parity_training import (GROUPS, checksums, normalised_images, optimiser_step, resnet_blocks,
                                      seeded_state, stage_optimizer)

#: The experiments our side is built from, per group (relative to the repository's ``experiments/``).
EXPERIMENTS = {"rpnet": "base.yaml", "cam": "voc_baseline_resnet50.yaml"}
#: Reference loss terms of ``step/train_cam.py`` (``loss1``, ``loss2``, ``loss_x``, ``loss_y``) under our names.
RPNET_TERMS = ("loss_cls_x", "loss_cls_y", "loss_ls_x", "loss_ls_y")
#: Our tensors left out of the checksums (see the module docstring).
UNCOMPARED = ("head.attn_plain.out.1.running_", "head.attn_plain_ref.out.1.running_",
              "head.attn_plain.out.1.num_batches_tracked", "head.attn_plain_ref.out.1.num_batches_tracked")
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5
LR_RTOL = 1e-6
UPDATE_ATOL = 1e-3
FINAL_ATOL = 1e-4
COMMON = ("seed", "images", "labels", "blocks", "steps", "max_step", "lr", "momentum", "init_names", "total_loss",
          "group_lr", "group_trained", "checksum_names", "checksums", "update_checksums", "counter_names", "counters")
REQUIRED = {"rpnet": (*COMMON, "scales", "loss_cls", "loss_ss", *RPNET_TERMS),
            "cam": COMMON}


def reference_names_to_ours(names: Any, kind: str) -> dict[str, str]:
    """Reference state-dict names -> ours (``kind`` ``rpnet`` or ``cam``), through
    :func:`~rpnet_pl.models.reference_weights.map_reference_state_dict`; aliases, unused modules and
    the fixed Gaussian kernel map to nothing and are left out."""
    from rpnet_pl.models.reference_weights import map_reference_state_dict

    out = {}
    for name in names:
        mapped = map_reference_state_dict({str(name): torch.zeros(1)}, kind=kind).state
        if mapped:
            out[str(name)] = next(iter(mapped))
    return out


def part_keep_layout(draws: list[Tensor]) -> np.ndarray:
    """The reference's four part-mask draws of one ``Net.forward``, in its order (level 4 anchor,
    level 4 reference, level 2 anchor, level 2 reference; each (B, 1, h, w), non-zero where kept) ->
    (2, B, 2, h, w) uint8 in ours: level 2 then 4, each (group, member)."""
    l4x, l4y, l2x, l2y = ((d[:, 0] != 0).to(torch.uint8) for d in draws)
    return torch.stack([torch.stack([l2x, l2y], dim=1), torch.stack([l4x, l4y], dim=1)]).cpu().numpy()


# -- our side ------------------------------------------------------------------------------------
def experiment_classifier(method: str) -> dict[str, Any]:
    """The ``classifier.model`` section of the experiment of ``method`` (:data:`EXPERIMENTS`); the
    stage's own defaults (with the baseline's ResNet-50) when the package runs without the repository."""
    from rpnet_pl.pipeline.config import load_experiment, section
    from rpnet_pl.pipeline.registry import CLASSIFIER

    path = Path(__file__).resolve().parents[3] / "experiments" / EXPERIMENTS[method]
    if not path.is_file():
        return {"method": method, **({"backbone": "resnet50"} if method == "cam" else {})}
    return dict(section(load_experiment(path), CLASSIFIER.name).get("model") or {})


@contextlib.contextmanager
def replay_part_masks(keeps: list[np.ndarray], device: torch.device) -> Iterator[list[int]]:
    """Our head's part masks from the reference's draws: ``keeps`` holds, per forward pass (step-major,
    then scale), a (2, B, k, h, w) array (levels 2 and 4); each call of
    :func:`rpnet_pl.models.rpnet.part_mask` returns ``mask * keep`` for the next level. Yields a
    one-element list counting the calls (a run must use every draw)."""
    from rpnet_pl.models import rpnet

    queue = [torch.as_tensor(k[i].reshape(-1, 1, *k.shape[-2:]), dtype=torch.float32, device=device)
             for k in keeps for i in range(k.shape[0])]
    used = [0]

    def replay(mask: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if used[0] >= len(queue):
            raise ValueError(f"the case holds {len(queue)} part-mask draws, the run asks for more")
        keep = queue[used[0]]
        if keep.shape != mask.shape:
            raise ValueError(f"part-mask draw {used[0]}: the case's is {tuple(keep.shape)}, ours {tuple(mask.shape)}")
        used[0] += 1
        return mask * keep.to(mask.dtype)

    original = rpnet.part_mask
    rpnet.part_mask = replay
    try:
        yield used
    finally:
        rpnet.part_mask = original


def build_stage(case: Mapping[str, np.ndarray], method: str, **overrides: Any):
    """Our :class:`ClassifierStage` from the experiment of ``method`` (``overrides`` win), with the
    case's fewer-block backbone and its seeded initial weights (the reference's names mapped to ours).
    Returns ``(stage, names of our tensors that got no initial value)``."""
    from rpnet_pl.pipeline.registry import CLASSIFIER
    from rpnet_pl.stages.checkpoints import build_stage

    kwargs = {**experiment_classifier(method), "method": method, "pretrained": False, "weights": None,
              "lr": float(case["lr"]), **overrides}
    with resnet_blocks(tuple(case["blocks"])):
        stage = build_stage(CLASSIFIER.name, **kwargs)
    target = stage.model.state_dict()
    names = reference_names_to_ours(case["init_names"], method)
    shapes = {ref: target[ours].shape for ref, ours in names.items() if ours in target}
    init = {names[ref]: v for ref, v in seeded_state(shapes, int(case["seed"])).items()}
    stage.model.load_state_dict(init, strict=False)
    missing = [k for k in target if k not in init]
    return stage, missing


def _batch(case: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """The case's images (B, k, H, W, 3) uint8 and labels (B, k, C) as our stage's batch of groups."""
    return {"images": normalised_images(case["images"]).to(device),
            "labels": torch.as_tensor(np.asarray(case["labels"]), dtype=torch.float32, device=device)}


def rpnet_terms(model: Any, out: Mapping[str, Tensor], labels: Tensor) -> dict[str, Tensor]:
    """Each member's share of our RPNet losses (k = 2): Lc and lambda * Ls of the anchor (x) and the
    reference image (y), with our own :func:`multilabel_loss` and :func:`self_supervised_loss` on the
    maps ``training_losses`` returned."""
    from rpnet_pl.models.rpnet import multilabel_loss, self_supervised_loss

    b, k, c = labels.shape
    logits = out["logits"].reshape(b, k, c)
    cams = out["cams"].reshape(b, k, *out["cams"].shape[1:])
    enhanced = out["enhanced_cams"].reshape(b, k, *out["enhanced_cams"].shape[1:])
    terms = {}
    for j, who in enumerate("xy"):
        terms[f"loss_cls_{who}"] = multilabel_loss(logits[:, j], labels[:, j])
        terms[f"loss_ls_{who}"] = self_supervised_loss(cams[:, j], enhanced[:, j], labels[:, j], model.lam,
                                                       model.ls_variant)
    return terms


def train_ours(case: Mapping[str, np.ndarray], method: str, setup: Callable[[Any], None] | None = None,
               **overrides: Any) -> dict[str, Any]:
    """K steps of our stage on the case's batch: per-step loss terms and group learning rates, the
    tensors per group that got a gradient, the initial and final state dicts. ``setup(stage)`` runs
    after the weights are loaded, before the optimiser is built (the tests' perturbations)."""
    device = torch.get_default_device()
    stage, missing = build_stage(case, method, **overrides)
    stage.to(device)
    if setup is not None:
        setup(stage)
    initial = {k: v.detach().clone() for k, v in stage.model.state_dict().items()}
    steps, max_step = int(case["steps"]), int(case["max_step"])
    opt, sched, per_step = stage_optimizer(stage, max_step)
    batch = _batch(case, device)
    keeps = [np.asarray(case[f"part_keep_{j}"])[t] for t in range(steps) for j in range(len(case["scales"]))] \
        if method == "rpnet" else []
    stage.train()
    losses: dict[str, list[float]] = {}
    lrs = []
    with replay_part_masks(keeps, device) if keeps else contextlib.nullcontext([0]) as used:
        for _ in range(steps):
            lr, out = optimiser_step(stage, opt, sched, per_step, batch)
            lrs.append(lr)
            values = {"total_loss": out["loss"]}
            if method == "rpnet":
                values.update(loss_cls=out["loss_cls"], loss_ss=out["loss_ss"],
                              **rpnet_terms(stage.model, out, batch["labels"]))
            for key, v in values.items():
                losses.setdefault(key, []).append(float(v.detach().float()))
    if keeps and used[0] != sum(k.shape[0] for k in keeps):
        raise ValueError(f"the run used {used[0]} of the case's part-mask draws")
    trained = [sum(p.grad is not None for p in g["params"]) for g in opt.param_groups]
    stage.eval()
    return {"losses": {k: np.asarray(v) for k, v in losses.items()}, "group_lr": np.asarray(lrs),
            "group_trained": np.asarray(trained), "initial": initial, "state": stage.model.state_dict(),
            "missing": missing}


# -- the check -----------------------------------------------------------------------------------
def normalised_checksums(ours: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) checksums ``(sum, sum of squares, sum |x|)`` of ours and the reference's, each divided by
    the reference tensor's mass: sum and sum |x| by its sum |x|, the sum of squares by itself."""
    ref = np.asarray(ref, dtype=np.float64)
    scale = np.stack([ref[:, 2], ref[:, 1], ref[:, 2]], axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    return np.asarray(ours, dtype=np.float64) / scale, ref / scale


def _part(name: str) -> str:
    if name.startswith("backbone."):
        return "backbone"
    return "statistics" if ".running_" in name else "head"


def check_training(case: Mapping[str, np.ndarray], method: str, setup: Callable[[Any], None] | None = None,
                   **overrides: Any) -> list:
    """K training steps of our classifier stage against the reference's (see the module docstring)."""
    from rpnet_pl.parity import Check, close, equal

    out = train_ours(case, method, setup, **overrides)
    checks = [equal("initial_weights", len(out["missing"]), 0),
              equal("group_trained", out["group_trained"], case["group_trained"]),
              close("group_lr", out["group_lr"], case["group_lr"], rtol=LR_RTOL, atol=0.0)]
    terms = ("loss_cls", "loss_ss", *RPNET_TERMS, "total_loss") if method == "rpnet" else ("total_loss",)
    checks += [close(k, out["losses"][k], case[k], rtol=LOSS_RTOL, atol=LOSS_ATOL) for k in terms]

    names = [str(n) for n in case["checksum_names"]]
    state = {k: v for k, v in out["state"].items() if not k.startswith(UNCOMPARED)}
    counters = sorted(k for k in state if k.endswith("num_batches_tracked"))
    compared = [k for k in state if k not in counters]
    checks.append(equal("checksum_names", len(set(compared) ^ set(names)), 0))
    nan = np.full(3, np.nan)
    final = checksums({k: state[k] for k in compared})
    update = checksums({k: state[k].double() - out["initial"][k].double() for k in compared})
    ref_final = np.asarray(case["checksums"], dtype=np.float64)
    ref_update = np.asarray(case["update_checksums"], dtype=np.float64)
    frozen = [i for i, n in enumerate(names) if not ref_update[i].any()]
    moved = [names[i] for i in frozen if np.any(update.get(names[i], nan) != 0)]
    checks.append(Check("weights.frozen", float(len(moved)), len(moved) / max(len(frozen), 1), not moved,
                        f"unchanged, as the reference's {len(frozen)}"))
    for part in ("backbone", "head", "statistics"):
        rows = [i for i, n in enumerate(names) if _part(n) == part and i not in frozen]
        if rows:
            a, b = normalised_checksums(np.stack([update.get(names[i], nan) for i in rows]), ref_update[rows])
            checks.append(close(f"updates.{part}", a, b, rtol=0.0, atol=UPDATE_ATOL))
    a, b = normalised_checksums(np.stack([final.get(n, nan) for n in names]), ref_final)
    checks.append(close("weights.final", a, b, rtol=0.0, atol=FINAL_ATOL))
    counts = [int(state[k]) if k in state else -1 for k in (str(n) for n in case["counter_names"])]
    checks.append(equal("num_batches_tracked", np.asarray(counts), case["counters"]))
    return checks


def check_train_classifier_rpnet(case: Mapping[str, np.ndarray], mode: Any = None, **overrides: Any) -> list:
    """RPNet's classifier (see the module docstring); ``overrides``: stage arguments over the
    experiment's (the tests' perturbations)."""
    return check_training(case, "rpnet", **overrides)


def check_train_classifier_cam(case: Mapping[str, np.ndarray], mode: Any = None, **overrides: Any) -> list:
    """IRN's CAM baseline (see the module docstring)."""
    return check_training(case, "cam", **overrides)


GROUPS["train_classifier_rpnet"] = (REQUIRED["rpnet"], check_train_classifier_rpnet)
GROUPS["train_classifier_cam"] = (REQUIRED["cam"], check_train_classifier_cam)

__all__ = ["build_stage", "check_train_classifier_cam", "check_train_classifier_rpnet", "check_training",
           "experiment_classifier", "normalised_images", "part_keep_layout", "reference_names_to_ours",
           "replay_part_masks", "resnet_blocks", "rpnet_terms", "train_ours"]
