"""``rpnet parity``: our functions on the inputs of cases computed by the public IRN / RPNet code.

A case file is ``<group>_<i>.npz`` (format: the project's ``parity_cases/README.md``), holding the
inputs of one reference function and its outputs. Each group's checker runs the project's own
functions and modules on those inputs and compares, with the tolerances fair for float32:
maps and losses ``|ours - ref| <= atol + rtol |ref|`` (rtol 1e-4, atol 1e-5); the random walk
``|ours - ref| <= 1e-4 max|ref|`` (``exp_times`` 8 accumulates about 3e-5 relative); label maps
and index layouts exactly equal.

A :class:`ParityMode` runs the cases on another device and / or in the GPU path's modes (bf16
autocast, channels-last modules and inputs), with the same tolerances: ``rpnet parity --device cuda
--bf16 --channels-last`` says which groups keep parity in that mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from rpnet_pl.utils.errors import ConfigError, DatasetError

RTOL, ATOL = 1e-4, 1e-5
RW_RTOL = 1e-4


@dataclass(frozen=True)
class ParityMode:
    """Where and how the checks run: ``device``; ``bf16`` autocast around each check; the RPNet
    head's weights and inputs in ``channels_last``."""

    device: str = "cpu"
    bf16: bool = False
    channels_last: bool = False

    def describe(self) -> str:
        return ", ".join([self.device, "bf16 autocast" if self.bf16 else "fp32"]
                         + (["channels_last"] if self.channels_last else []))


FP32 = ParityMode()


class ParityCaseError(DatasetError):
    """A case file that is missing, unreadable or lacks a key its group needs."""


@dataclass
class Check:
    """One compared output: worst absolute and relative error, the rule, and the verdict."""

    name: str
    abs_err: float
    rel_err: float
    passed: bool
    tolerance: str


@dataclass
class CaseResult:
    path: Path
    group: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


# -- comparisons ----------------------------------------------------------------------------------
def _np(x: Any) -> np.ndarray:
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach().cpu()
    return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()  # numpy has no bf16


def close(name: str, ours: Any, ref: Any, rtol: float = RTOL, atol: float = ATOL) -> Check:
    """Element-wise ``|ours - ref| <= atol + rtol |ref|`` (float64 arithmetic)."""
    a, b = _np(ours).astype(np.float64), _np(ref).astype(np.float64)
    if a.shape != b.shape:
        return Check(name, float("inf"), float("inf"), False, f"shape {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-12)
    ok = bool(np.all(d <= atol + rtol * np.abs(b)))
    return Check(name, float(d.max(initial=0.0)), float(d.max(initial=0.0)) / scale, ok, f"rtol {rtol:g}, atol {atol:g}")


def close_to_max(name: str, ours: Any, ref: Any, rtol: float = RW_RTOL) -> Check:
    """``max |ours - ref| <= rtol max|ref|`` (an error relative to the map's peak)."""
    a, b = _np(ours).astype(np.float64), _np(ref).astype(np.float64)
    if a.shape != b.shape:
        return Check(name, float("inf"), float("inf"), False, f"shape {a.shape} vs {b.shape}")
    d = float(np.abs(a - b).max(initial=0.0))
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-12)
    return Check(name, d, d / scale, d <= rtol * scale + 1e-12, f"rtol {rtol:g} of max")


def equal(name: str, ours: Any, ref: Any) -> Check:
    """Exactly equal (labels, indices); the error is the share of differing entries."""
    a, b = _np(ours), _np(ref)
    if a.shape != b.shape:
        return Check(name, float("inf"), float("inf"), False, f"shape {a.shape} vs {b.shape}")
    wrong = int(np.count_nonzero(a.astype(np.int64) != b.astype(np.int64)))
    share = wrong / max(a.size, 1)
    return Check(name, float(wrong), share, wrong == 0, "equal")


# -- the groups -----------------------------------------------------------------------------------
def _t(x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A case's array as a tensor on the current default device (``torch.device`` context)."""
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


def check_random_walk(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """IRN ``propagate_to_edge`` -> our :func:`propagate_cams`; ``make_sem_seg_labels``' last step
    -> our :func:`sem_seg_from_rw` (fed the reference's walk, so ties are not ours to break)."""
    from rpnet_pl.ops.random_walk import propagate_cams, sem_seg_from_rw

    rw = propagate_cams(_t(c["cams"]), _t(c["edge"]), int(c["radius"]), float(c["beta"]), int(c["exp_times"]))
    mask = sem_seg_from_rw(_t(c["rw"]), c["keys"] + 1, tuple(int(v) for v in c["image_size"]), float(c["bg"]))
    return [close_to_max("rw", rw, c["rw"]), equal("pseudo_mask", mask, c["pseudo_mask"])]


def check_ir_labels(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """IRN ``cam_to_ir_label`` (with its denseCRF) -> our :func:`cam_to_ir_label`."""
    from rpnet_pl.ops.cam import cam_to_ir_label
    from rpnet_pl.ops.crf import crf_inference_label

    crf = partial(crf_inference_label, t=int(c["crf_t"]), gt_prob=float(c["crf_gt_prob"]))
    ours = cam_to_ir_label(c["high_res"], c["keys"] + 1, c["image"], float(c["fg_thres"]), float(c["bg_thres"]),
                           crf_fn=crf)
    return [equal("ir_label", ours, c["ir_label"])]


def check_cam_postprocess(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """``make_cam`` after the network -> our :func:`combine_scales` + :func:`max_normalise`."""
    from rpnet_pl.ops.cam import max_normalise
    from rpnet_pl.steps.cam_inference import combine_scales

    outputs = [_t(c[f"output_{j}"]) for j in range(len(c["scales"]))]
    size = tuple(int(v) for v in c["image_size"])
    strided, high = combine_scales(outputs, size)
    keys = torch.nonzero(_t(c["label"]) > 0.5).flatten()
    return [equal("keys", keys, c["keys"]), close("cam", max_normalise(strided[keys]), c["cam"]),
            close("high_res", max_normalise(high[keys]), c["high_res"])]


def check_path_index(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """IRN ``PathIndex``: the direction set (any order), IRN's pair order, the source window and
    destinations of the IRN-loss layout, and the pixels on every path."""
    from rpnet_pl.ops.path_index import path_pixels, reference_direction_order, search_directions, source_window

    radius = int(c["radius"])
    h, w = (int(v) for v in c["size"])
    ref_dirs = np.asarray(c["search_dst"], dtype=np.int64)
    ours = search_directions(radius)
    checks = [equal("direction set", np.asarray(sorted(map(tuple, ours))), np.asarray(sorted(map(tuple, ref_dirs)))),
              equal("direction order", ours[reference_direction_order(radius)], ref_dirs)]
    hp, wp, x0 = source_window(h, w, radius)
    src = (np.arange(hp)[:, None] * w + x0 + np.arange(wp)[None, :]).reshape(-1)
    checks.append(equal("src_indices", src, c["src_indices"]))
    dst = np.stack([src + dy * w + dx for dy, dx in ref_dirs])
    checks.append(equal("dst_indices", dst, c["dst_indices"]))
    wrong = total = 0
    for j in range(int(c["n_path_lengths"])):
        paths = np.asarray(c[f"path_indices_{j}"], dtype=np.int64)  # (n_dirs, length, P)
        for path in paths:
            offsets = path - src[None, :]  # the same offset at every source
            total += 1
            if not np.all(offsets == offsets[:, :1]):
                wrong += 1
                continue
            off = offsets[:, 0]
            pixels = {(int(np.round(o / w)), int(o - np.round(o / w) * w)) for o in off}
            dy, dx = max(pixels, key=lambda p: abs(p[0]) + abs(p[1]))
            wrong += int(pixels != set(path_pixels(dy, dx)))
    checks.append(Check("path pixels", float(wrong), wrong / max(total, 1), wrong == 0, "equal"))
    return checks


def check_irn_loss(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """IRN ``GetAffinityLabelFromIndices`` + ``AffinityDisplacementLoss`` + ``train_irn``'s loss ->
    our :func:`irn_objective` (pair tensors permuted to IRN's (B, D, P) layout)."""
    from rpnet_pl.ops.path_index import reference_direction_order
    from rpnet_pl.stages.refine import irn_objective

    radius = int(c["radius"])
    terms = irn_objective(_t(c["edge_logit"]), _t(c["disp"]), _t(c["reduced_labels"], torch.long), radius)
    order = torch.from_numpy(reference_direction_order(radius))

    def layout(x: torch.Tensor) -> torch.Tensor:  # (B, D, h', w') ours -> (B, D, P) IRN's
        return x[:, order].flatten(2)

    return [
        equal("aff_bg_pos_label", layout(terms["pos_bg"]), c["aff_bg_pos_label"]),
        equal("aff_fg_pos_label", layout(terms["pos_fg"]), c["aff_fg_pos_label"]),
        equal("aff_neg_label", layout(terms["neg"]), c["aff_neg_label"]),
        close("affinity", layout(terms["affinity"]), c["affinity"]),
        close("pos_aff_loss", terms["pos_bg_loss"] / 2 + terms["pos_fg_loss"] / 2, c["pos_aff_loss"]),
        close("neg_aff_loss", terms["neg_loss"], c["neg_aff_loss"]),
        close("dp_fg_loss", terms["dp_fg_loss"], c["dp_fg_loss"]),
        close("dp_bg_loss", terms["dp_bg_loss"], c["dp_bg_loss"]),
        close("total_loss", terms["loss"], c["total_loss"]),
    ]


def rpnet_head_from_case(c: Mapping[str, np.ndarray], **overrides: Any):
    """Our :class:`RPNetHead` with the case's sizes, settings and weights (reference names ``w.*``,
    loaded through :func:`map_reference_state_dict`; the case's reference heads share the anchor's)."""
    from rpnet_pl.models.reference_weights import map_reference_state_dict
    from rpnet_pl.models.rpnet import RPNetHead, head_defaults

    kw: dict[str, Any] = dict(num_classes=int(c["plain_cam_x"].shape[1]), mid=int(c["mid"]), alpha=float(c["alpha"]),
                              gaussian_size=int(c["gauss_size"]), sigma=float(c["gauss_sigma"]),
                              fg_scale=float(c["scale"]), levels=(2, 4))
    kw.update(overrides)
    head = RPNetHead(int(c["f4_x"].shape[1]), **head_defaults(**kw))
    ref = {k[2:]: torch.from_numpy(np.asarray(c[k])) for k in c if k.startswith("w.")}
    for name in list(ref):  # "the y branch uses the same weights"
        for x_name, y_name in (("self_atten_x.", "self_atten_y."), ("cross_atten_x.", "cross_atten_y."),
                               ("classifierx.", "classifiery.")):
            if name.startswith(x_name):
                ref[y_name + name[len(x_name):]] = ref[name]
    mapped = map_reference_state_dict({"resnet50.fc.weight": torch.zeros(1), **ref}, kind="rpnet")
    if mapped.unmatched:
        raise ParityCaseError(f"weights with unknown names: {mapped.unmatched[:5]}")
    state = {k[len("head."):]: v for k, v in mapped.state.items()}
    target = head.state_dict()
    state = {k: v for k, v in state.items() if k in target}
    head.load_state_dict(state, strict=False)
    return head


def _pair(x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """Anchor batch x and reference batch y (B, ...) -> our group-major (B*2, ...)."""
    return torch.stack([_t(x), _t(y)], dim=1).flatten(0, 1)


def check_rpnet_head(c: Mapping[str, np.ndarray], mode: ParityMode = FP32) -> list[Check]:
    """RPNet ``Net.forward`` after the backbone and ``train_cam``'s loss at one scale -> our
    :class:`RPNetHead` and :func:`multilabel_loss` / :func:`self_supervised_loss`."""
    from rpnet_pl.models.rpnet import multilabel_loss, self_supervised_loss

    head = rpnet_head_from_case(c).eval()  # the reference normalises with batch statistics in eval mode too
    layout = torch.channels_last if mode.channels_last else torch.contiguous_format
    head = head.to(memory_format=layout)
    keep = {4: _pair(c["keep_x_f4"], c["keep_y_f4"]), 2: _pair(c["keep_x_f2"], c["keep_y_f2"])}
    f4, f2 = (_pair(c[f"{n}_x"], c[f"{n}_y"]).contiguous(memory_format=layout) for n in ("f4", "f2"))
    with torch.no_grad():
        out = head(f4, {2: f2}, k=2, part_keep=keep)
    b = c["f4_x"].shape[0]
    cams = out["cams"].reshape(b, 2, *out["cams"].shape[1:])
    enh = out["enhanced"].reshape(b, 2, *out["enhanced"].shape[1:])
    checks = []
    for j, s in enumerate("xy"):
        label = _t(c["label" if s == "x" else "label_ref"])
        checks += [close(f"plain_cam_{s}", cams[:, j], c[f"plain_cam_{s}"]),
                   close(f"enhanced_cam_{s}", enh[:, j], c[f"enhanced_cam_{s}"]),
                   close(f"loss_cls_{s}", multilabel_loss(cams[:, j].mean(dim=(2, 3)), label), c[f"loss_cls_{s}"]),
                   close(f"loss_ls_{s}", self_supervised_loss(cams[:, j], F.relu(enh[:, j]), label, lam=10.0),
                         c[f"loss_ls_{s}"])]
    return checks


GROUPS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, np.ndarray], ParityMode], list[Check]]]] = {
    "random_walk": (("cams", "edge", "radius", "beta", "exp_times", "rw", "keys", "image_size", "bg",
                     "pseudo_mask"), check_random_walk),
    "ir_labels": (("image", "high_res", "keys", "fg_thres", "bg_thres", "crf_t", "crf_gt_prob", "ir_label"),
                  check_ir_labels),
    "cam_postprocess": (("image_size", "label", "scales", "keys", "cam", "high_res", "output_0"),
                        check_cam_postprocess),
    "path_index": (("radius", "size", "search_dst", "src_indices", "dst_indices", "n_path_lengths",
                    "path_indices_0"), check_path_index),
    "irn_loss": (("reduced_labels", "radius", "aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label",
                  "edge_logit", "disp", "affinity", "pos_aff_loss", "neg_aff_loss", "dp_fg_loss", "dp_bg_loss",
                  "total_loss"), check_irn_loss),
    "rpnet_head": (("f2_x", "f2_y", "f4_x", "f4_y", "keep_x_f4", "keep_y_f4", "keep_x_f2", "keep_y_f2",
                    "plain_cam_x", "plain_cam_y", "enhanced_cam_x", "enhanced_cam_y", "label", "label_ref",
                    "loss_cls_x", "loss_cls_y", "loss_ls_x", "loss_ls_y", "mid", "alpha", "gauss_size",
                    "gauss_sigma", "scale", "w.downsample.weight", "w.classifierx.weight"), check_rpnet_head),
}


def _training_groups() -> None:
    """Add the training groups (:mod:`rpnet_pl.parity_training`): their checkers use this module's
    comparisons, so they are imported once it is complete."""
    from rpnet_pl import parity_training

    parity_training._register()
    GROUPS.update(parity_training.GROUPS)


def case_group(path: Path) -> str:
    """``random_walk_3.npz`` -> ``random_walk``; an unknown group is an error naming the file."""
    stem = path.stem
    group = stem.rsplit("_", 1)[0] if "_" in stem and stem.rsplit("_", 1)[1].isdigit() else stem
    if group not in GROUPS:
        raise ParityCaseError(f"{path}: unknown case group {group!r} (file names are <group>_<i>.npz with group "
                              f"one of {', '.join(GROUPS)})")
    return group


def load_case(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """Read one case file and check that it holds every key its group needs."""
    path = Path(path)
    group = case_group(path)
    if not path.is_file():
        raise ParityCaseError(f"{path}: case file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            case = {k: z[k] for k in z.files}
    except Exception as exc:
        raise ParityCaseError(f"{path}: cannot read as an .npz case ({type(exc).__name__}: {exc})") from exc
    required, _ = GROUPS[group]
    missing = [k for k in required if k not in case]
    if group == "cam_postprocess" and "scales" in case:
        missing += [f"output_{j}" for j in range(len(case["scales"])) if f"output_{j}" not in case]
    if group == "path_index" and "n_path_lengths" in case:
        missing += [f"path_indices_{j}" for j in range(int(case["n_path_lengths"])) if f"path_indices_{j}" not in case]
    if missing:
        raise ParityCaseError(f"{path}: a {group} case needs key(s) {', '.join(dict.fromkeys(missing))}")
    return group, case


def run_case(path: str | Path, mode: ParityMode = FP32) -> CaseResult:
    """Run one case through the project's code, in ``mode``."""
    group, case = load_case(path)
    device = torch.device(mode.device)
    try:
        with device, torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode.bf16):
            checks = GROUPS[group][1](case, mode)
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise ParityCaseError(f"{path}: ill-formed {group} case ({type(exc).__name__}: {exc})") from exc
    return CaseResult(Path(path), group, checks)


def default_cases_dir() -> Path:
    """The cases shipped with the package (computed by the public IRN / RPNet code)."""
    return Path(str(resources.files("rpnet_pl") / "parity_cases"))


def run_parity(directory: str | Path | None = None, mode: ParityMode = FP32) -> list[CaseResult]:
    """Every ``*.npz`` case in ``directory`` (default: the shipped cases), sorted by name, in ``mode``."""
    directory = Path(directory) if directory is not None else default_cases_dir()
    if not directory.is_dir():
        raise ParityCaseError(f"{directory}: not a folder of parity cases")
    files = sorted(directory.glob("*.npz"))
    if not files:
        raise ParityCaseError(f"{directory}: no case files (*.npz)")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return [run_case(f, mode) for f in files]


def summarise(results: list[CaseResult]) -> list[dict[str, Any]]:
    """One row per group: cases, worst absolute / relative error, tolerance(s), pass."""
    rows = []
    for group in dict.fromkeys(r.group for r in results):
        rs = [r for r in results if r.group == group]
        checks = [ch for r in rs for ch in r.checks]
        rows.append({
            "group": group, "cases": len(rs), "passed": sum(r.passed for r in rs),
            "abs_err": max(ch.abs_err for ch in checks if ch.tolerance != "equal") if any(
                ch.tolerance != "equal" for ch in checks) else None,
            "rel_err": max(ch.rel_err for ch in checks if ch.tolerance != "equal") if any(
                ch.tolerance != "equal" for ch in checks) else None,
            "mismatched": int(sum(ch.abs_err for ch in checks if ch.tolerance == "equal")),
            "tolerance": "; ".join(dict.fromkeys(ch.tolerance for ch in checks)),
            "failed": [f"{r.path.name}:{ch.name}" for r in rs for ch in r.checks if not ch.passed],
        })
    return rows


def format_table(results: list[CaseResult]) -> str:
    """The table ``rpnet parity`` prints."""
    lines = [f"{'group':<16} {'cases':>5} {'worst abs':>10} {'worst rel':>10} {'labels off':>10}  "
             f"{'result':<6} tolerance"]
    for row in summarise(results):
        abs_s = f"{row['abs_err']:.2e}" if row["abs_err"] is not None else "-"
        rel_s = f"{row['rel_err']:.2e}" if row["rel_err"] is not None else "-"
        ok = "pass" if row["passed"] == row["cases"] else "FAIL"
        lines.append(f"{row['group']:<16} {row['cases']:>5} {abs_s:>10} {rel_s:>10} {row['mismatched']:>10}  "
                     f"{ok:<6} {row['tolerance']}")
        if row["failed"]:
            lines.append(f"{'':<16} failed: {', '.join(row['failed'][:8])}")
    return "\n".join(lines)


def parity_report(cases_dir: str | Path | None, device: str = "cpu", bf16: bool = False,
                  channels_last: bool = False) -> tuple[str, bool]:
    """`rpnet parity`: every case of ``cases_dir`` (default: those shipped with the package) in one mode;
    returns the text (where, the table, the count) and whether every case passed."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("rpnet parity --device cuda: no CUDA device here")
    mode = ParityMode(device, bf16, channels_last)
    results = run_parity(cases_dir, mode)
    failed = [r for r in results if not r.passed]
    return (f"parity cases: {cases_dir or default_cases_dir()} ({len(results)} files), {mode.describe()}\n"
            f"{format_table(results)}\n{len(results) - len(failed)} passed, {len(failed)} failed"), not failed


__all__ = ["parity_report", "Check", "CaseResult", "FP32", "GROUPS", "ParityCaseError", "ParityMode", "default_cases_dir", "format_table", "load_case",
           "run_case", "run_parity", "summarise"]


_training_groups()
