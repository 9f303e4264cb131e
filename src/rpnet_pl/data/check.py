"""`rpnet data check`: validate a dataset tree before a long run and summarise it.

Every problem is collected (not raised) with the file it concerns, so one pass lists them all.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from rpnet_pl.data.classes import COCO_CLASSES, VOC_CLASSES
from rpnet_pl.data.voc import SPLITS, check_mask, labels_from_mask, labels_from_xml, read_split, resolve_voc_root
from rpnet_pl.errors import DatasetError
from rpnet_pl.io import read_label_png


@dataclass
class CheckReport:
    """What `data check` found: per-split counts, per-class image counts, and problems."""

    root: str
    dataset: str
    split_sizes: dict[str, int] = field(default_factory=dict)
    class_counts: dict[str, Counter] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    multi_label: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, class_names: tuple[str, ...]) -> str:
        """A readable summary table."""
        lines = [f"dataset: {self.dataset}  root: {self.root}", "", "| split | images | with masks | multi-label |",
                 "|---|---:|---:|---:|"]
        for split, n in self.split_sizes.items():
            lines.append(f"| {split} | {n} | {self.masks.get(split, 0)} | {self.multi_label.get(split, 0)} |")
        splits = [s for s in self.class_counts if self.class_counts[s]]
        if splits:
            lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
            for c in range(1, len(class_names)):
                row = [str(self.class_counts[s].get(c, 0)) for s in splits]
                if any(r != "0" for r in row):
                    lines.append(f"| {class_names[c]} | " + " | ".join(row) + " |")
        lines.append("")
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"  ... and {len(self.problems) - 50} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(H, W) from the header, or None if the image cannot be opened."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        return None


def check_voc(root: str | Path, splits: tuple[str, ...] = SPLITS) -> CheckReport:
    """Validate a VOC tree: split files, images, XMLs, masks (values and sizes), labels."""
    voc = resolve_voc_root(root)
    report = CheckReport(str(voc), "voc")
    n_classes = len(VOC_CLASSES)
    found: dict[str, list[str]] = {}  # a problem of an image -> the splits that list the image

    def problem(message: str) -> None:  # once per file, naming every split that lists it
        found.setdefault(message, []).append(split)

    for split in splits:
        try:
            ids = read_split(voc, split)
        except DatasetError as exc:
            report.problems.append(str(exc))
            continue
        report.split_sizes[split] = len(ids)
        counts: Counter = Counter()
        n_masks = n_multi = 0
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
                    except DatasetError as exc:
                        problem(str(exc))
                    break
            xml = voc / "Annotations" / f"{image_id}.xml"
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
        report.multi_label[split] = n_multi
    report.problems += [f"{msg} (listed in {', '.join(f'{s}.txt' for s in where)})" for msg, where in found.items()]
    return report


def check_coco(root: str | Path) -> CheckReport:
    """Validate a COCO tree with label PNGs (see :mod:`rpnet_pl.data.coco`)."""
    from rpnet_pl.data.coco import COCOReader

    report = CheckReport(str(root), "coco")
    for split in ("train", "val"):
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


def check_dataset(root: str | Path, dataset: str = "voc") -> tuple[CheckReport, tuple[str, ...]]:
    """Run the checks for ``dataset`` and return the report and the class names."""
    if dataset == "voc":
        return check_voc(root), VOC_CLASSES
    if dataset == "coco":
        return check_coco(root), COCO_CLASSES
    raise DatasetError(f"unknown dataset {dataset!r} (voc or coco)")


__all__ = ["CheckReport", "check_voc", "check_coco", "check_dataset"]
