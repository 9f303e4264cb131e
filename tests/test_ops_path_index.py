"""ops.path_index: search directions, straight paths and all pixel pairs within a radius."""
import numpy as np
import pytest

from rpnet_pl.ops.path_index import (
    pairs_for_size, path_pixels, search_directions, source_window, valid_pair_mask,
)


@pytest.mark.parametrize("radius, count", [(2, 4), (3, 12), (5, 34), (10, 152)])
def test_search_directions_half_disc(radius, count):
    dirs = search_directions(radius)
    assert dirs.shape == (count, 2) and dirs.dtype == np.int64
    as_set = {tuple(d) for d in dirs.tolist()}
    assert len(as_set) == count  # no duplicates
    for dy, dx in as_set:
        assert 0 < dy * dy + dx * dx < radius * radius
        assert dy > 0 or (dy == 0 and dx > 0)
        assert (-dy, -dx) not in as_set  # no mirrored direction
    disc = [(y, x) for y in range(-radius, radius + 1) for x in range(-radius, radius + 1)
            if 0 < y * y + x * x < radius * radius]
    assert 2 * count == len(disc)  # half of the non-zero lattice points of the open disc


def test_path_pixels_hand_examples():
    assert sorted(path_pixels(0, 3)) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert sorted(path_pixels(2, 0)) == [(0, 0), (1, 0), (2, 0)]
    assert sorted(path_pixels(1, 1)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(path_pixels(2, -1)) == [(0, -1), (0, 0), (1, -1), (1, 0), (2, -1), (2, 0)]
    # (3, 1): the line x = y / 3 passes within 1 of these pixels only
    assert sorted(path_pixels(3, 1)) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert path_pixels(0, 0) == [(0, 0)]


def test_every_path_contains_its_ends_and_blocks_a_column():
    for dy, dx in search_directions(10).tolist():
        path = set(path_pixels(dy, dx))
        assert (0, 0) in path and (dy, dx) in path
        # a path crossing a vertical line at column c touches it for every c in between
        for c in range(min(0, dx) + 1, max(0, dx)):
            assert any(x == c for _, x in path)
        for r in range(1, dy):
            assert any(y == r for y, _ in path)


def test_pairs_for_size_small_grid():
    h, w, radius = 4, 5, 3
    src, dst = pairs_for_size(h, w, radius)
    dirs = search_directions(radius)
    expected_count = sum(max(h - abs(dy), 0) * max(w - abs(dx), 0) for dy, dx in dirs.tolist())
    assert len(src) == len(dst) == expected_count
    pairs = list(zip(src.tolist(), dst.tolist()))
    assert len(set(pairs)) == len(pairs)  # no duplicate
    unordered = {frozenset(p) for p in pairs}
    assert len(unordered) == len(pairs)  # no mirrored pair
    brute = {
        frozenset((y1 * w + x1, y2 * w + x2))
        for y1 in range(h) for x1 in range(w) for y2 in range(h) for x2 in range(w)
        if 0 < (y1 - y2) ** 2 + (x1 - x2) ** 2 < radius ** 2
    }
    assert unordered == brute  # all pairs within the radius, none outside


def test_pairs_follow_valid_mask_order():
    h, w, radius = 3, 4, 2
    mask = valid_pair_mask(h, w, radius)
    src, dst = pairs_for_size(h, w, radius)
    dirs = search_directions(radius)
    d, y, x = np.nonzero(mask)
    np.testing.assert_array_equal(src, y * w + x)
    np.testing.assert_array_equal(dst, (y + dirs[d, 0]) * w + x + dirs[d, 1])


def test_source_window():
    assert source_window(128, 128, 10) == (119, 110, 9)
    with pytest.raises(ValueError):
        source_window(4, 4, 3)
    with pytest.raises(ValueError):
        search_directions(1)
