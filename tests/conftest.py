"""Shared fixtures: a tiny hand-built VOC tree whose labels are known exactly. The developer tools of
tools/ (not installed) are importable by name (``import bench``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from rpnet_pl.data.classes import VOC_CLASSES, voc_palette
from rpnet_pl.ops.params import RandomWalkParams
from rpnet_pl.utils.io import write_image, write_label_png

TOOLS = Path(__file__).resolve().parents[1] / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))


def write_xml(path: Path, image_id: str, size: tuple[int, int], classes: list[int]) -> None:
    objs = "".join(
        f"<object><name>{VOC_CLASSES[c]}</name><difficult>0</difficult>"
        f"<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for c in classes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{image_id}.jpg</filename><size><width>{size[1]}</width>"
                    f"<height>{size[0]}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc_tree(root: Path, items: dict[str, list[int]], size: tuple[int, int] = (16, 20),
                  splits: dict[str, list[str]] | None = None, mask_dir: str = "SegmentationClassAug") -> Path:
    """Write a VOC tree: each id gets an image, an XML and a mask with one 4x4 block per class.

    Returns the VOC2012 folder. ``splits`` defaults to every id in train, train_aug and val.
    """
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for image_id, classes in items.items():
        write_image(voc / "JPEGImages" / f"{image_id}.jpg", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        mask = np.zeros(size, dtype=np.uint8)
        for j, c in enumerate(classes):
            mask[1:5, 1 + 4 * j:5 + 4 * j] = c
        mask[0, :] = 255
        write_label_png(voc / mask_dir / f"{image_id}.png", mask, voc_palette())
        write_xml(voc / "Annotations" / f"{image_id}.xml", image_id, size, classes)
    splits = splits or {s: list(items) for s in ("train", "train_aug", "val", "test")}
    for split, ids in splits.items():
        p = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("\n".join(ids) + "\n")
    return voc


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    """Four images: 'a' has {1}, 'b' has {1, 2}, 'c' has {2}, 'd' has {15}."""
    items = {"2007_000001": [1], "2007_000002": [1, 2], "2007_000003": [2], "2007_000004": [15]}
    make_voc_tree(tmp_path, items)
    return tmp_path


def tiny_refine_stage():
    """A seeded ResNet-18 RefineStage with radius-2 affinities (eval mode): the refiner of the tiny
    tests (its walk: :data:`TINY_WALK`)."""
    import torch

    from rpnet_pl.stages.checkpoints import build_stage

    torch.manual_seed(0)
    return build_stage("refine", backbone="resnet18", pretrained=False, boundary_radius=2).eval()


#: The tiny tests' random walk: radius 2, the other settings IRN's.
TINY_WALK = RandomWalkParams(radius=2)


def save_stage_checkpoint(stage, path: Path) -> Path:
    """``stage`` as a Lightning checkpoint file (state dict, hyper-parameters, version) at ``path``."""
    import pytorch_lightning as pl
    import torch

    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams),
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def write_uniform_cams(root: Path, cams_dir: Path) -> None:
    """A CAM record for each labelled ``train`` image of ``root``: stride-4 maps (4 x 5) uniform in [0, 1)
    from a seeded generator, zero high-res maps (16 x 20)."""
    from rpnet_pl.data.datasets import build_reader
    from rpnet_pl.steps.cam_inference import write_cam

    reader, rng = build_reader("voc", str(root), "train"), np.random.default_rng(0)
    for image_id in reader.ids:
        keys = np.array(reader.labels(image_id), dtype=np.int64)
        write_cam(cams_dir, image_id, {"keys": keys, "cam": rng.uniform(0, 1, (len(keys), 4, 5)).astype(np.float32),
                                       "high_res": np.zeros((len(keys), 16, 20), np.float16)})
