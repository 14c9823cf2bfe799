"""Median-frequency class weights and the shared dataset argument checks (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.data.checks import check_normalisation, check_size
from segdeploy.data.class_weights import label_counts, median_frequency_weights


def test_label_counts_skip_ignored_pixels() -> None:
    masks = [np.array([[0, 0, 0, 1]]), np.array([0, 0, 0, 1, 255, 255])]
    assert label_counts(masks, 3, 255).tolist() == [6, 2, 0]


def test_median_frequency_weights_rarer_classes_weigh_more() -> None:
    weights = median_frequency_weights(np.array([600, 200, 100]), max_ratio=5)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[1] == pytest.approx(3 * weights[0]) and weights[2] == pytest.approx(
        2 * weights[1]
    )


def test_median_frequency_weights_cannot_explode() -> None:
    # One pixel of class 2 against a million of the others: plain inverse frequency would
    # weigh it 10^6 times more; the clip keeps it within 5x of the median class.
    weights = median_frequency_weights(np.array([1_000_000, 1_000_000, 1]), max_ratio=5)
    assert weights.max() / np.median(weights) == pytest.approx(5.0)
    absent = median_frequency_weights(np.array([10, 40, 0]), max_ratio=5)
    assert absent[2] == pytest.approx(absent.max()) and absent.min() > 0


def test_median_frequency_weights_refuse_no_labelled_pixel() -> None:
    with pytest.raises(DataError, match="only ignored pixels"):
        median_frequency_weights(np.zeros(3), max_ratio=5)


def test_check_size() -> None:
    assert check_size((32, 48), "x", 16) == (32, 48)
    assert check_size([30, 50], "x", None) == (30, 50)
    with pytest.raises(SegdeployError, match="x: expected height and width"):
        check_size((30, 48), "x", 16)
    with pytest.raises(SegdeployError, match="positive ints"):
        check_size((0, 48), "x", None)


def test_check_normalisation() -> None:
    assert check_normalisation([0, 0, 0], [1, 1, 1]) == ((0, 0, 0), (1, 1, 1))
    with pytest.raises(SegdeployError, match="positive std"):
        check_normalisation((0, 0, 0), (1, 0, 1))
    with pytest.raises(SegdeployError, match="3 mean values"):
        check_normalisation((0, 0), (1, 1, 1))
