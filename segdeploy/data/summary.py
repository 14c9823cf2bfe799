"""What the training data holds, in a few numbers: images, sizes, labels per class, ignored share.

:class:`SplitSummary` describes one split (training or validation) and :class:`DataSummary` both.
They are computed from what the folder checks already read (image headers and masks), so no
image is decoded for them; ``to_dict()`` gives the plain data a model card stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SplitSummary:
    """One split of the data.

    Attributes:
        images: how many items.
        min_size, max_size: the smallest and largest (height, width) of the images at their own
            size (by area); ``None`` when there are no items.
        per_class: labelled pixels per class (segmentation) or images per class
            (classification), by class name; ``None`` where nothing was counted (synthetic data).
        unit: ``"pixels"`` or ``"images"``: what ``per_class`` counts.
        ignored: pixels labelled 255 (ignore) in the masks; 0 for classification.
    """

    images: int
    min_size: tuple[int, int] | None
    max_size: tuple[int, int] | None
    per_class: dict[str, int] | None
    unit: str
    ignored: int = 0

    @property
    def ignored_share(self) -> float:
        """Share of the mask pixels that are ignored (0 when nothing was counted)."""
        labelled = sum(self.per_class.values()) if self.per_class else 0
        total = labelled + self.ignored
        return self.ignored / total if total else 0.0

    def missing_classes(self) -> tuple[str, ...]:
        """The classes with no labelled pixel (or no image) in this split."""
        return tuple(name for name, n in (self.per_class or {}).items() if n == 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (sizes as ``[height, width]``)."""
        return {
            "images": self.images,
            "min_size": None if self.min_size is None else list(self.min_size),
            "max_size": None if self.max_size is None else list(self.max_size),
            "per_class": None if self.per_class is None else dict(self.per_class),
            "unit": self.unit,
            "ignored_share": round(self.ignored_share, 6),
        }

    def describe(self) -> str:
        """One line: ``24 images 64x64..200x300; pixels brick 31.2 %, ...; 0.0 % ignored``."""
        if self.min_size is None or self.max_size is None:
            return f"{self.images} images"
        sizes = "x".join(map(str, self.min_size))
        if self.max_size != self.min_size:
            sizes += ".." + "x".join(map(str, self.max_size))
        line = f"{self.images} images {sizes} (HxW)"
        if self.per_class:
            total = max(1, sum(self.per_class.values()))
            shares = ", ".join(f"{k} {100 * n / total:.1f} %" for k, n in self.per_class.items())
            line += f"; {self.unit} per class: {shares}"
        if self.unit == "pixels" and self.per_class is not None:
            line += f"; {100 * self.ignored_share:.1f} % ignored"
        return line


@dataclass(frozen=True)
class DataSummary:
    """The training and validation splits of one data argument.

    Attributes:
        source: the data argument (``"synthetic"`` or a folder).
        train, val: the two splits.
        mask_values: the mask file values in class order (``--mask-values``), if given.
    """

    source: str
    train: SplitSummary
    val: SplitSummary
    mask_values: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the model card."""
        found: dict[str, Any] = {
            "source": self.source,
            "train": self.train.to_dict(),
            "val": self.val.to_dict(),
        }
        if self.mask_values is not None:
            found["mask_values"] = list(self.mask_values)
        return found

    def lines(self) -> list[str]:
        """Two lines to print before training: the training and the validation split."""
        return [f"train: {self.train.describe()}", f"val:   {self.val.describe()}"]


def _size_range(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int] | None, ...]:
    if not sizes:
        return None, None
    by_area = sorted(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    return tuple(by_area[0]), tuple(by_area[-1])


def segmentation_split(
    counts: np.ndarray, sizes: Sequence[tuple[int, int]], class_names: Sequence[str]
) -> SplitSummary:
    """The summary of segmentation items from their label counts.

    Args:
        counts: (N, C + 1) pixels per class of each item, the last column the ignored pixels.
        sizes: (height, width) of each item's image.
        class_names: the C class names.
    """
    totals = np.asarray(counts, dtype=np.int64).reshape(-1, len(class_names) + 1).sum(axis=0)
    per_class = {name: int(n) for name, n in zip(class_names, totals[:-1], strict=True)}
    low, high = _size_range(sizes)
    return SplitSummary(len(sizes), low, high, per_class, "pixels", int(totals[-1]))


def classification_split(
    labels: Sequence[int], sizes: Sequence[tuple[int, int]], class_names: Sequence[str]
) -> SplitSummary:
    """The summary of classification items from their labels and image sizes."""
    per_class = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    low, high = _size_range(sizes)
    counts = {name: int(n) for name, n in zip(class_names, per_class, strict=True)}
    return SplitSummary(len(sizes), low, high, counts, "images")


def uncounted_split(images: int, size: tuple[int, int]) -> SplitSummary:
    """The summary of rendered items of one size whose labels are not counted (synthetic)."""
    hw = (int(size[0]), int(size[1]))
    return SplitSummary(images, hw if images else None, hw if images else None, None, "pixels")
