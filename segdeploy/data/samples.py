"""Labelled held-out images as numpy arrays, for the gates that score exported models.

The items are the validation items training used for the same data argument and seed, read
without torch: the validation scenes or crops of the synthetic data, or a data folder's ``val/``
(or its held-out share).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError
from segdeploy.core.preprocess import normalise
from segdeploy.data import synthetic
from segdeploy.data.checks import check_size
from segdeploy.data.folders import (
    DEFAULT_VAL_FRACTION,
    ClassificationFiles,
    SegmentationFiles,
    folder_layout,
    split_indices,
)

#: One item: ``(image (H, W, 3) uint8, mask (H, W) or class label)``.
Item = tuple[np.ndarray, np.ndarray | int]


def labelled_samples(
    card: ModelCard, source: str, count: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalised images ``(N, C, size, size)`` and their labels (masks or classes).

    Args:
        card: the model's card: its task, class names, normalisation and size multiple.
        source: ``"synthetic"`` or a data folder.
        count: how many items (the first ``count`` validation items; fewer if there are fewer).
        size: height and width of the images.
        seed: the data seed, as given to training.

    Returns:
        images (N, C, size, size) float32 normalised with the card's mean and std, and labels:
        (N, size, size) int64 masks or (N,) int64 classes.

    Raises:
        DataError: if the data's classes differ from the card's, or the data is unusable.
    """
    if source == "synthetic":
        names, items = _synthetic_items(card, count, (size, size), seed)
    else:
        names, items = _folder_items(card, source, count, (size, size), seed)
    if tuple(names) != card.class_names:
        raise DataError(f"data classes {list(names)} differ from the model's {card.class_names}")
    images, labels = zip(*items, strict=True)
    pixels = np.stack(images)  # (N, H, W, 3) uint8
    return normalise(pixels, card.mean, card.std), np.stack(labels).astype(np.int64)


def _synthetic_items(
    card: ModelCard, count: int, hw: tuple[int, int], seed: int
) -> tuple[Sequence[str], list[Item]]:
    h, w = check_size(hw, "Synthetic dataset", card.size_multiple)
    if card.task == "segmentation":
        render = synthetic.render_road_scene
    else:
        render = synthetic.render_road_crop
    val_seed = seed + synthetic.VALIDATION_SEED_OFFSET
    return synthetic.ROAD_CLASSES, [render(i, h, w, seed=val_seed) for i in range(count)]


def _folder_items(
    card: ModelCard, source: str, count: int, hw: tuple[int, int], seed: int
) -> tuple[Sequence[str], list[Item]]:
    layout = folder_layout(source, card.task, card.class_names)
    root = layout.root / "val" if layout.has_split else layout.root
    names = layout.class_names
    if names is None:
        files = ClassificationFiles(root, hw)
    else:
        files = SegmentationFiles(root, len(names), hw, names, card.size_multiple)
    if layout.has_split:
        indices = list(range(len(files)))
    else:
        _, indices = split_indices(len(files), DEFAULT_VAL_FRACTION, seed)
    return files.class_names, [files.read(i) for i in indices[:count]]
