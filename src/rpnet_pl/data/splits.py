"""Which splits a dataset tree has, what each one enables, and which ones an experiment needs.

A VOC 2012 trainval + SBD tree as people keep it has no test split (the test images are a separate
download): that only rules out the test export, which the pipeline then skips with one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.pipeline.registry import PREDICT_SEG, STEPS

#: What each split is used for, in the order `data check` lists them.
SPLIT_USES: dict[str, dict[str, str]] = {
    "voc": {"train_aug": "training (classifier, CAMs, IR labels, boundary net, pseudo masks, segmenter)",
            "train": "seed / pseudo-mask evaluation (eval_cam, eval_pseudo_masks)",
            "val": "segmentation evaluation (eval_seg)",
            "test": "test export (predict_seg)"},
    "coco": {"train": "training and seed / pseudo-mask evaluation",
             "val": "segmentation evaluation (eval_seg) and the val export (predict_seg)"},
}

#: Splits needed when no experiment is named: the base recipe's (the test export is optional).
DEFAULT_NEEDS: dict[str, tuple[str, ...]] = {"voc": ("train_aug", "train", "val"), "coco": ("train", "val")}

#: Steps whose split may be absent: they are skipped, not failed.
OPTIONAL_STEPS = tuple(s.name for s in STEPS.values() if s.optional_split)

#: SBD's train_aug size (VOC 2012 train: 1,464 images).
TRAIN_AUG_SIZE = 10582


def split_path(dataset: str, root: str | Path, split: str) -> Path:
    """The file (VOC: ``ImageSets/Segmentation/SPLIT.txt``) or folder (COCO: ``train2014``) of a split.

    Raises a DatasetError when the root itself is not a dataset tree.
    """
    if dataset == "voc":
        from rpnet_pl.data.voc import resolve_voc_root

        return resolve_voc_root(root) / "ImageSets" / "Segmentation" / f"{split}.txt"
    if dataset == "coco":
        from rpnet_pl.data.coco import coco_split_dir

        return Path(root).expanduser() / coco_split_dir(split)
    raise DatasetError(f"unknown dataset {dataset!r} (voc or coco)")


def split_exists(dataset: str, root: str | Path, split: str) -> bool:
    """True if the split's list (VOC) or image folder (COCO) exists."""
    return split_path(dataset, root, split).exists()


def absent_split_reason(dataset: str, root: str | Path, split: str, step: str = PREDICT_SEG.name) -> str | None:
    """One line saying that ``split`` is absent and how to add it; None when it exists or the root
    cannot be read (then the step runs and fails with its own error)."""
    try:
        path = split_path(dataset, root, split)
    except DatasetError:
        return None
    if path.exists():
        return None
    if dataset == "voc" and split == "test":
        what = "the VOC2012 test download (its JPEGImages and ImageSets/Segmentation/test.txt)"
    elif dataset == "voc":
        what = f"{path.name} in {path.parent}"
    else:
        what = f"COCO 2014 {path.name} in {path.parent}"
    return (f"no {split} split in {root} ({path} not found); to run it later, add {what} and run "
            f"`rpnet pipeline EXPERIMENT --steps {step}`")


def step_splits(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """split -> the steps of the experiment ``cfg`` that read it (training steps: ``data.split`` and
    ``data.val_split``; the others: their ``split`` and ``calibration_split``)."""
    out: dict[str, list[str]] = {}
    for step in STEPS:
        sec = cfg.get(step)
        if not isinstance(sec, dict):
            continue
        data = sec.get("data") if isinstance(sec.get("data"), dict) else None
        splits = ([data.get("split"), data.get("val_split")] if data is not None
                  else [sec.get("split"), sec.get("calibration_split")])
        for split in splits:
            if split:
                out.setdefault(str(split), []).append(step)
    return out


def needed_splits(cfg: dict[str, Any] | None, dataset: str) -> dict[str, list[str]]:
    """split -> steps that cannot run without it (optional steps left out); the base recipe's
    splits when no experiment is given."""
    if cfg is None:
        return {s: ["(base recipe)"] for s in DEFAULT_NEEDS[dataset]}
    out: dict[str, list[str]] = {}
    for split, steps in step_splits(cfg).items():
        required = [s for s in steps if s not in OPTIONAL_STEPS]
        if required:
            out[split] = required
    return out


__all__ = ["DEFAULT_NEEDS", "OPTIONAL_STEPS", "SPLIT_USES", "TRAIN_AUG_SIZE", "absent_split_reason",
           "needed_splits", "split_exists", "split_path", "step_splits"]
