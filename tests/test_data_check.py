"""`rpnet data check`: summary counts and every problem named with its file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from rpnet_pl.cli import main
from rpnet_pl.data.check import check_voc
from rpnet_pl.utils.io import write_label_png


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
    assert "| train_aug | 4 | 4 | SegmentationClassAug/ (4) | 1 |" in out
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


def _split_file(root: Path, split: str) -> Path:
    return root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / f"{split}.txt"


def test_tree_without_test_split_passes_and_says_what_is_skipped(tiny_voc: Path, capsys) -> None:
    _split_file(tiny_voc, "test").unlink()
    report = check_voc(tiny_voc)
    assert report.ok, report.problems
    assert report.absent == ["test"] and "test" not in report.split_sizes
    assert main(["data", "check", str(tiny_voc)]) == 0
    out = capsys.readouterr().out
    assert "| test | absent | - | - | - | not possible: test export (predict_seg) |" in out
    assert "| val | 4 | 4 | SegmentationClassAug/ (4) | 1 | segmentation evaluation (eval_seg) |" in out
    assert "note: no test split (" in out and "test.txt not found): test export (predict_seg) is skipped" in out


def test_tree_without_sbd_fails_the_base_recipe_and_says_the_training_size(tiny_voc: Path, tmp_path: Path,
                                                                            capsys) -> None:
    import yaml

    _split_file(tiny_voc, "train_aug").unlink()
    _split_file(tiny_voc, "test").unlink()
    report = check_voc(tiny_voc)
    assert len(report.problems) == 1
    assert report.problems[0].endswith("train_aug.txt: split 'train_aug' not found, needed by (base recipe)")
    notes = "\n".join(report.notes)
    assert "no SBD train_aug list: training can only use train's 4 images instead of train_aug's 10582" in notes
    assert "--set classifier.data.split=train" in notes
    # an experiment that trains on train needs no train_aug: the same tree passes
    exp = tmp_path / "train_only.yaml"
    train = {"classifier": {"data": {"split": "train"}}, "cam": {"split": "train"}, "ir_labels": {"split": "train"},
             "refine": {"data": {"split": "train"}}, "pseudo_masks": {"split": "train"},
             "segmenter": {"data": {"split": "train"}}}
    exp.write_text(yaml.safe_dump({"extends": str(Path(__file__).resolve().parents[1] / "experiments/base.yaml"),
                                   **train}))
    assert main(["data", "check", str(tiny_voc)]) == 1
    assert "needed by (base recipe)" in capsys.readouterr().out
    assert main(["data", "check", str(tiny_voc), "--experiment", str(exp)]) == 0
    # an experiment that needs val fails on a tree without it, naming the steps
    _split_file(tiny_voc, "val").unlink()
    assert main(["data", "check", str(tiny_voc), "--experiment", str(exp)]) == 1
    assert "val.txt: split 'val' not found, needed by segmenter, eval_seg" in capsys.readouterr().out


def test_tree_without_segmentation_class_aug_says_labels_come_from_xml(tmp_path: Path) -> None:
    from tests.conftest import make_voc_tree

    make_voc_tree(tmp_path, {"2007_000001": [1], "2007_000002": [3]}, mask_dir="SegmentationClass")
    report = check_voc(tmp_path)
    assert report.ok, report.problems
    assert any("no SegmentationClassAug: the image-level labels of train_aug come from the XML annotations" in n
               and "all 2 train_aug images still train" in n for n in report.notes)


def test_coco_without_val_fails_only_when_needed(tmp_path: Path) -> None:
    from rpnet_pl.data.check import check_coco
    from rpnet_pl.utils.io import write_image

    write_image(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg", np.zeros((8, 8, 3), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 5
    write_label_png(tmp_path / "masks" / "train2014" / "COCO_train2014_000000000001.png", mask)
    report = check_coco(tmp_path)
    assert report.split_sizes == {"train": 1} and report.absent == ["val"]
    assert len(report.problems) == 1 and "val2014: split 'val' not found, needed by (base recipe)" in report.problems[0]
    report = check_coco(tmp_path, needs={"train": ["classifier"]})
    assert report.ok and report.notes == [
        f"no val split ({tmp_path / 'val2014'} not found): segmentation evaluation (eval_seg) and the val export "
        "(predict_seg) is skipped"]


def test_needed_splits_of_the_experiments() -> None:
    from rpnet_pl.pipeline.config import load_experiment
    from rpnet_pl.data.splits import needed_splits, step_splits

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    voc = load_experiment(experiments / "voc_resnext50.yaml")
    assert step_splits(voc)["test"] == ["predict_seg"]
    assert needed_splits(voc, "voc") == {
        "train_aug": ["classifier", "cam", "ir_labels", "refine", "pseudo_masks", "segmenter"],
        "train": ["eval_cam", "eval_pseudo_masks"], "val": ["segmenter", "eval_seg"]}  # test: optional
    coco = load_experiment(experiments / "coco_resnet50.yaml")
    assert set(needed_splits(coco, "coco")) == {"train", "val"} and needed_splits(coco, "coco")["val"] == ["eval_seg"]
    assert needed_splits(None, "voc") == {s: ["(base recipe)"] for s in ("train_aug", "train", "val")}


def test_a_binary_mask_that_names_another_class_than_its_annotation_is_noted(tiny_voc: Path) -> None:
    """A person saved as a 0/1 greyscale mask reads as class 1 (aeroplane): data check says so, from the
    image's XML annotation (which names the person)."""
    import numpy as np
    from PIL import Image

    from rpnet_pl.data.check import check_voc

    voc = tiny_voc / "VOCdevkit" / "VOC2012"
    assert not any("XML annotation" in n for n in check_voc(tiny_voc).notes)  # masks and XMLs agree
    path = voc / "SegmentationClassAug" / "2007_000004.png"
    with Image.open(path) as im:
        binary = (np.asarray(im) == 15).astype(np.uint8)
    Image.fromarray(binary, mode="L").save(path)
    notes = [n for n in check_voc(tiny_voc).notes if "XML annotation" in n]
    assert notes == ["1 mask(s) hold classes their XML annotation does not name (first: 2007_000004: mask "
                     "aeroplane, XML person); a mask's values are class ids: a binary 0/1 object mask reads as "
                     "class 1 (aeroplane) whatever the object is"]
