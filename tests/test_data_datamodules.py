"""DataModules produce the batches the stages expect."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rpnet_pl.data.datamodules import GroupDataModule, InferenceDataModule, LabelledDataModule
from rpnet_pl.data.classes import voc_palette
from rpnet_pl.utils.io import write_label_png


def test_group_batches(tiny_voc: Path) -> None:
    dm = GroupDataModule(root=str(tiny_voc), group_size=3, batch_size=2, crop_size=24, long_side=(16, 32),
                         num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 3, 24, 24)
    assert batch["labels"].shape == (2, 3, 20)
    for b in range(2):
        c = int(batch["shared_class"][b])
        assert torch.all(batch["labels"][b, :, c - 1] == 1)  # every member has the shared class
    assert dm.num_train_images == 4


def test_data_volume_shrinks_the_epoch(tiny_voc: Path) -> None:
    dm = GroupDataModule(root=str(tiny_voc), batch_size=1, crop_size=16, data_volume=0.5, num_workers=0)
    # classes: 1 -> {a, b}, 2 -> {b, c}, 15 -> {d}: each keeps ceil(n/2) = 1 image
    assert dm.num_train_images in (2, 3)
    assert len(dm.train_dataloader()) == dm.num_train_images


def test_inference_batches_keep_full_size_and_masks(tiny_voc: Path) -> None:
    dm = InferenceDataModule(root=str(tiny_voc), split="val", with_mask=True, num_workers=0)
    dm.skip_ids = {"2007_000001"}
    batches = list(dm.predict_dataloader())
    assert [b["id"][0] for b in batches] == ["2007_000002", "2007_000003", "2007_000004"]
    b = batches[0]
    assert b["image"].shape == (1, 3, 16, 20) and b["raw"].shape == (1, 16, 20, 3)
    assert b["mask"].shape == (1, 16, 20) and b["mask"][0, 2, 5].item() == 2


def test_labelled_batches_follow_label_dir(tiny_voc: Path, tmp_path: Path) -> None:
    labels = tmp_path / "pseudo"
    for i in range(1, 5):
        lab = np.full((16, 20), i, dtype=np.uint8)
        write_label_png(labels / f"2007_00000{i}.png", lab, voc_palette())
    dm = LabelledDataModule(label_dir=str(labels), root=str(tiny_voc), batch_size=2, crop_size=8,
                            scale_mode="none", hflip=0.0, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8) and batch["label"].shape == (2, 8, 8)
    for b in range(2):
        i = int(batch["id"][b][-1])
        assert torch.all(batch["label"][b] == i)


def test_folder_of_images_for_prediction(tmp_path: Path) -> None:
    from rpnet_pl.cli import main
    from rpnet_pl.utils.errors import DatasetError
    from rpnet_pl.utils.io import write_image

    folder = tmp_path / "imgs"
    write_image(folder / "b.jpg", np.zeros((10, 12, 3), np.uint8))
    write_image(folder / "a.png", np.full((7, 9, 3), 200, np.uint8))
    (folder / "notes.txt").write_text("not an image")
    dm = InferenceDataModule(root=str(folder), dataset="folder", split="test", num_workers=0)
    batches = list(dm.predict_dataloader())
    assert [b["id"][0] for b in batches] == ["a", "b"]
    assert batches[0]["image"].shape == (1, 3, 7, 9) and batches[0]["labels"].shape == (1, 20)
    import pytest

    with pytest.raises(DatasetError, match="no .jpg/.jpeg/.png images"):
        InferenceDataModule(root=str(tmp_path), dataset="folder", split="test").setup()
    assert main(["predict-seg", "--ckpt", "x.ckpt", "--out", str(tmp_path / "o")]) == 2
