"""VOC reader: the three label sources and a clear error for every bad input."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.data.classes import VOC_CLASSES, voc_palette
from rpnet_pl.data.voc import VOCReader, load_cls_labels, resolve_voc_root
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import write_label_png
from tests.conftest import make_voc_tree


def test_palette_is_the_standard_voc_palette() -> None:
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[15].tolist() == [192, 128, 128]  # person
    assert pal[255].tolist() == [224, 224, 192]
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person"


@pytest.mark.parametrize("source", ["xml", "mask"])
def test_labels_from_xml_and_mask(tiny_voc: Path, source: str) -> None:
    reader = VOCReader(tiny_voc, "train_aug", label_source=source)
    assert reader.ids == ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
    assert reader.labels("2007_000002").tolist() == [1, 2]
    assert reader.labels("2007_000004").tolist() == [15]
    hot = reader.multi_hot("2007_000002")
    assert hot.shape == (20,) and hot[0] == 1 and hot[1] == 1 and hot.sum() == 2


def test_labels_from_irn_cls_labels_npy(tiny_voc: Path, tmp_path: Path) -> None:
    vec = np.zeros(20, dtype=np.float32)
    vec[[2, 6]] = 1  # classes 3 (bird) and 7 (car)
    path = tmp_path / "cls_labels.npy"
    # IRN encodes ids as integers: 2007_000001 -> 2007000001
    np.save(path, {2007000001: vec, "2007_000002": vec, "2007_000003": vec, "2007_000004": vec})
    reader = VOCReader(tiny_voc, "train_aug", label_source="cls_labels", cls_labels=path)
    assert reader.labels("2007_000001").tolist() == [3, 7]
    assert load_cls_labels(path)["2007_000004"].tolist() == [3, 7]


def test_root_may_be_devkit_or_voc2012(tiny_voc: Path) -> None:
    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    assert resolve_voc_root(tiny_voc) == voc
    assert resolve_voc_root(tiny_voc / "VOCdevkit") == voc
    assert resolve_voc_root(voc) == voc


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: dataset root not found"):
        VOCReader(tmp_path / "nowhere")


def test_missing_split_file_names_it(tiny_voc: Path) -> None:
    (tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(DatasetError, match=r"train_aug\.txt: split file not found \(get SBD"):
        VOCReader(tiny_voc, "train_aug")


def test_id_without_image(tiny_voc: Path) -> None:
    split = tiny_voc / "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"
    split.write_text("2007_000001\n2007_999999\n")
    with pytest.raises(DatasetError, match=r"train\.txt: 1 id\(s\) have no image .*first: 2007_999999"):
        VOCReader(tiny_voc, "train")


def test_unreadable_image(tiny_voc: Path) -> None:
    img = tiny_voc / "VOCdevkit/VOC2012/JPEGImages/2007_000003.jpg"
    img.write_bytes(b"not a jpeg")
    reader = VOCReader(tiny_voc, "train", label_source="xml")
    with pytest.raises(DatasetError, match=r"2007_000003\.jpg: unreadable image"):
        reader.image("2007_000003")


def test_mask_value_out_of_range(tiny_voc: Path) -> None:
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[2, 2] = 37
    write_label_png(tiny_voc / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000002.png", mask, voc_palette())
    with pytest.raises(DatasetError, match=r"2007_000002\.png: mask values \[37\] are outside the class range 0\.\.20"):
        VOCReader(tiny_voc, "train", label_source="mask")


def test_mask_size_differs_from_image(tiny_voc: Path) -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1, 1] = 1
    write_label_png(tiny_voc / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000001.png", mask)
    reader = VOCReader(tiny_voc, "val", weak=False)
    with pytest.raises(DatasetError, match=r"2007_000001\.png: mask size 8x8 differs from its image 20x16"):
        reader.mask("2007_000001", image_shape=reader.image("2007_000001").shape[:2])


def test_unlabelled_image_is_skipped_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_voc_tree(tmp_path, {"2007_000001": [1], "2007_000002": [], "2007_000003": [4]})
    with caplog.at_level(logging.WARNING):
        reader = VOCReader(tmp_path, "train_aug", label_source="mask")
    assert reader.ids == ["2007_000001", "2007_000003"]
    assert reader.skipped_unlabelled == 1
    assert "skipped 1 image(s) with no class label" in caplog.text


def test_unknown_class_name_in_xml(tiny_voc: Path) -> None:
    xml = tiny_voc / "VOCdevkit/VOC2012/Annotations/2007_000001.xml"
    xml.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(DatasetError, match=r"2007_000001\.xml: unknown class name 'unicorn'"):
        VOCReader(tiny_voc, "train", label_source="xml")


def test_malformed_xml(tiny_voc: Path) -> None:
    (tiny_voc / "VOCdevkit/VOC2012/Annotations/2007_000001.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"2007_000001\.xml: malformed XML"):
        VOCReader(tiny_voc, "train", label_source="xml")
