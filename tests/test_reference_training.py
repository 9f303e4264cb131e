"""scripts/reference_training.py: the reference's dataset files, its run-time patches and the scoring,
on a stand-in of the public RPNet code's interfaces whose steps write the ground truth as their
outputs (so every score is known: 100 % everywhere, a refinement change of 0)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rpnet_pl.data.datasets import build_reader
from rpnet_pl.data.synthetic import generate_synthetic_voc

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reference_training", ROOT / "scripts" / "reference_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference_training"] = module
    spec.loader.exec_module(module)
    return module


rt = _script()

# -- a stand-in of the reference: the modules and names the script imports and patches ----------------
STANDIN = {
    "net/__init__.py": "",
    "misc/__init__.py": "",
    "step/__init__.py": "",
    "voc12/__init__.py": "",
    "net/resnext.py": """
import torch.nn as nn
class Bottleneck: pass
class ResNet(nn.Module):
    def __init__(self, block, layers, groups=1, width_per_group=64):
        super().__init__()
        self.layers = list(layers)
        self.conv1 = nn.Conv2d(3, 4, 1)
def resnext101_32x8d(pretrained=True, **kwargs):
    raise AssertionError('the script builds its own depth')
""",
    "net/resnet50.py": """
import torch.nn as nn
class Bottleneck: pass
class ResNet(nn.Module):
    def __init__(self, block, layers, strides=(2, 2, 2, 2)):
        super().__init__()
        self.layers, self.strides = list(layers), tuple(strides)
        self.conv1 = nn.Conv2d(3, 4, 1)
def resnet50(pretrained=True, strides=(2, 2, 2, 2), **kwargs):
    raise AssertionError('the script builds its own depth')
""",
    "net/resnet50_cam.py": """
import torch.nn as nn
from net import resnext
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet50 = resnext.resnext101_32x8d(pretrained=True)
        self.classifierx = nn.Conv2d(8, 20, 1, bias=False)
        self.downsample = nn.Conv2d(16, 8, 1, bias=False)
class Net_CAM(Net):
    pass
class CAM(Net):
    pass
""",
    "net/resnet50_irn.py": """
import torch.nn as nn
from net import resnet50
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet50 = resnet50.resnet50(pretrained=True, strides=[2, 2, 2, 1])
class AffinityDisplacementLoss(Net):
    def __init__(self, path_index):
        super(AffinityDisplacementLoss, self).__init__()
        self.size = path_index.default_size
class EdgeDisplacement(Net):
    def __init__(self, crop_size=512, stride=4):
        super(EdgeDisplacement, self).__init__()
        self.crop_size = crop_size
""",
    "misc/torchutils.py": """
import torch
class PolyOptimizer(torch.optim.SGD):
    def __init__(self, params, lr, weight_decay, max_step, momentum=0.9):
        super().__init__(params, lr, weight_decay)
        self.max_step = max_step
""",
    "misc/ground_truth.py": """
import os, shutil
import voc12.dataloader
def copy_masks(names, voc12_root, out_dir):
    for n in names:
        name = voc12.dataloader.decode_int_filename(n)
        shutil.copy(os.path.join(voc12_root, 'SegmentationClassAug', name + '.png'), os.path.join(out_dir, name + '.png'))
""",
    "misc/indexing.py": """
class PathIndex:
    def __init__(self, radius=5, default_size=(128, 128)):
        self.radius, self.default_size = radius, default_size
""",
    "voc12/dataloader.py": """
import os
import numpy as np
cls_labels_dict = np.load('voc12/cls_labels.npy', allow_pickle=True).item()
def decode_int_filename(int_filename):
    s = str(int(int_filename))
    return s[:4] + '_' + s[4:]
def get_img_path(img_name, voc12_root):
    return os.path.join(voc12_root, 'images', img_name + '.png')
def load_img_name_list(path):
    return np.loadtxt(path, dtype=np.int32)
class VOC12ClassificationDataset:
    def __init__(self, img_name_list_path, voc12_root, resize_long=None, rescale=None, img_normal=None,
                 hor_flip=False, crop_size=None, crop_method=None):
        self.names = load_img_name_list(img_name_list_path)
        self.resize_long, self.crop_size = resize_long, crop_size
""",
    # the steps: each checks a patch, then writes the ground truth in the reference's output format
    "step/train_cam.py": """
import importlib, json, torch
import voc12.dataloader
from misc import torchutils
def run(args):
    model = getattr(importlib.import_module(args.cam_network), 'Net_CAM')()
    optimizer = torchutils.PolyOptimizer([{'params': list(model.parameters()), 'lr': 0.1}], lr=0.1,
                                         weight_decay=args.cam_weight_decay, max_step=10)
    data = voc12.dataloader.VOC12ClassificationDataset(args.train_list, voc12_root=args.voc12_root,
                                                       resize_long=(320, 640), hor_flip=True, crop_size=512,
                                                       crop_method='random')
    seen = {'classes': model.classifierx.out_channels, 'down': model.downsample.out_channels,
            'layers': model.resnet50.layers, 'resize_long': list(data.resize_long), 'crop': data.crop_size,
            'images': len(data.names), 'init': float(model.classifierx.weight.detach().abs().sum()),
            'momentum': [g['momentum'] for g in optimizer.param_groups]}
    with open('seen_train_cam.json', 'w') as f:
        json.dump(seen, f)
    torch.save(model.state_dict(), args.cam_weights_name + '.pth')
""",
    "step/make_cam.py": """
import os, numpy as np, torch
from torch import multiprocessing, cuda
from PIL import Image
import voc12.dataloader
def _work(process_id, names, args):
    with cuda.device(process_id):
        for n in names:
            name = voc12.dataloader.decode_int_filename(n)
            gt = np.asarray(Image.open(os.path.join(args.voc12_root, 'SegmentationClassAug', name + '.png')))
            label = voc12.dataloader.cls_labels_dict[n]
            keys = torch.nonzero(torch.from_numpy(label))[:, 0]
            high = np.stack([(gt == k + 1).astype(np.float32) for k in keys.tolist()])
            np.save(os.path.join(args.cam_out_dir, name + '.npy'), {'keys': keys, 'cam': torch.from_numpy(high[:, ::4, ::4].copy()), 'high_res': high})
def run(args):
    assert torch.cuda.device_count() == 1
    assert os.path.isfile(voc12.dataloader.get_img_path('%s' % voc12.dataloader.decode_int_filename(
        voc12.dataloader.load_img_name_list(args.infer_list)[0]), args.voc12_root))
    names = voc12.dataloader.load_img_name_list(args.infer_list)
    multiprocessing.spawn(_work, nprocs=torch.cuda.device_count(), args=(names, args), join=True)
""",
    "step/cam_to_ir_label.py": """
from torch import multiprocessing
import voc12.dataloader
from misc.ground_truth import copy_masks
def _work(process_id, names, args):
    copy_masks(names, args.voc12_root, args.ir_label_out_dir)
def run(args):
    names = voc12.dataloader.load_img_name_list(args.train_list)
    multiprocessing.spawn(_work, nprocs=args.num_workers, args=(names, args), join=True)
""",
    "step/train_irn.py": """
import importlib, json, torch
from misc import indexing
def run(args):
    path_index = indexing.PathIndex(radius=10, default_size=(args.irn_crop_size // 4, args.irn_crop_size // 4))
    model = getattr(importlib.import_module(args.irn_network), 'AffinityDisplacementLoss')(path_index)
    with open('seen_train_irn.json', 'w') as f:
        json.dump({'size': list(model.size), 'layers': model.resnet50.layers, 'strides': list(model.resnet50.strides)}, f)
    torch.save(model.state_dict(), args.irn_weights_name)
""",
    "step/make_sem_seg_labels.py": """
import importlib, json
from torch import multiprocessing, cuda
from torch.utils.data import DataLoader
import voc12.dataloader
from misc.ground_truth import copy_masks
def _work(process_id, names, args):
    copy_masks(names, args.voc12_root, args.sem_seg_out_dir)
def run(args):
    model = getattr(importlib.import_module(args.irn_network), 'EdgeDisplacement')()
    with open('seen_make_sem_seg.json', 'w') as f:
        json.dump({'crop': model.crop_size}, f)
    names = voc12.dataloader.load_img_name_list(args.train_list)
    multiprocessing.spawn(_work, nprocs=1, args=(names, args), join=True)
""",
}


def write_standin(root: Path) -> Path:
    for rel, text in STANDIN.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.lstrip("\n"))
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_voc(out, images=28, size=48, classes=3, seed=1, test_images=1)
    return out


# -- pure parts ------------------------------------------------------------------------------------------
def test_integer_ids_and_a_foreign_id_is_one_line() -> None:
    assert rt.integer_id("2007_000032") == 2007000032
    with pytest.raises(SystemExit, match="'img12'.*YYYY_NNNNNN"):
        rt.integer_id("img12")


def test_the_reference_lists_of_a_dataset(synth: Path, tmp_path: Path) -> None:
    info = rt.write_reference_lists(tmp_path, synth)
    reader = build_reader("voc", synth, "train_aug")
    assert info["classes"] == 20  # a VOC layout: the reference's 20 classes, 3 of them present
    listed = np.loadtxt(tmp_path / "voc12" / "train_aug.txt", dtype=np.int32)  # the reference's reader
    assert [f"{i // 10**6}_{i % 10**6:06d}" for i in listed.tolist()] == list(reader.ids)
    labels = np.load(tmp_path / "voc12" / "cls_labels.npy", allow_pickle=True).item()
    for image_id in reader.ids:
        assert np.array_equal(labels[rt.integer_id(image_id)], reader.multi_hot(image_id))
    for c in range(20):  # get_ref_img's partners of class c: the train_aug images that have it, no other
        partners = (tmp_path / "voc12" / "list" / "full" / f"{c + 1}.txt").read_text().split()
        assert partners == [i for i in reader.ids if reader.multi_hot(i)[c]]
        assert bool(partners) == (c < 3)


def test_recipe_scales_the_long_side_with_the_crop() -> None:
    assert rt.Recipe(crop=128).long_side == (80, 160)
    assert rt.Recipe(crop=512).long_side == (320, 640)


def test_mean_std_and_table() -> None:
    assert rt.mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"
    assert rt.mean_std([4.25]) == "4.2"
    assert rt.mean_std([1.0, float("nan"), 3.0]) == "2.0 ± 1.4 (n=2)" and rt.mean_std([float("nan")]) == "-"
    scores = lambda v: {k: v for k, _ in rt.COLUMNS}  # noqa: E731
    text = rt.table({"reference": [{"seed": 0, "scores": scores(10.0)}, {"seed": 1, "scores": scores(14.0)}],
                     "ours": [{"seed": 0, "scores": scores(12.0)}]}, "synthetic-voc")
    rows = text.splitlines()
    assert rows[2] == "| synthetic-voc | reference | 0, 1 | " + " | ".join(["12.0 ± 2.8"] * 6) + " |"
    assert rows[3] == "| synthetic-voc | ours | 0 | " + " | ".join(["12.0"] * 6) + " |"


def test_flat_cams(tmp_path: Path) -> None:
    from rpnet_pl.utils.io import save_npy

    def cams(*maps):
        save_npy(tmp_path / "c.npy", {"keys": np.arange(1, len(maps) + 1), "cam": np.stack(maps).astype(np.float32),
                                      "high_res": np.stack(maps)})
        return rt.flat_cams(tmp_path / "c.npy")

    zero, full, part = np.zeros((3, 4)), np.full((3, 4), 0.7), np.eye(3, 4)
    assert cams(zero) and cams(full) and cams(zero, full)
    assert not cams(part) and not cams(full, part)


def test_ours_experiment_changes_only_sizes_epochs_and_weights(tmp_path: Path) -> None:
    init = {"classifier": tmp_path / "c.pth", "irn": tmp_path / "i.pth"}
    assert "momentum" not in rt.our_experiment(init, tmp_path, rt.Recipe())["refine"]["model"]
    assert rt.our_experiment(init, tmp_path, rt.Recipe(momentum=0.9))["refine"]["model"]["momentum"] == 0.9
    exp = rt.our_experiment(init, tmp_path, rt.Recipe(crop=128, cam_epochs=7, momentum=0.9))
    assert exp["classifier"]["data"]["long_side"] == [80, 160] and exp["classifier"]["data"]["crop_size"] == 128
    assert exp["classifier"]["trainer"] == {"max_epochs": 7}
    assert exp["classifier"]["model"] == {"pretrained": False, "weights": str(init["classifier"]), "momentum": 0.9}
    assert exp["refine"]["model"]["weights"] == str(init["irn"]) and exp["pseudo_masks"] == {"pad_to": 128}
    assert set(exp) == {"extends", "name", "dataset", "classifier", "refine", "pseudo_masks"}


# -- the reference side on the stand-in --------------------------------------------------------------------
def test_reference_side_on_the_stand_in(synth: Path, tmp_path: Path, capsys) -> None:
    ref = write_standin(tmp_path / "ref")
    out = tmp_path / "out"
    argv = [str(ref), str(synth), "--out", str(out), "--seeds", "0", "--sides", "reference", "--crop", "64",
            "--blocks", "1", "2", "1", "1", "--markdown", str(tmp_path / "t.md")]
    assert rt.main(argv) == 0
    work = out / "reference" / "seed0"
    seen = json.loads((work / "seen_train_cam.json").read_text())
    # the patches: depth, sizes scaled by 64 / 512, the train_aug list, the initial weights
    assert seen["classes"] == 20 and seen["down"] == 8 and seen["layers"] == [1, 2, 1, 1]
    assert seen["resize_long"] == [40, 80] and seen["crop"] == 64
    assert seen["images"] == len(build_reader("voc", synth, "train_aug").ids)
    init = torch.load(work / "init" / "classifier.pth")
    assert seen["init"] == pytest.approx(float(init["classifierx.weight"].abs().sum()))
    irn = json.loads((work / "seen_train_irn.json").read_text())
    assert irn == {"size": [16, 16], "layers": [1, 2, 1, 1], "strides": [2, 2, 2, 1]}
    assert json.loads((work / "seen_make_sem_seg.json").read_text()) == {"crop": 64}
    # the ground truth as every output: every score is 100 %, the refinement changes nothing
    result = json.loads((work / "result.json").read_text())
    s = result["scores"]
    assert s["cam_miou"] == pytest.approx(100.0) and s["pseudo_miou"] == pytest.approx(100.0)
    assert s["ir_precision"] == pytest.approx(100.0) and s["ir_recall"] == pytest.approx(100.0)
    assert s["refinement_change"] == pytest.approx(0.0) and s["flat_cams"] == 0.0
    assert "| reference | 0 | 100.0 | 100.0 | 100.0 | 100.0 | 0.0 | 0.0 |" in (tmp_path / "t.md").read_text()
    assert seen["momentum"] == [1e-4]  # PolyOptimizer's quirk: its weight decay in SGD's momentum slot

    # the same recipe again: the stored result, nothing re-run; another recipe: run again
    (work / "seen_train_cam.json").unlink()
    assert rt.main(argv) == 0
    assert not (work / "seen_train_cam.json").exists()
    assert rt.main(argv + ["--cam-epochs", "2"]) == 0
    assert (work / "seen_train_cam.json").exists()
    assert json.loads((work / "result.json").read_text())["recipe"]["cam_epochs"] == 2
    # a result stored before a column existed is re-scored from its outputs, not re-run
    stored = json.loads((work / "result.json").read_text())
    del stored["scores"]["flat_cams"], stored["recipe"]["momentum"]  # as an older version wrote it
    (work / "result.json").write_text(json.dumps(stored))
    (work / "seen_train_cam.json").unlink()
    assert rt.main(argv + ["--cam-epochs", "2"]) == 0
    assert not (work / "seen_train_cam.json").exists()
    assert json.loads((work / "result.json").read_text())["scores"]["flat_cams"] == 0.0
    # the momentum switch reaches the reference's optimiser
    assert rt.main(argv + ["--momentum", "0.9"]) == 0
    assert json.loads((work / "seen_train_cam.json").read_text())["momentum"] == [0.9]


def test_ours_without_the_reference_s_initial_weights_is_one_line(synth: Path, tmp_path: Path) -> None:
    ref = write_standin(tmp_path / "ref")
    with pytest.raises(SystemExit, match=r"init: no initial weights of seed 3; run the reference side"):
        rt.main([str(ref), str(synth), "--out", str(tmp_path / "out"), "--seeds", "3", "--sides", "ours"])


def test_not_a_clone_is_one_line(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a clone of the public RPNet code"):
        rt.main([str(tmp_path), str(synth), "--out", str(tmp_path / "out")])


def test_a_dataset_without_train_aug_is_one_line_before_any_work(synth: Path, tmp_path: Path) -> None:
    ref = write_standin(tmp_path / "ref")
    data = tmp_path / "data"
    voc = data / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations", "SegmentationClassAug", "ImageSets"):
        (voc / sub).symlink_to(synth / "VOCdevkit" / "VOC2012" / sub, target_is_directory=True) if sub != "ImageSets" \
            else (voc / sub / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2099_000000\n")
    with pytest.raises(SystemExit, match=r"^error: .*train_aug.*") as info:
        rt.main([str(ref), str(data), "--out", str(tmp_path / "out"), "--seeds", "0", "--sides", "reference"])
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_a_failing_reference_step_is_one_line(synth: Path, tmp_path: Path) -> None:
    ref = write_standin(tmp_path / "ref")
    (ref / "step" / "train_irn.py").write_text("def run(args):\n    raise RuntimeError('broken')\n")
    with pytest.raises(SystemExit, match=r"^error: the reference side failed \(exit 1\); its output is above$"):
        rt.main([str(ref), str(synth), "--out", str(tmp_path / "out"), "--seeds", "0", "--sides", "reference"])
