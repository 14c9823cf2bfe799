"""Labelled held-out images at their own size, for training validation, ``evaluate`` and the
gates that score exported models.

The items are the validation (or training) items training used for the same data argument and
seed (:func:`card_seed`), read without torch: the validation scenes or crops of the synthetic
data, or a data folder's ``val/`` (or its held-out share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError
from segdeploy.data import synthetic
from segdeploy.data.folders import (
    DEFAULT_VAL_FRACTION,
    ClassificationFiles,
    SegmentationFiles,
    data_root,
    folder_layout,
    has_train_val_split,
    load_rgb,
    split_indices,
)

#: The ``card.training`` key of the mask file values in class order (``--mask-values``), a list
#: of ints; absent when the masks hold class indices.
MASK_VALUES_KEY = "mask_values"

#: The ``card.training`` key of the data seed the model trained with (``--seed``): it chose the
#: held-out share of a folder without ``train/`` + ``val/`` and the synthetic validation scenes.
SEED_KEY = "seed"

#: One item: ``(image (H, W, 3) uint8, mask (H, W) or class label)``.
Item = tuple[np.ndarray, np.ndarray | int]


@dataclass(frozen=True)
class LabelledImage:
    """One labelled image as users' files hold it: its name, its own-size pixels and its label."""

    name: str
    pixels: np.ndarray  # (H, W, 3) uint8 at the image's own size
    label: np.ndarray | int  # (H, W) uint8 mask (255 = ignore) or a class index


def card_seed(card: ModelCard) -> int:
    """The data seed ``card``'s model trained with (``card.training`` key :data:`SEED_KEY`), so
    that ``evaluate`` and the gates hold out the images training held out; 0 for a card that
    records none (0 is ``segdeploy train``'s default)."""
    return int(card.training.get(SEED_KEY, 0))


def split_depends_on_seed(source: str) -> bool:
    """Whether the data seed chooses ``source``'s validation items: synthetic data and folders
    without ``train/`` + ``val/`` (a folder's own split does not depend on it)."""
    return source == "synthetic" or not has_train_val_split(data_root(source))


def card_mask_values(card: ModelCard) -> tuple[int, ...] | None:
    """The mask file values in class order the model trained with (``card.training`` key
    :data:`MASK_VALUES_KEY`), or ``None`` when its masks held class indices."""
    found = card.training.get(MASK_VALUES_KEY)
    return None if found is None else tuple(int(v) for v in found)


def labelled_images(
    card: ModelCard,
    source: str,
    split: str,
    count: int | None = None,
    seed: int = 0,
    *,
    mask_values: Sequence[int] | None = None,
) -> list[LabelledImage]:
    """The ``split`` (``"train"`` or ``"val"``) items of ``source`` at their own size.

    The same split training uses for the same data argument and seed: a folder's ``train/`` and
    ``val/``, or its hold-out share (``DEFAULT_VAL_FRACTION``); the synthetic training or
    validation scenes at the card's training size. Names identify the items (file paths, or
    ``synthetic:<seed>:<index>``), so two uses can be proven disjoint. Segmentation masks are
    read with ``mask_values`` (mask file values in class order), by default the card's
    (:func:`card_mask_values`), so evaluation reads the masks as training did.

    Raises:
        DataError: unusable data, or classes that differ from the card's.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', found {split!r}")
    if source == "synthetic":
        return _synthetic_images(card, split, count, seed)
    layout = folder_layout(source, card.task, card.class_names)
    root = layout.root / split if layout.has_split else layout.root
    if layout.class_names is None:
        files = ClassificationFiles(root, (1, 1))
        read = lambda i: (load_rgb(files.samples[i][0]), files.samples[i][1])  # noqa: E731
        paths = [path for path, _ in files.samples]
    else:
        names = layout.class_names
        if mask_values is None:
            mask_values = card_mask_values(card)
        files = SegmentationFiles(root, len(names), None, names, card.size_multiple, mask_values)
        read, paths = files.read, [image for image, _ in files.samples]
    if tuple(files.class_names) != card.class_names:
        raise DataError(
            f"data classes {list(files.class_names)} differ from the model's {card.class_names}"
        )
    indices = list(range(len(files)))
    if not layout.has_split:
        train, val = split_indices(len(files), DEFAULT_VAL_FRACTION, seed)
        indices = train if split == "train" else val
    return [LabelledImage(str(paths[i]), *read(i)) for i in indices[:count]]


def _synthetic_images(
    card: ModelCard, split: str, count: int | None, seed: int
) -> list[LabelledImage]:
    size = int(card.training.get("img_size", 8 * card.size_multiple))  # 128 for 16
    render = synthetic.render_road_scene
    if card.task == "classification":
        render = synthetic.render_road_crop
    if split == "val":
        seed += synthetic.VALIDATION_SEED_OFFSET
    if count is None:
        count = synthetic.DEFAULT_VAL_SAMPLES if split == "val" else synthetic.DEFAULT_TRAIN_SAMPLES
    return [
        LabelledImage(f"synthetic:{seed}:{i}", *render(i, size, size, seed=seed))
        for i in range(count)
    ]
