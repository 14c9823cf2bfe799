"""Per-class loss weights from the label frequencies of segmentation masks."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from segdeploy.core.errors import DataError
from segdeploy.core.metrics import IGNORE_INDEX


def inverse_frequency_weights(
    masks: Iterable[np.ndarray],
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    source: str = "dataset",
) -> np.ndarray:
    """Per-class cross-entropy weights from inverse pixel frequency, normalised to mean 1.

    ``weight[c] ∝ 1 / count[c]`` over the labelled (non-ignored) pixels of ``masks``.

    Classes with zero pixels get the largest weight of the classes that do occur, not 0: the
    masks may be a sample that merely misses a class, and a zero weight would silently stop the
    loss from ever learning it. (If it truly never occurs, its weight has no effect on
    cross-entropy anyway.)

    Args:
        masks: label arrays of any shape (array-likes, e.g. tensors, are accepted).
        num_classes: number of classes ``C``.
        ignore_index: label value that is not counted.
        source: what the masks come from, for the error message.

    Returns:
        (C,) float64 array with mean 1.

    Raises:
        DataError: if the masks contain no labelled pixels at all.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    scanned = 0
    for mask in masks:
        labels = np.asarray(mask).reshape(-1)
        labels = labels[labels != ignore_index].astype(np.int64)
        counts += np.bincount(labels, minlength=num_classes)[:num_classes]
        scanned += 1
    present = counts > 0
    if not present.any():
        raise DataError(
            f"Dataset {source}: expected labelled pixels to compute class weights, found only "
            f"ignored pixels in {scanned} masks."
        )
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / counts[present]
    weights[~present] = weights[present].max()
    weights /= weights.mean()
    return weights
