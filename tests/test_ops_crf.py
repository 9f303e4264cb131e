"""ops.crf: both dense-CRF wrappers snap a misplaced boundary onto a colour edge."""
import numpy as np
import pytest

from rpnet_pl.ops.crf import crf_inference_label, crf_inference_prob

H, W, EDGE = 16, 32, 16


@pytest.fixture()
def two_colour_image() -> tuple[np.ndarray, np.ndarray]:
    """Red left of column 16, blue from column 16 on; ground truth 0 left, 1 right."""
    image = np.zeros((H, W, 3), dtype=np.uint8)
    image[:, :EDGE] = (200, 30, 30)
    image[:, EDGE:] = (30, 30, 200)
    gt = np.broadcast_to((np.arange(W) >= EDGE).astype(np.int64), (H, W))
    return image, gt


def test_crf_prob_moves_ramp_boundary_to_colour_edge(two_colour_image):
    image, gt = two_colour_image
    x = np.arange(W)
    p1 = np.clip((x - 10) / 20, 0, 1) * 0.9 + 0.05  # smooth ramp, 0.5 at column 20
    probs = np.broadcast_to(np.stack([1 - p1, p1])[:, None, :], (2, H, W)).astype(np.float32)
    before = probs.argmax(0)
    assert (before == gt).sum() == H * (W - 5)  # columns 16..20 wrong: 27 of 32 per row
    q = crf_inference_prob(image, probs)
    assert q.shape == (2, H, W) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-4)
    after = q.argmax(0)
    assert (after == gt).sum() == H * W


def test_crf_label_moves_boundary_to_colour_edge(two_colour_image):
    image, gt = two_colour_image
    labels = np.broadcast_to((np.arange(W) >= 21).astype(np.int64), (H, W))
    assert (labels == gt).sum() == H * (W - 5)
    out = crf_inference_label(image, labels, n_labels=2)
    assert out.shape == (H, W)
    assert (out == gt).sum() == H * W


def test_crf_input_checks(two_colour_image):
    image, gt = two_colour_image
    with pytest.raises(ValueError, match="uint8"):
        crf_inference_label(image.astype(np.float32), gt, 2)
    with pytest.raises(ValueError, match="labels"):
        crf_inference_label(image, gt + 5, 2)
    with pytest.raises(ValueError, match="probs"):
        crf_inference_prob(image, np.ones((2, H, W - 1), np.float32))
