"""Training parity of the refiner: the reference's ``step/train_irn.py`` against our
:class:`~rpnet_pl.stages.refine.RefineStage`, K optimiser steps from the same initial weights on the
same fixed batch. Two groups: ``train_irn``, jiwoon-ahn/irn's own network against the stage with
``self_attention: false`` (the CAM baselines' setting), and ``train_irn_rpnet``, RPNet's copy of IRN
(non-local blocks ``self_atten3..5`` on the detached levels 3-5, their BatchNorm following ``train()``,
a third optimiser group at ``2 lr``) against ``self_attention: true`` (``experiments/base.yaml``).

The reference side (``scripts/training_parity_irn.py``) runs ``train_irn.run`` itself: its
``AffinityDisplacementLoss`` on the reference's ResNet-50 built with fewer blocks, its
``PolyOptimizer`` over ``trainable_parameters()`` (edge branch at ``lr``, displacement branch at
``10 lr``, RPNet's non-local blocks at ``2 lr``, each group with its weight decay; the optimiser's
``weight_decay`` argument lands in SGD's momentum slot and its ``momentum`` 0.9 is the poly power), its
loss sum, its
``PathIndex(radius=10)``, its dataset's label reduction and ``GetAffinityLabelFromIndices`` pair
labels, then its displacement mean (the mean shift it saves). Our side is the stage as the default
experiment builds it (the ``refine.model`` section of ``experiments/base.yaml``; the stage's own
defaults where that file is not there, e.g. an installed package) with the group's ``self_attention``,
with the same fewer-block
ResNet-50 (timm's, patched at run time): its :meth:`~RefineStage.configure_optimizers` (a stand-in
trainer gives the number of steps), its :meth:`~RefineStage.training_losses`, stepped as Lightning
does (the scheduler after every optimiser step when its interval is ``step``).

The cases' trajectories are stable: the generator keeps a seed only when the reference's own per-step
losses and final maps move by less than 5e-6 when its convolutions run channels-last or its input
moves by about one float32 rounding (1e-7, scaled and in random directions). At IRN's learning rates
(0.1, and 1.0 for the displacement branch) a ReLU, a boundary maximum along a path or a displacement
``|x|`` can sit at a tie within rounding at some step; past it, any two float32 implementations part
by 1e-5 to 0.5 (19 of the seeds 0-25 within 10 steps), so no float32 tolerance would hold there.
The shipped seeds also hold with our backbone unfolded (convolution then BatchNorm, as the reference)
and channels-last, on 1 or 2 threads (worst 2.2e-6). Other kernels (another CPU, a GPU) can still meet
a tie: a failure confined to the displacement checks, the boundary ones exact, is that.

Checks, and their float32 tolerances:

* ``initial_weights``: every tensor of ours got its seeded value (0 missing); ``reduced_labels``: the
  stage's stride-4 reduction of the full-size IR labels (``label_reduction``) against the labels the
  reference's ``VOC12AffinityDataset`` reduces (``pil_rescale(label, 0.25, 0)``), equal;
  ``group_sizes``: tensors per optimiser group that the step updates, equal (a trainable backbone
  tensor is an extra one; RPNet's third group also holds its never-called ``self_atten1/2``, which get no
  gradient and are not counted);
* ``group_momentum``, ``group_weight_decay`` (groups,) and ``group_lr`` (K, groups: the rate each step
  used): ``rtol 1e-6``. The reference's SGD momentum is its weight decay, 1e-4 (the quirk above), and
  so is ours by default; momentum 0 instead parts the trajectories by 9e-4 and 8e-5 of the total loss
  (4e-3 and 4e-4 of the displacement terms, 2e-2 and 7e-3 of the final displacement map) over the 10
  steps: measurable, not rounding. Both sides compute ``lr (1 - t / max_step) ** 0.9``;
* ``<term>`` (K,): the four terms ``train_irn`` logs (``pos_aff_loss`` = bg/2 + fg/2,
  ``neg_aff_loss``, ``dp_fg_loss``, ``dp_bg_loss``) and ``total_loss`` = (pos + neg)/2 + (dp_fg +
  dp_bg)/2 at every step, ``rtol 1e-4, atol 1e-5`` as the other loss cases (measured: 8.5e-7 at
  worst; folded BatchNorm and summation order);
* ``weights.backbone`` / ``weights.edge`` / ``weights.displacement`` (and ``weights.attention``, the
  non-local blocks with their BatchNorm's running variances, in ``train_irn_rpnet``; their running means
  are ill-conditioned, see :data:`ILL_CONDITIONED`): the final per-tensor checksums
  (:func:`rpnet_pl.parity_training.checksums`), each divided by the tensor's mass (the sum and the sum
  of ``|x|`` by the sum of ``|x|``, the sum of squares by itself; before or after training, whichever
  is larger: a bias that ends near zero keeps its scale), ``atol 1e-4`` (measured 6.4e-7, and up to
  1e-5 on seeds with a small tie past the screen; the frozen backbone exactly equal; momentum 0:
  1e-3). Our ``mean_shift`` buffers are left out: ours keep a running average during training (IRN's
  first recipe), IRN's final ``train_irn`` sets the mean after training, compared below;
* ``final_edge_logits`` (B, 1, h4, w4) and ``final_displacement`` (B, 2, h4, w4, raw, before the mean
  shift): the trained networks in eval mode on the batch, ``rtol 1e-3`` of the map's max, and
  ``mean_shift`` (2,), the reference's saved mean shift (the mean raw displacement) against the mean
  of ours, ``atol 1e-3`` of the displacement's max (a mean of values of both signs): measured 1.8e-6;
  the displacement map amplifies its weights' differences about tenfold (momentum 0: 7e-3 to 2e-2).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rpnet_pl.parity_training import (GROUPS, checksums, normalised_images, optimiser_step, resnet_blocks,
                                      seeded_state, stage_optimizer)

#: The reference's four logged loss terms (``train_irn.py``'s ``loss1..loss4``), then their sum.
LOSS_TERMS = ("pos_aff_loss", "neg_aff_loss", "dp_fg_loss", "dp_bg_loss")
#: Tensors of ours that the checksums leave out (see the module docstring).
UNCOMPARED_PREFIXES = ("mean_shift.",)
#: Tensors left out of the weight checks (still named in ``checksum_names``): the non-local blocks'
#: BatchNorm running means, means of pre-normalisation values whose spread is about 100x the mean
#: (seeded weights), so that a rounding moves them by up to 3e-4 of their mass; they act only in eval
#: mode, through ``final_edge_logits`` / ``final_displacement``, which are checked.
ILL_CONDITIONED = re.compile(r"^attention\.\d+\.out\.1\.running_mean$")
#: Our module prefixes -> the checksum check that covers them.
WEIGHT_PARTS = {"backbone": ("backbone.",), "edge": ("edge_levels.", "edge_out."),
                "displacement": ("dp_levels.", "dp_fuse_deep.", "dp_out."), "attention": ("attention.",)}
#: Tolerance of the normalised checksums (fraction of a tensor's mass).
WEIGHT_ATOL = 1e-4
#: Tolerance of the trained network's final maps (fraction of the map's max).
MAP_RTOL = 1e-3
#: Tolerance of the optimiser's hyper-parameters and per-step learning rates (both sides: float64).
LR_RTOL = 1e-6
REQUIRED = ("seed", "images", "label", "label4", "blocks", "steps", "max_step", "init_names", *LOSS_TERMS, "total_loss",
            "group_lr", "group_sizes", "group_momentum", "group_weight_decay", "checksum_names", "checksums",
            "final_edge_logits", "final_displacement", "mean_shift")


def reference_names_to_ours(names: Any) -> dict[str, str]:
    """Reference state-dict names (``resnet50.layer1.0.conv1.weight``, ``fc_edge1.0.weight``, ...) ->
    ours, through :func:`~rpnet_pl.models.reference_weights.map_reference_state_dict`; a name that maps
    to nothing is left out."""
    from rpnet_pl.models.reference_weights import map_reference_state_dict

    out = {}
    for name in names:
        mapped = map_reference_state_dict({str(name): torch.zeros(1)}, kind="irn").state
        if mapped:
            out[str(name)] = next(iter(mapped))
    return out


# -- our side ------------------------------------------------------------------------------------
def default_refine_model() -> dict[str, Any]:
    """The ``refine.model`` section of the repository's ``experiments/base.yaml`` (and the files it
    extends); ``{}`` (the stage's own defaults) when the package runs without the repository."""
    from rpnet_pl.pipeline.config import load_experiment, section
    from rpnet_pl.pipeline.registry import REFINE

    base = Path(__file__).resolve().parents[3] / "experiments" / "base.yaml"
    if not base.is_file():
        return {}
    return dict(section(load_experiment(base), REFINE.name).get("model") or {})


def build_stage(case: Mapping[str, np.ndarray], **overrides: Any):
    """Our :class:`RefineStage` from the default experiment (``overrides`` win), with the case's
    fewer-block ResNet-50 and its seeded initial weights (the reference's names, mapped to ours).
    Returns ``(stage, names of our tensors that got no initial value)``."""
    from rpnet_pl.pipeline.registry import REFINE
    from rpnet_pl.stages.checkpoints import build_stage

    kwargs = {**default_refine_model(), "pretrained": False, "weights": None, **overrides}
    with resnet_blocks(tuple(case["blocks"])):
        stage = build_stage(REFINE.name, **kwargs)
    target = stage.model.state_dict()
    names = reference_names_to_ours(case["init_names"])
    shapes = {ref: target[ours].shape for ref, ours in names.items() if ours in target}
    init = {names[ref]: v for ref, v in seeded_state(shapes, int(case["seed"])).items()}
    stage.model.load_state_dict(init, strict=False)
    missing = [k for k in target if k not in init and not k.startswith(UNCOMPARED_PREFIXES)]
    return stage, missing


def train_ours(case: Mapping[str, np.ndarray], **overrides: Any) -> dict[str, Any]:
    """K steps of our stage on the case's batch: per-step loss terms, per-step group learning rates,
    the optimiser groups' sizes and hyper-parameters (as configured), the final state dict and the
    trained network's outputs in eval mode (edge logits, raw displacement, displacement mean)."""
    from rpnet_pl.stages.refine import stride4_labels

    stage, missing = build_stage(case, **overrides)
    initial = checksums(stage.model.state_dict())
    stage.setup("fit")  # Lightning's hook: the weights' memory format (``channels_last``)
    steps, max_step = int(case["steps"]), int(case["max_step"])
    opt, sched, per_step = stage_optimizer(stage, max_step)
    hyper = {key: np.asarray([float(g[key]) for g in opt.param_groups]) for key in ("momentum", "weight_decay")}
    images = normalised_images(case["images"]).to(torch.get_default_device())
    labels = torch.as_tensor(np.asarray(case["label"]), dtype=torch.long, device=images.device)
    batch = {"image": images, "label": labels}
    reduced = stride4_labels(labels, tuple(case["label4"].shape[-2:]), stage.hparams.get("label_reduction", "pil"))
    stage.train()
    losses: dict[str, list[float]] = {k: [] for k in (*LOSS_TERMS, "total_loss")}
    lrs = []
    for _ in range(steps):
        lr, terms = optimiser_step(stage, opt, sched, per_step, batch)
        lrs.append(lr)
        zero = torch.zeros(())  # the displacement terms when ``displacement_loss`` is off
        values = {"pos_aff_loss": terms["pos_bg_loss"] / 2 + terms["pos_fg_loss"] / 2,
                  "neg_aff_loss": terms["neg_loss"], "dp_fg_loss": terms.get("dp_fg_loss", zero),
                  "dp_bg_loss": terms.get("dp_bg_loss", zero), "total_loss": terms["loss"]}
        for k, v in values.items():
            losses[k].append(float(v.detach().float()))
    stage.eval()
    with torch.no_grad():
        edge_logits, raw = stage.model._branches(images)
    return {"losses": {k: np.asarray(v) for k, v in losses.items()}, "group_lr": np.asarray(lrs),
            "group_sizes": np.asarray([len(g["params"]) for g in opt.param_groups]),
            **{f"group_{k}": v for k, v in hyper.items()},
            "initial": initial, "state": stage.model.state_dict(), "edge_logits": edge_logits, "displacement": raw,
            "mean_shift": raw.mean(dim=(0, 2, 3)), "reduced_labels": reduced, "missing": missing}


# -- the check -----------------------------------------------------------------------------------
def normalised_checksums(ours: np.ndarray, ref: np.ndarray, initial: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) checksums ``(sum, sum of squares, sum |x|)`` of ours and the reference's after training,
    each divided by the tensor's mass before or after training, whichever is larger (``initial``: the
    seeded weights' checksums): the sum and the sum of ``|x|`` by the sum of ``|x|``, the sum of squares
    by itself. (A tensor that passes near zero, e.g. a bias, keeps the scale it had.)"""
    ref, initial = np.asarray(ref, dtype=np.float64), np.asarray(initial, dtype=np.float64)
    l1, l2 = np.maximum(ref[:, 2], initial[:, 2]), np.maximum(ref[:, 1], initial[:, 1])
    scale = np.stack([l1, l2, l1], axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    return np.asarray(ours, dtype=np.float64) / scale, ref / scale


def check_train_irn(case: Mapping[str, np.ndarray], mode: Any = None, **overrides: Any) -> list:
    """K training steps of :class:`RefineStage` without non-local blocks against jiwoon-ahn/irn's
    ``train_irn`` (see the module docstring and :func:`check_training`)."""
    return check_training(case, mode, **{"self_attention": False, **overrides})


def check_train_irn_rpnet(case: Mapping[str, np.ndarray], mode: Any = None, **overrides: Any) -> list:
    """K training steps of :class:`RefineStage` with its non-local blocks against the ``train_irn`` of
    RPNet's copy of IRN (see the module docstring and :func:`check_training`)."""
    return check_training(case, mode, **{"self_attention": True, **overrides})


def check_training(case: Mapping[str, np.ndarray], mode: Any = None, **overrides: Any) -> list:
    """K training steps of :class:`RefineStage` against the reference's (see the module docstring);
    ``overrides``: stage arguments over the default experiment's (the groups' network, the tests'
    perturbations). In a ``channels_last`` :class:`~rpnet_pl.parity.ParityMode` the stage is built with
    ``channels_last``."""
    from rpnet_pl.parity import close, close_to_max, equal

    if getattr(mode, "channels_last", False):
        overrides = {"channels_last": True, **overrides}
    out = train_ours(case, **overrides)
    checks = [equal("initial_weights", len(out["missing"]), 0),
              equal("reduced_labels", out["reduced_labels"], case["label4"]),
              equal("group_sizes", out["group_sizes"], case["group_sizes"]),
              close("group_momentum", out["group_momentum"], case["group_momentum"], rtol=LR_RTOL, atol=0.0),
              close("group_weight_decay", out["group_weight_decay"], case["group_weight_decay"], rtol=LR_RTOL,
                    atol=0.0),
              close("group_lr", out["group_lr"], case["group_lr"], rtol=LR_RTOL, atol=0.0)]
    checks += [close(k, out["losses"][k], case[k]) for k in (*LOSS_TERMS, "total_loss")]
    ours = checksums({k: v for k, v in out["state"].items() if not k.startswith(UNCOMPARED_PREFIXES)})
    names = [str(n) for n in case["checksum_names"]]
    checks.append(equal("checksum_names", len(set(ours) ^ set(names)), 0))
    ref = np.asarray(case["checksums"], dtype=np.float64)
    for part, prefixes in WEIGHT_PARTS.items():
        rows = [i for i, n in enumerate(names) if n.startswith(prefixes) and not ILL_CONDITIONED.match(n)]
        if not rows:  # IRN's own network has no non-local blocks
            continue
        mine = np.stack([ours.get(names[i], np.full(3, np.nan)) for i in rows])
        start = np.stack([out["initial"].get(names[i], np.full(3, np.nan)) for i in rows])
        a, b = normalised_checksums(mine, ref[rows], start)
        checks.append(close(f"weights.{part}", a, b, rtol=0.0, atol=WEIGHT_ATOL))
        checks[-1].tolerance = f"atol {WEIGHT_ATOL:g} of each tensor's mass"
    checks.append(close_to_max("final_edge_logits", out["edge_logits"], case["final_edge_logits"], rtol=MAP_RTOL))
    checks.append(close_to_max("final_displacement", out["displacement"], case["final_displacement"], rtol=MAP_RTOL))
    peak = float(np.abs(case["final_displacement"]).max())
    checks.append(close("mean_shift", out["mean_shift"], case["mean_shift"], rtol=0.0, atol=MAP_RTOL * peak))
    checks[-1].tolerance = f"atol {MAP_RTOL:g} of max |displacement|"
    return checks


GROUPS["train_irn"] = (REQUIRED, check_train_irn)
GROUPS["train_irn_rpnet"] = (REQUIRED, check_train_irn_rpnet)

__all__ = ["check_train_irn", "check_train_irn_rpnet", "check_training", "build_stage", "default_refine_model",
           "normalised_images", "reference_names_to_ours", "resnet_blocks", "train_ours"]
