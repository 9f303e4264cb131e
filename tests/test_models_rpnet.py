"""models.rpnet and models.cam_net: each equation on hand-computed tensors, then the composed networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from scipy import ndimage

from rpnet_pl.utils.errors import ConfigError
from rpnet_pl.models.cam_net import CAMNet
from rpnet_pl.models.rpnet import (
    NonLocalBlock, RPNet, confidence_mask, cosine_map, enhance_features, foreground_map, gaussian_kernel,
    group_prototypes, multilabel_loss, part_mask, region_prototypes, self_supervised_loss, smooth_foreground,
)

torch.set_num_threads(1)
R2 = 1 / math.sqrt(2)


def vectors(rows: list[list[tuple[float, ...]]]) -> torch.Tensor:
    """[[v(0,0), v(0,1)], ...] of D-vectors -> (1, D, h, w)."""
    return torch.tensor(rows, dtype=torch.float32).permute(2, 0, 1)[None]


# -- eq. 3-4, 6: confidence mask ---------------------------------------------------------------
def test_confidence_mask_hand_computed() -> None:
    f4 = torch.tensor([[
        [[1.0, 0.2], [0.5, -1.0]],  # max 1: /(1 + 1e-5) >= 0.3 at (0,0), (1,0)
        [[0.0, 0.1], [0.0, 0.0]],  # max 0.1: >= 0.3 * 0.1 at (0,1) only
        [[0.0, 2.0], [0.6, 0.5]],  # max 2: 0.6 / (2 + 1e-5) just below 0.3
    ]])
    m = confidence_mask(f4, alpha=0.3)
    assert m.shape == (1, 1, 2, 2)
    assert m[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    # alpha 0.6: channel 0 keeps (0,0) only (0.5 < 0.6), channel 1 (0,1), channel 2 (0,1)
    assert confidence_mask(f4, alpha=0.6)[0, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert not confidence_mask(f4.requires_grad_()).requires_grad


def test_confidence_mask_negative_channel_reference_vs_clamped() -> None:
    """The reference divides by (max + 1e-5): an all-negative channel divides by a negative number,
    so every position with f <= 0.3 * (max + 1e-5) (here all four) becomes confident. The paper's
    ReLU reading (clamp_peak) lets such a channel mark nothing."""
    f4 = torch.tensor([[
        [[1.0, 0.2], [0.2, 0.1]],  # confident at (0,0) only
        [[-1.0, -2.0], [-3.0, -0.5]],  # max -0.5: -0.5 / (-0.49999) = 1.00002 >= 0.3, -1 / -0.49999 = 2 ...
    ]])
    assert confidence_mask(f4, alpha=0.3)[0, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert confidence_mask(f4, alpha=0.3, clamp_peak=True)[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    # 0.6 / 2 == 0.3 exactly counts (>=) when the peak is not offset by eps
    g = torch.tensor([[[[0.0, 2.0], [0.6, 0.5]]]])
    assert confidence_mask(g, alpha=0.3, clamp_peak=True)[0, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert confidence_mask(g, alpha=0.3)[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]


# -- eq. 5: prototypes -------------------------------------------------------------------------
def test_region_prototype_is_masked_mean() -> None:
    f = vectors([[(1.0, 2.0), (10.0, 10.0)], [(3.0, 4.0), (-5.0, 7.0)]])  # (1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = region_prototypes(f, mask)
    torch.testing.assert_close(p, torch.tensor([[4.0, 6.0]]) / (2 + 5e-4))
    torch.testing.assert_close(region_prototypes(f, mask, eps=0.0), torch.tensor([[2.0, 3.0]]))
    assert torch.equal(region_prototypes(f, torch.zeros_like(mask)), torch.zeros(1, 2))


def test_group_prototypes_order() -> None:
    feats = torch.arange(2 * 3 * 2 * 1 * 1, dtype=torch.float32).reshape(2, 3, 2, 1, 1)  # B=2, k=3, D=2
    ones, zeros = torch.ones(2, 3, 1, 1, 1), torch.zeros(2, 3, 1, 1, 1)
    p = group_prototypes(feats, [ones, zeros])
    assert p.shape == (2, 6, 2)
    torch.testing.assert_close(p[:, :3], feats[..., 0, 0] / (1 + 5e-4))  # mask-major: full masks first
    assert torch.equal(p[:, 3:], torch.zeros(2, 3, 2))


# -- eq. 6: the Bernoulli part mask -------------------------------------------------------------
def test_part_mask_code_variant_beta_is_drop_probability() -> None:
    mask = torch.ones(1, 1, 40, 40)
    assert torch.equal(part_mask(mask, beta=1.0), torch.zeros_like(mask))  # drop all
    assert torch.equal(part_mask(mask, beta=0.0), mask)  # drop none
    g = torch.Generator().manual_seed(0)
    kept = part_mask(mask, beta=0.8, generator=g).mean().item()
    assert 0.12 < kept < 0.28  # keep probability 1 - beta = 0.2


def test_part_mask_paper_variant_beta_is_keep_probability() -> None:
    mask = torch.ones(1, 1, 40, 40)
    assert torch.equal(part_mask(mask, beta=1.0, beta_is_keep_prob=True), mask)  # keeps every position
    assert torch.equal(part_mask(mask, beta=0.0, beta_is_keep_prob=True), torch.zeros_like(mask))  # none
    g = torch.Generator().manual_seed(0)
    kept = part_mask(mask, beta=0.8, generator=g, beta_is_keep_prob=True).mean().item()
    assert 0.72 < kept < 0.88


def test_part_mask_subset_binary_reproducible_and_eval() -> None:
    mask = (torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    a = part_mask(mask, 0.5, generator=torch.Generator().manual_seed(3))
    b = part_mask(mask, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(a <= mask)  # only confident positions survive
    assert 0 < a.sum() < mask.sum()
    assert torch.equal(part_mask(mask, 0.5, training=False), mask)
    with pytest.raises(ValueError):
        part_mask(mask, 1.5)


# -- eq. 7-8: cosine map and foreground map ------------------------------------------------------
def test_cosine_map_hand_computed() -> None:
    f = vectors([[(1.0, 0.0), (0.0, 1.0)], [(1.0, 1.0), (-1.0, 0.0)]])
    protos = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]])  # (1, 3, 2); the last is empty
    s = cosine_map(f, protos)
    assert s.shape == (1, 3, 2, 2)
    torch.testing.assert_close(s[0, 0], torch.tensor([[1.0, 0.0], [R2, -1.0]]))
    torch.testing.assert_close(s[0, 1], torch.tensor([[0.0, 1.0], [R2, 0.0]]))
    assert torch.equal(s[0, 2], torch.zeros(2, 2))


def _pair_level(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> torch.Tensor:
    """Two images (k = 2) of 1 x 2 positions with 2-D features -> (1, 2, 2, 1, 2)."""
    return torch.tensor([a, b], dtype=torch.float32).permute(0, 2, 1)[None, :, :, None, :]


def test_foreground_map_max_over_group_prototypes_and_levels() -> None:
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 2, 1, 1, 2)  # first position confident
    # level A: prototype of image 0 = (1, 0), of image 1 = (1, 1)
    lvl_a = _pair_level([(1.0, 0.0), (0.0, 1.0)], [(1.0, 1.0), (0.0, 1.0)])
    fa = foreground_map([lvl_a], [mask])
    # image 0, position 1 = (0, 1): cos with its own prototype 0, with its partner's 1/sqrt(2)
    torch.testing.assert_close(fa[0, 0, 0, 0], torch.tensor([1.0, R2]))
    torch.testing.assert_close(fa[0, 1, 0, 0], torch.tensor([1.0, R2]))
    # k = 1: prototypes from the image itself only -> position 1 of image 0 is not reactivated
    f_single = foreground_map([lvl_a[:, :1]], [mask[:, :1]])
    torch.testing.assert_close(f_single[0, 0, 0, 0], torch.tensor([1.0, 0.0]))
    # level B: prototypes (1, 0) and (0.8, 0.6); image 0 position 1 = (0.6, 0.8) -> max(0.6, 0.96)
    lvl_b = _pair_level([(1.0, 0.0), (0.6, 0.8)], [(0.8, 0.6), (1.0, 0.0)])
    fb = foreground_map([lvl_b], [mask])
    torch.testing.assert_close(fb[0, 0, 0, 0], torch.tensor([1.0, 0.96]))
    # two levels: the max over levels
    fab = foreground_map([lvl_a, lvl_b], [mask])
    torch.testing.assert_close(fab[0, 0, 0, 0], torch.tensor([1.0, 0.96]))
    torch.testing.assert_close(fab[0, 1, 0, 0], torch.tensor([1.0, 1.0]))
    # an empty part mask adds zero prototypes (cos 0), which never beat a positive similarity
    torch.testing.assert_close(foreground_map([lvl_a], [mask, torch.zeros_like(mask)]), fa)


def test_foreground_map_groups_do_not_mix() -> None:
    """Two groups in the batch: image 0 of group 1 sees only group 1's prototypes."""
    lvl = torch.cat([_pair_level([(1.0, 0.0), (0.0, 1.0)], [(1.0, 1.0), (0.0, 1.0)]),
                     _pair_level([(1.0, 0.0), (0.0, 1.0)], [(1.0, 0.0), (0.0, 1.0)])])  # (2, 2, 2, 1, 2)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).reshape(1, 2, 1, 1, 2).expand(2, -1, -1, -1, -1)
    f = foreground_map([lvl], [mask])
    torch.testing.assert_close(f[0, 0, 0, 0], torch.tensor([1.0, R2]))
    torch.testing.assert_close(f[1, 0, 0, 0], torch.tensor([1.0, 0.0]))


# -- eq. 9-10: smoothing and enhancement -----------------------------------------------------------
def test_gaussian_kernel() -> None:
    g = gaussian_kernel(5, 3.0)
    assert g.shape == (5, 5)
    torch.testing.assert_close(g.sum(), torch.tensor(1.0))
    r = np.arange(5) - 2
    ref = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 18.0)
    np.testing.assert_allclose(g.numpy(), ref / ref.sum(), rtol=1e-6)
    assert g[2, 2] == g.max()
    with pytest.raises(ValueError):
        gaussian_kernel(4, 1.0)


def test_smooth_foreground_equals_reference_convolution() -> None:
    fmap = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(0))
    out = smooth_foreground(fmap, sigma=3.0, size=5, scale=1.3)
    g = gaussian_kernel(5, 3.0).numpy().astype(np.float64)
    for i in range(2):
        x = fmap[i, 0].numpy().astype(np.float64)
        ref = ndimage.convolve(x / x.max() * 1.3, g, mode="constant", cval=0.0)  # zero padding 2
        np.testing.assert_allclose(out[i, 0].numpy(), ref, rtol=1e-5, atol=1e-6)
    # no smoothing (Table VI "w/o GF"): max-normalised and scaled only
    plain = smooth_foreground(fmap, smooth=False)
    peak = fmap.amax(dim=(2, 3))
    torch.testing.assert_close(plain.amax(dim=(2, 3)), 1.3 * peak / (peak + 1e-5))
    # any leading shape
    assert smooth_foreground(torch.rand(2, 3, 1, 4, 4)).shape == (2, 3, 1, 4, 4)


def test_enhanced_features_are_exactly_map_times_features() -> None:
    f = torch.randn(2, 6, 3, 4)
    fmap = torch.rand(2, 1, 3, 4)
    out = enhance_features(f, fmap)
    assert torch.equal(out, f * fmap)
    assert torch.equal(out[1, 4], f[1, 4] * fmap[1, 0])


# -- eq. 11-13: losses ---------------------------------------------------------------------------
def test_self_supervised_loss_hand_computed() -> None:
    plain = torch.tensor([[[[2.0, 0.0]], [[5.0, 1.0]]]])  # (1, C=2, 1, 2)
    enhanced = torch.tensor([[[[2.0, 2.0]], [[0.0, 9.0]]]])
    labels = torch.tensor([[1.0, 0.0]])  # class 1 absent: its maps are masked out
    # the reference's normalisation: relu(relu(m) - 1e-5) / (max relu(m) + 1e-5)
    a = (2 - 1e-5) / (2 + 1e-5)
    expected = 10.0 * (0.0 + a ** 2 + 0.0 + 0.0) / 4  # mean over (N, C, h, w) = 4 elements
    torch.testing.assert_close(self_supervised_loss(plain, enhanced, labels, lam=10.0), torch.tensor(expected))
    # identical maps, or differences only in absent classes -> 0
    assert self_supervised_loss(plain, plain.clone(), labels).item() == 0.0
    only_absent = plain.clone()
    only_absent[0, 1] = 7.0
    assert self_supervised_loss(plain, only_absent, labels).item() == 0.0
    # scale invariance per class (both maps max-normalised) and ReLU
    assert self_supervised_loss(plain, 3 * plain, labels).item() < 1e-9  # up to the -1e-5 of the numerator
    assert self_supervised_loss(plain, plain - 100.0 * (plain == 0), labels).item() == 0.0


def test_self_supervised_loss_paper_variant() -> None:
    f = torch.zeros(2, 3, 2, 2)
    g = f.clone()
    g[0, 0, 0, 0] = 2.0  # image 0: sum of squares 4; image 1: 0
    torch.testing.assert_close(self_supervised_loss(f, g, lam=10.0, variant="paper"), torch.tensor(10.0 * 4 / 2))
    with pytest.raises(ValueError):
        self_supervised_loss(f, g, variant="other")  # type: ignore[arg-type]


def test_self_supervised_loss_gradient_reaches_both_maps() -> None:
    plain = torch.rand(2, 3, 4, 4, requires_grad=True)
    enhanced = torch.rand(2, 3, 4, 4, requires_grad=True)
    self_supervised_loss(plain, enhanced, torch.ones(2, 3)).backward()
    assert plain.grad.abs().sum() > 0 and enhanced.grad.abs().sum() > 0


def test_multilabel_loss_formula() -> None:
    v = torch.tensor([[2.0, -1.0, 0.5]])
    u = torch.tensor([[1.0, 0.0, 1.0]])
    s = torch.sigmoid(v)
    expected = -(u * torch.log(s) + (1 - u) * torch.log(1 - s)).mean()
    torch.testing.assert_close(multilabel_loss(v, u), expected)


# -- modules -------------------------------------------------------------------------------------
def test_non_local_block_starts_as_identity() -> None:
    block = NonLocalBlock(8)
    x = torch.randn(2, 8, 3, 5)
    assert torch.equal(block(x), x)
    assert block.theta.out_channels == 4
    assert NonLocalBlock(8, sub_sample=True)(x).shape == x.shape


def tiny_rpnet(**kw) -> RPNet:
    torch.manual_seed(0)
    kw.setdefault("mid", 16)
    return RPNet(backbone="resnet18", **kw)


def group_batch(b: int = 2, k: int = 2, size: int = 64, c: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(b, k, 3, size, size, generator=g)
    labels = torch.zeros(b, k, c)
    labels[:, :, 3] = 1.0  # the shared class
    labels[0, -1, 7] = 1.0
    return images, labels


def test_rpnet_forward_shapes_and_finite_losses() -> None:
    model = tiny_rpnet()
    images, labels = group_batch()
    out = model(images, labels)
    assert out["logits"].shape == (4, 20)
    assert out["cams"].shape == out["enhanced_cams"].shape == (4, 20, 4, 4)
    assert out["foreground"].shape == (4, 1, 4, 4)
    for key in ("loss", "loss_cls", "loss_ss"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    torch.testing.assert_close(out["loss"], out["loss_cls"] + out["loss_ss"])
    assert torch.all(out["enhanced_cams"] >= 0)
    torch.testing.assert_close(out["logits"], out["cams"].mean(dim=(2, 3)))
    # Lc summed over the k members of the group (k = 2: Lc(x) + Lc(y))
    torch.testing.assert_close(out["loss_cls"], 2 * multilabel_loss(out["logits"], labels.reshape(4, 20)))
    assert set(model(images)) == {"logits", "cams", "enhanced_cams", "foreground"}  # no labels, no losses


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_rpnet_group_sizes(k: int) -> None:
    model = tiny_rpnet(enhanced_scales=(1.0, 0.5))
    images, labels = group_batch(b=1, k=k)
    out = model.training_losses(images, labels)
    assert out["logits"].shape == (k, 20)
    assert torch.isfinite(out["loss"])


def test_rpnet_flat_layout_equals_grouped_layout() -> None:
    model = tiny_rpnet(group_size=2).eval()
    images, labels = group_batch()
    a = model(images, labels, generator=torch.Generator().manual_seed(5))
    b = model(images.reshape(4, 3, 64, 64), labels.reshape(4, 20), generator=torch.Generator().manual_seed(5))
    for key in ("logits", "enhanced_cams", "loss"):
        torch.testing.assert_close(a[key], b[key])


@pytest.mark.parametrize("levels", [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)])
def test_rpnet_table4_level_combinations(levels: tuple[int, ...]) -> None:
    model = tiny_rpnet(levels=levels, enhanced_scales=(1.0,))
    out = model(*group_batch(b=1))
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("kw", [
    {"self_attention": False}, {"gaussian": False}, {"ls_variant": "paper"}, {"lc_on_enhanced": True},
    {"beta_is_keep_prob": True}, {"attn_sub_sample": True}, {"dilated": True},
])
def test_rpnet_options_run(kw: dict) -> None:
    out = tiny_rpnet(enhanced_scales=(1.0,), **kw)(*group_batch(b=1))
    assert torch.isfinite(out["loss"])


@pytest.mark.parametrize("self_attention", [True, False])
def test_all_ones_foreground_gives_the_plain_map_and_zero_ls(self_attention: bool) -> None:
    """F = 1 everywhere: enhanced features = f4, so (with the non-local blocks at their identity
    initialisation, or without them) the enhanced map equals the plain one and Ls = 0."""
    model = tiny_rpnet(self_attention=self_attention)
    f4, _ = model.features(torch.randn(2, 3, 64, 64))
    plain = model.plain_cam(f4)
    enhanced = model.enhanced_cam(f4, torch.ones_like(f4[:, :1]))
    torch.testing.assert_close(enhanced, plain)
    labels = torch.ones(2, 20)
    assert self_supervised_loss(plain, F.relu(enhanced), labels).item() == 0.0


def _has_grad(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_rpnet_gradients_stage2_detached_and_ls_reaches_both_branches() -> None:
    model = tiny_rpnet()
    images, labels = group_batch()
    out = model(images, labels)
    out["loss"].backward()
    body = model.backbone.body
    assert not _has_grad(body.layer1) and not _has_grad(body.layer2)  # stage-2 output detached
    assert body.conv1.weight.grad is None
    assert _has_grad(body.layer3) and _has_grad(body.layer4) and _has_grad(model.head.down)
    model.zero_grad(set_to_none=True)
    out = model(images, labels)
    out["loss_ss"].backward()  # Ls alone: into the plain branch and into the enhanced branch
    assert _has_grad(model.head.attn_plain.out[1]) and _has_grad(model.head.attn_enhanced.out[1])
    assert _has_grad(model.head.classifier) and _has_grad(model.backbone.body.layer4)


def test_rpnet_cam_inference() -> None:
    model = tiny_rpnet().eval()
    x = torch.randn(2, 3, 48, 80)
    cam = model.cam(x)
    assert cam.shape == (2, 20, 3, 5)
    assert torch.all(cam >= 0)
    with torch.no_grad():
        f4, _ = model.features(x)
        torch.testing.assert_close(cam, F.relu(model.plain_cam(f4)))


def test_rpnet_param_groups() -> None:
    model = tiny_rpnet()
    backbone, new = model.param_groups()
    ids_b, ids_n = {id(p) for p in backbone}, {id(p) for p in new}
    assert not ids_b & ids_n
    assert ids_b | ids_n == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.head.classifier.weight) in ids_n and id(model.head.down.weight) in ids_n
    assert id(model.backbone.body.conv1.weight) not in ids_b  # frozen stem
    assert id(model.backbone.body.layer3[0].bn1.weight) in ids_b  # IRN trains the BN affine parameters


def test_rpnet_config_errors() -> None:
    for kw in ({"levels": (1, 4)}, {"levels": ()}, {"enhanced_scales": (0.5, 2.0)}, {"ls_variant": "x"},
               {"beta": 2.0}):
        with pytest.raises(ConfigError):
            tiny_rpnet(**kw)


# -- the CAM baseline --------------------------------------------------------------------------------
def test_camnet_interface() -> None:
    torch.manual_seed(0)
    model = CAMNet(backbone="resnet18")
    images, labels = group_batch()
    out = model.training_losses(images, labels)
    assert out["logits"].shape == (4, 20) and torch.isfinite(out["loss"])
    out["loss"].backward()
    body = model.backbone.body
    assert not _has_grad(body.layer2) and _has_grad(body.layer3) and _has_grad(model.classifier)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)[4]
        # GAP then the 1x1 conv == the mean of the class maps (linear)
        torch.testing.assert_close(model(x), F.conv2d(feats, model.classifier.weight).mean(dim=(2, 3)))
    assert model.cam(x).shape == (2, 20, 4, 4)
    backbone, new = model.param_groups()
    assert [id(p) for p in new] == [id(model.classifier.weight)]


def test_freeze_early_false_trains_every_layer() -> None:
    """From-scratch policy: gradients reach the stem and block 1-2; BatchNorm runs in train mode."""
    from rpnet_pl.models.cam_net import CAMNet

    for net in (RPNet(backbone="resnet18", mid=16, freeze_early=False, enhanced_scales=(1.0,)),
                CAMNet(backbone="resnet18", freeze_early=False)):
        net.train()
        images = torch.randn(2, 2, 3, 32, 32)
        labels = torch.zeros(2, 2, 20)
        labels[:, :, 0] = 1
        net.training_losses(images, labels)["loss"].backward()
        params = dict(net.backbone.named_parameters())
        # residual branches start at zero (timm zero-inits each block's last BN gamma), so at step 0
        # the gradient reaches the stem and those gammas; the IRN policy would give None for all
        for name in ("body.conv1.weight", "body.bn1.weight", "body.layer1.0.bn2.weight", "body.layer2.0.bn2.weight"):
            assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
        bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and all(m.training for m in bns)


@pytest.mark.parametrize("method", ["rpnet", "cam"])
def test_every_trainable_parameter_gets_a_gradient(method: str) -> None:
    """DDP fails on unused parameters: under the IRN policy nothing trainable may sit behind the detach."""
    net = (RPNet(backbone="resnet18", mid=16, enhanced_scales=(1.0, 0.5)) if method == "rpnet"
           else CAMNet(backbone="resnet18"))
    net.train()
    labels = torch.zeros(2, 2, 20)
    labels[:, :, 3] = 1
    net.training_losses(torch.randn(2, 2, 3, 32, 32), labels)["loss"].backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    frozen = {n for n, p in net.backbone.named_parameters() if not p.requires_grad}
    assert "body.layer2.0.bn1.weight" in frozen and "body.layer3.0.bn1.weight" not in frozen


# -- the reference's head rules (parity issue) -----------------------------------------------------
def test_dot_product_attention_hand_computed_and_both_orders_agree() -> None:
    from rpnet_pl.models.rpnet import dot_product_attention, softmax_attention

    theta = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, L=2, I=2)
    phi = torch.tensor([[[1.0, 3.0], [1.0, 0.0]]])  # (1, I=2, M=2): key 0 = (1, 1), key 1 = (3, 0)
    g = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])  # (1, M=2, I=2)
    # query 0 = (1, 0): scores (1, 3) / 2 -> 0.5 * (1, 2) + 1.5 * (4, 0) = (6.5, 1)
    # query 1 = (0, 2): scores (2, 0) / 2 -> 1 * (1, 2) = (1, 2)
    expected = torch.tensor([[[6.5, 1.0], [1.0, 2.0]]])
    torch.testing.assert_close(dot_product_attention(theta, phi, g), expected)
    torch.testing.assert_close(dot_product_attention(theta, phi, g, associative=False), expected)
    gen = torch.Generator().manual_seed(0)
    t, p, v = (torch.randn(3, 64, 16, generator=gen), torch.randn(3, 16, 64, generator=gen),
               torch.randn(3, 64, 16, generator=gen))
    torch.testing.assert_close(dot_product_attention(t, p, v), dot_product_attention(t, p, v, associative=False),
                               rtol=1e-5, atol=1e-5)
    w = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    torch.testing.assert_close(softmax_attention(theta, phi, g)[0, 0], w[0] * g[0, 0] + w[1] * g[0, 1])


def test_grouped_batch_norm_equals_batch_norm_per_group() -> None:
    from rpnet_pl.models.rpnet import grouped_batch_norm

    x = torch.randn(6, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    weight, bias = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.0, -1.0, 3.0])
    groups = torch.tensor([0, 1, 0, 1, 0, 1])  # member index of 3 groups of 2 (group-major)
    y, mean, var = grouped_batch_norm(x, groups, weight, bias)
    for gid in (0, 1):
        rows = groups == gid
        ref = F.batch_norm(x[rows], None, None, weight, bias, training=True, eps=1e-5)
        torch.testing.assert_close(y[rows], ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mean[gid], x[rows].mean(dim=(0, 2, 3)))
    # hand-computed: one channel, values 1 and 3 -> mean 2, var 1 -> -1, +1 (eps aside)
    h = torch.tensor([1.0, 3.0]).reshape(2, 1, 1, 1)
    y1, m1, v1 = grouped_batch_norm(h, None, None, None, eps=0.0)
    assert y1.flatten().tolist() == [-1.0, 1.0]
    assert m1.tolist() == [[2.0]] and v1.tolist() == [[1.0]]  # the statistics for the running buffers
    # one group given as ids (all 0): the same fused pass, the same statistics, shape (1, C)
    y0, m0, v0 = grouped_batch_norm(x, torch.zeros(6, dtype=torch.long), weight, bias)
    torch.testing.assert_close(y0, F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5))
    torch.testing.assert_close(m0, x.mean(dim=(0, 2, 3))[None])
    torch.testing.assert_close(v0, x.var(dim=(0, 2, 3), unbiased=False)[None], rtol=1e-4, atol=1e-6)


def test_non_local_batch_norm_uses_batch_statistics_in_eval_mode() -> None:
    from rpnet_pl.models.rpnet import NonLocalBlock

    torch.manual_seed(0)
    ref_block, std_block = NonLocalBlock(8, norm="batch"), NonLocalBlock(8, norm="running")
    std_block.load_state_dict(ref_block.state_dict())
    for b in (ref_block, std_block):
        torch.nn.init.ones_(b.out[1].weight)  # leave the identity initialisation
    x = torch.randn(2, 8, 3, 4)
    ref_block.eval(), std_block.eval()
    with torch.no_grad():
        y_ref, y_std = ref_block(x), std_block(x)
        std_block.train()
        y_std_train = std_block(x)
    torch.testing.assert_close(y_ref, y_std_train)  # eval in the reference = training-mode statistics
    assert not torch.allclose(y_ref, y_std)  # eval-mode BatchNorm (running statistics) differs
    # two stat groups = two separate passes
    groups = torch.tensor([0, 1])
    with torch.no_grad():
        split = ref_block(x, groups)
        torch.testing.assert_close(split[:1], ref_block(x[:1]))


def test_separate_reference_heads_score_reference_members() -> None:
    model = tiny_rpnet(enhanced_scales=(1.0,))
    head = model.head
    assert head.classifier_ref is not head.classifier
    with torch.no_grad():
        head.classifier_ref.weight.zero_()
    f4 = torch.randn(4, 16, 3, 3)  # B = 2 groups of k = 2, group-major
    cams = head.plain_cam(f4, k=2)
    assert torch.all(cams[1::2] == 0) and torch.all(cams[0::2] != 0)  # members 1 use the _ref classifier
    torch.testing.assert_close(cams[0::2], head.classifier(head.attn_plain(f4[0::2])))
    shared = tiny_rpnet(enhanced_scales=(1.0,), separate_reference_heads=False)
    assert not hasattr(shared.head, "classifier_ref")
    # CAM inference uses the anchor's head only
    torch.testing.assert_close(model.cam(torch.randn(2, 3, 48, 48)).shape, torch.Size([2, 20, 3, 3]))


def test_part_mask_drawn_per_level_and_injectable() -> None:
    """The reference draws the part mask afresh at each feature level; an injected keep mask that
    keeps nothing at level 2 and everything at level 4 gives exactly that."""
    head = tiny_rpnet(enhanced_scales=(1.0,)).head
    f4 = torch.rand(2, 16, 4, 4) + 0.1  # positive: the confidence mask is where f4 / max >= 0.3
    levels = [torch.rand(2, 8, 4, 4), f4]
    nothing, everything = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    a = head.foreground(f4, levels, k=2, part_keep={2: nothing, 4: everything})
    from rpnet_pl.models.rpnet import confidence_mask, foreground_map, smooth_foreground

    m = confidence_mask(f4).reshape(1, 2, 1, 4, 4)
    lv = [x.reshape(1, 2, *x.shape[1:]) for x in levels]
    manual = foreground_map(lv, [[m, torch.zeros_like(m)], [m, m]])
    torch.testing.assert_close(a, smooth_foreground(manual.reshape(2, 1, 4, 4)))
    # without injection the two levels get independent draws from the generator
    gen = torch.Generator().manual_seed(0)
    drawn = []
    orig = __import__("rpnet_pl.models.rpnet", fromlist=["part_mask"]).part_mask

    def spy(mask, *args, **kw):
        out = orig(mask, *args, **kw)
        drawn.append(out)
        return out

    import rpnet_pl.models.rpnet as mod
    mod.part_mask, saved = spy, mod.part_mask
    try:
        head.foreground(torch.rand(2, 16, 8, 8) + 0.1, [torch.rand(2, 8, 8, 8), torch.rand(2, 16, 8, 8)], k=2,
                        generator=gen)
    finally:
        mod.part_mask = saved
    assert len(drawn) == 2 and not torch.equal(drawn[0], drawn[1])


def test_level_features_align_corners_and_floored_scales() -> None:
    model = tiny_rpnet(enhanced_scales=(1.0, 1.5))
    f4 = torch.zeros(1, 16, 3, 3)
    raw2 = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # (1, 1, 2, 2) -> 3 x 3 with corners kept
    lv2 = model.head.level_features(f4, {2: raw2})[0]
    assert lv2[0, 0].tolist() == [[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]
    sizes = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args, *rest: sizes.append(tuple(args[0].shape[-2:])))
    try:
        model(torch.randn(1, 2, 3, 61, 45), torch.ones(1, 2, 20))
    finally:
        hook.remove()
    assert sizes == [(61, 45), (91, 67)]  # int(61 * 1.5) = 91, int(45 * 1.5) = 67 (floor, as the reference)


def test_seeded_training_step_same_in_both_attention_orders() -> None:
    """One fixed SGD step: the associative order of the dot-product blocks gives the losses and the
    updated weights of the reference's order (float32 tolerance)."""
    from rpnet_pl.models.rpnet import NonLocalBlock

    def one_step(associative: bool) -> tuple[dict[str, float], torch.Tensor]:
        model = tiny_rpnet(enhanced_scales=(1.0, 0.5))
        for m in model.modules():
            if isinstance(m, NonLocalBlock):
                m.associative = associative
                torch.nn.init.normal_(m.out[1].weight, std=0.5)  # leave the identity start
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        images, labels = group_batch()
        out = model(images, labels, generator=torch.Generator().manual_seed(7))
        out["loss"].backward()
        opt.step()
        return {k: out[k].item() for k in ("loss", "loss_cls", "loss_ss")}, model.head.classifier.weight.detach()

    fast, w_fast = one_step(True)
    ref, w_ref = one_step(False)
    for key in ref:
        assert fast[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(w_fast, w_ref, rtol=1e-5, atol=1e-6)


def test_head_settings_are_defaulted_once_by_rpnet() -> None:
    """RPNetHead has no defaults of its own; RPNet's signature is the one source, and RPNet passes
    every head setting through."""
    import inspect

    from rpnet_pl.models.rpnet import HEAD_ARGS, RPNetHead, head_defaults

    head_params = inspect.signature(RPNetHead.__init__).parameters
    assert all(head_params[n].default is inspect.Parameter.empty for n in HEAD_ARGS)
    assert head_defaults()["alpha"] == 0.3 and head_defaults(alpha=0.5)["alpha"] == 0.5
    with pytest.raises(ConfigError, match="lam"):
        head_defaults(lam=1.0)
    model = tiny_rpnet(alpha=0.4, clamp_confidence_peak=True, separate_reference_heads=False)
    assert model.head.alpha == 0.4 and model.head.clamp_confidence_peak and not model.head.separate_reference_heads


def test_seeded_training_step_same_without_the_cpu_fast_paths() -> None:
    """One fixed SGD step with the CPU fast paths of the extra scales (BatchNorm folding, the
    index-free stem pool, channels-last no-grad passes) against none of them: the same losses,
    maps and updated weights (float32 tolerance)."""
    from rpnet_pl.models import backbones as bb

    def one_step(fast: bool) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        model = tiny_rpnet(enhanced_scales=(1.0, 0.5, 1.5))
        if not fast:
            model.backbone.fold_bn = model.backbone.nhwc_without_grad = False
            model.backbone.body.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        assert (type(model.backbone.body.maxpool) is bb._StemMaxPool) == fast
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        images, labels = group_batch(size=80)
        out = model(images, labels, generator=torch.Generator().manual_seed(7))
        out["loss"].backward()
        opt.step()
        return ({k: out[k].item() for k in ("loss", "loss_cls", "loss_ss")}, out["enhanced_cams"].detach(),
                model.head.down.weight.detach())

    fast, maps_fast, w_fast = one_step(True)
    ref, maps_ref, w_ref = one_step(False)
    for key in ref:
        assert fast[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(maps_fast, maps_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w_fast, w_ref, rtol=1e-5, atol=1e-6)
