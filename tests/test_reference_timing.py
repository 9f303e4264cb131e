"""scripts/reference_timing.py on a stand-in of the public RPNet / IRN / DeepLab code's interfaces:
the same module paths, classes and call signatures as the published repositories, tiny
networks. Every reference call is counted, so the test fails if a row times anything but the
reference, and a backbone asked for its ImageNet weights fails as a download would."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference_timing.py"

_COUNT = '''
import os
def count(name):
    with open(os.environ["STANDIN_CALLS"], "a") as fh:
        fh.write(name + "\\n")
'''

_BACKBONE = '''
import torch.nn as nn
def _net():
    m = nn.Module()
    m.conv1, m.bn1, m.relu, m.maxpool = nn.Conv2d(3, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Identity()
    m.layer1, m.layer2, m.layer3, m.layer4 = (nn.Conv2d(4, 4, 3, s, 1) for s in (2, 2, 2, 1))
    return m
def _resnet(arch, block, layers, pretrained, **kwargs):
    if pretrained:
        raise RuntimeError("would download ImageNet weights")
    return _net()
def {name}(pretrained=True, **kwargs):
    return _resnet("{name}", None, None, pretrained, **kwargs)
'''

_CAM_NET = '''
import torch, torch.nn as nn, torch.nn.functional as F
from net import resnext
from misc.count import count
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        b = resnext.resnext101_32x8d(pretrained=True)
        self.features = nn.Sequential(b.conv1, b.relu, b.layer1, b.layer2, b.layer3)
        self.classifier = nn.Conv2d(4, 20, 1, bias=False)
    def trainable_parameters(self):
        return list(self.features.parameters()), list(self.classifier.parameters())
    def train(self, mode=True):  # as the reference: the mode is left as it is, nothing returned
        pass
class Net_CAM(Net):
    def forward(self, x, y):
        count("Net_CAM")
        cx, cy = self.classifier(self.features(x)), self.classifier(self.features(y))
        return cx.mean((2, 3)), cy.mean((2, 3)), cx, cy, cx * 0.5, cy * 0.5
class CAM(Net):
    def forward(self, x, y):
        count("CAM")
        x = F.relu(self.classifier(self.features(x)))
        return x[0] + x[1].flip(-1)
'''

_TORCHUTILS = '''
import torch
class PolyOptimizer(torch.optim.SGD):
    def __init__(self, params, lr, weight_decay, max_step, momentum=0.9):
        super().__init__(params, lr, weight_decay=weight_decay)
        self.max_step = max_step
'''

_IMUTILS = '''
import numpy as np
from misc.count import count
def crf_inference_label(img, labels, t=10, n_labels=21, gt_prob=0.7):
    count("crf_inference_label")
    assert img.dtype == np.uint8 and labels.max() < n_labels
    return labels
'''

_INDEXING = '''
import numpy as np, torch, torch.nn.functional as F
from misc.count import count
class PathIndex:
    def __init__(self, radius, default_size):
        n = default_size[0] * default_size[1]
        self.radius = radius
        self.dst_indices = np.zeros((4, n), dtype=np.int64)
def propagate_to_edge(x, edge, radius=5, beta=10, exp_times=8):
    count("propagate_to_edge")
    torch.zeros(1).cuda()  # as the reference: made a no-op on a CPU
    return (x * (1 - edge)).unsqueeze(1)
'''

_IRN_NET = '''
import torch, torch.nn as nn, torch.nn.functional as F
from net import resnet50
from misc.count import count
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        b = resnet50.resnet50(pretrained=True, strides=(2, 2, 2, 1))
        self.edge_layers = nn.Sequential(b.conv1, b.layer1, nn.Conv2d(4, 1, 1))
        self.dp_layers = nn.Sequential(nn.Conv2d(3, 2, 3, 4, 1))
    def trainable_parameters(self):
        return tuple(self.edge_layers.parameters()), tuple(self.dp_layers.parameters())
    def train(self, mode=True):
        pass
class AffinityDisplacementLoss(Net):
    def __init__(self, path_index):
        super().__init__()
        self.path_index = path_index
    def forward(self, x, return_loss):
        count("AffinityDisplacementLoss")
        d, p = self.path_index.dst_indices.shape
        edge, dp = self.edge_layers(x).mean((1, 2, 3)), self.dp_layers(x).mean((1, 2, 3))
        pos = edge[:, None, None].expand(-1, d, p)
        disp = dp[:, None, None, None].expand(-1, 2, d, p)
        return pos.abs(), (1 - pos).abs(), disp.abs(), disp.abs()
class EdgeDisplacement(Net):
    def forward(self, x):
        count("EdgeDisplacement")
        h, w = (x.shape[2] - 1) // 4 + 1, (x.shape[3] - 1) // 4 + 1
        edge = torch.sigmoid(F.interpolate(self.edge_layers(x), size=(h, w)))
        return edge[0] / 2 + edge[1].flip(-1) / 2, None
'''

_DEEPLAB = '''
import torch, torch.nn as nn, torch.nn.functional as F
import os
def _count(name):
    with open(os.environ["STANDIN_CALLS"], "a") as fh:
        fh.write(name + "\\n")
class _Base(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.layer1 = nn.Conv2d(3, 4, 3, 8, 1)
        self.aspp = nn.Conv2d(4, n_classes, 3, 1, 1)
    def forward(self, x):
        return self.aspp(self.layer1(x))
    def freeze_bn(self):
        pass
class MSC(nn.Module):
    def __init__(self, base, scales):
        super().__init__()
        self.base, self.scales = base, scales
    def forward(self, x):
        _count("MSC")
        logits = [self.base(x)] + [self.base(F.interpolate(x, scale_factor=s)) for s in self.scales]
        top = torch.stack([F.interpolate(l, size=logits[0].shape[-2:]) for l in logits]).max(0)[0]
        return logits + [top] if self.training else top
def DeepLabV2_ResNet101_MSC(n_classes):
    return MSC(base=_Base(n_classes), scales=[0.5, 0.75])
'''


def write_standin(root: Path) -> tuple[Path, Path, Path]:
    """Three stand-in repositories (RPNet, IRN, DeepLab) laid out as the published ones."""
    rpnet, irn, deeplab = root / "RPNet", root / "irn", root / "deeplab-pytorch"
    for repo in (rpnet, irn):
        (repo / "net").mkdir(parents=True)
        (repo / "misc").mkdir()
        (repo / "misc" / "count.py").write_text(_COUNT)
        (repo / "misc" / "torchutils.py").write_text(_TORCHUTILS)
        (repo / "misc" / "imutils.py").write_text(_IMUTILS)
        (repo / "misc" / "indexing.py").write_text(_INDEXING)
        (repo / "net" / "resnet50.py").write_text(_BACKBONE.replace("{name}", "resnet50"))
        (repo / "net" / "resnet50_irn.py").write_text(_IRN_NET)
    (rpnet / "net" / "resnext.py").write_text(_BACKBONE.replace("{name}", "resnext101_32x8d"))
    (rpnet / "net" / "resnet50_cam.py").write_text(_CAM_NET)
    (deeplab / "libs" / "models").mkdir(parents=True)
    (deeplab / "libs" / "__init__.py").write_text("")
    (deeplab / "libs" / "models" / "__init__.py").write_text(_DEEPLAB)
    return rpnet, irn, deeplab


def _script(monkeypatch):
    spec = importlib.util.spec_from_file_location("reference_timing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "reference_timing", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_stage_times_the_reference_and_ours(tmp_path: Path, monkeypatch, capsys) -> None:
    rpnet, irn, deeplab = write_standin(tmp_path / "ref")
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("STANDIN_CALLS", str(calls))
    monkeypatch.setattr(sys, "path", list(sys.path))
    script = _script(monkeypatch)
    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    assert script.main([str(rpnet), "--irn", str(irn), "--deeplab", str(deeplab), "--size", "tiny",
                        "--ours-backbone", "resnet18", "--runs", "2", "--warmup", "1",
                        "--json", str(out_json), "--markdown", str(out_md)]) == 0
    result = json.loads(out_json.read_text())
    assert [r["stage"] for r in result["rows"]] == list(script.STAGES)
    for row in result["rows"]:
        assert len(row["reference"]) == 2 and len(row["ours"]) == 2 and min(row["reference"] + row["ours"]) > 0
        assert row["ratio"] == pytest.approx(sum(row["reference"]) / sum(row["ours"]))  # medians of 2: means
        assert row["input"].endswith("; ours on resnet18")
    # each reference network / function ran once per warm-up and timed call: 1 + 2
    counted = calls.read_text().split()
    per_row = {"Net_CAM": 3, "CAM": 3 * 4, "crf_inference_label": 3 * 2, "AffinityDisplacementLoss": 3,
               "EdgeDisplacement": 3, "propagate_to_edge": 3, "MSC": 3 + 3}
    assert {name: counted.count(name) for name in per_row} == per_row
    table = out_md.read_text()
    assert table.count("\n| ") == 1 + len(script.STAGES) and "| cam | 48x40, scales 1/0.5/1.5/2 + flip" in table
    assert "cpu, default allocator" in table
    # the reference's modules were dropped again: nothing named net / misc / libs is left importable as ours
    assert not any(str(p).startswith(str(tmp_path)) for p in sys.path)


def test_unknown_stage_and_missing_clone_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    rpnet, irn, deeplab = write_standin(tmp_path / "ref")
    script = _script(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        script.main([str(rpnet), "--stages", "cam,camm"])
    assert exit_.value.code == 2 and "unknown stage(s) camm" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no_such_clone: not a folder"):
        script.main([str(tmp_path / "no_such_clone"), "--stages", "cam", "--size", "tiny"])
    # a clone of another version: the row names the clone and what it lacks, no traceback
    (rpnet / "net" / "resnet50_cam.py").write_text(_CAM_NET.replace("class Net_CAM(Net):", "class Renamed(Net):"))
    assert script.main([str(rpnet), "--stages", "classifier", "--size", "tiny", "--ours-backbone", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert f"error: {rpnet}: classifier: the reference code lacks what this row calls" in err and "Net_CAM" in err
    # the DeepLab rows need their clone: without it they are named as skipped, and nothing timed is an error
    assert script.main([str(rpnet), "--stages", "deeplab_infer", "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "skip deeplab_infer: no --deeplab clone given" in err and "error: no stage was timed" in err
