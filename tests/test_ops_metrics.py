"""ops.metrics: confusion matrix, IoU, mIoU, precision/recall, the Table XI layout."""
import numpy as np
import pytest
import torch

from rpnet_pl.ops.metrics import (
    confusion_matrix, format_iou_table, iou_from_confusion, miou, precision_recall,
)


def test_confusion_matrix_hand_computed():
    target = np.array([0, 0, 1, 1, 2, 255])
    pred = np.array([0, 1, 1, 1, 0, 2])  # the last pixel is ignored (target 255)
    conf = confusion_matrix(pred, target, num_classes=4)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, expected)
    iou = iou_from_confusion(conf)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert np.isnan(iou[3])  # class 3 absent from ground truth and prediction
    assert miou(conf) == pytest.approx(1 / 3)
    precision, recall = precision_recall(conf)
    np.testing.assert_allclose(precision[:2], [1 / 2, 2 / 3])
    assert np.isnan(precision[2]) and np.isnan(precision[3])
    np.testing.assert_allclose(recall[:3], [1 / 2, 1.0, 0.0])


def test_ignore_pixels_excluded_and_torch_input():
    target = torch.tensor([[255, 255], [1, 0]], dtype=torch.uint8)
    pred = torch.tensor([[1, 0], [1, 0]])
    conf = confusion_matrix(pred, target, num_classes=2)
    np.testing.assert_array_equal(conf, [[1, 0], [0, 1]])
    assert miou(conf) == 1.0


def test_ignore_pred_option_and_errors():
    target = np.array([0, 1, 1])
    pred = np.array([0, 255, 1])
    with pytest.raises(ValueError, match="ignore_pred"):
        confusion_matrix(pred, target, 2)
    conf = confusion_matrix(pred, target, 2, ignore_pred=True)
    np.testing.assert_array_equal(conf, [[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(np.array([0]), np.array([7]), 2)
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_uint8_inputs_do_not_overflow_and_matrices_add():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 21, size=(40, 40)).astype(np.uint8)
    pred = rng.integers(0, 21, size=(40, 40)).astype(np.uint8)
    conf = confusion_matrix(pred, target, 21)
    # 20 * 21 + 20 = 440 would wrap in uint8: check against a plain loop on a few cells
    assert conf[20, 20] == np.sum((target == 20) & (pred == 20))
    assert conf[20, 3] == np.sum((target == 20) & (pred == 3))
    assert conf.sum() == target.size
    halves = confusion_matrix(pred[:20], target[:20], 21) + confusion_matrix(pred[20:], target[20:], 21)
    np.testing.assert_array_equal(halves, conf)


def test_large_counts_stay_exact():
    big = 2 ** 40
    conf = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 2) * big
    assert conf.dtype == np.int64 and conf[0, 0] == big
    conf = conf + np.array([[0, 2 ** 38], [0, 0]], dtype=np.int64)
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(big / (big + 2 ** 38))
    assert iou[1] == pytest.approx(big / (big + 2 ** 38))


def test_format_iou_table_layout():
    table = format_iou_table([0.898, 0.79, np.nan], ["bg", "aero", "bike"], row_name="RPNet")
    header, rule, row = table.splitlines()
    assert header == "| method | bg | aero | bike | mIoU |"
    assert rule == "|---|---|---|---|---|"
    assert row == "| RPNet | 89.8 | 79.0 | - | 84.4 |"
    plain = format_iou_table(np.array([0.5, 0.25]), ["a", "b"])
    assert plain.splitlines()[2] == "| 50.0 | 25.0 | 37.5 |"
    with pytest.raises(ValueError):
        format_iou_table([0.5], ["a", "b"])
