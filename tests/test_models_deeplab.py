"""models.deeplab: LargeFOV and v2-ASPP heads, output strides measured from shapes, ASPP as the sum of
its branches, upsampled segmentation, and the backbone/head parameter split."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models.deeplab import ASPPHead, DeepLab, LargeFOVHead, build_deeplab

torch.set_num_threads(1)


def make(head: str, os_: int, num_classes: int = 5) -> DeepLab:
    torch.manual_seed(0)
    return build_deeplab(head=head, backbone="resnet18", num_classes=num_classes, output_stride=os_)


@pytest.mark.parametrize("head,cls", [("largefov", LargeFOVHead), ("aspp", ASPPHead)])
@pytest.mark.parametrize("os_", [8, 16])
def test_output_shapes_and_strides(head: str, cls: type, os_: int) -> None:
    m = make(head, os_).eval()
    assert isinstance(m.head, cls) and m.output_stride == os_
    with torch.no_grad():
        out = m(torch.randn(2, 3, 64, 96))
        assert out.shape[:2] == (2, 5)
        assert (64 // out.shape[-2], 96 // out.shape[-1]) == (os_, os_)  # measured stride
        odd = torch.randn(1, 3, 65, 97)
        logits = m(odd)
        assert logits.shape == (1, 5, -(-65 // os_), -(-97 // os_))  # ceil
        seg = m.segment(odd)
    assert seg.shape == (1, 5, 65, 97)
    torch.testing.assert_close(seg, F.interpolate(logits, size=(65, 97), mode="bilinear", align_corners=False))


def test_largefov_head_layers_and_eval_value() -> None:
    m = make("largefov", 8).eval()
    h = m.head
    assert (h.fc6.kernel_size, h.fc6.dilation, h.fc6.padding) == ((3, 3), (12, 12), (12, 12))
    assert h.fc6.in_channels == m.backbone.channels[-1] == 512  # from the backbone, not 2048
    assert (h.fc6.out_channels, h.fc7.in_channels, h.fc7.out_channels) == (1024, 1024, 1024)
    assert h.fc7.kernel_size == (1, 1) and h.fc8.kernel_size == (1, 1) and h.fc8.out_channels == 5
    assert h.drop6.p == 0.5 and h.drop7.p == 0.5
    assert torch.count_nonzero(h.fc8.bias) == 0 and 0.005 < h.fc8.weight.std().item() < 0.015
    x = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        f = m.backbone(x)[-1]
        expected = h.fc8(F.relu(h.fc7(F.relu(h.fc6(f)))))  # dropout is off in eval
        torch.testing.assert_close(m(x), expected)
        m.train()  # dropout on: two passes differ; the backbone's BatchNorms stay in eval
        assert not torch.equal(m(x), m(x))
        assert not any(b.training for b in m.backbone.modules() if isinstance(b, _BatchNorm))


def test_aspp_is_the_sum_of_its_four_branches() -> None:
    m = make("aspp", 16).eval()
    branches = m.head.branches
    assert [b.dilation for b in branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.kernel_size == (3, 3) and b.padding == b.dilation and b.out_channels == 5 for b in branches)
    x = torch.randn(1, 3, 80, 96)
    with torch.no_grad():
        f = m.backbone(x)[-1]  # (1, 512, 5, 6)
        full = m(x)
        parts = []
        for i in range(4):
            solo = copy.deepcopy(m)
            for j, b in enumerate(solo.head.branches):
                if j != i:  # zero every other branch
                    b.weight.zero_()
                    b.bias.zero_()
            out_i = solo(x)
            d = branches[i].dilation
            torch.testing.assert_close(out_i, F.conv2d(f, branches[i].weight, branches[i].bias, padding=d, dilation=d))
            parts.append(out_i)
        all_zero = copy.deepcopy(m)
        for b in all_zero.head.branches:
            b.weight.zero_()
            b.bias.zero_()
        assert torch.count_nonzero(all_zero(x)) == 0
    torch.testing.assert_close(full, sum(parts))
    assert all(not torch.allclose(p, full) for p in parts)  # each branch contributes


@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_param_groups_partition_trainable_parameters(head: str) -> None:
    m = make(head, 16)
    backbone, head_params = m.param_groups()
    ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head_params}
    assert len(ids_b) == len(backbone) and len(ids_h) == len(head_params)
    assert not ids_b & ids_h
    assert ids_b | ids_h == {id(p) for p in m.parameters() if p.requires_grad}
    assert ids_h == {id(p) for p in m.head.parameters()}
    assert ids_b <= {id(p) for p in m.backbone.parameters()}
    frozen = {id(p) for mod in m.backbone.modules() if isinstance(mod, _BatchNorm) for p in mod.parameters()}
    assert frozen and not frozen & ids_b  # frozen BatchNorms are in neither group
    assert id(m.backbone.body.conv1.weight) in ids_b  # the stem convolution trains (kazuto1011's get_params "1x")
    assert len(backbone) > 0 and len(head_params) == (6 if head == "largefov" else 8)
    stemless = build_deeplab(head=head, backbone="resnet18", num_classes=5, output_stride=16, freeze_stem=True)
    assert id(stemless.backbone.body.conv1.weight) not in {id(p) for p in stemless.param_groups()[0]}


def test_gradients_reach_head_and_unfrozen_backbone_only() -> None:
    m = make("aspp", 16).train()
    x = torch.randn(2, 3, 64, 64)
    label = torch.randint(0, 5, (2, 64, 64))
    F.cross_entropy(m.segment(x), label).backward()
    _, head = m.param_groups()
    assert all(p.grad is not None for p in head)
    assert m.backbone.body.layer4[-1].conv2.weight.grad is not None
    assert m.backbone.body.conv1.weight.grad is not None  # the stem convolution trains
    assert all(p.grad is None for mod in m.backbone.modules() if isinstance(mod, _BatchNorm) for p in mod.parameters())


def test_build_deeplab_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        build_deeplab(head="psp", backbone="resnet18")
    with pytest.raises(ConfigError):
        build_deeplab(head="aspp", backbone="resnet18", output_stride=32)
    with pytest.raises(ConfigError):
        build_deeplab(head="aspp", backbone="not_a_backbone")
