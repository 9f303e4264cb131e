"""Training parity of the segmenter (group ``train_deeplab``) against kazuto1011/deeplab-pytorch's
``main.py train``: DeepLab v2 (ResNet + ASPP, output stride 8), BatchNorm frozen, SGD with
momentum over the backbone at ``lr`` and the ASPP at ``10 lr``, weight decay, per-step poly decay,
cross-entropy with 255 ignored.

Our side is :class:`~rpnet_pl.stages.segmenter.SegmenterStage` built from the ``segmenter.model``
section of ``experiments/base.yaml`` (the stage's own defaults outside a source checkout), with
two values set for the case: ``head: aspp`` (the reference's head; our default is the paper's
LargeFOV) and ``pretrained: false`` (the weights come from the case's seed). Its backbone is
built with ``blocks`` bottlenecks per stage (``[1, 1, 1, 1]``, timm's ``layers`` argument) so that
a 2-core CPU checks a case in about 3 s; every code path of the full network runs (frozen
stem and BatchNorms, dilated stride-1 stages, the 10x head group). The optimiser and schedule come
from the stage's ``configure_optimizers`` (with ``max_steps`` as Lightning's
``estimated_stepping_batches``), the loss from its ``training_losses``; the loop is Lightning's
automatic optimisation: loss, zero_grad, backward, step, scheduler step.

Initial weights: :func:`~rpnet_pl.parity_training.seeded_state` over the reference's state-dict
names (``layer2.block1.reduce.conv.weight``, ``aspp.c0.bias``, ...), renamed to ours by
:func:`reference_name`. Where the reference run was patched to our recipe (one scale, stem frozen,
ASPP biases with the weights; see ``scripts/training_parity_deeplab.py``), the case holds the
patched run; those differences are listed in docs/parity.md.

Case keys (``train_deeplab_<i>.npz``): ``seed``; ``images`` (N, 3, S, S) float32 network inputs and
``labels`` (N, S, S) uint8 with 255 ignored; ``batch_size`` B (step t takes images
``(t B + j) mod N``); ``steps`` K; ``max_steps`` the poly horizon; ``num_classes``; ``blocks``
(4,); ``loss`` (K,) the loss of each step; ``lr`` (K, G) each non-empty group's learning rate at
each step, ``lr_final`` (G,) after the K-th scheduler step, ``group_sizes`` (G,) tensors per
group; ``names`` (T,) the reference's state-dict names; ``final`` (T, 3) and ``delta`` (T, 3) the
:func:`~rpnet_pl.parity_training.checksums` (sum, sum of squares, sum of |x|) of each tensor after
training and of its change from the initial weights.

Tolerances: both sides run the same float32 PyTorch operations on the same shapes; on this CPU
the two runs are bit-identical (0 difference in every check of the shipped cases). What the checks
must allow is another kernel for the same operation (another machine, a GPU): measured with our
side in channels-last layout (oneDNN's NHWC convolutions, another summation order), the worst
errors over the shipped cases are 1.6e-5 relative in a step's loss, 1.3e-7 in a final checksum and
8.5e-4 in a weight change (units below). Checked, with a margin of about 6x over those:

* ``loss``: ``rtol 1e-4, atol 1e-6`` per step (the project's map tolerance);
* ``lr``, ``lr_final``: ``rtol 1e-6`` (the same arithmetic on both sides);
* ``final_weights``: each tensor's checksums in units of :func:`per_tensor` (its sum and sum of
  |x| per its sum of |x|, its sum of squares per itself), within 1e-6;
* ``weight_change``: the checksums of each tensor's change (final - initial, float64) in the
  units of :func:`per_tensor` of the reference's change, within 5e-3. The weights move by about
  1e-4 of themselves (lr 2.5e-4, 12 steps), too little for the final checksums to tell a slightly
  wrong update; their change shows a 1 % error in the learning rate (4e-2), weight decay left out
  (2e-2), another momentum or head multiplier (about 1); a tensor the reference left exactly
  unchanged (the stem, the BatchNorms) must stay exactly unchanged.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rpnet_pl.parity_training import GROUPS, checksums, resnet_blocks, seeded_state, stage_optimizer

GROUP = "train_deeplab"
KEYS = ("seed", "images", "labels", "batch_size", "steps", "max_steps", "num_classes", "blocks", "loss", "lr",
        "lr_final", "group_sizes", "names", "final", "delta")
#: (rtol, atol) of the per-step losses; rtol of the learning rates
RTOL, ATOL = 1e-4, 1e-6
LR_RTOL = 1e-6
#: the error allowed in each tensor's final checksums and in those of its change, in the units of
#: :func:`per_tensor`
FINAL_ATOL, DELTA_ATOL = 1e-6, 5e-3

#: our bottleneck convolution / BatchNorm -> kazuto's ``_ConvBnReLU`` inside a ``_Bottleneck``
_UNITS = {"conv1": "reduce.conv", "bn1": "reduce.bn", "conv2": "conv3x3.conv", "bn2": "conv3x3.bn",
          "conv3": "increase.conv", "bn3": "increase.bn", "downsample.0": "shortcut.conv",
          "downsample.1": "shortcut.bn"}


def reference_name(ours: str) -> str:
    """Our DeepLab state-dict name -> kazuto's ``DeepLabV2`` name: the stem ``conv1``/``bn1`` ->
    ``layer1.conv1.{conv,bn}``, ``layer{i}.{j}.convK`` -> ``layer{i+1}.block{j+1}.<unit>.conv``,
    ``head.branches.{i}`` -> ``aspp.c{i}``."""
    name = ours.removeprefix("backbone.body.")
    m = re.match(r"^(conv1|bn1)\.(.+)$", name)
    if m:
        return f"layer1.conv1.{'conv' if m.group(1) == 'conv1' else 'bn'}.{m.group(2)}"
    m = re.match(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.\d)\.(.+)$", name)
    if m:
        return f"layer{int(m.group(1)) + 1}.block{int(m.group(2)) + 1}.{_UNITS[m.group(3)]}.{m.group(4)}"
    m = re.match(r"^head\.branches\.(\d+)\.(.+)$", ours)
    if m:
        return f"aspp.c{m.group(1)}.{m.group(2)}"
    raise KeyError(f"no kazuto1011/deeplab-pytorch name for {ours!r}")


def segmenter_config() -> dict[str, Any]:
    """The ``segmenter.model`` section of ``experiments/base.yaml`` (the default experiment), or {}
    (the stage's defaults) when the package runs outside a source checkout."""
    path = Path(__file__).resolve().parents[3] / "experiments" / "base.yaml"
    if not path.is_file():
        return {}
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.pipeline.registry import SEGMENTER

    return dict(load_experiment(path).get(SEGMENTER.name, {}).get("model", {}))


def build_stage(num_classes: int, blocks: tuple[int, ...], channels_last: bool = False):
    """Our :class:`SegmenterStage` from the default experiment, ``head: aspp``, no ImageNet weights
    (``channels_last``: the stage's own switch, for ``rpnet parity --channels-last``)."""
    from rpnet_pl.pipeline.registry import SEGMENTER
    from rpnet_pl.stages.checkpoints import build_stage

    kwargs = {**segmenter_config(), "head": "aspp", "pretrained": False, "weights": None,
              "num_classes": int(num_classes)}
    if channels_last:
        kwargs["channels_last"] = True
    with resnet_blocks(blocks):
        return build_stage(SEGMENTER.name, **kwargs)


def seed_reference_weights(model: torch.nn.Module, seed: int) -> dict[str, str]:
    """Load :func:`seeded_state` of the reference's names (shapes from ``model``) into ``model``;
    returns our name -> the reference's."""
    names = {k: reference_name(k) for k in model.state_dict()}
    with torch.device("cpu"):  # the seeded generators are CPU ones
        ref = seeded_state({names[k]: v.shape for k, v in model.state_dict().items()}, seed)
    model.load_state_dict({k: ref[names[k]] for k in names})
    return names


def train_ours(case: Mapping[str, np.ndarray], channels_last: bool = False) -> dict[str, Any]:
    """K steps of our stage on the case's batches: ``loss`` (K,), ``lr`` (K, G), ``lr_final`` (G,),
    ``group_sizes`` (G,), ``state`` (reference name -> tensor) and ``initial`` (the same, before)."""
    stage = build_stage(int(case["num_classes"]), tuple(int(b) for b in case["blocks"]), channels_last)
    names = seed_reference_weights(stage.model, int(case["seed"]))
    stage.setup("fit")  # what Lightning calls: the weights in channels-last layout when asked
    initial = {names[k]: v.detach().clone() for k, v in stage.model.state_dict().items()}
    stage.train()  # what Lightning does before fitting (the backbone keeps its BatchNorms in eval mode)
    opt, sched, _ = stage_optimizer(stage, int(case["max_steps"]))
    images = torch.as_tensor(np.ascontiguousarray(case["images"]), dtype=torch.float32)
    labels = torch.as_tensor(np.ascontiguousarray(case["labels"]), dtype=torch.long)
    n, b = images.shape[0], int(case["batch_size"])
    losses, lrs = [], []
    for t in range(int(case["steps"])):
        idx = [(t * b + j) % n for j in range(b)]
        lrs.append([g["lr"] for g in opt.param_groups])
        loss = stage.training_losses({"image": images[idx], "label": labels[idx]})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return {"loss": np.array(losses), "lr": np.array(lrs), "lr_final": np.array([g["lr"] for g in opt.param_groups]),
            "group_sizes": np.array([len(g["params"]) for g in opt.param_groups]),
            "state": {names[k]: v.detach() for k, v in stage.model.state_dict().items()}, "initial": initial}


def checksum_table(state: Mapping[str, torch.Tensor], names: list[str]) -> np.ndarray:
    """(T, 3) :func:`checksums` of ``state``'s tensors in the order of ``names``."""
    sums = checksums({k: state[k] for k in names})
    return np.stack([sums[k] for k in names]) if names else np.zeros((0, 3))


def per_tensor(table: np.ndarray) -> np.ndarray:
    """The unit of each checksum in a (T, 3) table: a tensor's sum and sum of |x| in units of its
    sum of |x|, its sum of squares in units of itself (a sum near 0 by cancellation gets no looser
    or tighter tolerance than the tensor's size deserves); an all-zero tensor in units of 1e-300, so
    that only exact zeros match it."""
    unit = np.stack([table[:, 2], table[:, 1], table[:, 2]], axis=1)
    return np.where(unit > 0, unit, 1e-300)


def check_train_deeplab(c: Mapping[str, np.ndarray], mode: Any = None) -> list:
    """K steps of the reference (``main.py train``) against K of our stage: per-step losses and
    learning rates, group sizes, the final learning rates and every tensor's final checksums and
    change (module docstring: tolerances)."""
    from rpnet_pl.parity import Check, close, equal

    out = train_ours(c, channels_last=bool(getattr(mode, "channels_last", False)))
    ref_names = [str(n) for n in c["names"]]
    odd = set(out["state"]) ^ set(ref_names)  # tensors one side has and the other lacks
    checks = [Check("names", float(len(odd)), len(odd) / max(len(ref_names), 1), not odd, "equal")]
    if not checks[0].passed:
        return checks
    final = checksum_table(out["state"], ref_names)
    delta = checksum_table({k: out["state"][k].double() - out["initial"][k].double() for k in ref_names}, ref_names)
    ref_final, ref_delta = (np.asarray(c[k], dtype=np.float64) for k in ("final", "delta"))
    checks += [
        close("loss", out["loss"], c["loss"], RTOL, ATOL),
        equal("group_sizes", out["group_sizes"], c["group_sizes"]),
        close("lr", out["lr"], c["lr"], LR_RTOL, 0.0),
        close("lr_final", out["lr_final"], c["lr_final"], LR_RTOL, 0.0),
        close("final_weights", final / per_tensor(ref_final), ref_final / per_tensor(ref_final), 0.0, FINAL_ATOL),
        close("weight_change", delta / per_tensor(ref_delta), ref_delta / per_tensor(ref_delta), 0.0, DELTA_ATOL),
    ]
    return checks


GROUPS[GROUP] = (KEYS, check_train_deeplab)
