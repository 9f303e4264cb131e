"""MS COCO 2014 as 81-label semantic segmentation (0 = background, 80 categories -> 1..80).

Expected tree (the images and annotations as downloaded, plus the PNGs ``rpnet data coco-masks`` writes)::

    ROOT/train2014/COCO_train2014_000000000009.jpg   ROOT/val2014/...
    ROOT/annotations/instances_{train,val}2014.json
    ROOT/masks/{train2014,val2014}/COCO_train2014_000000000009.png   (class ids, 255 = crowd/ignore)

Split ``train`` reads train2014, ``val`` reads val2014. An optional ``ROOT/{split}.txt`` lists the
ids to use (one per line); otherwise every mask PNG of the split is used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rpnet_pl.data.classes import COCO_CATEGORY_IDS, COCO_CLASSES, IGNORE_INDEX
from rpnet_pl.data.voc import check_mask, labels_from_mask
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_image, read_label_png, write_label_png

log = logging.getLogger(__name__)
_SPLIT_DIRS = {"train": "train2014", "val": "val2014"}


def coco_split_dir(split: str) -> str:
    if split not in _SPLIT_DIRS:
        raise DatasetError(f"COCO split must be one of {sorted(_SPLIT_DIRS)}, got {split!r}")
    return _SPLIT_DIRS[split]


def category_to_label() -> dict[int, int]:
    """COCO category id -> label index 1..80."""
    return {cat: i + 1 for i, cat in enumerate(COCO_CATEGORY_IDS)}


def instances_to_label(height: int, width: int, anns: list[dict], decode) -> np.ndarray:
    """Paint instance annotations into one (H, W) uint8 label map.

    Larger instances are painted first so small ones stay visible; crowd regions become 255
    (ignore) unless a non-crowd instance covers them.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    mapping = category_to_label()
    crowd = np.zeros((height, width), dtype=bool)
    for ann in sorted(anns, key=lambda a: -float(a.get("area", 0.0))):
        m = decode(ann).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= m
            continue
        label[m] = mapping[int(ann["category_id"])]
    label[crowd & (label == 0)] = IGNORE_INDEX
    return label


def write_coco_masks(root: str | Path, split: str, out: str | Path | None = None, limit: int | None = None) -> int:
    """Write one label PNG per image of ``instances_{split}2014.json``; skips PNGs that exist.

    Returns the number of PNGs written. Needs pycocotools.
    """
    root = Path(root)
    sdir = coco_split_dir(split)
    ann_path = root / "annotations" / f"instances_{sdir}.json"
    if not ann_path.is_file():
        raise DatasetError(f"{ann_path}: annotation file not found (download COCO 2014 annotations)")
    try:
        from pycocotools.coco import COCO
    except ImportError:  # pragma: no cover - pinned in requirements
        raise DatasetError("pycocotools is needed for `rpnet data coco-masks` (pip install pycocotools)") from None
    coco = COCO(str(ann_path))
    out_dir = Path(out) if out else root / "masks" / sdir
    written = 0
    for n, img_id in enumerate(sorted(coco.getImgIds())):
        if limit is not None and n >= limit:
            break
        info = coco.loadImgs(img_id)[0]
        dest = out_dir / (Path(info["file_name"]).stem + ".png")
        if dest.is_file():
            continue
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        label = instances_to_label(info["height"], info["width"], anns, coco.annToMask)
        write_label_png(dest, label)
        written += 1
    return written


@dataclass
class COCOReader:
    """Reads one split of COCO 2014 with per-image label PNGs; same interface as VOCReader."""

    root: str | Path
    split: str = "train"
    mask_dir: str | None = None
    weak: bool = True
    num_classes: int = len(COCO_CLASSES)
    class_names: tuple[str, ...] = COCO_CLASSES
    ids: list[str] = field(init=False)
    skipped_unlabelled: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.root = Path(self.root).expanduser()
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: dataset root not found")
        self.sdir = coco_split_dir(self.split)
        self.image_dir = self.root / self.sdir
        self.masks = Path(self.mask_dir) if self.mask_dir else self.root / "masks" / self.sdir
        if not self.image_dir.is_dir():
            raise DatasetError(f"{self.image_dir}: image folder not found")
        list_file = self.root / f"{self.split}.txt"
        if list_file.is_file():
            ids = [ln.strip() for ln in list_file.read_text().splitlines() if ln.strip()]
        elif self.masks.is_dir():
            ids = sorted(p.stem for p in self.masks.glob("*.png"))
        else:
            raise DatasetError(f"{self.masks}: mask folder not found (run `rpnet data coco-masks {self.root}`)")
        if not ids:
            raise DatasetError(f"{self.masks}: no label PNGs found")
        missing = [i for i in ids if not self.image_path(i).is_file()]
        if missing:
            raise DatasetError(f"{self.image_dir}: {len(missing)} id(s) have no image (first: {missing[0]})")
        self._label_cache: dict[str, np.ndarray] = {}
        self.ids = ids
        if self.weak:
            kept = [i for i in ids if len(self.labels(i)) > 0]
            self.skipped_unlabelled = len(ids) - len(kept)
            if self.skipped_unlabelled:
                log.warning("%s: skipped %d image(s) with no class label", self.masks, self.skipped_unlabelled)
            self.ids = kept

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path | None:
        p = self.masks / f"{image_id}.png"
        return p if p.is_file() else None

    def image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id))

    def mask(self, image_id: str, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        path = self.masks / f"{image_id}.png"
        mask = read_label_png(path)
        check_mask(mask, path, self.num_classes, image_shape)
        return mask

    def labels(self, image_id: str) -> np.ndarray:
        if image_id not in self._label_cache:
            self._label_cache[image_id] = labels_from_mask(self.mask(image_id))
        return self._label_cache[image_id]

    def multi_hot(self, image_id: str) -> np.ndarray:
        vec = np.zeros(self.num_classes - 1, dtype=np.float32)
        vec[self.labels(image_id) - 1] = 1.0
        return vec
