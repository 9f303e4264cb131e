"""PASCAL VOC 2012 (+ SBD train_aug) reader in the layout users already have.

```
ROOT/VOCdevkit/VOC2012/
  JPEGImages/ID.jpg  Annotations/ID.xml  SegmentationClass/ID.png  SegmentationClassAug/ID.png
  ImageSets/Segmentation/{train,train_aug,val,test}.txt
```
``ROOT`` may also point at ``VOCdevkit`` or at ``VOC2012`` itself. Image-level labels come from the
XML annotations, from the masks, or from IRN's ``cls_labels.npy`` dict (id -> 20-dim multi-hot).
"""
from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from rpnet_pl.data.classes import IGNORE_INDEX, VOC_CLASSES
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import load_npy, read_image, read_label_png

log = logging.getLogger(__name__)

LabelSource = Literal["auto", "xml", "mask", "cls_labels"]
SPLITS = ("train", "train_aug", "val", "test")
_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def _voc_folder(root: Path) -> Path | None:
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "ImageSets").is_dir() or (cand / "JPEGImages").is_dir():
            return cand
    return None


def _nearby_voc_root(root: Path) -> Path | None:
    """A VOC root one or two folders above ``root`` (DATA= pointed inside the tree, e.g. at
    JPEGImages) or one folder below it (DATA= pointed at the folder holding the dataset)."""
    for parent in list(root.resolve().parents)[:2]:
        if _voc_folder(parent) is not None:
            return parent
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return None
    return next((c for c in children[:200] if _voc_folder(c) is not None), None)


def resolve_voc_root(root: str | Path) -> Path:
    """Find the ``VOC2012`` folder from ROOT, ROOT/VOCdevkit or ROOT/VOCdevkit/VOC2012.

    A ROOT one level above the dataset or inside the tree is an error that names the right one."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: dataset root not found")
    found = _voc_folder(root)
    if found is not None:
        return found
    near = _nearby_voc_root(root)
    if near is not None:
        raise DatasetError(f"{root}: not a VOC tree, but {near} is one: use DATA={near} (or --root {near})")
    raise DatasetError(
        f"{root}: not a VOC tree (expected VOCdevkit/VOC2012/JPEGImages and ImageSets/Segmentation; "
        "see README 'Real data')"
    )


def split_line_id(line: str) -> str:
    """The image id of one line of a split list: VOC's ``2007_000032``, or the DeepLab-style
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` (first column's file stem)."""
    fields = line.split()
    if not fields:
        return ""
    first = fields[0]
    return PurePosixPath(first).stem if "/" in first or first.lower().endswith((".jpg", ".jpeg", ".png")) else first


def read_split(voc: Path, split: str) -> list[str]:
    """Image ids of a split list, in file order, blank lines removed; an id listed twice is kept once,
    with a warning naming the file and the line."""
    path = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        hint = " (get SBD's train_aug list; see README 'Real data')" if split == "train_aug" else ""
        raise DatasetError(f"{path}: split file not found{hint}")
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        token = split_line_id(line)
        if token in seen:
            log.warning("%s:%d: id %s listed twice; the repeat is skipped", path, lineno, token)
        elif token:
            seen.add(token)
            ids.append(token)
    if not ids:
        raise DatasetError(f"{path}: split list is empty")
    return ids


def labels_from_xml(path: Path, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """Sorted unique foreground class indices (1..20) named by the <object> tags of a VOC XML."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: malformed XML ({exc})") from None
    found = set()
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _CLASS_INDEX or _CLASS_INDEX[name] == 0:
            raise DatasetError(f"{path}: unknown class name {name!r}")
        found.add(_CLASS_INDEX[name])
    return np.array(sorted(c for c in found if c < num_classes), dtype=np.int64)


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """Sorted foreground class indices present in a label mask (0 and 255 excluded)."""
    vals = np.unique(mask)
    return vals[(vals != 0) & (vals != IGNORE_INDEX)].astype(np.int64)


def load_cls_labels(path: str | Path, num_fg: int = len(VOC_CLASSES) - 1) -> dict[str, np.ndarray]:
    """IRN's ``cls_labels.npy``: a dict id -> multi-hot over the foreground classes.

    Ids may be IRN's integer encoding (``2007000032``) or strings; both are mapped to ``2007_000032``.
    """
    obj = load_npy(path)
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict id -> multi-hot vector, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, vec in obj.items():
        vec = np.asarray(vec).reshape(-1)
        if vec.shape[0] != num_fg:
            raise DatasetError(f"{path}: entry {key!r} has {vec.shape[0]} classes, expected {num_fg}")
        skey = str(key)
        if skey.isdigit() and len(skey) == 10:
            skey = f"{skey[:4]}_{skey[4:]}"
        out[skey] = np.flatnonzero(vec > 0).astype(np.int64) + 1
    return out


def check_mask(mask: np.ndarray, path: Path, num_classes: int, image_shape: tuple[int, int] | None) -> None:
    """Raise a DatasetError naming ``path`` if values or size are wrong."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        vals = sorted(int(v) for v in np.unique(mask[bad]))[:5]
        raise DatasetError(
            f"{path}: mask values {vals} are outside the class range 0..{num_classes - 1} and {IGNORE_INDEX}"
        )
    if image_shape is not None and mask.shape != image_shape:
        raise DatasetError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                           f"{image_shape[1]}x{image_shape[0]}")



def voc_image_path(voc: Path, image_id: str) -> Path:
    """Where a VOC tree keeps an image: ``JPEGImages/ID.jpg``."""
    return Path(voc) / "JPEGImages" / f"{image_id}.jpg"


def read_split_with_images(voc: Path, split: str) -> list[str]:
    """:func:`read_split`, and every listed id has its image (else one DatasetError naming the list,
    how many are missing and the first)."""
    ids = read_split(voc, split)
    missing = [i for i in ids if not voc_image_path(voc, i).is_file()]
    if missing:
        split_file = Path(voc) / "ImageSets" / "Segmentation" / f"{split}.txt"
        raise DatasetError(f"{split_file}: {len(missing)} id(s) have no image in {Path(voc) / 'JPEGImages'} "
                           f"(first: {missing[0]})")
    return ids

@dataclass
class VOCReader:
    """Reads one split of a VOC tree: images, masks, image-level labels.

    ``label_source='auto'`` uses ``cls_labels`` when given, else the masks of
    SegmentationClassAug/SegmentationClass when present, else the XML annotations.
    In a weakly supervised split (``weak=True``) images without any label are skipped and counted
    in ``skipped_unlabelled`` (a warning, not a crash).
    """

    root: str | Path
    split: str = "train_aug"
    label_source: LabelSource = "auto"
    cls_labels: str | Path | None = None
    mask_dir: str | None = None
    weak: bool = True
    num_classes: int = len(VOC_CLASSES)
    class_names: tuple[str, ...] = VOC_CLASSES
    ids: list[str] = field(init=False)
    skipped_unlabelled: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.voc = resolve_voc_root(self.root)
        ids = read_split_with_images(self.voc, self.split)
        split_file = self.voc / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        self._cls = load_cls_labels(self.cls_labels, self.num_classes - 1) if self.cls_labels else None
        self._label_cache: dict[str, np.ndarray] = {}
        self.ids = ids
        if self.split != "test" and self.weak:
            kept = [i for i in ids if len(self.labels(i)) > 0]
            self.skipped_unlabelled = len(ids) - len(kept)
            if self.skipped_unlabelled:
                log.warning("%s: skipped %d image(s) with no class label", split_file, self.skipped_unlabelled)
            if not kept:
                raise DatasetError(f"{split_file}: no image of this split has a class label")
            self.ids = kept

    # -- paths ---------------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        return voc_image_path(self.voc, image_id)

    def xml_path(self, image_id: str) -> Path:
        return self.voc / "Annotations" / f"{image_id}.xml"

    def mask_path(self, image_id: str) -> Path | None:
        """The ground-truth mask path (SegmentationClassAug preferred), or None if there is none."""
        dirs = [self.mask_dir] if self.mask_dir else ["SegmentationClassAug", "SegmentationClass"]
        for d in dirs:
            p = Path(d) / f"{image_id}.png" if Path(d).is_absolute() else self.voc / d / f"{image_id}.png"
            if p.is_file():
                return p
        return None

    # -- content -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id))

    def mask(self, image_id: str, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        path = self.mask_path(image_id)
        if path is None:
            raise DatasetError(f"{self.voc / 'SegmentationClass'}/{image_id}.png: mask not found "
                               "(nor in SegmentationClassAug)")
        mask = read_label_png(path)
        check_mask(mask, path, self.num_classes, image_shape)
        return mask

    def labels(self, image_id: str) -> np.ndarray:
        """Foreground class indices (1..C-1) of an image, from the configured source."""
        if image_id in self._label_cache:
            return self._label_cache[image_id]
        source = self.label_source
        if source == "auto":
            source = "cls_labels" if self._cls is not None else (
                "mask" if self.mask_path(image_id) is not None else "xml")
        if source == "cls_labels":
            if self._cls is None:
                raise DatasetError("label_source=cls_labels needs a cls_labels path")
            if image_id not in self._cls:
                raise DatasetError(f"{self.cls_labels}: no entry for image {image_id}")
            labels = self._cls[image_id]
        elif source == "mask":
            labels = labels_from_mask(self.mask(image_id))
        elif source == "xml":
            labels = labels_from_xml(self.xml_path(image_id), self.num_classes)
        else:
            raise DatasetError(f"unknown label_source {source!r} (auto, xml, mask, cls_labels)")
        self._label_cache[image_id] = labels
        return labels

    def multi_hot(self, image_id: str) -> np.ndarray:
        """(C-1,) float32 multi-hot over the foreground classes."""
        vec = np.zeros(self.num_classes - 1, dtype=np.float32)
        vec[self.labels(image_id) - 1] = 1.0
        return vec
