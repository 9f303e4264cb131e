"""The per-epoch seed monitor of classifier training: scores on a known confusion matrix, and a
tiny real fit that logs one row of seed scores per epoch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from rpnet_pl.stages.seed_monitor import SeedMonitor, seed_scores
from rpnet_pl.stages.checkpoints import build_stage

torch.set_num_threads(1)


def test_seed_scores_hand_computed() -> None:
    # rows = ground truth (bg, cat, dog), columns = prediction
    conf = np.array([[50, 10, 0],
                     [20, 30, 0],
                     [0, 0, 0]])
    s = seed_scores(conf)
    # IoU bg = 50 / (60 + 70 - 50) = 0.625, cat = 30 / (50 + 40 - 30) = 0.5, dog absent -> left out
    assert s["miou"] == pytest.approx((0.625 + 0.5) / 2)
    assert s["fg_precision"] == pytest.approx(30 / 40)  # predicted fg 40, of which 30 are fg
    assert s["fg_recall"] == pytest.approx(30 / 50)
    assert seed_scores(np.zeros((3, 3)))["fg_recall"] == 0.0


@pytest.mark.slow
def test_monitor_logs_every_epoch(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    from rpnet_pl.data.datamodules import GroupDataModule
    from rpnet_pl.data.synthetic import generate_synthetic_voc

    data = tmp_path / "synth"
    generate_synthetic_voc(data, images=12, size=48, classes=3, seed=0, test_images=1)
    dm = GroupDataModule(root=str(data), batch_size=4, crop_size=48, long_side=(40, 64), num_workers=0)
    stage = build_stage("classifier", method="cam", backbone="resnet18", pretrained=False, freeze_early=False,
                            seed_monitor_images=3, seed_monitor_threshold=0.3, log_grad_norms=True)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(str(tmp_path), name="csv"),
                         enable_progress_bar=False, default_root_dir=str(tmp_path), log_every_n_steps=1)
    trainer.fit(stage, datamodule=dm)
    monitor = next(c for c in trainer.callbacks if isinstance(c, SeedMonitor))
    assert [h["epoch"] for h in monitor.history] == [0.0, 1.0]
    for h in monitor.history:
        assert 0.0 <= h["miou"] <= 1.0 and 0.0 <= h["fg_precision"] <= 1.0 and 0.0 <= h["fg_recall"] <= 1.0
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "seed/miou" in metrics.splitlines()[0] and "seed/fg_recall" in metrics.splitlines()[0]
    # log_grad_norms: every step logs the gradient norm of each part of the network, and the total
    import csv

    rows = [r for r in csv.DictReader(metrics.splitlines()) if r.get("grad_norm/total")]
    assert len(rows) == trainer.global_step > 0
    for r in rows:
        parts = {k: float(v) for k, v in r.items() if k.startswith("grad_norm/") and k != "grad_norm/total" and v}
        assert set(parts) == {"grad_norm/backbone.body", "grad_norm/classifier"}  # the CAM net's two parts
        assert float(r["grad_norm/total"]) == pytest.approx(sum(v * v for v in parts.values()) ** 0.5, rel=1e-4)


def test_confidence_coverage_counts_negative_channels() -> None:
    """A model whose f4 has one all-negative channel: the reference rule covers every image
    entirely, the clamped rule only the positive channel's confident positions."""
    from types import SimpleNamespace

    from rpnet_pl.stages.seed_monitor import confidence_coverage

    def backbone(image: torch.Tensor) -> list[torch.Tensor]:
        pos = torch.zeros(1, 1, 2, 2)
        pos[0, 0, 0, 0] = 1.0  # confident at one position of four
        neg = -torch.ones(1, 1, 2, 2)  # all negative
        return [None, None, None, None, torch.cat([pos, neg], dim=1)]

    model = SimpleNamespace(backbone=backbone, head=SimpleNamespace(alpha=0.3, down=lambda x: x))
    c = confidence_coverage(model, [torch.zeros(1, 3, 32, 32)] * 3)
    assert c["covered_reference"] == 1.0 and c["whole_image_reference"] == 1.0
    assert c["covered_clamped"] == 0.25 and c["whole_image_clamped"] == 0.0
    assert c["negative_channels"] == 0.5 and c["images"] == 3.0


def test_branch_confusions_hand_computed() -> None:
    from rpnet_pl.stages.seed_monitor import branch_confusions

    # 2 foreground classes, only class 1 (index 0) in the image; maps at the mask's size (resize = identity)
    maps = torch.tensor([[[1.0, 0.2], [0.0, -3.0]],
                         [[9.0, 9.0], [9.0, 9.0]]])  # class 2 is absent: ignored however strong
    labels = torch.tensor([1.0, 0.0])
    mask = np.array([[1, 1], [1, 0]])
    conf = branch_confusions(maps, labels, mask, (0.1, 0.5), num_classes=3)
    assert conf.shape == (2, 3, 3)
    # thr 0.1: pixels (0,0) and (0,1) -> class 1 (0.2 / 1.00001 > 0.1); (1,0) and (1,1) -> background
    np.testing.assert_array_equal(conf[0], [[1, 0, 0], [1, 2, 0], [0, 0, 0]])
    # thr 0.5: only (0,0) is class 1
    np.testing.assert_array_equal(conf[1], [[1, 0, 0], [2, 1, 0], [0, 0, 0]])


def test_reference_partner_shares_a_class() -> None:
    from rpnet_pl.stages.seed_monitor import reference_partner

    labels = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]),
              torch.tensor([0.0, 0.0, 1.0])]
    assert reference_partner(labels, 0) == 2
    assert reference_partner(labels, 1) == 2
    assert reference_partner(labels, 2) == 0  # cyclic
    assert reference_partner(labels, 3) is None


class _TwoBranches(torch.nn.Module):
    """Plain maps = the object's left column only, enhanced maps = the whole object (a 4x4 image
    with a 2x2 object of class 1 in its top-left corner)."""

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        n = images.shape[0] * images.shape[1]
        plain, enhanced = torch.zeros(n, 2, 4, 4), torch.zeros(n, 2, 4, 4)
        plain[:, 0, :2, 0] = 1.0
        enhanced[:, 0, :2, :2] = 1.0
        return {"cams": plain, "enhanced_cams": enhanced}


def test_branch_seed_scores_prefers_the_complete_branch() -> None:
    from rpnet_pl.stages.seed_monitor import branch_seed_scores

    mask = np.zeros((4, 4), dtype=np.int64)
    mask[:2, :2] = 1
    item = {"image": torch.zeros(3, 4, 4), "labels": torch.tensor([1.0, 0.0]), "mask": mask}
    result = branch_seed_scores(_TwoBranches(), [item, item], size=4, thresholds=(0.5,))
    # enhanced: perfect (IoU 1 for background and class 1); plain: class 1 IoU 2/4, background 12/14
    assert result["enhanced"]["miou"] == pytest.approx(1.0)
    assert result["plain"]["miou"] == pytest.approx((0.5 + 12 / 14) / 2)
    assert result["plain"]["fg_recall"] == pytest.approx(0.5)
    assert result["plain"]["fg_precision"] == pytest.approx(1.0)
    assert result["plain"]["best_threshold"] == 0.5


def test_branch_seeds_command_names_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rpnet_pl.cli import main

    missing = tmp_path / "none.ckpt"
    assert main(["branch-seeds", "--ckpt", str(missing), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "checkpoint not found" in err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["branch-seeds", "--ckpt", str(bad), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unreadable checkpoint" in err
    assert main(["branch-seeds", "--ckpt", str(bad), "--root", str(tmp_path), "--size", "4"]) == 2
    assert "--size 4" in capsys.readouterr().err


def test_branch_seeds_command_names_an_empty_split_or_no_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A real (untrained) RPNet checkpoint: an empty split and ``--images 0`` each give a one-line
    error naming the file or the root, the split and its size."""
    from rpnet_pl.cli import main
    from tests.conftest import make_voc_tree

    make_voc_tree(tmp_path, {"2007_000001": [1]}, splits={"train": [], "train_aug": ["2007_000001"]})
    ckpt = tmp_path / "rpnet.ckpt"
    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(build_stage("classifier", method="rpnet", backbone="resnet18", pretrained=False, mid=32))
    trainer.save_checkpoint(ckpt)
    assert main(["branch-seeds", "--ckpt", str(ckpt), "--root", str(tmp_path), "--split", "train"]) == 2
    err = capsys.readouterr().err  # the reader names the empty list file
    assert err.startswith("error: ") and "ImageSets/Segmentation/train.txt: split list is empty" in err
    assert main(["branch-seeds", "--ckpt", str(ckpt), "--root", str(tmp_path), "--split", "train_aug",
                 "--images", "0"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: no images to score (split 'train_aug' has 1, --images 0)" in err
