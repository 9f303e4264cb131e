"""Torch datasets over a reader (VOC or COCO): same-class groups, inference images, image+label pairs."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from rpnet_pl.data.classes import IGNORE_INDEX
from rpnet_pl.data.coco import COCOReader
from rpnet_pl.data.sampler import Group
from rpnet_pl.data.transforms import to_chw
from rpnet_pl.data.voc import VOCReader, check_mask
from rpnet_pl.utils.io import read_label_png

if TYPE_CHECKING:
    import albumentations as A

DatasetName = Literal["voc", "coco", "folder"]
Reader = VOCReader | COCOReader


def build_reader(
    dataset: DatasetName,
    root: str | Path,
    split: str,
    label_source: str = "auto",
    cls_labels: str | None = None,
    mask_dir: str | None = None,
    weak: bool = True,
) -> Reader:
    """The reader of ``dataset`` for one split (see :mod:`rpnet_pl.data.voc` / ``coco``);
    ``dataset='folder'`` reads every image of the folder ``root`` (prediction only)."""
    if dataset == "folder":
        return FolderReader(root)  # type: ignore[return-value]
    if dataset == "voc":
        return VOCReader(root, split, label_source=label_source, cls_labels=cls_labels,  # type: ignore[arg-type]
                         mask_dir=mask_dir, weak=weak)
    if dataset == "coco":
        return COCOReader(root, split, mask_dir=mask_dir, weak=weak)
    raise ValueError(f"dataset must be 'voc' or 'coco', got {dataset!r}")


class FolderReader:
    """Images of any folder (``*.jpg``, ``*.jpeg``, ``*.png``) for prediction: ids are the file stems.

    Same interface as the dataset readers, with no labels (``split='test'``).
    """

    IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

    def __init__(self, folder: str | Path, num_classes: int = 21) -> None:
        from rpnet_pl.utils.errors import DatasetError

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(f"{self.folder}: image folder not found")
        files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in self.IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{self.folder}: no .jpg/.jpeg/.png images")
        self._paths = {p.stem: p for p in files}
        self.ids = list(self._paths)
        self.split = "test"
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self._paths[image_id]

    def image(self, image_id: str) -> np.ndarray:
        from rpnet_pl.utils.io import read_image

        return read_image(self._paths[image_id])


class GroupDataset(Dataset):
    """Indexed by a :class:`Group`; returns the group's augmented images and labels.

    Item: ``images`` (k, 3, S, S) float32, ``labels`` (k, C-1) float32 multi-hot,
    ``shared_class`` int (1..C-1), ``ids`` list of k image ids.
    """

    def __init__(self, reader: Reader, transform: A.Compose) -> None:
        self.reader = reader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.reader)

    def _one(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_id = self.reader.ids[index]
        out = self.transform(image=self.reader.image(image_id))
        return to_chw(out["image"]), self.reader.multi_hot(image_id)

    def __getitem__(self, group: Group | int) -> dict[str, Any]:
        if isinstance(group, int):
            group = Group((group,), int(self.reader.labels(self.reader.ids[group])[0]))
        images, labels = zip(*(self._one(i) for i in group.members))
        return {
            "images": torch.from_numpy(np.stack(images)),
            "labels": torch.from_numpy(np.stack(labels)),
            "shared_class": group.shared_class,
            "ids": [self.reader.ids[i] for i in group.members],
        }


class InferenceDataset(Dataset):
    """One full-size image per item for CAM / boundary / segmentation inference.

    Item: ``image`` (3, H, W) normalised float32, ``raw`` (H, W, 3) uint8, ``labels`` (C-1,) multi-hot,
    ``id``, and ``mask`` (H, W) int64 when ``with_mask`` (255 = ignore).
    """

    def __init__(self, reader: Reader, transform: A.Compose, with_mask: bool = False,
                 ids: list[str] | None = None) -> None:
        self.reader = reader
        self.transform = transform
        self.with_mask = with_mask
        self.ids = list(reader.ids if ids is None else ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        raw = self.reader.image(image_id)
        item: dict[str, Any] = {
            "image": torch.from_numpy(to_chw(self.transform(image=raw)["image"])),
            "raw": torch.from_numpy(raw),
            "labels": torch.from_numpy(self.reader.multi_hot(image_id)) if self.reader.split != "test"
            else torch.zeros(self.reader.num_classes - 1),
            "id": image_id,
        }
        if self.with_mask:
            item["mask"] = torch.from_numpy(self.reader.mask(image_id, raw.shape[:2]).astype(np.int64))
        return item


class LabelledDataset(Dataset):
    """Image + label PNG from ``label_dir`` (pseudo masks, IR labels, or any method's masks).

    Item: ``image`` (3, S, S), ``label`` (S, S) int64 with 255 = ignore, ``labels`` (C-1,) multi-hot, ``id``.
    Ids without a PNG in ``label_dir`` raise a DatasetError naming the missing file.
    """

    def __init__(self, reader: Reader, label_dir: str | Path, transform: A.Compose) -> None:
        self.reader = reader
        self.label_dir = Path(label_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.reader.ids[index]
        raw = self.reader.image(image_id)
        path = self.label_dir / f"{image_id}.png"
        label = read_label_png(path)
        check_mask(label, path, self.reader.num_classes, raw.shape[:2])
        out = self.transform(image=raw, mask=label)
        return {
            "image": torch.from_numpy(to_chw(out["image"])),
            "label": torch.from_numpy(out["mask"].astype(np.int64)),
            "labels": torch.from_numpy(self.reader.multi_hot(image_id)),
            "id": image_id,
        }


def collate_groups(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack groups into ``images`` (B, k, 3, S, S), ``labels`` (B, k, C-1), ``shared_class`` (B,)."""
    return {
        "images": torch.stack([it["images"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "shared_class": torch.tensor([it["shared_class"] for it in items], dtype=torch.long),
        "ids": [it["ids"] for it in items],
    }


def collate_single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch of one (inference images differ in size): tensors get a leading 1, strings stay lists."""
    if len(items) != 1:
        out: dict[str, Any] = {}
        for key in items[0]:
            vals = [it[key] for it in items]
            out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
        return out
    it = items[0]
    return {k: (v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v]) for k, v in it.items()}


__all__ = ["build_reader", "GroupDataset", "InferenceDataset", "LabelledDataset", "collate_groups",
           "collate_single", "IGNORE_INDEX"]
