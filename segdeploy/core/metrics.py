"""Segmentation and classification metrics from one confusion matrix, numpy only.

This module must never import torch: the torch-free runtime reuses it to score predictions.

All IoU-family metrics are derived from a single confusion matrix accumulated over the whole
evaluation set. Averaging per-batch IoUs is biased (a batch where a rare class is absent scores
NaN or 1.0 for it), so :class:`ConfusionMatrix` sums counts and computes metrics once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The mask value of pixels left out of segmentation training and scoring. A segmentation-only
#: rule: a classifier's labels are class indices, and class 255 of a 300-class classifier counts.
IGNORE_INDEX = 255


def ignore_label(task: str) -> int | None:
    """The label value scoring leaves out for ``task``: :data:`IGNORE_INDEX` for segmentation
    masks, none for classification (every class index is a class)."""
    return IGNORE_INDEX if task == "segmentation" else None


def confusion_matrix(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Count (truth, prediction) pairs over all pixels.

    Args:
        pred: integer class predictions, any shape.
        target: integer ground-truth classes, same shape as ``pred``; pixels equal to
            ``ignore_index`` are skipped.
        num_classes: number of classes ``C``.
        ignore_index: label value that marks pixels to leave out; ``None`` counts every label
            (classification, see :func:`ignore_label`).

    Returns:
        ``(C, C)`` int64 matrix; rows are truth, columns are prediction.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} != target shape {target.shape}")
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    target = target.reshape(-1).astype(np.int64, copy=False)
    if ignore_index is not None:
        keep = target != ignore_index
        pred = pred[keep]
        target = target[keep]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        allowed = "" if ignore_index is None else f" or {ignore_index}"
        raise ValueError(f"target labels must be in [0, {num_classes}){allowed}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted labels must be in [0, {num_classes})")
    # One bincount over a flat (truth, pred) index is far faster than a Python loop or
    # np.add.at, which matters when scoring thousands of masks.
    flat = target * num_classes + pred
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class SegmentationMetrics:
    """IoU-family metrics computed from one confusion matrix.

    Attributes:
        pixel_accuracy: correct pixels / counted pixels (NaN when nothing was counted).
        per_class_iou: IoU per class; NaN for a class absent from both prediction and truth.
        miou: mean IoU over the classes that appear in prediction or truth.
        fw_iou: frequency-weighted IoU, sum over classes of truth frequency times IoU.
    """

    pixel_accuracy: float
    per_class_iou: tuple[float, ...]
    miou: float
    fw_iou: float

    def to_dict(self) -> dict:
        """Return a JSON-friendly dict; NaN becomes ``None`` (JSON has no NaN)."""
        return {
            "pixel_accuracy": _nan_to_none(self.pixel_accuracy),
            "per_class_iou": [_nan_to_none(v) for v in self.per_class_iou],
            "miou": _nan_to_none(self.miou),
            "fw_iou": _nan_to_none(self.fw_iou),
        }


def metrics_from_confusion(matrix: np.ndarray) -> SegmentationMetrics:
    """Derive pixel accuracy, per-class IoU, mIoU and frequency-weighted IoU.

    Args:
        matrix: ``(C, C)`` confusion matrix, rows truth, columns prediction.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {matrix.shape}")
    total = matrix.sum()
    tp = np.diag(matrix)
    truth = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    union = truth + predicted - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        # union == 0 means the class is absent from both truth and prediction: its IoU is
        # undefined (NaN), not 0 or 1, so it does not drag mIoU either way.
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    present = ~np.isnan(iou)
    miou = float(iou[present].mean()) if present.any() else math.nan
    if total > 0:
        pixel_accuracy = float(tp.sum() / total)
        # Classes absent from truth have frequency 0, so their (possibly NaN) IoU adds nothing.
        fw_iou = float(np.sum((truth / total) * np.nan_to_num(iou, nan=0.0)))
    else:
        pixel_accuracy = math.nan
        fw_iou = math.nan
    return SegmentationMetrics(
        pixel_accuracy=pixel_accuracy,
        per_class_iou=tuple(float(v) for v in iou),
        miou=miou,
        fw_iou=fw_iou,
    )


class ConfusionMatrix:
    """Accumulate a confusion matrix over many batches, then compute metrics once.

    Example::

        cm = ConfusionMatrix(num_classes=4)
        for pred, target in batches:
            cm.update(pred, target)
        metrics = cm.compute()
    """

    def __init__(self, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add the counts of one batch (numpy integer arrays of equal shape)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> SegmentationMetrics:
        """Metrics over everything accumulated since construction or the last reset."""
        return metrics_from_confusion(self.matrix)

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)


def classification_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Fraction of predicted labels equal to the target labels (NaN for empty input)."""
    pred = np.asarray(pred).reshape(-1)
    target = np.asarray(target).reshape(-1)
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.size} labels but target has {target.size}")
    if target.size == 0:
        return math.nan
    return float(np.mean(pred == target))


@dataclass(frozen=True)
class TaskScore:
    """A model's task metric on a labelled set, as ``evaluate`` and the gates report it.

    Attributes:
        metric_name: ``"mIoU"`` (segmentation) or ``"accuracy"`` (classification).
        metric: its value.
        per_class: IoU (segmentation) or recall (classification) per class; NaN where undefined.
        details: pixel accuracy and frequency-weighted IoU (segmentation), else empty.
        images: how many images were scored.
    """

    metric_name: str
    metric: float
    per_class: tuple[float, ...]
    details: dict[str, float]
    images: int

    def to_dict(self) -> dict:
        return {
            "metric_name": self.metric_name,
            "metric": _nan_to_none(self.metric),
            "per_class": [_nan_to_none(v) for v in self.per_class],
            "details": {k: _nan_to_none(v) for k, v in self.details.items()},
            "images": self.images,
        }


def score_predictions(pairs, task: str, num_classes: int) -> TaskScore:
    """Score ``(prediction, label)`` pairs: masks against masks, or class indices against labels.

    One confusion matrix over every pixel (or image) of the set, never an average of per-image
    scores. For classification the matrix gives accuracy and per-class recall; masks leave out
    :data:`IGNORE_INDEX` pixels, classification labels are all counted (:func:`ignore_label`).
    """
    matrix, images = confusion_of_pairs(pairs, num_classes, task=task)
    return score_confusion(matrix, task, images)


def confusion_of_pairs(pairs, num_classes: int, *, task: str) -> tuple[np.ndarray, int]:
    """The ``(C, C)`` confusion matrix of ``(prediction, label)`` pairs of a ``task`` model and
    how many there were (labels :func:`ignore_label` names are left out).

    Matrices of disjoint parts of a set add up to the set's matrix (distributed validation sums
    them over processes), and :func:`score_confusion` scores the sum.
    """
    confusion = ConfusionMatrix(num_classes, ignore_label(task))
    images = 0
    for prediction, label in pairs:
        confusion.update(np.asarray(prediction), np.asarray(label))
        images += 1
    return confusion.matrix, images


def score_confusion(matrix: np.ndarray, task: str, images: int) -> TaskScore:
    """The :class:`TaskScore` of a confusion matrix of ``images`` images, as
    :func:`score_predictions` reports it."""
    if task == "segmentation":
        found = metrics_from_confusion(matrix)
        details = {"pixel_accuracy": found.pixel_accuracy, "fw_iou": found.fw_iou}
        return TaskScore("mIoU", found.miou, found.per_class_iou, details, images)
    matrix = np.asarray(matrix, dtype=np.float64)
    truth = matrix.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(truth > 0, np.diag(matrix) / np.where(truth > 0, truth, 1), np.nan)
    accuracy = float(np.trace(matrix) / matrix.sum()) if matrix.sum() else math.nan
    return TaskScore("accuracy", accuracy, tuple(float(r) for r in recall), {}, images)
