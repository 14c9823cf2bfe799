"""Metrics against hand-computed confusion matrices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segdeploy.core.metrics import (
    IGNORE_INDEX,
    ConfusionMatrix,
    SegmentationMetrics,
    classification_accuracy,
    confusion_matrix,
    metrics_from_confusion,
)

# Tiny hand example, 3 classes present, class 3 absent from both truth and prediction.
TRUTH = np.array([[0, 0, 1], [1, 2, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])
# rows = truth, cols = prediction
EXPECTED_CM = np.array(
    [
        [1, 1, 0, 0],  # truth 0: one right, one predicted as 1
        [0, 2, 0, 0],  # truth 1: both right
        [1, 0, 1, 0],  # truth 2: one right, one predicted as 0
        [0, 0, 0, 0],  # class 3 never appears
    ]
)


def test_confusion_matrix_matches_hand_count() -> None:
    cm = confusion_matrix(PRED, TRUTH, num_classes=4)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED_CM)


def test_metrics_match_hand_computation() -> None:
    m = metrics_from_confusion(EXPECTED_CM)
    # IoU = TP / (truth + pred - TP)
    # class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 1 / (2 + 1 - 1)
    assert m.per_class_iou[0] == pytest.approx(1 / 3)
    assert m.per_class_iou[1] == pytest.approx(2 / 3)
    assert m.per_class_iou[2] == pytest.approx(1 / 2)
    assert math.isnan(m.per_class_iou[3])
    assert m.pixel_accuracy == pytest.approx(4 / 6)
    # class 3 is absent from both, so it is left out: mean of three, not four
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # each present class has truth frequency 2/6
    assert m.fw_iou == pytest.approx((2 / 6) * (1 / 3 + 2 / 3 + 1 / 2))


def test_all_background_prediction_has_high_accuracy_but_low_miou() -> None:
    # The tutorial's failure mode: a model that predicts background everywhere.
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[0, :4] = 1  # 4 road pixels
    truth[1, :2] = 2  # 2 vehicle pixels
    pred = np.zeros_like(truth)
    m = ConfusionMatrix(4)
    m.update(pred, truth)
    r = m.compute()
    assert r.pixel_accuracy == pytest.approx(0.94)
    assert r.pixel_accuracy > 0.9
    # background IoU = 94 / 100; road and vehicle 0; pedestrian absent -> NaN, left out
    assert r.per_class_iou[:3] == pytest.approx((0.94, 0.0, 0.0))
    assert math.isnan(r.per_class_iou[3])
    assert r.miou == pytest.approx(0.94 / 3)
    assert r.miou < 0.35
    assert r.fw_iou == pytest.approx(0.94 * 0.94)


def test_class_absent_in_truth_but_predicted_counts_as_zero() -> None:
    truth = np.array([0, 0, 0, 0])
    pred = np.array([0, 0, 0, 1])
    r = metrics_from_confusion(confusion_matrix(pred, truth, 3))
    assert r.per_class_iou[0] == pytest.approx(3 / 4)
    assert r.per_class_iou[1] == 0.0  # false positives: present in prediction, IoU 0
    assert math.isnan(r.per_class_iou[2])
    assert r.miou == pytest.approx((3 / 4 + 0) / 2)
    assert r.fw_iou == pytest.approx(3 / 4)


def test_ignore_pixels_are_skipped() -> None:
    truth = np.array([0, 1, IGNORE_INDEX, IGNORE_INDEX])
    pred = np.array([0, 1, 1, 0])  # predictions at ignored pixels would be wrong
    cm = confusion_matrix(pred, truth, 2)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])
    assert metrics_from_confusion(cm).miou == 1.0


def test_custom_ignore_index() -> None:
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2, ignore_index=0)
    np.testing.assert_array_equal(cm, [[0, 0], [0, 1]])


def test_accumulation_over_batches_equals_one_big_matrix() -> None:
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, size=(2, 8, 8)) for _ in range(4)]
    truths = [rng.integers(0, 5, size=(2, 8, 8)) for _ in range(4)]
    truths[1][0, :3] = IGNORE_INDEX
    acc = ConfusionMatrix(5)
    for p, t in zip(preds, truths, strict=True):
        acc.update(p, t)
    big = confusion_matrix(np.concatenate(preds), np.concatenate(truths), 5)
    np.testing.assert_array_equal(acc.matrix, big)
    assert acc.compute() == metrics_from_confusion(big)
    # Averaging per-batch mIoU is not the same thing in general; the accumulator must not.
    acc.reset()
    assert acc.matrix.sum() == 0


def test_to_dict_is_json_friendly() -> None:
    d = metrics_from_confusion(EXPECTED_CM).to_dict()
    assert d["per_class_iou"][3] is None
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["miou"] == pytest.approx(0.5)


def test_empty_matrix_gives_nan_not_crash() -> None:
    m = ConfusionMatrix(3).compute()
    assert isinstance(m, SegmentationMetrics)
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy)


def test_shape_mismatch_and_out_of_range_raise() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3, int), np.array([0, 1, 2]), 2)


def test_classification_accuracy() -> None:
    assert classification_accuracy(np.array([1, 2, 3, 0]), np.array([1, 2, 0, 0])) == 0.75


def test_metrics_module_does_not_import_torch() -> None:
    code = "import sys, segdeploy.core.metrics; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_class_255_of_a_300_class_classifier_is_scored() -> None:
    # 255 is the segmentation ignore label, but class 255 of a 300-class classifier is a class.
    from segdeploy.core.metrics import confusion_of_pairs, score_predictions

    labels = [0, 255, 255, 299, 17, 255, 5]
    predictions = [0, 255, 12, 299, 18, 255, 5]
    score = score_predictions(zip(predictions, labels, strict=True), "classification", 300)
    assert score.images == 7
    assert score.metric == pytest.approx(5 / 7)  # 3 / 4 when the 255s were dropped
    assert score.per_class[255] == pytest.approx(2 / 3)
    matrix, _ = confusion_of_pairs(
        zip(predictions, labels, strict=True), 300, task="classification"
    )
    assert matrix.sum() == 7 and matrix[255, 255] == 2 and matrix[255, 12] == 1


def test_segmentation_still_ignores_255_and_the_rule_is_per_task() -> None:
    from segdeploy.core.metrics import ignore_label, score_predictions

    assert ignore_label("segmentation") == IGNORE_INDEX and ignore_label("classification") is None
    pairs = [(np.array([[0, 1, 1]]), np.array([[0, 1, IGNORE_INDEX]]))]
    score = score_predictions(pairs, "segmentation", 2)
    assert score.details["pixel_accuracy"] == 1.0  # the ignored pixel is not counted
