"""COCO: instance annotations -> label PNGs with ids 1..80, and the reader over them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.data.classes import COCO_CATEGORY_IDS, IGNORE_INDEX
from rpnet_pl.data.coco import COCOReader, category_to_label, instances_to_label, write_coco_masks
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_label_png, write_image


def test_category_mapping_is_dense() -> None:
    m = category_to_label()
    assert m[1] == 1 and m[90] == 80 and m[13] == 12  # id 12 is unused in COCO
    assert sorted(m.values()) == list(range(1, 81))


def test_instances_painted_large_first_and_crowd_ignored() -> None:
    big = np.zeros((6, 6), bool)
    big[1:5, 1:5] = True
    small = np.zeros((6, 6), bool)
    small[2:3, 2:3] = True
    crowd = np.zeros((6, 6), bool)
    crowd[5, :] = True
    anns = [{"m": small, "area": 1, "category_id": 90}, {"m": big, "area": 16, "category_id": 1},
            {"m": crowd, "area": 6, "category_id": 3, "iscrowd": 1}]
    label = instances_to_label(6, 6, anns, lambda a: a["m"])
    assert label[2, 2] == 80  # the small instance stays on top
    assert label[1, 1] == 1 and label[0, 0] == 0
    assert (label[5] == IGNORE_INDEX).all()


def _write_coco(root: Path) -> None:
    images, anns = [], []
    for i, (cat, box) in enumerate([(1, (2, 2, 10, 8)), (18, (4, 4, 6, 6))]):
        name = f"COCO_train2014_{i + 1:012d}.jpg"
        write_image(root / "train2014" / name, np.zeros((16, 20, 3), np.uint8))
        images.append({"id": i + 1, "file_name": name, "height": 16, "width": 20})
        x, y, w, h = box
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0, "area": w * h,
                     "bbox": [x, y, w, h], "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    cats = [{"id": c, "name": str(c)} for c in COCO_CATEGORY_IDS]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def test_coco_masks_then_reader(tmp_path: Path) -> None:
    _write_coco(tmp_path)
    assert write_coco_masks(tmp_path, "train") == 2
    assert write_coco_masks(tmp_path, "train") == 0  # resumable: existing PNGs are skipped
    m = read_label_png(tmp_path / "masks/train2014/COCO_train2014_000000000002.png")
    assert m.shape == (16, 20) and set(np.unique(m).tolist()) == {0, 17}  # category 18 (dog) -> 17
    reader = COCOReader(tmp_path, "train")
    assert reader.ids == ["COCO_train2014_000000000001", "COCO_train2014_000000000002"]
    assert reader.labels("COCO_train2014_000000000001").tolist() == [1]
    assert reader.multi_hot("COCO_train2014_000000000002").shape == (80,)


def test_coco_missing_annotations(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"instances_val2014\.json: annotation file not found"):
        write_coco_masks(tmp_path, "val")


def test_coco_reader_without_masks_says_how_to_make_them(tmp_path: Path) -> None:
    (tmp_path / "train2014").mkdir()
    with pytest.raises(DatasetError, match=r"rpnet data coco-masks"):
        COCOReader(tmp_path, "train")
