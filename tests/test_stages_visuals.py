"""Sample images of the training stages: the overlay functions, the per-logger dispatch, and the
images (and hyper-parameters, per-class IoU) a short fit of each stage leaves in a CSV logger."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from rpnet_pl.data.classes import class_names, voc_palette
from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rpnet_pl.stages.visuals import denormalise, eval_mode, gray, grid, jet, log_images, overlay_cam, overlay_labels
from rpnet_pl.pipeline.networks import flat_model
from rpnet_pl.stages.checkpoints import build_stage

RNG = np.random.default_rng(0)


def _image(h: int = 6, w: int = 7) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- pure image functions ----------------------------------------------------------------------
def test_overlay_cam_blends_by_cam_value() -> None:
    image = _image()
    assert np.array_equal(overlay_cam(image, np.zeros(image.shape[:2])), image)  # weight 0: unchanged
    cam = np.zeros(image.shape[:2])
    cam[2, 3] = 1.0
    out = overlay_cam(image, cam, alpha=1.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.array_equal(out[2, 3], jet(np.float32(1.0))) and np.array_equal(out[2, 3], [128, 0, 0])  # dark red
    mask = np.ones(image.shape[:2], bool)
    mask[2, 3] = False
    assert np.array_equal(out[mask], image[mask])
    assert np.array_equal(jet(np.array([0.0, 0.5])), [[0, 0, 128], [128, 255, 128]])
    with pytest.raises(ValueError, match="does not match"):
        overlay_cam(image, np.zeros((2, 2)))


def test_overlay_labels_uses_the_palette_colours() -> None:
    image, palette = _image(), voc_palette()
    label = np.zeros(image.shape[:2], np.uint8)
    label[0] = 255
    label[1:3, 1:3] = 15
    out = overlay_labels(image, label, palette, alpha=1.0)
    assert np.array_equal(out, palette[label])
    assert out[0, 0].tolist() == [224, 224, 192] and out[1, 1].tolist() == palette[15].tolist()
    assert np.array_equal(overlay_labels(image, label, palette, alpha=0.0), image)
    half = overlay_labels(image, label, palette, alpha=0.5)
    assert np.abs(half.astype(int) - (image.astype(int) + palette[label]) / 2).max() <= 0.5


def test_denormalise_inverts_the_normalisation() -> None:
    image = _image(5, 4)
    norm = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    tensor = torch.from_numpy(norm.transpose(2, 0, 1).astype(np.float32))
    out = denormalise(tensor)
    assert out.dtype == np.uint8 and out.shape == (5, 4, 3)
    assert np.array_equal(out, image)
    with pytest.raises(ValueError):
        denormalise(torch.zeros(5, 4, 3))


def test_grid_pads_tiles_to_one_cell_size() -> None:
    a, b, c = np.zeros((4, 5, 3), np.uint8), np.full((2, 3, 3), 7, np.uint8), gray(np.ones((4, 5)))
    out = grid([a, b, c], cols=2, pad=1)
    assert out.shape == (2 * 4 + 1, 2 * 5 + 1, 3)
    assert (out[:4, :5] == 0).all() and (out[:2, 6:9] == 7).all() and (out[2:4, 6:] == 255).all()
    assert (out[5:, :5] == 255).all()  # the grey tile (all ones -> white)
    assert (out[4] == 255).all()  # the padding row
    assert grid([a, b], cols=5).shape == (4, 5 + 2 + 5, 3)  # fewer tiles than columns, default pad 2
    assert grid([np.zeros((3, 3), np.uint8)], cols=1).shape == (3, 3, 3)  # grey 2-D tiles


def test_eval_mode_restores_each_flag() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3))
    net.train()
    net[1].eval()  # a frozen BatchNorm must stay frozen
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[0].training and not net[1].training


def test_class_names() -> None:
    assert class_names(21)[15] == "person" and class_names(81)[10] == "traffic light"
    assert class_names(4) == ("background", "class1", "class2", "class3")


# -- loggers -----------------------------------------------------------------------------------
def _tiles() -> list[np.ndarray]:
    return [_image(8, 10), _image(8, 10), _image(8, 10)]


def test_log_images_csv_writes_one_png(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path), name="csv", version="")
    path = log_images(logger, "train/samples", _tiles(), step=3, captions=["a", "b", "c"])
    assert path == tmp_path / "csv" / "images" / "train_samples_3.png"
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == (3 * 10 + 2 * 2, 8)
    assert log_images([logger], "val/x", _tiles()[:1], step=0) == tmp_path / "csv" / "images" / "val_x_0.png"
    assert log_images(None, "train/samples", _tiles(), step=4) is None
    assert log_images(False, "train/samples", _tiles(), step=4) is None
    assert not list(tmp_path.rglob("*_4.png"))


def test_log_images_tensorboard_writes_an_event(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    assert log_images(logger, "train/samples", _tiles(), step=2) is None
    logger.experiment.flush()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "train/samples" in acc.Tags()["images"]
    img = acc.Images("train/samples")[0]
    assert (img.step, img.width, img.height) == (2, 34, 8)


def test_log_images_wandb_offline_writes_media(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    for k, v in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                 "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(k, v)
    logger = WandbLogger(project="rpnet-pl-test", save_dir=str(tmp_path), offline=True)
    try:
        log_images(logger, "train/samples", _tiles(), step=1, captions=["image", "cam", "foreground"])
    finally:
        logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = sorted((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 3
    with Image.open(media[0]) as im:
        assert im.size == (10, 8)


# -- the stages --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rpnet_pl.data.synthetic import generate_synthetic_voc

    root = tmp_path_factory.mktemp("synth")
    generate_synthetic_voc(root, images=8, size=40, classes=3, seed=0, test_images=1)
    return root


def _fit(stage: pl.LightningModule, dm: pl.LightningDataModule, folder: Path, **trainer: object) -> Path:
    logger = CSVLogger(str(folder), name="csv", version="")
    pl.Trainer(logger=logger, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(folder), use_distributed_sampler=False, log_every_n_steps=1,
               **{"max_steps": 2, **trainer}).fit(stage, datamodule=dm)
    return folder / "csv"


@pytest.mark.parametrize("method,tiles", [("rpnet", 3), ("cam", 2)])
def test_classifier_logs_samples_and_hparams(synth: Path, tmp_path: Path, method: str, tiles: int) -> None:
    from rpnet_pl.data.datamodules import GroupDataModule

    def fit(every: int, folder: Path) -> Path:
        dm = GroupDataModule(root=str(synth), batch_size=2, crop_size=32, long_side=(32, 40), num_workers=0)
        stage = build_stage("classifier", method=method, backbone="resnet18", mid=16, freeze_early=False, beta=0.3,
                                enhanced_scales=(1.0,), image_log_every_n_steps=every)
        return _fit(stage, dm, folder)

    log_dir = fit(1, tmp_path / "every")
    pngs = sorted(p.name for p in (log_dir / "images").glob("*.png"))
    assert pngs == ["train_samples_0.png", "train_samples_1.png"]
    with Image.open(log_dir / "images" / "train_samples_1.png") as im:
        assert im.mode == "RGB" and im.size == (tiles * 32 + (tiles - 1) * 2, 32)
    from pytorch_lightning.core.saving import load_hparams_from_yaml

    hp = load_hparams_from_yaml(str(log_dir / "hparams.yaml"))
    flat = flat_model("classifier", hp)  # the network's arguments under net
    assert flat["method"] == method and hp["image_log_every_n_steps"] == 1
    assert flat.get("beta") == (0.3 if method == "rpnet" else None)  # the CAM baseline has no beta
    assert not (fit(0, tmp_path / "never") / "images").exists()  # 0 disables


def test_refine_and_segmenter_log_samples_and_per_class_iou(synth: Path, tmp_path: Path) -> None:
    from rpnet_pl.data.datamodules import LabelledDataModule

    masks = str(synth / "VOCdevkit" / "VOC2012" / "SegmentationClassAug")  # ground truth as IR labels / pseudo masks

    def dm(crop: int, val: str | None = None) -> LabelledDataModule:
        return LabelledDataModule(label_dir=masks, root=str(synth), batch_size=2, crop_size=crop, num_workers=0,
                                  val_split=val)

    aff = build_stage("refine", backbone="resnet18", boundary_radius=5, image_log_every_n_steps=1)
    log_dir = _fit(aff, dm(48), tmp_path / "refine", max_steps=1)
    with Image.open(log_dir / "images" / "train_samples_0.png") as im:
        assert im.size == (3 * 48 + 2 * 2, 48)

    seg = build_stage("segmenter", backbone="resnet18", output_stride=16, num_classes=21, image_log_every_n_steps=1)
    log_dir = _fit(seg, dm(32, "val"), tmp_path / "segmenter", max_steps=1, limit_val_batches=2,
                   val_check_interval=1)
    with Image.open(log_dir / "images" / "train_samples_0.png") as im:
        assert im.size == (3 * 32 + 2 * 2, 32)
    with open(log_dir / "metrics.csv") as fh:
        columns = set(next(csv.reader(fh)))
    per_class = {c for c in columns if c.startswith("val/iou_")}
    assert "val/miou" in columns and "val/iou_background" in per_class
    assert per_class <= {f"val/iou_{n}" for n in class_names(21)}  # classes absent from gt and prediction: none
