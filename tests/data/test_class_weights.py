"""Inverse-frequency class weights and the shared dataset argument checks (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.data.checks import check_normalisation, check_size
from segdeploy.data.class_weights import inverse_frequency_weights


def test_weights_follow_inverse_frequency_over_all_masks() -> None:
    masks = [np.array([[0, 0, 0, 1]]), np.array([0, 0, 0, 1, 255, 255])]
    weights = inverse_frequency_weights(masks, num_classes=3)
    assert weights.dtype == np.float64 and weights.mean() == pytest.approx(1.0)
    assert weights[1] == pytest.approx(3 * weights[0])
    assert weights[2] == pytest.approx(weights[1])  # absent class: the largest weight


def test_only_ignored_pixels_name_the_source_and_the_count() -> None:
    with pytest.raises(DataError, match=r"Dataset roads: .* in 2 masks"):
        inverse_frequency_weights([np.full(4, 255)] * 2, 2, source="roads")


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
