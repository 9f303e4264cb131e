"""`rpnet data check`: summary counts and every problem named with its file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rpnet_pl.cli import main
from rpnet_pl.data.check import check_voc
from rpnet_pl.io import write_label_png


def test_summary_counts(tiny_voc: Path) -> None:
    report = check_voc(tiny_voc)
    assert report.ok, report.problems
    assert report.split_sizes == {"train": 4, "train_aug": 4, "val": 4, "test": 4}
    assert report.class_counts["train_aug"] == {1: 2, 2: 2, 15: 1}
    assert report.multi_label["val"] == 1


def test_problems_are_listed_with_paths(tiny_voc: Path) -> None:
    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000003.jpg").write_bytes(b"garbage")
    bad = np.zeros((16, 20), np.uint8)
    bad[3, 3] = 99
    write_label_png(voc / "SegmentationClassAug" / "2007_000001.png", bad)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n2007_000404\n")
    report = check_voc(tiny_voc)
    text = "\n".join(report.problems)
    assert "2007_000003.jpg: unreadable image" in text
    assert "2007_000001.png: mask values [99]" in text
    assert "2007_000404.jpg: image not found (listed in val.txt)" in text


def test_cli_check_exit_codes(tiny_voc: Path, capsys) -> None:
    assert main(["data", "check", str(tiny_voc)]) == 0
    out = capsys.readouterr().out
    assert "| train_aug | 4 | 4 | 1 |" in out
    assert "| class | train | train_aug | val |" in out and "| person | 1 | 1 | 1 |" in out
    assert main(["data", "check", str(tiny_voc / "missing")]) == 2
    assert "missing: dataset root not found" in capsys.readouterr().err


def test_a_problem_is_listed_once_naming_its_splits(tiny_voc: Path) -> None:
    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2007_000003.jpg").write_bytes(b"garbage")  # listed in all four splits
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")
    problems = check_voc(tiny_voc).problems
    assert problems == [f"{voc / 'JPEGImages' / '2007_000003.jpg'}: unreadable image "
                        "(listed in train.txt, train_aug.txt, test.txt)"]
