"""ops.affinity: affinities from boundaries, pair labels and the IRN affinity loss."""
import math

import numpy as np
import pytest
import torch

from rpnet_pl.ops.affinity import affinity_from_boundary, affinity_labels, affinity_loss
from rpnet_pl.ops.path_index import path_pixels, search_directions, source_window


def test_affinity_matches_brute_force_path_max():
    torch.manual_seed(0)
    radius = 3
    b = torch.rand(2, 7, 9, dtype=torch.float64)
    aff = affinity_from_boundary(b, radius)
    hp, wp, x0 = source_window(7, 9, radius)
    dirs = search_directions(radius).tolist()
    assert aff.shape == (2, len(dirs), hp, wp) == (2, 12, 5, 5)
    for n in range(2):
        for k, (dy, dx) in enumerate(dirs):
            for i in range(hp):
                for j in range(wp):
                    y, x = i, j + x0
                    expected = 1 - max(b[n, y + py, x + px].item() for py, px in path_pixels(dy, dx))
                    assert aff[n, k, i, j].item() == pytest.approx(expected)


def _brute_force_grad(b: torch.Tensor, radius: int, weight: torch.Tensor) -> torch.Tensor:
    """d(sum weight * affinity)/dB by hand: each pair's weight goes, negated, to the pixel(s) holding
    its path's max, split evenly between tied pixels (torch.amax's rule)."""
    h, w = b.shape[-2:]
    hp, wp, x0 = source_window(h, w, radius)
    grad = torch.zeros_like(b)
    for k, (dy, dx) in enumerate(search_directions(radius).tolist()):
        for i in range(hp):
            for j in range(wp):
                path = [(i + py, j + x0 + px) for py, px in path_pixels(dy, dx)]
                top = max(b[q].item() for q in path)
                at = [q for q in path if b[q].item() == top]
                for q in at:
                    grad[q] -= weight[k, i, j].item() / len(at)
    return grad


def test_affinity_gradient_goes_to_each_path_max():
    torch.manual_seed(0)
    radius = 3
    weight = torch.rand(12, 5, 5, dtype=torch.float64)
    b = torch.rand(7, 9, dtype=torch.float64, requires_grad=True)  # distinct values: one max per path
    (affinity_from_boundary(b, radius) * weight).sum().backward()
    torch.testing.assert_close(b.grad, _brute_force_grad(b.detach(), radius, weight))
    # ties: a map of two values, so most paths hold several pixels at the max
    tied = ((torch.arange(63, dtype=torch.float64).reshape(7, 9) % 4) == 0).double().requires_grad_()
    (affinity_from_boundary(tied, radius) * weight).sum().backward()
    torch.testing.assert_close(tied.grad, _brute_force_grad(tied.detach(), radius, weight))


def toy_label(h: int = 8, w: int = 12) -> torch.Tensor:
    """Background left of column 5, class 3 right of it, column 5 unsure (255)."""
    label = torch.zeros(h, w, dtype=torch.long)
    label[:, 6:] = 3
    label[:, 5] = 255
    return label


def test_affinity_labels_match_brute_force():
    radius = 3
    label = toy_label()
    label[0, 0] = 255
    pos_bg, pos_fg, neg = affinity_labels(label.numpy(), radius)
    hp, wp, x0 = source_window(*label.shape, radius)
    assert pos_bg.shape == (12, hp, wp) and pos_bg.dtype == torch.bool
    assert not (pos_bg & pos_fg).any() and not (pos_bg & neg).any() and not (pos_fg & neg).any()
    for k, (dy, dx) in enumerate(search_directions(radius).tolist()):
        for i in range(hp):
            for j in range(wp):
                a = label[i, j + x0].item()
                b = label[i + dy, j + x0 + dx].item()
                valid = a != 255 and b != 255
                assert pos_bg[k, i, j].item() == (valid and a == b == 0)
                assert pos_fg[k, i, j].item() == (valid and a == b != 0)
                assert neg[k, i, j].item() == (valid and a != b)
    assert pos_bg.any() and pos_fg.any() and neg.any()


def test_affinity_labels_batched():
    labels = torch.stack([toy_label(), toy_label().flip(-1)])
    batched = affinity_labels(labels, 3)
    for n in range(2):
        for got, single in zip(batched, affinity_labels(labels[n], 3)):
            assert torch.equal(got[n], single)


def test_loss_zero_when_boundary_on_region_border():
    radius = 3
    label = toy_label()
    masks = affinity_labels(label, radius)
    boundary = torch.zeros(1, *label.shape)
    boundary[:, :, 5] = 1.0  # exactly the unsure column between the regions
    aff = affinity_from_boundary(boundary, radius)
    pos_bg, pos_fg, neg = affinity_loss(aff, *(m[None] for m in masks))
    for loss in (pos_bg, pos_fg, neg):
        assert loss.item() == pytest.approx(-math.log(1 + 1e-5), abs=1e-6)


def test_loss_large_when_boundary_wrong():
    radius = 3
    label = toy_label()
    masks = [m[None] for m in affinity_labels(label, radius)]
    big = -math.log(1e-5)
    no_edge = affinity_from_boundary(torch.zeros(1, *label.shape), radius)
    pos_bg, pos_fg, neg = affinity_loss(no_edge, *masks)
    assert pos_bg.item() < 1e-4 and pos_fg.item() < 1e-4
    assert neg.item() == pytest.approx(big, rel=1e-3)
    all_edge = affinity_from_boundary(torch.ones(1, *label.shape), radius)
    pos_bg, pos_fg, neg = affinity_loss(all_edge, *masks)
    assert pos_bg.item() == pytest.approx(big, rel=1e-3) and pos_fg.item() == pytest.approx(big, rel=1e-3)
    assert neg.item() < 1e-4


def test_loss_hand_computed_average_and_gradient():
    aff = torch.tensor([[0.5, 0.25], [0.9, 0.1]], requires_grad=True)
    pos_bg = torch.tensor([[True, False], [False, False]])
    pos_fg = torch.tensor([[False, True], [True, False]])
    neg = torch.tensor([[False, False], [False, True]])
    lb, lf, ln = affinity_loss(aff, pos_bg, pos_fg, neg)
    assert lb.item() == pytest.approx(-math.log(0.5 + 1e-5) / (1 + 1e-5), rel=1e-6)
    assert lf.item() == pytest.approx((-math.log(0.25 + 1e-5) - math.log(0.9 + 1e-5)) / (2 + 1e-5), rel=1e-6)
    assert ln.item() == pytest.approx(-math.log(1 + 1e-5 - 0.1) / (1 + 1e-5), rel=1e-6)
    (lb + lf + ln).backward()
    assert aff.grad[1, 1] > 0 and aff.grad[0, 0] < 0
    # no pairs of a kind: zero loss, no nan
    empty = torch.zeros_like(pos_bg)
    assert affinity_loss(aff, empty, empty, empty)[0].item() == 0.0
    with pytest.raises(ValueError):
        affinity_loss(aff, pos_bg[:1], pos_fg, neg)


def test_mask_boundary_marks_blocks_with_two_labels_or_ignore():
    from rpnet_pl.ops.affinity import mask_boundary

    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:4, :6] = 3  # fills block (0, 0), half of block (0, 1)
    mask[6, 1] = 255  # one ignore pixel in block (1, 0)
    np.testing.assert_array_equal(mask_boundary(mask, (2, 2)), [[0, 1], [1, 0]])
    assert mask_boundary(mask, (2, 2)).dtype == np.float32
    # a 7 x 7 mask: the missing last row and column repeat the mask's edge
    small = np.zeros((7, 7), dtype=np.uint8)
    small[4:, 4:] = 2
    np.testing.assert_array_equal(mask_boundary(small, (2, 2)), [[0, 0], [0, 0]])
    small[4, 3] = 2
    np.testing.assert_array_equal(mask_boundary(small, (2, 2)), [[0, 0], [1, 0]])
    # stride 2 over a 4 x 4 mask with a vertical edge between columns 1 and 2: no block is mixed
    edge = np.zeros((4, 4), dtype=np.uint8)
    edge[:, 2:] = 1
    np.testing.assert_array_equal(mask_boundary(edge, (2, 2), stride=2), np.zeros((2, 2)))
    edge[:, 1] = 1
    np.testing.assert_array_equal(mask_boundary(edge, (2, 2), stride=2), [[1, 0], [1, 0]])
