"""Per-class loss weights from the label frequencies of segmentation masks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from segdeploy.core.errors import DataError


def label_counts(masks: Iterable[np.ndarray], num_classes: int, ignore_index: int) -> np.ndarray:
    """(C,) labelled pixels per class over ``masks`` (``ignore_index`` not counted)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for mask in masks:
        labels = np.asarray(mask).reshape(-1)
        labels = labels[labels != ignore_index].astype(np.int64)
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
    return counts


def median_frequency_weights(counts: np.ndarray, max_ratio: float) -> np.ndarray:
    """Median-frequency class weights, clipped to ``[1/max_ratio, max_ratio]``, mean 1.

    ``weight[c] = median(count) / count[c]`` over the classes with pixels (Eigen & Fergus): the
    median class weighs 1, rarer classes more, commoner ones less. Clipping bounds what a class
    with a handful of pixels can do to the loss (plain inverse frequency gives a class with
    0.01 % of the pixels 10,000 times the weight of the common ones, and training diverges).
    A class without pixels gets the largest weight of the others (the masks may be a sample
    that merely misses it; a zero weight would silently stop the loss from ever learning it).

    Args:
        counts: (C,) labelled pixels per class (see :func:`label_counts`).
        max_ratio: the largest factor between a class's weight and the median class's.

    Raises:
        DataError: if no class has a pixel.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise DataError("Class weights: expected labelled pixels, found only ignored pixels.")
    weights = np.zeros(counts.shape)
    weights[present] = np.clip(
        np.median(counts[present]) / counts[present], 1 / max_ratio, max_ratio
    )
    weights[~present] = weights[present].max()
    return weights / weights.mean()
