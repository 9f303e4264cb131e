"""Bad inputs, each fed once (docs/reliability.md): a one-line error naming the file, or a warning
and a skip, and nothing written half."""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from rpnet_pl.cli import main
from rpnet_pl.data.check import check_voc
from rpnet_pl.data.classes import voc_palette
from rpnet_pl.data.voc import VOCReader, resolve_voc_root
from rpnet_pl.utils.errors import DatasetError
from rpnet_pl.utils.io import read_image, write_image, write_label_png
from rpnet_pl.stages.checkpoints import build_stage

IDS = ["2007_000001", "2007_000002", "2007_000003", "2007_000004"]
LABELS = {"2007_000001": [1], "2007_000002": [1, 2], "2007_000003": [2], "2007_000004": [15]}


def _voc(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2012"


def _one_error_line(err: str, *fragments: str) -> str:
    """The single ``error:`` line of a command's stderr (no traceback), holding every fragment."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_truncated_jpeg_is_named(tiny_voc: Path, capsys) -> None:
    path = _voc(tiny_voc) / "JPEGImages" / "2007_000002.jpg"
    write_image(path, np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"2007_000002\.jpg: unreadable image \(OSError: image file is truncated"):
        read_image(path)
    assert check_voc(tiny_voc).problems == [
        f"{path}: unreadable image (listed in train.txt, train_aug.txt, val.txt, test.txt)"]
    assert main(["data", "check", str(tiny_voc)]) == 1
    assert f"{path}: unreadable image" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["rgb", "label-21"])
def test_mask_not_indexed_or_labels_above_20(tiny_voc: Path, kind: str) -> None:
    path = _voc(tiny_voc) / "SegmentationClassAug" / "2007_000001.png"
    if kind == "rgb":
        write_image(path, np.zeros((16, 20, 3), np.uint8))
        expected = f"{path}: mask must be a palette or greyscale PNG, got mode RGB"
    else:
        mask = np.zeros((16, 20), np.uint8)
        mask[2, 2], mask[0, 0] = 21, 255  # 255 (ignore) is allowed, 21 is not
        write_label_png(path, mask, voc_palette())
        expected = f"{path}: mask values [21] are outside the class range 0..20 and 255"
    with pytest.raises(DatasetError) as exc:
        VOCReader(tiny_voc, "val", weak=False).mask("2007_000001")
    assert str(exc.value) == expected
    assert check_voc(tiny_voc).problems == [f"{expected} (listed in train.txt, train_aug.txt, val.txt)"]


def test_image_mask_size_mismatch(tiny_voc: Path) -> None:
    path = _voc(tiny_voc) / "SegmentationClassAug" / "2007_000003.png"
    write_label_png(path, np.zeros((10, 10), np.uint8), voc_palette())
    with pytest.raises(DatasetError, match=r"2007_000003\.png: mask size 10x10 differs from its image 20x16"):
        VOCReader(tiny_voc, "val", weak=False).mask("2007_000003", (16, 20))
    assert check_voc(tiny_voc).problems == [
        f"{path}: mask size 10x10 differs from its image 20x16 (listed in train.txt, train_aug.txt, val.txt)"]


def test_id_listed_twice_is_a_warning_and_kept_once(tiny_voc: Path, caplog) -> None:
    split = _voc(tiny_voc) / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("2007_000001\n2007_000002\n2007_000001\n")
    with caplog.at_level(logging.WARNING):
        reader = VOCReader(tiny_voc, "train")
    assert reader.ids == ["2007_000001", "2007_000002"]
    assert [r.getMessage() for r in caplog.records] == [f"{split}:3: id 2007_000001 listed twice; the repeat is skipped"]


def test_empty_split_file(tiny_voc: Path, capsys) -> None:
    split = _voc(tiny_voc) / "ImageSets" / "Segmentation" / "val.txt"
    split.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"val\.txt: split list is empty"):
        VOCReader(tiny_voc, "val")
    assert main(["data", "check", str(tiny_voc)]) == 1
    assert f"{split}: split list is empty" in capsys.readouterr().out


def _cams(tiny_voc: Path, out: Path) -> None:
    """Exact CAM files of the four images (keys = their labels, size 16x20)."""
    from rpnet_pl.steps.cam_inference import write_cam

    for image_id, keys in LABELS.items():
        cam = np.zeros((len(keys), 16, 20), np.float16)
        cam[:, 1:5, 1:5] = 1.0
        write_cam(out, image_id, {"keys": np.array(keys), "cam": cam[:, ::4, ::4].astype(np.float32), "high_res": cam})


@pytest.mark.parametrize("wrong", ["classes", "size"])
def test_cam_file_of_another_run_fed_to_ir_labels(tiny_voc: Path, tmp_path: Path, wrong: str, capsys) -> None:
    from rpnet_pl.steps.cam_inference import write_cam

    cams, out = tmp_path / "cams", tmp_path / "ir"
    _cams(tiny_voc, cams)
    if wrong == "classes":  # a COCO run's CAM: class 45 for an image labelled {15}
        cam = np.ones((1, 16, 20), np.float16)
        expected = "2007_000004.npy: CAM classes [45] differ from the image's labels [15]"
        write_cam(cams, "2007_000004", {"keys": np.array([45]), "cam": cam[:, ::4, ::4], "high_res": cam})
    else:  # a run on other image sizes
        cam = np.ones((1, 32, 40), np.float16)
        expected = "2007_000004.npy: high-res CAM size 40x32 differs from its image 20x16"
        write_cam(cams, "2007_000004", {"keys": np.array([15]), "cam": cam[:, ::4, ::4], "high_res": cam})
    assert main(["ir-labels", "--cams", str(cams), "--out", str(out), "--root", str(tiny_voc), "--no-crf",
                 "--workers", "0"]) == 2
    _one_error_line(capsys.readouterr().err, str(cams / "2007_000004.npy"), expected)
    assert not (out / "2007_000004.png").exists()
    _no_temp_files(out)


def _classifier(backbone: str = "resnet18"):
    from rpnet_pl.stages.classifier import ClassifierStage

    torch.manual_seed(0)
    return build_stage("classifier", method="cam", backbone=backbone, mid=16, freeze_early=False, enhanced_scales=(1.0,))


def _save(stage, path: Path, net_args: dict | None = None, **extra) -> Path:
    """``stage``'s checkpoint, its network's arguments changed by ``net_args``, ``extra`` hyper-parameters added."""
    import pytorch_lightning as pl

    hparams = {**dict(stage.hparams), **extra}
    hparams["net"] = {**hparams["net"], "init_args": {**hparams["net"]["init_args"], **(net_args or {})}}
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": pl.__version__}, path)
    return path


def _cam_cmd(ckpt: Path, out: Path, root: Path) -> list[str]:
    return ["cam", "--ckpt", str(ckpt), "--out", str(out), "--root", str(root), "--scales", "1.0", "--no-flip",
            "--accelerator", "cpu", "--devices", "1"]


def test_checkpoint_of_another_stage_or_backbone(tiny_voc: Path, tmp_path: Path, capsys) -> None:

    irn = _save(build_stage("refine", backbone="resnet18", pretrained=False, boundary_radius=2), tmp_path / "refine.ckpt")
    assert main(_cam_cmd(irn, tmp_path / "cams", tiny_voc)) == 2
    _one_error_line(capsys.readouterr().err, f"{irn}: a refine checkpoint, not a classifier one",
                    "runs/<experiment>/classifier/checkpoints/last.ckpt")
    clf = _save(_classifier(), tmp_path / "classifier.ckpt")
    assert main(["pseudo-masks", "--ckpt", str(clf), "--cams", str(tmp_path / "cams"), "--out",
                 str(tmp_path / "masks"), "--root", str(tiny_voc)]) == 2
    _one_error_line(capsys.readouterr().err, f"{clf}: a classifier checkpoint, not a refine one")
    # a resnet18 classifier's weights under hyper-parameters that name resnet34
    other = _save(_classifier(), tmp_path / "relabelled.ckpt", net_args={"backbone": "resnet34"})
    assert main(_cam_cmd(other, tmp_path / "cams", tiny_voc)) == 2
    _one_error_line(capsys.readouterr().err, f"{other}: its weights do not fit a classifier with backbone 'resnet34'")
    assert not (tmp_path / "cams").exists() or not list((tmp_path / "cams").iterdir())


def test_data_root_one_folder_above_or_inside_the_tree(tmp_path: Path, capsys) -> None:
    from tests.conftest import make_voc_tree

    make_voc_tree(tmp_path / "voc", {"2007_000001": [1]})
    with pytest.raises(DatasetError) as above:
        resolve_voc_root(tmp_path)
    assert str(above.value) == f"{tmp_path}: not a VOC tree, but {tmp_path / 'voc'} is one: use DATA={tmp_path / 'voc'} " \
                               f"(or --root {tmp_path / 'voc'})"
    inside = _voc(tmp_path / "voc") / "JPEGImages"
    with pytest.raises(DatasetError, match=rf"JPEGImages: not a VOC tree, but {_voc(tmp_path / 'voc')} is one"):
        resolve_voc_root(inside)
    assert main(["data", "check", str(inside)]) == 2
    _one_error_line(capsys.readouterr().err, f"use DATA={_voc(tmp_path / 'voc')}")
    assert resolve_voc_root(tmp_path / "voc") == _voc(tmp_path / "voc")  # the right root still resolves


def test_disk_full_while_writing_cams(tiny_voc: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The second CAM file hits ENOSPC halfway: one line naming it, the first file complete, no partial
    or temporary file; after space is freed the re-run writes only the missing ones."""
    from rpnet_pl.steps.cam_inference import cam_is_complete

    # as `rpnet fit` (LightningCLI) saves it: with the _instantiator key, which is not an init argument
    ckpt = _save(_classifier(), tmp_path / "classifier.ckpt", _instantiator="pytorch_lightning.cli.instantiate_module")
    out = tmp_path / "cams"
    real_save, calls = np.save, []

    def full_disk(fh, obj, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(fh, obj, **kwargs)

    monkeypatch.setattr(np, "save", full_disk)
    assert main(_cam_cmd(ckpt, out, tiny_voc)) == 2
    line = _one_error_line(capsys.readouterr().err, "no space left on device while writing the CAM file")
    written = sorted(out.glob("*.npy"))
    assert len(written) == 1 and cam_is_complete(written[0]) and written[0].name not in line
    _no_temp_files(out)
    monkeypatch.setattr(np, "save", real_save)
    assert main(_cam_cmd(ckpt, out, tiny_voc)) == 0
    assert "wrote 3 CAM file(s)" in capsys.readouterr().out
    assert sorted(p.stem for p in out.glob("*.npy")) == IDS


def test_finished_checkpoint_keeps_weights_without_optimiser_state(tmp_path: Path) -> None:
    """A finished training step's last.ckpt loses its optimiser state (half the disk) and still loads."""
    import torch

    from rpnet_pl.stages.checkpoints import slim_checkpoint
    from rpnet_pl.stages.classifier import ClassifierStage

    stage = build_stage("classifier", method="cam", backbone="resnet18", pretrained=False)
    state = {k: v.clone() for k, v in stage.state_dict().items()}
    ckpt = {"state_dict": state, "hyper_parameters": dict(stage.hparams), "epoch": 3, "global_step": 12,
            "pytorch-lightning_version": "2.6.6",
            "optimizer_states": [{"state": {i: {"momentum_buffer": v.clone()} for i, v in enumerate(state.values())
                                            if v.is_floating_point()}}]}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    before = path.stat().st_size
    saved = slim_checkpoint(path)
    assert saved > 0.4 * before and path.stat().st_size == before - saved
    slim = torch.load(path, weights_only=False)
    assert "optimizer_states" not in slim and slim["global_step"] == 12
    loaded = ClassifierStage.load_from_checkpoint(path, map_location="cpu")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert slim_checkpoint(path) == 0  # nothing left to drop
