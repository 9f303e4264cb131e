"""models.backbones: every backbone's levels and strides, the frozen policy, detaching, weight loading."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models import backbones as bb
from rpnet_pl.models.backbones import BACKBONES, PretrainedWeightsError, build_backbone, load_backbone_weights

torch.set_num_threads(1)


def measured_strides(feats: list[torch.Tensor], size: int) -> list[int]:
    return [size // f.shape[-1] for f in feats]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_and_runs_at_os16(name: str) -> None:
    b = build_backbone(name, pretrained=False)
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 64, 64))
    assert len(feats) == 5
    assert b.strides == [4, 4, 8, 16, 16]
    assert measured_strides(feats, 64) == b.strides
    assert [f.shape[1] for f in feats] == b.channels
    if bb.SPECS[name].family == "efficientnet":  # level 4: the activated conv_head features (SPECS)
        assert b.channels[4] == timm.create_model(BACKBONES[name]).num_features
        assert b._bn_pairs == [] and not any(type(m) is nn.BatchNorm2d for m in b.modules())  # fused BN + act
        return
    assert b.channels[4] == timm.create_model(BACKBONES[name], features_only=True).feature_info.channels()[-1]
    # BatchNorm folding in no-grad passes: every plain BatchNorm has its convolution, and the folded
    # network gives the same levels (BatchNorms given non-trivial statistics and affine parameters)
    plain_bns = [m for m in b.modules() if type(m) is nn.BatchNorm2d]
    assert len(b._bn_pairs) == len(plain_bns) > 0
    gen = torch.Generator().manual_seed(0)
    for m in plain_bns:
        for t, lo, hi in ((m.running_mean, -0.5, 0.5), (m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5), (m.bias, -0.3, 0.3)):
            t.data.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    b.eval()
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        b.fold_bn = False
        plain = b(x)
        b.fold_bn = True
        folded = b(x)
    for p, f in zip(plain, folded):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4 * float(p.abs().max()))
    assert all(type(m) is nn.BatchNorm2d for m in plain_bns) and len([m for m in b.modules() if type(m) is nn.BatchNorm2d]) == len(plain_bns)


@pytest.mark.parametrize("name", ["resnet18", "xception", "efficientnet_lite0"])
def test_output_stride_8(name: str) -> None:
    b = build_backbone(name, output_stride=8)
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 64, 64))
    assert b.strides == [4, 4, 8, 8, 8] == measured_strides(feats, 64)


def test_dilated_switch() -> None:
    dil = build_backbone("resnet18", dilated=True)
    plain = build_backbone("resnet18", dilated=False)
    assert any(m.dilation == (2, 2) for m in dil.body.layer4.modules() if isinstance(m, nn.Conv2d))
    assert all(m.dilation == (1, 1) for m in plain.modules() if isinstance(m, nn.Conv2d))
    # same geometry: undilating keeps the output size (IRN's strides (2, 2, 2, 1))
    with torch.no_grad():
        a, b = dil(torch.randn(1, 3, 48, 80)), plain(torch.randn(1, 3, 48, 80))
    assert [f.shape for f in a] == [f.shape for f in b]
    assert b[4].shape[-2:] == (3, 5)


def test_frozen_stem_and_bn() -> None:
    b = build_backbone("resnet18")  # freeze_stem, freeze_bn, freeze_bn_affine all on
    assert not any(p.requires_grad for p in b.body.conv1.parameters())
    assert not any(p.requires_grad for p in b.body.bn1.parameters())
    b.train()
    bns = [m for m in b.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert b.body.layer1[0].conv1.training  # everything else follows train()
    # running statistics do not move in training mode
    before = b.body.layer3[0].bn1.running_mean.clone()
    b(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(before, b.body.layer3[0].bn1.running_mean)
    # stem gets no gradient
    b(torch.randn(1, 3, 64, 64))[4].sum().backward()
    assert b.body.conv1.weight.grad is None
    assert b.body.layer1[0].conv1.weight.grad is not None


def test_bn_affine_trainable_as_irn() -> None:
    b = build_backbone("resnet18", freeze_bn_affine=False)
    b.train()
    assert not b.body.layer3[0].bn1.training
    assert b.body.layer3[0].bn1.weight.requires_grad
    assert not b.body.bn1.weight.requires_grad  # the stem's BN is frozen anyway (freeze_stem)


def test_bn_not_frozen() -> None:
    b = build_backbone("resnet18", freeze_bn=False, freeze_stem=False)
    b.train()
    assert b.body.layer3[0].bn1.training and b.body.bn1.training
    assert b.body.conv1.weight.requires_grad
    b.eval()
    assert not b.body.layer3[0].bn1.training


def _grads(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_detach_level_resnet() -> None:
    b = build_backbone("resnet18", freeze_bn_affine=False)
    feats = b(torch.randn(2, 3, 64, 64), detach_level=2)
    assert [f.requires_grad for f in feats] == [False, False, False, True, True]
    (feats[3].sum() + feats[4].sum()).backward()
    assert not _grads(b.body.layer1) and not _grads(b.body.layer2)
    assert _grads(b.body.layer3) and _grads(b.body.layer4)
    # the cut is per call: without detach_level the gradient reaches layer 1
    b.zero_grad(set_to_none=True)
    b(torch.randn(2, 3, 64, 64))[4].sum().backward()
    assert _grads(b.body.layer1)


def test_detach_level_xception_cuts_inside_the_block() -> None:
    b = build_backbone("xception", freeze_bn_affine=False)
    feats = b(torch.randn(1, 3, 64, 64), detach_level=2)
    feats[4].sum().backward()
    for i in range(3):  # levels 0..2 live in blocks 0..2 (the level-2 point is inside block 2)
        assert not _grads(b.body.get_submodule(f"blocks_{i}").stack.conv1), i
    assert _grads(b.body.blocks_2.stack.conv3)  # block 2's strided part belongs to level 3
    assert _grads(b.body.blocks_20)


def test_deepcopy_keeps_detach_working() -> None:
    b = copy.deepcopy(build_backbone("resnet18"))
    b(torch.randn(1, 3, 64, 64), detach_level=2)[4].sum().backward()
    assert not _grads(b.body.layer2) and _grads(b.body.layer3)


def test_stem_level_is_after_maxpool_and_matches_torchvision(tmp_path: Path) -> None:
    """Loading torchvision's ResNet-18 weights reproduces torchvision's maxpool and layer4 outputs."""
    tv = torchvision.models.resnet18(weights=None).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    b = build_backbone("resnet18", weights=str(tmp_path / "tv.pth"), output_stride=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = b(x)
        stem = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        l4 = tv.layer4(tv.layer3(tv.layer2(tv.layer1(stem))))
    torch.testing.assert_close(feats[0], stem)
    torch.testing.assert_close(feats[4], l4)
    assert not b.load_report.missing and not b.load_report.unexpected


def test_load_timm_and_prefixed_keys(tmp_path: Path) -> None:
    src = timm.create_model("resnet18", pretrained=False)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DataParallel-style, with fc.*
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    b = build_backbone("resnet18", weights=str(tmp_path / "w.pth"))
    for k, v in b.body.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k], msg=k)
    assert not b.load_report.unexpected  # fc.* dropped, not reported


def test_load_xception_timm_keys(tmp_path: Path) -> None:
    """timm's feature wrapper flattens ``blocks.0`` to ``blocks_0``; full-model keys still load."""
    src = timm.create_model("xception65", pretrained=False)
    torch.save(src.state_dict(), tmp_path / "x.pth")
    b = build_backbone("xception", weights=str(tmp_path / "x.pth"))
    assert not b.load_report.missing and not b.load_report.unexpected
    torch.testing.assert_close(b.body.blocks_3.stack.conv1.conv_dw.weight, src.blocks[3].stack.conv1.conv_dw.weight)


def test_partial_file_reports_missing(tmp_path: Path) -> None:
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd.pop("layer4.1.conv2.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "p.pth")
    b = build_backbone("resnet18")
    report = load_backbone_weights(b, tmp_path / "p.pth")
    assert report.missing == ["layer4.1.conv2.weight"]
    assert report.unexpected == ["extra.weight"]


def test_weight_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(PretrainedWeightsError, match="nope.pth"):
        build_backbone("resnet18", weights=str(missing))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="garbage.pth"):
        build_backbone("resnet18", weights=str(garbage))
    wrong = tmp_path / "resnet50.pth"  # same key names, other shapes: almost nothing matches
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), wrong)
    with pytest.raises(PretrainedWeightsError, match="resnet50.pth"):
        build_backbone("resnet18", weights=str(wrong))
    assert issubclass(PretrainedWeightsError, ConfigError)


def test_pretrained_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw):
        if pretrained:
            raise OSError("no network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(bb.timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match=r"weights: /path/to/file.pth"):
        build_backbone("resnet18", pretrained=True)


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        build_backbone("vgg16")
    with pytest.raises(ConfigError):
        build_backbone("resnet18", output_stride=4)


def test_stem_pool_skipped_when_not_needed() -> None:
    """``stem=False`` leaves level 0 as timm gives it (stride 2) and every other level unchanged."""
    import torch

    from rpnet_pl.models.backbones import build_backbone

    bb = build_backbone("resnet18", output_stride=16, dilated=False).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full, lean = bb(x), bb(x, stem=False)
    assert full[0].shape[-2:] == (16, 16) and lean[0].shape[-2:] == (32, 32)
    torch.testing.assert_close(full[0], torch.nn.functional.max_pool2d(lean[0], 3, 2, 1))
    for a, b in zip(full[1:], lean[1:]):
        assert torch.equal(a, b)


def test_fold_batchnorm_hand_computed() -> None:
    """conv(x) = 2x + 1 per channel, then BN with mean 3, var 4 - eps, gamma 0.5, beta 1:
    0.5 * (2x + 1 - 3) / 2 + 1 = 0.5x + 0.5, i.e. weight 0.5 and bias 0.5."""
    eps = 1e-5
    weight = torch.full((1, 1, 1, 1), 2.0)
    w, b = bb.fold_batchnorm(weight, torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([4.0 - eps]),
                             torch.tensor([0.5]), torch.tensor([1.0]), eps)
    assert w.shape == (1, 1, 1, 1) and b.shape == (1,)
    torch.testing.assert_close(w.flatten(), torch.tensor([0.5]))
    torch.testing.assert_close(b, torch.tensor([0.5]))
    # no conv bias, no affine: weight / 2, bias -mean / 2
    w, b = bb.fold_batchnorm(weight, None, torch.tensor([3.0]), torch.tensor([4.0 - eps]), None, None, eps)
    torch.testing.assert_close(w.flatten(), torch.tensor([1.0]))
    torch.testing.assert_close(b, torch.tensor([-1.5]))
    # the weight's memory format is kept (channels-last weights stay channels-last)
    cl = torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    w, _ = bb.fold_batchnorm(cl, None, torch.zeros(4), torch.ones(4), None, None, 0.0)
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_batchnorm_folded_only_without_gradient_and_in_eval_mode() -> None:
    """Folding swaps modules only inside no-grad passes of eval-mode BatchNorms, and puts them back."""
    b = build_backbone("resnet18", freeze_bn=False)
    keys = list(b.state_dict())
    seen: list[str] = []
    b.body.layer1[0].register_forward_hook(lambda m, i, o: seen.append(type(m.conv1).__name__))
    x = torch.randn(2, 3, 64, 64)
    b.eval()
    with torch.no_grad():
        b(x)
    b(x)  # with gradient: never folded
    b.train()  # live BatchNorm (freeze_bn=False): batch statistics, cannot be folded
    with torch.no_grad():
        b(x)
    assert seen == ["_FoldedConv", "Conv2d", "Conv2d"]
    assert type(b.body.layer1[0].conv1) is nn.Conv2d and type(b.body.layer1[0].bn1) is nn.BatchNorm2d
    with bb.folded_batchnorm(b.body.eval(), b._bn_pairs) as n:
        assert n == 20
    # an error inside the block still puts the modules back
    with pytest.raises(RuntimeError), bb.folded_batchnorm(b.body, b._bn_pairs):
        raise RuntimeError("boom")
    assert type(b.body.bn1) is nn.BatchNorm2d and type(b.body.conv1) is nn.Conv2d
    assert list(b.state_dict()) == keys


def test_channels_last_property_and_input_layout() -> None:
    b = build_backbone("resnet18")
    assert not b.channels_last
    b.to(memory_format=torch.channels_last)
    assert b.channels_last
    with torch.no_grad():
        feats = b(torch.randn(1, 3, 64, 64))
    assert feats[4].is_contiguous(memory_format=torch.channels_last)


def test_max_pool_3x3_s2_hand_computed() -> None:
    """4 x 4 -> 2 x 2: window rows/cols {-1, 0, 1} and {1, 2, 3}, the padding never wins."""
    x = torch.tensor([[1.0, 9.0, 2.0, 0.0],
                      [3.0, 4.0, 8.0, 5.0],
                      [-7.0, 6.0, -1.0, -2.0],
                      [0.0, 1.0, -3.0, 7.0]])[None, None]
    out = bb.max_pool_3x3_s2(x)
    # (0,0): rows 0-1, cols 0-1 -> 9; (0,1): rows 0-1, cols 1-3 -> 9; (1,0): rows 1-3, cols 0-1 -> 6;
    # (1,1): rows 1-3, cols 1-3 -> 8
    assert out.tolist() == [[[[9.0, 9.0], [6.0, 8.0]]]]
    # all negative: -inf padding is never picked
    assert bb.max_pool_3x3_s2(-torch.ones(1, 1, 3, 3) * 5).tolist() == [[[[-5.0, -5.0], [-5.0, -5.0]]]]


@pytest.mark.parametrize("h,w", [(1, 1), (2, 5), (7, 8), (33, 17)])
def test_max_pool_3x3_s2_equals_the_kernel(h: int, w: int) -> None:
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
    x[0, 0, 0, 0] = float("nan")
    ref, out = torch.nn.functional.max_pool2d(x, 3, 2, 1), bb.max_pool_3x3_s2(x)
    assert out.shape == ref.shape
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(out.nan_to_num(), ref.nan_to_num())


def test_stem_max_pool_falls_back_where_the_gradient_or_layout_needs_it() -> None:
    """With a gradient the kernel's (all to the first maximum on a tie); channels-last: the kernel."""
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)  # every window a tie
    bb.stem_max_pool(x).sum().backward()
    ref = torch.zeros(1, 1, 4, 4, requires_grad=True)
    torch.nn.functional.max_pool2d(ref, 3, 2, 1).sum().backward()
    assert torch.equal(x.grad, ref.grad)
    b = build_backbone("resnet18")
    assert type(b.body.maxpool) is bb._StemMaxPool and isinstance(b.body.maxpool, nn.MaxPool2d)
    assert "maxpool" not in "".join(b.state_dict())  # no state: checkpoints unchanged


def test_no_grad_pass_runs_channels_last_with_the_same_levels() -> None:
    b = build_backbone("resnet18", output_stride=16, dilated=False).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        nhwc = b(x)
        b.nhwc_without_grad = False
        nchw = b(x)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in nhwc[1:])
    assert all(f.is_contiguous() for f in nchw)
    for a, c in zip(nhwc, nchw):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)
    b.nhwc_without_grad = True
    assert b(x)[4].is_contiguous()  # with gradient: the weights' layout
