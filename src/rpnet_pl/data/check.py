"""`rpnet data check`: validate a dataset tree before a long run and summarise it.

Every problem is collected (not raised) with the file it concerns, so one pass lists them all.
A split that is absent is a problem only when the chosen experiment (``--experiment``; by default
the base recipe: train_aug, train and val) needs it; otherwise the report says what its absence
rules out (no test split: no test export, which the pipeline skips).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from rpnet_pl.data.classes import COCO_CLASSES, VOC_CLASSES
from rpnet_pl.data.splits import SPLIT_USES, TRAIN_AUG_SIZE, needed_splits, split_path
from rpnet_pl.data.voc import SPLITS, check_mask, labels_from_mask, labels_from_xml, read_split, resolve_voc_root
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_label_png


@dataclass
class CheckReport:
    """What `data check` found: per-split counts, per-class image counts, and problems."""

    root: str
    dataset: str
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, Counter] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    #: split -> mask folder -> images whose mask is read from it (the readers' order: Aug first)
    mask_sources: dict[str, Counter] = field(default_factory=dict)
    multi_label: dict[str, int] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, class_names: tuple[str, ...]) -> str:
        """A readable summary table."""
        uses = SPLIT_USES.get(self.dataset, {})
        lines = [f"dataset: {self.dataset}  root: {self.root}", "",
                 "| split | images | with masks | masks read from | multi-label | enables |",
                 "|---|---:|---:|---|---:|---|"]
        for split in [s for s in uses if s in self.split_sizes or s in self.absent]:
            if split in self.split_sizes:
                sources = ", ".join(f"{d}/ ({n})" for d, n in self.mask_sources.get(split, Counter()).items()) or "-"
                lines.append(f"| {split} | {self.split_sizes[split]} | {self.masks.get(split, 0)} | {sources} | "
                             f"{self.multi_label.get(split, 0)} | {uses[split]} |")
            else:
                lines.append(f"| {split} | absent | - | - | - | not possible: {uses[split]} |")
        splits = [s for s in self.class_counts if self.class_counts[s]]
        if splits:
            lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
            for c in range(1, len(class_names)):
                row = [str(self.class_counts[s].get(c, 0)) for s in splits]
                if any(r != "0" for r in row):
                    lines.append(f"| {class_names[c]} | " + " | ".join(row) + " |")
        lines.append("")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"  ... and {len(self.problems) - 50} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image that decodes, or None if it cannot be opened or is truncated.

    ``verify()`` does not see a truncated JPEG, so the image is decoded (a JPEG at 1/8 scale)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
        return height, width
    except Exception:
        return None


def _absent(report: CheckReport, path: Path, split: str, needs: dict[str, list[str]]) -> None:
    """Record an absent split: a problem when a step needs it, else a line on what it rules out."""
    report.absent.append(split)
    if split in needs:
        report.problems.append(f"{path}: split {split!r} not found, needed by {', '.join(needs[split])}")
    else:
        use = SPLIT_USES.get(report.dataset, {}).get(split, "")
        report.notes.append(f"no {split} split ({path} not found): {use} is skipped")


def _voc_notes(report: CheckReport, voc: Path) -> None:
    """What a tree without SBD (train_aug) or SegmentationClassAug means for training."""
    if "train_aug" in report.absent and "train" in report.split_sizes:
        n = report.split_sizes["train"]
        report.notes.append(
            f"no SBD train_aug list: training can only use train's {n} images instead of train_aug's "
            f"{TRAIN_AUG_SIZE} (about {TRAIN_AUG_SIZE / max(n, 1):.0f}x fewer; expect lower mIoU than the paper); "
            "to train on train, add --set classifier.data.split=train cam.split=train ir_labels.split=train "
            "refine.data.split=train pseudo_masks.split=train segmenter.data.split=train")
    if not (voc / "SegmentationClassAug").is_dir() and "train_aug" in report.split_sizes:
        report.notes.append(
            f"no SegmentationClassAug: the image-level labels of train_aug come from the XML annotations "
            f"(Annotations/), so all {report.split_sizes['train_aug']} train_aug images still train; only the "
            "train and val masks (SegmentationClass) are scored")


def check_voc(root: str | Path, splits: tuple[str, ...] = SPLITS,
              needs: dict[str, list[str]] | None = None) -> CheckReport:
    """Validate a VOC tree: split files, images, XMLs, masks (values and sizes), labels.

    ``needs``: split -> steps that need it (default: the base recipe's train_aug, train, val);
    any other absent split is reported, not failed.
    """
    voc = resolve_voc_root(root)
    report = CheckReport(str(voc), "voc")
    needs = needed_splits(None, "voc") if needs is None else needs
    n_classes = len(VOC_CLASSES)
    found: dict[str, list[str]] = {}  # a problem of an image -> the splits that list the image
    disagree: dict[str, str] = {}  # image -> what its mask and its XML annotation say

    def problem(message: str) -> None:  # once per file, naming every split that lists it
        found.setdefault(message, []).append(split)

    for split in splits:
        path = split_path("voc", voc, split)
        if not path.is_file():
            _absent(report, path, split, needs)
            continue
        try:
            ids = read_split(voc, split)
        except DatasetError as exc:
            report.problems.append(str(exc))
            continue
        report.split_sizes[split] = len(ids)
        counts: Counter = Counter()
        n_masks = n_multi = 0
        sources: Counter = Counter()
        for image_id in ids:
            img = voc / "JPEGImages" / f"{image_id}.jpg"
            if not img.is_file():
                problem(f"{img}: image not found")
                continue
            size = _image_size(img)
            if size is None:
                problem(f"{img}: unreadable image")
                continue
            if split == "test":
                continue
            labels = None
            for sub in ("SegmentationClassAug", "SegmentationClass"):
                mpath = voc / sub / f"{image_id}.png"
                if mpath.is_file():
                    try:
                        mask = read_label_png(mpath)
                        check_mask(mask, mpath, n_classes, size)
                        labels = labels_from_mask(mask)
                        n_masks += 1
                        sources[sub] += 1
                    except DatasetError as exc:
                        problem(str(exc))
                    break
            xml = voc / "Annotations" / f"{image_id}.xml"
            if labels is not None and xml.is_file():
                _compare_with_annotation(labels, xml, image_id, disagree)
            if labels is None and xml.is_file():
                try:
                    labels = labels_from_xml(xml)
                except DatasetError as exc:
                    problem(str(exc))
            if labels is None:
                if split in ("val", "train") and not (voc / "Annotations" / f"{image_id}.xml").is_file():
                    problem(f"{voc / 'SegmentationClass'}/{image_id}.png: no mask and no XML")
                continue
            if len(labels) == 0:
                problem(f"{img}: no class label (skipped in weakly supervised training)")
            n_multi += int(len(labels) > 1)
            counts.update(int(c) for c in labels)
        report.class_counts[split] = counts
        report.masks[split] = n_masks
        report.mask_sources[split] = sources
        report.multi_label[split] = n_multi
    report.problems += [f"{msg} (listed in {', '.join(f'{s}.txt' for s in where)})" for msg, where in found.items()]
    if disagree:
        first = next(iter(disagree.items()))
        report.notes.append(
            f"{len(disagree)} mask(s) hold classes their XML annotation does not name (first: {first[0]}: "
            f"{first[1]}); a mask's values are class ids: a binary 0/1 object mask reads as class 1 "
            f"({VOC_CLASSES[1]}) whatever the object is")
    _voc_notes(report, voc)
    return report


def _compare_with_annotation(labels: np.ndarray, xml: Path, image_id: str, disagree: dict[str, str]) -> None:
    """Note an image whose mask holds a class that its XML annotation does not name."""
    try:
        named = set(labels_from_xml(xml).tolist())
    except DatasetError:
        return  # an unreadable XML is not read when the mask gives the labels
    extra = sorted(set(labels.tolist()) - named)
    if extra:
        disagree.setdefault(image_id, f"mask {', '.join(VOC_CLASSES[c] for c in extra)}, XML "
                                      f"{', '.join(VOC_CLASSES[c] for c in sorted(named)) or 'no object'}")


def check_coco(root: str | Path, needs: dict[str, list[str]] | None = None) -> CheckReport:
    """Validate a COCO tree with label PNGs (see :mod:`rpnet_pl.data.coco`); an absent split
    (image folder) fails only when ``needs`` (default: train and val) names it."""
    from rpnet_pl.data.coco import COCOReader

    report = CheckReport(str(root), "coco")
    if not Path(root).expanduser().is_dir():
        report.problems.append(f"{root}: dataset root not found")
        return report
    needs = needed_splits(None, "coco") if needs is None else needs
    for split in ("train", "val"):
        path = split_path("coco", root, split)
        if not path.is_dir():
            _absent(report, path, split, needs)
            continue
        try:
            reader = COCOReader(root, split, weak=False)
        except DatasetError as exc:
            report.problems.append(str(exc))
            continue
        report.split_sizes[split] = len(reader)
        counts: Counter = Counter()
        n_multi = 0
        for image_id in reader.ids:
            size = _image_size(reader.image_path(image_id))
            if size is None:
                report.problems.append(f"{reader.image_path(image_id)}: unreadable image")
                continue
            try:
                labels = labels_from_mask(reader.mask(image_id, size))
            except DatasetError as exc:
                report.problems.append(str(exc))
                continue
            n_multi += int(len(labels) > 1)
            counts.update(int(c) for c in labels)
        report.class_counts[split] = counts
        report.masks[split] = len(reader)
        report.multi_label[split] = n_multi
    return report


def check_dataset(root: str | Path, dataset: str = "voc",
                  needs: dict[str, list[str]] | None = None) -> tuple[CheckReport, tuple[str, ...]]:
    """Run the checks for ``dataset`` and return the report and the class names; ``needs`` as in
    :func:`check_voc` (see :func:`rpnet_pl.data.splits.needed_splits`)."""
    if dataset == "voc":
        return check_voc(root, needs=needs), VOC_CLASSES
    if dataset == "coco":
        return check_coco(root, needs=needs), COCO_CLASSES
    raise DatasetError(f"unknown dataset {dataset!r} (voc or coco)")


def check_for(root: str | Path, dataset: str = "voc", experiment: str | Path | None = None) -> tuple[str, bool]:
    """`rpnet data check`: the report's text and whether the tree passes; with ``experiment``, its dataset
    layout and only the splits it needs (:func:`rpnet_pl.data.splits.needed_splits`)."""
    needs = None
    if experiment:
        from rpnet_pl.pipeline.config import load_experiment

        cfg = load_experiment(experiment)
        dataset = str((cfg.get("dataset") or {}).get("name", dataset))
        needs = needed_splits(cfg, dataset)
    report, names = check_dataset(root, dataset, needs=needs)
    return report.format(names), report.ok


__all__ = ["check_for", "CheckReport", "check_voc", "check_coco", "check_dataset"]
