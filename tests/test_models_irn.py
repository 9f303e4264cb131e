"""models.irn: IRNet's shapes and frozen backbone, flip-averaged boundary, mean shift, and the
displacement losses on hand-built displacement fields."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from rpnet_pl.models.backbones import build_backbone
from rpnet_pl.models.irn import (
    IRNet, MeanShift, displacement_bg_loss, displacement_fg_loss, displacement_losses, displacement_target,
    pair_displacement,
)
from rpnet_pl.ops.affinity import affinity_labels
from rpnet_pl.ops.path_index import search_directions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net() -> IRNet:
    torch.manual_seed(0)
    return IRNet("resnet18")


def fresh() -> IRNet:
    torch.manual_seed(0)
    return IRNet("resnet18")


# -- architecture ----------------------------------------------------------------------------------
@pytest.mark.parametrize("size,expected", [((65, 97), (17, 25)), ((64, 96), (16, 24)), ((33, 31), (9, 8))])
def test_output_shapes_at_stride_4(net: IRNet, size: tuple[int, int], expected: tuple[int, int]) -> None:
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert out["edge_logits"].shape == (2, 1, *expected)
    assert out["displacement"].shape == (2, 2, *expected)
    # stride 4: ceil(H / 4), ceil(W / 4)
    assert expected == (-(-size[0] // 4), -(-size[1] // 4))


def test_channels_come_from_the_backbone(net: IRNet) -> None:
    ch = net.backbone.channels
    assert ch == [64, 64, 128, 256, 512]  # resnet18: nothing assumes 2048
    assert [b[0].in_channels for b in net.edge_levels] == ch
    assert [b[0].out_channels for b in net.edge_levels] == [32] * 5
    assert [b[1].num_groups for b in net.edge_levels] == [4] * 5
    assert net.edge_out.in_channels == 160 and net.edge_out.out_channels == 1 and net.edge_out.bias is not None
    assert [b[0].in_channels for b in net.dp_levels] == ch
    assert [b[0].out_channels for b in net.dp_levels] == [64, 128, 256, 256, 256]
    assert [b[1].num_groups for b in net.dp_levels] == [8, 16, 16, 16, 16]
    assert net.dp_fuse_deep[0].in_channels == 768
    assert net.dp_out[0].in_channels == 448 and net.dp_out[-1].out_channels == 2
    # upsampling factors: edge levels x1, x1, x2, x4, x4; displacement levels 4-5 x2, fused x2
    def scale(block: torch.nn.Sequential) -> float:
        ups = [m for m in block if isinstance(m, torch.nn.Upsample)]
        return ups[0].scale_factor if ups else 1
    assert [scale(b) for b in net.edge_levels] == [1, 1, 2, 4, 4]
    assert [scale(b) for b in net.dp_levels] == [1, 1, 1, 2, 2]
    assert scale(net.dp_fuse_deep) == 2


def test_edge_logits_are_the_concatenated_cropped_levels(net: IRNet) -> None:
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        feats = net.backbone(x)
        levels = [block[1](block[0](f)) for block, f in zip(net.edge_levels, feats)]  # conv, GroupNorm
        ups = [levels[0], levels[1],
               F.interpolate(levels[2], scale_factor=2, mode="bilinear", align_corners=False),
               F.interpolate(levels[3], scale_factor=4, mode="bilinear", align_corners=False),
               F.interpolate(levels[4], scale_factor=4, mode="bilinear", align_corners=False)]
        assert [tuple(u.shape[-2:]) for u in ups] == [(17, 25), (17, 25), (18, 26), (20, 28), (20, 28)]
        cat = torch.cat([F.relu(u[..., :17, :25]) for u in ups], dim=1)  # (1, 160, 17, 25)
        expected = net.edge_out(cat)
        got = net(x)["edge_logits"]
    torch.testing.assert_close(got, expected)


# -- frozen backbone -------------------------------------------------------------------------------
def test_backbone_frozen_and_always_eval() -> None:
    m = fresh()
    m.train()
    assert m.training and m.edge_out.training and m.mean_shift.training
    assert not m.backbone.training
    assert not any(mod.training for mod in m.backbone.modules())
    assert not any(p.requires_grad for p in m.backbone.parameters())
    bn = [mod for mod in m.backbone.modules() if isinstance(mod, _BatchNorm)]
    before = [b.running_mean.clone() for b in bn]
    # even with requires_grad switched back on, the detached features carry no gradient
    m.backbone.requires_grad_(True)
    out = m(torch.randn(2, 3, 48, 64))
    label = torch.zeros(2, 12, 16, dtype=torch.long)
    label[:, 3:9, 4:12] = 1
    fg, bg = displacement_losses(out["displacement"], label, radius=3)
    (out["edge_logits"].sigmoid().mean() + fg + bg).backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(torch.equal(b.running_mean, r) for b, r in zip(bn, before))  # statistics untouched
    edge, dp, attention = m.param_groups()
    assert attention == []  # IRN's own network: no non-local blocks
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in edge)
    assert all(p.grad is not None for p in dp)
    assert m.dp_out[-1].weight.grad.abs().sum() > 0


def test_trainable_parameters_partition() -> None:
    m = fresh()
    edge, dp, _ = m.param_groups()
    ids_edge, ids_dp = {id(p) for p in edge}, {id(p) for p in dp}
    assert not ids_edge & ids_dp
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert ids_edge | ids_dp == trainable == {id(p) for p in m.trainable_parameters()}
    assert len(m.trainable_parameters()) == len(edge) + len(dp)
    assert not trainable & {id(p) for p in m.backbone.parameters()}


def test_accepts_a_built_backbone_and_freezes_it() -> None:
    b = build_backbone("resnet18", freeze_bn=False)
    assert any(p.requires_grad for p in b.parameters())
    m = IRNet(b)
    assert m.backbone is b and not any(p.requires_grad for p in b.parameters())
    m.train()
    assert not any(mod.training for mod in b.modules())


# -- RPNet's copy of IRN: non-local blocks on levels 3-5 -------------------------------------------
def test_self_attention_blocks_start_as_the_identity() -> None:
    """The blocks' output BatchNorm starts at zero scale and shift: with the same branch weights the
    network is IRN's own, in training and in eval mode."""
    plain = fresh()
    torch.manual_seed(0)
    attended = IRNet("resnet18", self_attention=True)
    attended.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(attended.attention) == ["3", "4", "5"]
    x = torch.randn(2, 3, 48, 64)
    for mode in (True, False):
        plain.train(mode), attended.train(mode)
        with torch.no_grad():
            a, b = plain(x), attended(x)
        torch.testing.assert_close(a["edge_logits"], b["edge_logits"])
        torch.testing.assert_close(a["displacement"], b["displacement"])


def test_self_attention_acts_on_levels_3_to_5_with_their_own_group() -> None:
    torch.manual_seed(0)
    m = IRNet("resnet18", self_attention=True)
    channels = list(m.backbone.channels)
    assert [m.attention[str(level)].theta.in_channels for level in (3, 4, 5)] == channels[2:]
    edge, dp, attention = m.param_groups()
    assert {id(p) for p in attention} == {id(p) for p in m.attention.parameters()}
    assert len(m.trainable_parameters()) == len(edge) + len(dp) + len(attention)
    assert not {id(p) for p in attention} & {id(p) for p in edge + dp}
    for block in m.attention.values():  # a non-zero projection: the blocks now change the features
        torch.nn.init.ones_(block.out[1].weight)
    seen: list[int] = []
    for level, block in m.attention.items():
        block.register_forward_hook(lambda mod, inp, out, level=level: seen.append(int(level)))
    out = m(torch.randn(2, 3, 48, 64))
    assert seen == [3, 4, 5]
    out["edge_logits"].sum().backward()
    assert all(p.grad is not None for p in attention)
    assert all(p.grad is None for p in m.backbone.parameters())


def test_self_attention_batchnorm_follows_train_and_eval() -> None:
    """RPNet's IRN ``Net.train()`` calls ``super().train(mode)``: the blocks' BatchNorm normalises with
    the batch in training (running statistics updated) and with the running statistics in eval."""
    torch.manual_seed(0)
    m = IRNet("resnet18", self_attention=True)
    bn = m.attention["5"].out[1]
    m.train()
    assert bn.training and not m.backbone.training
    m(torch.randn(2, 3, 48, 64))
    assert int(bn.num_batches_tracked) == 1
    m.eval()
    before = bn.running_mean.clone()
    m(torch.randn(2, 3, 48, 64))
    assert not bn.training and torch.equal(bn.running_mean, before)


# -- boundary (EdgeDisplacement) -------------------------------------------------------------------
def test_boundary_is_the_flip_average_of_logits(net: IRNet) -> None:
    torch.manual_seed(1)
    img = torch.randn(3, 37, 50)
    with torch.no_grad():
        logits = net(torch.stack([img, img.flip(-1)]))["edge_logits"][:, 0]  # (2, 10, 13)
        expected = torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)
        got = net.boundary(img, pad_to=None)
        assert got.shape == (10, 13)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(net.boundary(img[None], pad_to=None), expected)  # (1, 3, H, W) too
        # IRN pads image and flip (each flipped before padding) with zeros to the crop size
        padded = F.pad(torch.stack([img, img.flip(-1)]), [0, 64 - 50, 0, 64 - 37])
        lp = net(padded)["edge_logits"][:, 0, :10, :13]
        torch.testing.assert_close(net.boundary(img, pad_to=64), torch.sigmoid(lp[0] / 2 + lp[1].flip(-1) / 2))
        assert not torch.allclose(net.boundary(img, pad_to=64), got)  # padding does change the border
        # an image larger than pad_to is not cut
        assert net.boundary(img, pad_to=16).shape == (10, 13)


def test_boundary_of_a_symmetric_image(net: IRNet) -> None:
    torch.manual_seed(2)
    half = torch.randn(3, 40, 24)
    img = torch.cat([half, half.flip(-1)], dim=-1)  # (3, 40, 48), img == img.flip(-1)
    assert torch.equal(img, img.flip(-1))
    with torch.no_grad():
        l_img = net(img[None])["edge_logits"][0, 0]
        l_flip = net(img.flip(-1)[None])["edge_logits"][0, 0]
        assert torch.equal(l_img, l_flip)  # the flipped input is the same input
        b = net.boundary(img, pad_to=None)
        expected = torch.sigmoid((l_img + l_img.flip(-1)) / 2)
    torch.testing.assert_close(b, expected)
    torch.testing.assert_close(b, b.flip(-1))  # the flip average is mirror symmetric
    assert ((b > 0) & (b < 1)).all()


def test_edge_displacement_returns_the_unflipped_displacement(net: IRNet) -> None:
    img = torch.randn(3, 32, 40)
    net.eval()
    with torch.no_grad():
        _, dp = net.edge_displacement(img, pad_to=None)
        expected = net(img[None])["displacement"][0]
    net.train()
    assert dp.shape == (2, 8, 10)
    torch.testing.assert_close(dp, expected)


# -- mean shift ------------------------------------------------------------------------------------
def test_mean_shift_identity_in_training_subtracts_in_eval() -> None:
    m = fresh()
    x = torch.randn(2, 3, 40, 52)
    m.train()
    with torch.no_grad():
        raw = m(x)["displacement"]  # identity in training ...
    assert torch.equal(raw, m._branches(x)[1])
    # ... while the running mean moves like a BatchNorm's (momentum 0.1, from 0)
    torch.testing.assert_close(m.mean_shift.running_mean, 0.1 * raw.mean(dim=(0, 2, 3)))
    m.mean_shift.running_mean.copy_(torch.tensor([0.25, -1.5]))
    m.eval()
    with torch.no_grad():
        shifted = m(x)["displacement"]
    assert torch.equal(m.mean_shift.running_mean, torch.tensor([0.25, -1.5]))  # eval: no update
    assert torch.equal(shifted[:, 0], raw[:, 0] - 0.25)
    assert torch.equal(shifted[:, 1], raw[:, 1] + 1.5)
    assert torch.equal(m(x)["edge_logits"], m.train()(x)["edge_logits"])  # the edge branch ignores it


def test_mean_shift_module_and_set_mean_shift() -> None:
    ms = MeanShift(2).eval()
    ms.running_mean.copy_(torch.tensor([1.0, 2.0]))
    x = torch.arange(8.0).view(1, 2, 2, 2)
    assert ms(x).tolist() == [[[[-1.0, 0.0], [1.0, 2.0]], [[2.0, 3.0], [4.0, 5.0]]]]
    assert not any(True for _ in ms.parameters())  # affine=False: nothing to train
    m = fresh().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mean = m.displacement_mean(x)
        raw = m._branches(x)[1]
    torch.testing.assert_close(mean, raw.mean(dim=(0, 2, 3)))
    m.set_mean_shift(mean)
    torch.testing.assert_close(m.mean_shift.running_mean, mean)
    with torch.no_grad():
        assert m(x)["displacement"].mean(dim=(0, 2, 3)).abs().max() < 1e-5  # centred after the shift


# -- displacement losses ---------------------------------------------------------------------------
def test_pair_displacement_layout_matches_affinity_labels() -> None:
    h, w, r = 9, 12, 3
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    coords = torch.stack([yy, xx])[None]  # (1, 2, h, w): disp(p) = p
    pair = pair_displacement(coords, r)
    pos_bg, _, _ = affinity_labels(torch.zeros(1, h, w, dtype=torch.long), r)
    dirs = search_directions(r)
    assert pair.shape == (1, 2, len(dirs), h - (r - 1), w - 2 * (r - 1))
    assert pair.shape[2:] == pos_bg.shape[1:]
    # p - (p + delta) = -delta for every source
    expected = -displacement_target(r).view(1, 2, -1, 1, 1).expand_as(pair)
    assert torch.equal(pair, expected)
    assert displacement_target(r)[:, 0].tolist() == [0.0, 1.0]  # (dy, dx) of the first direction


def test_displacement_loss_hand_computed() -> None:
    # radius 2 on a 2x3 map: one source (0, 1); directions (0,1), (1,-1), (1,0), (1,1)
    assert search_directions(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    zero = torch.zeros(1, 2, 2, 3)
    fg_label = torch.ones(1, 2, 3, dtype=torch.long)
    fg, bg = displacement_losses(zero, fg_label, radius=2)
    # |0 - delta| summed over (dy, dx): 1 + 2 + 1 + 2 = 6 over 4 pairs x 2 channels
    assert fg.item() == pytest.approx(6 / (2 * 4 + 1e-5))
    assert bg.item() == 0.0  # no background pairs
    disp = torch.zeros(1, 2, 2, 3)
    disp[0, 0] = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])  # dy channel; source value 1
    fg, bg = displacement_losses(disp, torch.zeros(1, 2, 3, dtype=torch.long), radius=2)
    # |1 - 2| + |1 - 3| + |1 - 0| + |1 - 0| = 5 over 4 pairs x 2 channels
    assert bg.item() == pytest.approx(5 / (2 * 4 + 1e-5))
    assert fg.item() == 0.0
    # an ignored destination removes its pair: (1, 0) -> 255 leaves |1-2| + |1-0| + |1-0| = 3 over 3 pairs
    lab = torch.zeros(1, 2, 3, dtype=torch.long)
    lab[0, 1, 0] = 255
    _, bg = displacement_losses(disp, lab, radius=2)
    assert bg.item() == pytest.approx(3 / (2 * 3 + 1e-5))


def test_displacement_loss_zero_for_exact_centroid_field() -> None:
    h, w, r = 24, 30, 4
    label = torch.zeros(1, h, w, dtype=torch.long)
    label[0, 3:9, 4:14] = 3  # instance A of class 3
    label[0, 15:21, 18:28] = 3  # instance B of class 3, farther than the radius from A
    label[0, 3:9, 14:20] = 5  # class 5 touching A: only negative pairs between them
    label[0, 11:13, :] = 255  # an ignored band
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    disp = torch.empty(1, 2, h, w)
    disp[0, 0], disp[0, 1] = 2.0, -1.0  # background: uniform (any constant)
    for region, (cy, cx) in [((slice(3, 9), slice(4, 14)), (5.5, 8.5)), ((slice(15, 21), slice(18, 28)), (17.5, 22.5)),
                             ((slice(3, 9), slice(14, 20)), (5.5, 16.5))]:
        disp[0, 0][region] = cy - yy[region]  # p + disp(p) = centroid
        disp[0, 1][region] = cx - xx[region]
    disp[0, :, 11:13] = torch.randn(2, 2, w) * 50  # ignored pixels are free
    pos_bg, pos_fg, neg = affinity_labels(label, r)
    assert pos_fg.sum() > 100 and pos_bg.sum() > 100 and neg.sum() > 0
    fg, bg = displacement_losses(disp, label, radius=r)
    assert fg.item() == 0.0 and bg.item() == 0.0
    # pointing one instance at a wrong centroid, or breaking background uniformity, costs
    wrong = disp.clone()
    wrong[0, 0, 3:9, 4:14] = 5.5 - yy[3:9, 4:14] + yy[3:9, 4:14] * 0.5
    assert displacement_losses(wrong, label, radius=r)[0] > 0.1
    noisy = disp.clone()
    noisy[0, 1, 20, 5] += 4.0  # a background pixel inside the source window
    assert displacement_losses(noisy, label, radius=r)[1] > 0
    # the same values through the lower-level functions
    pair = pair_displacement(wrong, r)
    fg_w = displacement_fg_loss(pair, pos_fg, r)
    assert fg_w.item() == pytest.approx(displacement_losses(wrong, label, radius=r)[0].item())
    assert displacement_bg_loss(pair, pos_bg).item() == 0.0


def test_displacement_loss_gradient_and_shape_checks() -> None:
    disp = torch.zeros(2, 2, 10, 12, requires_grad=True)
    label = torch.ones(2, 10, 12, dtype=torch.long)
    fg, _ = displacement_losses(disp, label, radius=3)
    fg.backward()
    assert disp.grad is not None and disp.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        displacement_losses(torch.zeros(2, 2, 10, 12), torch.ones(2, 10, 11, dtype=torch.long), radius=3)
    with pytest.raises(ValueError):
        displacement_losses(torch.zeros(2, 3, 10, 12), torch.ones(2, 10, 12, dtype=torch.long), radius=3)


def test_displacement_losses_accept_the_affinity_pairs() -> None:
    """Given the pair masks the affinity loss computed, the same losses (no second computation)."""
    from rpnet_pl.ops.affinity import affinity_labels

    gen = torch.Generator().manual_seed(3)
    label = torch.randint(0, 3, (2, 9, 9), generator=gen)
    label[0, :2] = 255
    disp = torch.randn(2, 2, 9, 9, generator=gen)
    pos_bg, pos_fg, _ = affinity_labels(label, 3)
    a = displacement_losses(disp, label, radius=3)
    b = displacement_losses(disp, label, radius=3, pairs=(pos_bg, pos_fg))
    assert a[0].item() == b[0].item() and a[1].item() == b[1].item()
    c = displacement_losses(disp, label, radius=3, pairs=(torch.zeros_like(pos_bg), pos_fg))
    assert c[1].item() == 0.0  # the given masks are the ones used
