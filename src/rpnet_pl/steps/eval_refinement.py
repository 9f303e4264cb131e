"""Where boundary refinement gains or loses (`rpnet eval-refinement`): the pseudo masks of a split
with ground truth after each step of the refinement (CAMs alone, damped by the boundary, random walks
of growing length), with IRN's learned boundary or the ideal one drawn from the masks. A diagnosis
of the Table I "+ BR" gain, beside the other evaluations of :mod:`rpnet_pl.steps.evaluate`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from rpnet_pl.ops.affinity import mask_boundary
from rpnet_pl.ops.metrics import confusion_matrix, iou_from_confusion, miou
from rpnet_pl.ops.params import RANDOM_WALK, REFINEMENT_EXP_TIMES, RandomWalkParams
from rpnet_pl.ops.random_walk import fit_to_map, propagate_cams, sem_seg_from_rw
from rpnet_pl.steps.cam_inference import read_cam
from rpnet_pl.steps.evaluate import json_number, per_class_json
from rpnet_pl.stages.refine import RefineStage
from rpnet_pl.pipeline.registry import REFINE, EvalRefinementOptions


def refinement_steps(cams: torch.Tensor, boundary: torch.Tensor, keys: torch.Tensor, image_size: tuple[int, int],
                     exp_times: Sequence[int] = REFINEMENT_EXP_TIMES, radius: int = RANDOM_WALK.radius,
                     beta: float = RANDOM_WALK.beta, bg: float = RANDOM_WALK.bg_threshold) -> dict[str, np.ndarray]:
    """Pseudo masks of one image after each step of the refinement (spec "Pseudo masks"):

    * ``cam``: the strided CAMs alone (x4 up, global max, background ``bg``, argmax);
    * ``cam x (1-B)``: the CAMs damped by the boundary map, no walk;
    * ``walk 2^e``: the full recipe with ``2 ** e`` random-walk steps, for each ``e`` in ``exp_times``.

    cams (K, h, w), boundary (h, w), keys (K,) class ids. Returns name -> (H, W) int64 label map.
    """
    out = {"cam": sem_seg_from_rw(cams, keys, image_size, bg=bg),
           "cam x (1-B)": sem_seg_from_rw(cams * (1.0 - boundary), keys, image_size, bg=bg)}
    for e in exp_times:
        rw = propagate_cams(cams, boundary, radius=radius, beta=beta, exp_times=e)
        out[f"walk 2^{e}"] = sem_seg_from_rw(rw, keys, image_size, bg=bg)
    return out


BOUNDARY_SOURCES = ("learned", "ground_truth")


def refinement_breakdown(stage: RefineStage, cams_dir: str | Path, root: str, dataset: str = "voc",
                         split: str = "train", exp_times: Sequence[int] = REFINEMENT_EXP_TIMES,
                         boundary_source: str = "learned", params: RandomWalkParams = RANDOM_WALK) -> dict[str, Any]:
    """mIoU and foreground share of the pseudo masks after each step of :func:`refinement_steps` over
    a split with ground truth (a diagnosis of the Table I "+ BR" gain; `rpnet eval-refinement`).

    ``boundary_source="ground_truth"`` walks over the ideal boundary map drawn from each ground-truth
    mask (:func:`mask_boundary`) instead of IRN's: what the walk can do with these seeds when the
    boundary is right, which splits a loss between the boundary network and the seeds.
    Also reports the mean boundary probability. The walk's radius, beta, background threshold and
    padding are ``params``' (its ``exp_times`` is replaced by ``exp_times``). Returns
    ``{"split", "n_images", "boundary_source", "mean_boundary", "steps": {name: {"miou",
    "fg_fraction", "per_class_iou"}}}`` (nan -> None).
    """
    if boundary_source not in BOUNDARY_SOURCES:
        raise ValueError(f"boundary_source must be one of {BOUNDARY_SOURCES}, got {boundary_source!r}")
    from rpnet_pl.data.datamodules import InferenceDataModule

    dm = InferenceDataModule(root=root, dataset=dataset, split=split, with_mask=True, num_workers=0)  # type: ignore[arg-type]
    reader = dm.reader
    c = reader.num_classes
    conf: dict[str, np.ndarray] = {}
    boundary_sum, n = 0.0, 0
    stage.eval()
    with torch.no_grad():
        for item in dm.dataset_:
            image, gt = item["image"][None].to(stage.device), item["mask"].numpy()
            if boundary_source == "learned":
                boundary = stage.model.boundary(image, pad_to=params.pad_to or None)
            else:
                size4 = tuple((s - 1) // stage.model.stride + 1 for s in gt.shape)
                boundary = torch.as_tensor(mask_boundary(gt, size4, stage.model.stride), device=stage.device)
            record = read_cam(cams_dir, item["id"])
            cams = torch.as_tensor(record["cam"], dtype=torch.float32, device=boundary.device)
            keys = torch.as_tensor(record["keys"], dtype=torch.long)
            cams = fit_to_map(cams, tuple(boundary.shape))
            steps = refinement_steps(cams, boundary, keys, gt.shape, exp_times, radius=params.radius,
                                     beta=params.beta, bg=params.bg_threshold)
            for name, pred in steps.items():
                conf.setdefault(name, np.zeros((c, c), dtype=np.int64))
                conf[name] += confusion_matrix(pred, gt, c)
            boundary_sum += float(boundary.mean())
            n += 1
    result: dict[str, Any] = {"split": split, "dataset": dataset, "n_images": n, "boundary_source": boundary_source,
                              "mean_boundary": boundary_sum / max(n, 1), "steps": {}}
    for name, m in conf.items():
        iou = iou_from_confusion(m)
        result["steps"][name] = {
            "miou": json_number(miou(m)),
            "fg_fraction": json_number(float(m[:, 1:].sum() / max(m.sum(), 1))),
            "per_class_iou": per_class_json(iou, reader.class_names),
        }
    return result


def format_breakdown(result: dict[str, Any]) -> str:
    """Markdown table of a :func:`refinement_breakdown` result."""
    lines = ["| step | mIoU (%) | predicted foreground (%) |", "|---|---:|---:|"]
    for name, row in result["steps"].items():
        m = "-" if row["miou"] is None else f"{100 * row['miou']:.1f}"
        lines.append(f"| {name} | {m} | {100 * row['fg_fraction']:.1f} |")
    lines.append(f"\n({result['n_images']} image(s), split {result['split']}, "
                 f"{result.get('boundary_source', 'learned').replace('_', ' ')} boundary, "
                 f"mean boundary probability {result['mean_boundary']:.3f})")
    return "\n".join(lines)


def eval_refinement(ckpt: str | Path, cams_dir: str | Path, root: str, dataset: str = "voc", split: str = "train",
                    exp_times: Sequence[int] = REFINEMENT_EXP_TIMES, boundary_source: str = "learned",
                    radius: int = RANDOM_WALK.radius, beta: float = RANDOM_WALK.beta,
                    bg_threshold: float = RANDOM_WALK.bg_threshold,
                    pad_to: int | None = RANDOM_WALK.pad_to) -> dict[str, Any]:
    """`rpnet eval-refinement`: :func:`refinement_breakdown` of a refine checkpoint with these
    random-walk settings (on the GPU when there is one)."""
    from rpnet_pl.steps.inference import load_for_inference

    stage = load_for_inference(RefineStage, ckpt, REFINE.name)
    if torch.cuda.is_available():
        stage = stage.cuda()
    params = RandomWalkParams(radius=radius, beta=beta, bg_threshold=bg_threshold, pad_to=pad_to or 0)
    return refinement_breakdown(stage, cams_dir, root, dataset=dataset, split=split, exp_times=exp_times,
                                boundary_source=boundary_source, params=params)


__all__ = ["BOUNDARY_SOURCES", "eval_refinement", "format_breakdown", "refinement_breakdown", "refinement_steps"]


def eval_refinement_step(o: EvalRefinementOptions) -> int:
    """`rpnet eval-refinement`: :func:`eval_refinement`, printed and written to ``o.out``."""
    from rpnet_pl.utils.io import write_json

    result = eval_refinement(o.ckpt, o.cams, o.root, dataset=o.dataset, split=o.split, exp_times=o.exp_times,
                             boundary_source=o.boundary.replace("-", "_"), radius=o.radius, beta=o.beta,
                             bg_threshold=o.bg_threshold, pad_to=o.pad_to)
    print(format_breakdown(result))
    if o.out:
        print(f"wrote {write_json(o.out, result)}")
    return 0
