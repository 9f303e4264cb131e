"""ops.random_walk: sparse transition matrix and walk against the dense IRN route."""
import numpy as np
import pytest
import torch

from rpnet_pl.ops.path_index import path_pixels, search_directions
from rpnet_pl.ops.random_walk import (
    dense_random_walk_reference, fit_to_map, propagate_cams, random_walk, sem_seg_from_rw,
    transition_matrix_sparse,
)


def dense_transition_brute_force(boundary: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """Dense T straight from the definition: a(i, j) = 1 - max B on the path, A_ii = 1."""
    h, w = boundary.shape
    a = torch.eye(h * w, dtype=boundary.dtype)
    for dy, dx in search_directions(radius).tolist():
        for y in range(h):
            for x in range(w):
                if y + dy < h and 0 <= x + dx < w:
                    v = 1 - max(boundary[y + py, x + px].item() for py, px in path_pixels(dy, dx))
                    i, j = y * w + x, (y + dy) * w + x + dx
                    a[i, j] = a[j, i] = v
    a = a.pow(beta)
    return a / a.sum(dim=0, keepdim=True)


def test_three_pixel_walk_hand_computed():
    # 1x3 map, radius 2: pairs (0,1) and (1,2); B = [0, .5, 0] -> both affinities 0.5,
    # beta 2 -> 0.25; A = [[1,.25,0],[.25,1,.25],[0,.25,1]], column sums 1.25, 1.5, 1.25.
    boundary = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    t_hand = torch.tensor([[0.8, 1 / 6, 0.0], [0.2, 2 / 3, 0.2], [0.0, 1 / 6, 0.8]], dtype=torch.float64)
    cams = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)  # (K=1, 1, 3), (1 - B) = 1 there
    # x T = [.8, 1/6, 0];  x T^2 = [.64 + 1/30, 2/15 + 1/9, 1/30]
    expected = torch.tensor([[[0.64 + 1 / 30, 2 / 15 + 1 / 9, 1 / 30]]], dtype=torch.float64)
    torch.testing.assert_close(dense_transition_brute_force(boundary[0:1], 2, 2.0), t_hand)
    out = propagate_cams(cams, boundary, radius=2, beta=2.0, exp_times=1)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(dense_random_walk_reference(cams, t_hand, 1), expected)


def test_transition_matrix_matches_definition():
    torch.manual_seed(0)
    radius, h, w = 3, 4, 5
    boundary = torch.rand(h, w, dtype=torch.float64)
    padded = torch.nn.functional.pad(boundary[None], (radius, radius, 0, radius), value=1.0)[0]
    from rpnet_pl.ops.affinity import affinity_from_boundary
    aff = affinity_from_boundary(padded, radius)[:, :h, 1:1 + w]
    t = transition_matrix_sparse(aff, radius, beta=3.0)
    assert t.is_sparse and t.shape == (h * w, h * w)
    dense = t.to_dense()
    torch.testing.assert_close(dense, dense_transition_brute_force(boundary, radius, 3.0))
    torch.testing.assert_close(dense.sum(0), torch.ones(h * w, dtype=torch.float64))


@pytest.mark.parametrize("h, w, radius, exp_times", [(3, 3, 2, 2), (6, 6, 5, 3)])
def test_sparse_walk_matches_dense_reference(h, w, radius, exp_times):
    torch.manual_seed(1)
    boundary = torch.rand(h, w, dtype=torch.float64) * 0.6
    cams = torch.rand(2, h, w, dtype=torch.float64)
    out = propagate_cams(cams, boundary, radius=radius, beta=10.0, exp_times=exp_times)
    t_dense = dense_transition_brute_force(boundary, radius, 10.0)
    ref = dense_random_walk_reference(cams * (1 - boundary), t_dense, exp_times)
    assert out.shape == (2, h, w)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_random_walk_flat_input_and_dense_matrix():
    torch.manual_seed(2)
    t = torch.rand(5, 5, dtype=torch.float64)
    t = t / t.sum(0, keepdim=True)
    x = torch.rand(3, 5, dtype=torch.float64)
    torch.testing.assert_close(random_walk(x, t, steps=4), dense_random_walk_reference(x, t, 2))
    torch.testing.assert_close(random_walk(x, t.to_sparse(), steps=4), x @ torch.linalg.matrix_power(t, 4))
    with pytest.raises(ValueError):
        random_walk(torch.rand(3, 4), t)


def test_boundary_line_stops_propagation():
    h, w = 8, 10
    cams = torch.zeros(1, h, w)
    cams[0, 3, 1] = 1.0
    boundary = torch.zeros(h, w)
    boundary[:, 4] = 1.0  # a wall from top to bottom
    out = propagate_cams(cams, boundary, radius=5, beta=10.0, exp_times=8)
    assert (out[0, :, 4:] == 0).all()  # nothing reaches the wall or beyond
    assert (out[0, :, :4] > 0).all()  # the left region is filled
    free = propagate_cams(cams, torch.zeros(h, w), radius=5, beta=10.0, exp_times=8)
    assert (free[0, :, 5:] > 0).all()  # without the wall the activation crosses


def test_sem_seg_from_rw_threshold_and_global_max():
    rw = torch.zeros(2, 2, 2)
    rw[0, 0, 0] = 1.0
    rw[1, 1, 1] = 0.5  # at (6, 5) of the x4 map: 0.875 * 0.5 = 0.4375 of the global max
    out = sem_seg_from_rw(rw, [5, 9], image_size=(7, 6))
    assert out.shape == (7, 6) and out.dtype == np.int64
    assert out[0, 0] == 5 and out[6, 5] == 9 and out[0, 5] == 0
    rw[1, 1, 1] = 0.2  # 0.175 < 0.25: background
    assert sem_seg_from_rw(rw, np.array([5, 9]), image_size=(7, 6))[6, 5] == 0
    assert sem_seg_from_rw(rw * 10, [5, 9], image_size=(7, 6))[0, 0] == 5  # scale-free
    assert (sem_seg_from_rw(torch.zeros(2, 2, 2), [5, 9], (7, 6)) == 0).all()
    assert (sem_seg_from_rw(torch.zeros(0, 2, 2), [], (7, 6)) == 0).all()


def test_fit_to_map_cuts_and_zero_pads_to_the_boundary_size() -> None:
    cams = torch.arange(12.0).reshape(1, 3, 4)  # rows [0..3], [4..7], [8..11]
    assert fit_to_map(cams, (2, 5)).tolist() == [[[0, 1, 2, 3, 0], [4, 5, 6, 7, 0]]]  # a row cut, a column added
    assert fit_to_map(cams, (4, 3)).tolist() == [[[0, 1, 2], [4, 5, 6], [8, 9, 10], [0, 0, 0]]]
    assert torch.equal(fit_to_map(cams, (3, 4)), cams)
