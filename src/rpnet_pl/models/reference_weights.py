"""Checkpoints of the public reference code, loaded by name into our models.

The public RPNet code saves ``model.module.state_dict()`` of its ``Net_CAM`` (``net/resnet50_cam.py``,
e.g. ``sess/res50_cam.pth``); IRN saves its CAM ``Net`` (``net/resnet50_cam.py``) and its
``AffinityDisplacementLoss`` (``net/resnet50_irn.py``; RPNet's copy adds the non-local blocks
``self_atten1..5``, of which its forward uses 3-5). Their backbone lives under ``resnet50.``
with torchvision's names, and every module appears a second time under the aliases the code
builds around it (``stage1.0.weight`` is ``resnet50.conv1.weight``; ``backbone.*``,
``newly_added.*``, ``edge_layers.*``, ``dp_layers.*``, ``new_layers.*``). :func:`map_reference_state_dict`
renames the canonical keys to ours, drops the aliases and the modules the reference builds but never uses in
its forward, and reports what is left; :func:`load_reference_checkpoint` loads the result and
fails with the list of keys that matched nothing.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rpnet_pl.utils.errors import ConfigError

log = logging.getLogger(__name__)

#: Aliases of modules that the reference registers twice (same tensors under a second name).
ALIAS_PREFIXES = ("stage1.", "stage2.", "stage3.", "stage4.", "stage5.", "backbone.", "newly_added.",
                  "edge_layers.", "dp_layers.", "new_layers.")
#: Modules the public RPNet ``Net`` builds but never calls in ``forward`` (its checkpoints hold them),
#: and its ``gauss.weight`` buffer, the fixed Gaussian kernel that ours rebuilds (``gaussian_kernel``).
RPNET_UNUSED_PREFIXES = ("mask_t.", "mask.", "cross_atten.", "pre_x.", "pre_y.", "gauss.")
#: Non-local blocks of RPNet's copy of IRN that its ``forward`` never calls (it applies ``self_atten3..5``).
RPNET_IRN_UNUSED_PREFIXES = ("self_atten1.", "self_atten2.")
#: Our IRNet's non-local blocks (``self_attention``), which only RPNet's copy of IRN has.
IRN_ATTENTION_PREFIX = "attention."
#: IRN's ``AffinityDisplacement`` stores its pair indices as parameters and its ``disp_target`` (the
#: search directions) as a buffer: we rebuild them. Its ``mean_shift.*`` is an alias of ``fc_dp7.4.*``.
IRN_INDEX_KEYS = re.compile(r"^(path_indices\d+|ind_from|ind_to|disp_target|mean_shift\..+)$")

#: Our tensors that reference checkpoints do not hold (they keep their initial values): BatchNorm step
#: counters, and the running variance of IRNet's MeanShift (IRN's keeps only a running mean).
NOT_IN_REFERENCE = re.compile(r"(^|\.)num_batches_tracked$|^mean_shift\.running_var$")

#: RPNet head modules: reference name -> ours (inside ``head.``). The ``_y`` heads are the
#: reference images' own heads (``separate_reference_heads``).
RPNET_HEADS = {
    "downsample": "down",
    "self_atten_x": "attn_plain",
    "cross_atten_x": "attn_enhanced",
    "classifierx": "classifier",
    "self_atten_y": "attn_plain_ref",
    "cross_atten_y": "attn_enhanced_ref",
    "classifiery": "classifier_ref",
}


@dataclass
class ReferenceMapping:
    """Result of :func:`map_reference_state_dict`: our keys -> tensors, and what was left out."""

    state: dict[str, Tensor] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # aliases, unused modules, rebuilt indices
    unmatched: list[str] = field(default_factory=list)  # keys we do not know at all


def _strip(key: str) -> str:
    for prefix in ("module.",):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _nonlocal_key(rest: str) -> str:
    """Inside a reference ``NONLocalBlock2D``: ``W.0``/``W.1`` (projection conv, BatchNorm) -> ``out.0``/``out.1``."""
    return "out." + rest[2:] if rest.startswith("W.") else rest


def _irn_key(key: str) -> str | None:
    m = re.match(r"^self_atten([345])\.(.*)$", key)  # RPNet's copy of IRN: levels 3-5
    if m:
        return f"{IRN_ATTENTION_PREFIX}{m.group(1)}.{_nonlocal_key(m.group(2))}"
    m = re.match(r"^fc_edge(\d)\.(.*)$", key)
    if m:
        i = int(m.group(1))
        return f"edge_out.{m.group(2)}" if i == 6 else f"edge_levels.{i - 1}.{m.group(2)}"
    m = re.match(r"^fc_dp(\d)\.(.*)$", key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i <= 5:
            return f"dp_levels.{i - 1}.{rest}"
        if i == 6:
            return f"dp_fuse_deep.{rest}"
        if rest.startswith("4."):  # the MeanShift at the end of fc_dp7
            return f"mean_shift.{rest[2:]}"
        return f"dp_out.{rest}"
    return None


def detect_kind(keys: list[str]) -> str:
    """``rpnet`` (RPNet ``Net``), ``cam`` (IRN's CAM ``Net``) or ``irn`` (IRN's boundary network)."""
    names = {_strip(k) for k in keys}
    if "classifierx.weight" in names:
        return "rpnet"
    if any(k.startswith("fc_edge") for k in names):
        return "irn"
    if "classifier.weight" in names:
        return "cam"
    raise ConfigError("not a checkpoint of the public RPNet/IRN code: no classifierx, classifier or fc_edge keys")


def map_reference_state_dict(state: dict[str, Tensor], kind: str | None = None) -> ReferenceMapping:
    """Rename a reference state dict to our module names.

    kind: ``rpnet`` -> :class:`~rpnet_pl.models.rpnet.RPNet`, ``cam`` ->
    :class:`~rpnet_pl.models.cam_net.CAMNet`, ``irn`` -> :class:`~rpnet_pl.models.irn.IRNet`
    (``None``: detected from the keys). The backbone ``resnet50.*`` goes to ``backbone.body.*``
    (timm's ResNet names equal torchvision's); its ``fc`` is dropped.
    """
    kind = kind or detect_kind(list(state))
    out = ReferenceMapping()
    for raw, value in state.items():
        key = _strip(raw)
        target: str | None = None
        if key.startswith("resnet50."):
            rest = key[len("resnet50."):]
            if rest.startswith("fc."):
                out.ignored.append(raw)
                continue
            target = "backbone.body." + rest
        elif key.startswith(ALIAS_PREFIXES):
            out.ignored.append(raw)
            continue
        elif kind == "rpnet":
            if key.startswith(RPNET_UNUSED_PREFIXES):
                out.ignored.append(raw)
                continue
            module, _, rest = key.partition(".")
            if module in RPNET_HEADS:
                target = f"head.{RPNET_HEADS[module]}.{_nonlocal_key(rest)}"
        elif kind == "cam":
            if key.startswith("classifier."):
                target = key
        elif kind == "irn":
            if IRN_INDEX_KEYS.match(key) or key.startswith(RPNET_IRN_UNUSED_PREFIXES):
                out.ignored.append(raw)
                continue
            target = _irn_key(key)
        else:
            raise ConfigError(f"unknown reference checkpoint kind {kind!r} (rpnet | cam | irn)")
        if target is None:
            out.unmatched.append(raw)
        else:
            out.state[target] = value
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ``torch.save``'d state dict (optionally under ``state_dict``/``model``); clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read as a PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and "hyper_parameters" not in obj:
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: not a state dict of tensors")
    return obj


def is_reference_checkpoint(path: str | Path) -> bool:
    """True for a file holding a whole model saved by the public RPNet/IRN code (a ``resnet50.*``
    backbone plus a head), False for anything else (e.g. plain ImageNet backbone weights)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        state = read_state_dict(path)
        detect_kind(list(state))
    except ConfigError:
        return False
    return any(_strip(k).startswith("resnet50.") for k in state)


#: (layer1.0.conv2 weight shape[:2], layer3 blocks) -> our backbone name.
_BACKBONE_SIGNATURES = {
    ((64, 64), 6): "resnet50", ((64, 64), 23): "resnet101",
    ((128, 4), 6): "resnext50", ((256, 8), 23): "resnext101",
    ((128, 128), 6): "wide_resnet50", ((128, 128), 23): "wide_resnet101",
}


def infer_backbone(state: dict[str, Tensor]) -> str:
    """Our backbone name for a reference checkpoint, from its tensor shapes."""
    names = {_strip(k): v for k, v in state.items()}
    if "resnet50.layer1.0.conv3.weight" not in names and "resnet50.layer1.0.conv1.weight" in names:
        return "resnet18"  # BasicBlock ResNet (tests)
    conv2 = names.get("resnet50.layer1.0.conv2.weight")
    if conv2 is None:
        raise ConfigError("cannot tell the backbone: no resnet50.layer1.0.conv2.weight")
    blocks = len({k.split(".")[2] for k in names if k.startswith("resnet50.layer3.")})
    sig = (tuple(conv2.shape[:2]), blocks)
    if sig not in _BACKBONE_SIGNATURES:
        raise ConfigError(f"cannot tell the backbone from layer1 conv2 {tuple(conv2.shape)} and {blocks} "
                          f"layer3 blocks; pass it explicitly")
    return _BACKBONE_SIGNATURES[sig]


def load_reference_checkpoint(model: nn.Module, source: str | Path | dict[str, Tensor],
                              kind: str | None = None) -> ReferenceMapping:
    """Load a reference checkpoint into ``model`` (RPNet, CAMNet or IRNet), by name.

    Fails with :class:`ConfigError` listing the file's keys that map to nothing, the model's
    tensors that the file does not provide, and shape mismatches. With shared reference heads
    (``separate_reference_heads: false``) the file's ``*_y`` heads are skipped with a warning.
    """
    where = str(source) if not isinstance(source, dict) else "state dict"
    state = read_state_dict(source) if not isinstance(source, dict) else source
    mapping = map_reference_state_dict(state, kind)
    target = model.state_dict()
    extra = [k for k in mapping.state if k not in target]
    ref_heads = [k for k in extra if k.startswith(("head.attn_plain_ref.", "head.attn_enhanced_ref.",
                                                   "head.classifier_ref."))]
    if ref_heads:
        log.warning("%s: the reference images' own heads (%d tensors) are not used: this model shares the "
                    "anchor's heads (separate_reference_heads: false)", where, len(ref_heads))
        extra = [k for k in extra if k not in ref_heads]
    missing = [k for k in target if k not in mapping.state and not NOT_IN_REFERENCE.search(k)]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
                  for k, v in mapping.state.items() if k in target and target[k].shape != v.shape]
    problems = []
    if mapping.unmatched:
        problems.append(f"{len(mapping.unmatched)} keys of the file match no module: {mapping.unmatched[:8]}")
    if extra:
        problems.append(f"{len(extra)} keys have no place in this model: {extra[:8]}")
    if missing:
        problems.append(f"{len(missing)} tensors of the model are not in the file: {missing[:8]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shapes differ: {mismatched[:4]}")
    if any(k.startswith(IRN_ATTENTION_PREFIX) for k in extra):
        problems.append("the file is RPNet's copy of IRN, with non-local blocks (self_atten3..5): "
                        "set refine.model.self_attention: true")
    elif any(k.startswith(IRN_ATTENTION_PREFIX) for k in missing):
        problems.append("the file is IRN without non-local blocks (jiwoon-ahn/irn): "
                        "set refine.model.self_attention: false")
    if problems:
        raise ConfigError(f"{where}: cannot load this reference checkpoint into {type(model).__name__}: "
                          + "; ".join(problems))
    model.load_state_dict({k: v for k, v in mapping.state.items() if k in target}, strict=False)
    log.info("%s: loaded %d tensors from a reference checkpoint (%d aliases/unused skipped)", where,
             len(mapping.state), len(mapping.ignored))
    return mapping


__all__ = ["ReferenceMapping", "detect_kind", "infer_backbone", "is_reference_checkpoint",
           "load_reference_checkpoint", "map_reference_state_dict", "read_state_dict"]
