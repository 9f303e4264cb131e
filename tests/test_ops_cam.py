"""ops.cam: normalisation, seed labels, the threshold sweep, multi-scale sums and IR labels."""
import numpy as np
import pytest
import torch

from rpnet_pl.ops.cam import (
    ThresholdSweep, cam_to_ir_label, cam_to_label, max_normalise, multiscale_sum,
)
from rpnet_pl.ops.metrics import confusion_matrix, miou


def test_max_normalise_torch_and_numpy():
    cams = torch.tensor([[[-1.0, 2.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    out = max_normalise(cams, eps=0.0 + 1e-5)
    np.testing.assert_allclose(out[0].numpy(), [[0, 2 / (4 + 1e-5)], [4 / (4 + 1e-5), 0]], rtol=1e-6)
    assert torch.equal(out[1], torch.zeros(2, 2))  # an all-zero channel stays zero
    out_np = max_normalise(cams.numpy())
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, out.numpy(), rtol=1e-6)


def test_cam_to_label_hand_computed():
    cams = np.array([[[0.1, 0.5, 0.9, 0.4]], [[0.6, 0.2, 0.9, 0.1]]], dtype=np.float32)  # (2, 1, 4)
    keys = [3, 7]
    np.testing.assert_array_equal(cam_to_label(cams, keys, 0.3), [[7, 3, 3, 3]])
    # 0.4 == threshold: ties go to background
    np.testing.assert_array_equal(cam_to_label(cams, np.array(keys), 0.4), [[7, 3, 3, 0]])
    np.testing.assert_array_equal(cam_to_label(torch.from_numpy(cams), torch.tensor(keys), 0.95), [[0, 0, 0, 0]])
    assert cam_to_label(np.zeros((0, 2, 2)), [], 0.1).tolist() == [[0, 0], [0, 0]]
    with pytest.raises(ValueError):
        cam_to_label(cams, [3], 0.3)


def test_threshold_sweep_equals_cam_to_label():
    rng = np.random.default_rng(1)
    thresholds = [0.05, 0.15, 0.3, 0.5]
    sweep = ThresholdSweep(thresholds, num_classes=21)
    reference = {t: np.zeros((21, 21), np.int64) for t in thresholds}
    for keys in ([1], [4, 15], [2, 9, 20]):
        cams = rng.random((len(keys), 10, 12)).astype(np.float32)
        cams = np.round(cams, 2)  # make exact ties with the thresholds likely
        gt = rng.choice([0, *keys, 255], size=(10, 12))
        sweep.update(cams, keys, gt)
        for t in thresholds:
            reference[t] += confusion_matrix(cam_to_label(cams, keys, t), gt, 21)
    results = sweep.results()
    assert list(results) == thresholds
    for t in thresholds:
        np.testing.assert_array_equal(sweep.confusion[t], reference[t])
        assert results[t][0] == pytest.approx(miou(reference[t]))
        assert results[t][1].shape == (21,)
    best_t, best_m = sweep.best()
    assert best_m == max(m for m, _ in results.values()) and results[best_t][0] == best_m


def test_multiscale_sum_and_crop():
    maps = [torch.full((2, 4, 4), 1.0), torch.full((2, 2, 2), 2.0), torch.full((2, 7, 5), 0.5)]
    out = multiscale_sum(maps, size=(8, 8))
    assert out.shape == (2, 8, 8)
    torch.testing.assert_close(out, torch.full((2, 8, 8), 3.5))
    cropped = multiscale_sum([m[None] for m in maps], size=(8, 8), crop=(5, 6))
    assert cropped.shape == (1, 2, 5, 6)
    with pytest.raises(ValueError):
        multiscale_sum([], size=(2, 2))


def test_cam_to_ir_label_without_crf_hand_computed():
    cams = np.array([[[0.5, 0.1, 0.01, 0.3]], [[0.2, 0.4, 0.02, 0.06]]], dtype=np.float32)
    # fg map at 0.30: [2, 5, 0, 0]   bg map at 0.05: [2, 5, 0, 5]
    out = cam_to_ir_label(cams, [2, 5], np.zeros((1, 4, 3), np.uint8), crf_fn=None)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[2, 5, 0, 255]])


def test_cam_to_ir_label_crf_gets_channel_indices():
    seen = {}

    def fake_crf(image, labels, n_labels):
        seen.setdefault("calls", []).append((labels.copy(), n_labels))
        return labels

    cams = np.array([[[0.9, 0.1]]], dtype=np.float32)
    out = cam_to_ir_label(cams, [12], np.zeros((1, 2, 3), np.uint8), crf_fn=fake_crf)
    np.testing.assert_array_equal(out, [[12, 255]])
    (fg_labels, n1), (bg_labels, n2) = seen["calls"]
    assert n1 == n2 == 2  # background + one key, as channel indices
    np.testing.assert_array_equal(fg_labels, [[1, 0]])
    np.testing.assert_array_equal(bg_labels, [[1, 1]])


def test_cam_to_ir_label_with_default_crf():
    h, w = 12, 24
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 12:] = (220, 220, 40)
    x = np.arange(w, dtype=np.float32)
    cam = np.broadcast_to(np.clip((x - 8) / 8, 0, 1), (h, w))[None]  # CAM rises across the edge
    out = cam_to_ir_label(cam, [4], image)
    assert out.shape == (h, w)
    assert set(np.unique(out)) <= {0, 4, 255}
    assert (out[:, :6] == 0).all() and (out[:, -6:] == 4).all()
