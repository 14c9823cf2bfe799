"""Torch datasets over the torch-free readers of :mod:`segdeploy.data`, and the train/val sets.

* :class:`SyntheticRoadScenes` and :class:`SyntheticRoadCrops` wrap the renderer of
  :mod:`segdeploy.data.synthetic`;
* :class:`SegmentationFolder` and :class:`ClassificationFolder` wrap the folder readers of
  :mod:`segdeploy.data.folders` (which validate eagerly, so a bad file fails before training);
* :func:`compute_class_weights` and :func:`build_training_data` (the training set, the data
  checks and the data summary from a :class:`~segdeploy.train.config.TrainConfig`;
  :func:`build_datasets` is its first three fields; validation reads its own-size images with
  :func:`segdeploy.data.samples.labelled_images`, as ``evaluate`` does).

What this module adds to the numpy items is what needs torch: tensors, normalised with
:func:`segdeploy.core.preprocess.normalise` like everywhere else, and random augmentation drawn
from torch's RNG so that DataLoader workers get distinct, seedable streams.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.metrics import IGNORE_INDEX
from segdeploy.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, SIZE_MULTIPLE, normalise
from segdeploy.data.checks import check_every_class, check_normalisation, check_size
from segdeploy.data.class_weights import label_counts, median_frequency_weights
from segdeploy.data.folders import (
    DEFAULT_VAL_FRACTION,
    ClassificationFiles,
    SegmentationFiles,
    check_split_class_folders,
    crop_pair,
    folder_layout,
    split_indices,
)
from segdeploy.data.summary import DataSummary, uncounted_split
from segdeploy.data.synthetic import ROAD_CLASSES, render_road_crop, render_road_scene
from segdeploy.train.config import TrainConfig
from segdeploy.train.plan import (
    MAX_CLASS_WEIGHT_RATIO,
    TrainingPlan,
    UserChoices,
    plan_folder,
    plan_synthetic,
)


def _to_tensor(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 tensor, scaled to [0, 1] then standardised."""
    return torch.from_numpy(normalise(image, mean, std))


def _random_crop(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` window of image and mask at their own scale (never resized).

    An image smaller than the window is reflect-padded at the bottom and right, its mask with
    255 (ignore), as :func:`~segdeploy.data.folders.crop_pair` does.
    """
    height, width = mask.shape
    top = int(torch.randint(0, max(0, height - size[0]) + 1, ()))
    left = int(torch.randint(0, max(0, width - size[1]) + 1, ()))
    return crop_pair(image, mask, top, left, size)


def _random_flip(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror image and mask left-right together, half of the time.

    Segmentation folders get no scale augmentation: ``predict`` serves every image at its own
    scale, and zooming crops in by 1-1.5x taught the model a scale it never serves (on the
    eight-texture benchmark, best validation mIoU 0.72 with the zoom against 0.87 without).
    """
    if torch.rand(()) < 0.5:
        return image[:, ::-1], mask[:, ::-1]
    return image, mask


def _random_flip_and_scale_crop(
    image: np.ndarray, mask: np.ndarray | None, max_scale: float = 1.5
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random horizontal flip, then zoom in by up to ``max_scale`` and crop back to size.

    The same draw is applied to image ((H, W, 3) uint8, bilinear) and mask ((H, W) uint8,
    nearest, so labels stay labels). torch's RNG is used so DataLoader workers get distinct,
    seedable streams.
    """
    pil_image = Image.fromarray(image)
    pil_mask = None if mask is None else Image.fromarray(mask, "L")
    if torch.rand(()) < 0.5:
        pil_image = pil_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if pil_mask is not None:
            pil_mask = pil_mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = 1.0 + (max_scale - 1.0) * float(torch.rand(()))
    w, h = pil_image.size
    sw, sh = max(w, round(w * scale)), max(h, round(h * scale))
    if (sw, sh) != (w, h):
        x0 = int(torch.randint(0, sw - w + 1, ()))
        y0 = int(torch.randint(0, sh - h + 1, ()))
        box = (x0, y0, x0 + w, y0 + h)
        pil_image = pil_image.resize((sw, sh), Image.Resampling.BILINEAR).crop(box)
        if pil_mask is not None:
            pil_mask = pil_mask.resize((sw, sh), Image.Resampling.NEAREST).crop(box)
    return np.asarray(pil_image), None if pil_mask is None else np.asarray(pil_mask)


# --------------------------------------------------------------------------------------------
# Synthetic datasets
# --------------------------------------------------------------------------------------------


class _RenderedRoadScenes(Dataset):
    """What the synthetic datasets share: length, size, seed, normalisation, indexing."""

    class_names = ROAD_CLASSES
    num_classes = len(ROAD_CLASSES)

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
        size_multiple: int = SIZE_MULTIPLE,
    ) -> None:
        if length < 0:
            raise SegdeployError(f"Synthetic dataset: expected length >= 0, got {length}.")
        self.length = int(length)
        self.size = check_size(size, "Synthetic dataset", size_multiple)
        self.seed = int(seed)
        self.mean, self.std = check_normalisation(mean, std)
        self.augment = augment

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return index


class SyntheticRoadScenes(_RenderedRoadScenes):
    """Procedurally rendered road scenes with 4 classes (see :data:`ROAD_CLASSES`).

    Items are rendered on the fly from ``(seed, index)``, so the dataset costs no memory or disk
    and is identical on every machine.

    Args:
        length: number of items.
        size: (height, width); both must be multiples of ``size_multiple``.
        seed: base seed; use different seeds for train and validation sets.
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip (the scenes already vary a lot by construction).
        size_multiple: the model's size multiple (16 unless its architecture says otherwise).

    Items are ``(image, mask)``: image (3, H, W) float32 normalised, mask (H, W) int64.
    """

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 mask of item ``index`` without augmentation (for class weights)."""
        return render_road_scene(self._check_index(index), *self.size, seed=self.seed)[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = render_road_scene(self._check_index(index), *self.size, seed=self.seed)
        if self.augment and torch.rand(()) < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))  # (H, W)
        return _to_tensor(image, self.mean, self.std), mask_t  # (3, H, W) float32

    def describe(self) -> str:
        """One line for logs and model cards."""
        h, w = self.size
        extra = ", augmented" if self.augment else ""
        return f"synthetic road scenes, {self.length} images {h}x{w}, seed {self.seed}{extra}"


class SyntheticRoadCrops(_RenderedRoadScenes):
    """Classification twin of :class:`SyntheticRoadScenes`: what is at the centre of the crop?

    Items are :func:`~segdeploy.data.synthetic.render_road_crop` crops (classes balanced over
    consecutive indices), deterministic per ``(seed, index)``: ``(image, label)`` with image
    (3, H, W) float32 normalised and label an int64 scalar.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop, label = render_road_crop(self._check_index(index), *self.size, seed=self.seed)
        return _to_tensor(crop, self.mean, self.std), torch.tensor(label, dtype=torch.int64)

    def describe(self) -> str:
        h, w = self.size
        return f"synthetic road crops, {self.length} images {h}x{w}, seed {self.seed}"


# --------------------------------------------------------------------------------------------
# Folder datasets
# --------------------------------------------------------------------------------------------


class SegmentationFolder(SegmentationFiles, Dataset):
    """Image/mask pairs from ``root/images/*`` and ``root/masks/*.png``, paired by file stem.

    The files are validated in ``__init__`` (see :class:`~segdeploy.data.folders.SegmentationFiles`
    for the layout and the rules); this adds normalisation and augmentation.

    Args:
        root: dataset folder containing ``images/`` and ``masks/``.
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or 255.
        size: optional (height, width), multiples of ``size_multiple``; images are resized
            bilinearly and masks with nearest neighbour. Without it items keep their native size.
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip, applied identically to image and mask (no zoom:
            see :func:`_random_flip`).
        class_names: optional names; defaults to ``class_0``, ``class_1``, ...
        size_multiple: the model's size multiple (16 unless its architecture says otherwise).
        crop: optional (height, width), multiples of ``size_multiple``: each item is a random
            window of this size at the image's own scale (what training uses, so that the model
            learns the scale ``predict`` serves); smaller images are reflect-padded and their
            masks padded with 255 (ignore). The crop comes before the augmentation.
        mask_values: optional mask file values in class order, e.g. ``(0, 255)`` for binary
            masks saved as 0/255; value ``mask_values[i]`` is read as class ``i``.

    Items are ``(image, mask)``: image (3, H, W) float32 normalised, mask (H, W) int64.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
        class_names: Sequence[str] | None = None,
        size_multiple: int = SIZE_MULTIPLE,
        crop: tuple[int, int] | None = None,
        mask_values: Sequence[int] | None = None,
    ) -> None:
        self.mean, self.std = check_normalisation(mean, std)
        self.augment = augment
        self.crop = None if crop is None else check_size(crop, f"Crop of {root}", size_multiple)
        self.size_multiple = size_multiple
        super().__init__(root, num_classes, size, class_names, size_multiple, mask_values)

    def set_training_size(self, side: int) -> None:
        """Cut random ``side`` x ``side`` crops from now on (the training plan's size)."""
        self.crop = check_size((side, side), f"Crop of {self.root}", self.size_multiple)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.read(index)
        if self.crop is not None:
            image, mask = _random_crop(image, mask, self.crop)
        if self.augment:
            image, mask = _random_flip(image, mask)
        # Masks never go through ToTensor, which would rescale labels to [0, 1].
        mask_t = torch.from_numpy(mask.astype(np.int64))  # (H, W)
        return _to_tensor(image, self.mean, self.std), mask_t

    def describe(self) -> str:
        """One line for logs and model cards."""
        crop = f", random {self.crop[0]}x{self.crop[1]} crops" if self.crop else ""
        return super().describe() + crop + (", augmented" if self.augment else "")


class ClassificationFolder(ClassificationFiles, Dataset):
    """Images in ``root/<class_name>/*``, one sub-folder per class (sorted names = classes).

    The layout and image headers are checked in ``__init__`` (see
    :class:`~segdeploy.data.folders.ClassificationFiles`); this adds normalisation and
    augmentation.

    Args:
        root: dataset folder with one sub-folder per class.
        size: (height, width) every image is resized to (aspect ratio is not preserved).
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip and scale-crop.

    Items are ``(image, label)``: image (3, H, W) float32 normalised, label int64 scalar.
    """

    def __init__(
        self,
        root: str | Path,
        size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        self.mean, self.std = check_normalisation(mean, std)
        self.augment = augment
        super().__init__(root, size)

    def set_training_size(self, side: int) -> None:
        """Resize every image to ``side`` x ``side`` from now on (the training plan's size)."""
        self.size = check_size((side, side), f"Dataset {self.root}", None)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.read(index)
        if self.augment:
            image, _ = _random_flip_and_scale_crop(image, None)
        x = _to_tensor(image, self.mean, self.std)  # (3, H, W)
        return x, torch.tensor(label, dtype=torch.int64)

    def describe(self) -> str:
        """One line for logs and model cards."""
        return super().describe() + (", augmented" if self.augment else "")


def compute_class_weights(
    dataset: Dataset,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    max_items: int | None = None,
) -> torch.Tensor:
    """The ``auto`` class weights of a dataset's masks: clipped median frequency, mean 1.

    See :func:`segdeploy.data.class_weights.median_frequency_weights` for the rule (at most
    :data:`~segdeploy.train.plan.MAX_CLASS_WEIGHT_RATIO` times the median class's weight; a
    class missing from the scanned masks gets the largest weight, never 0).

    Args:
        dataset: a segmentation dataset; uses ``dataset.load_mask(i)`` when available (skips
            image decoding and augmentation), else ``dataset[i][1]``.
        num_classes: number of classes ``C``.
        ignore_index: label value that is not counted.
        max_items: scan only the first ``max_items`` items (for speed on large sets).

    Returns:
        (C,) float32 tensor with mean 1.

    Raises:
        DataError: if the scanned masks contain no labelled pixels at all.
    """
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    load_mask = getattr(dataset, "load_mask", None)
    masks = (load_mask(i) if load_mask is not None else dataset[i][1] for i in range(n))
    counts = label_counts(masks, num_classes, ignore_index)
    return weights_from_counts(counts, str(getattr(dataset, "root", type(dataset).__name__)))


def weights_from_counts(counts: Sequence[int], source: str) -> torch.Tensor:
    """The ``auto`` class weights of labelled pixels per class (see
    :func:`compute_class_weights`) as a float32 tensor; ``source`` names the data in errors."""
    if not np.asarray(counts).any():
        raise DataError(
            f"Dataset {source}: expected labelled pixels to compute class weights, found only "
            "ignored pixels."
        )
    weights = median_frequency_weights(np.asarray(counts), MAX_CLASS_WEIGHT_RATIO)
    return torch.tensor(weights, dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Train and validation sets from a TrainConfig
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """What :func:`build_training_data` gives the training loop.

    Attributes:
        train_set: the training set (random crops for segmentation folders).
        class_names: the class names, in class order.
        description: one line describing the data, for logs and the model card.
        summary: images, sizes, labels per class and ignored share of both splits.
        plan: every choice the user left open, fitted to this data (see
            :mod:`segdeploy.train.plan`); the training set already follows it.
    """

    train_set: Dataset
    class_names: tuple[str, ...]
    description: str
    summary: DataSummary
    plan: TrainingPlan


def build_training_data(
    config: TrainConfig, task: str, train_size: int, size_multiple: int = SIZE_MULTIPLE
) -> TrainingData:
    """The training set, class names, description, summary and plan, after the data checks.

    Synthetic items are rendered at the plan's size; segmentation folders give random square
    crops of the plan's size at their own scale; classification images are resized to it.
    ``train_size`` is the architecture's training size (synthetic default, classification
    ceiling). A data folder's training items are its ``train/`` folder when it has ``train/``
    and ``val/``, else all but the :data:`~segdeploy.data.folders.DEFAULT_VAL_FRACTION` held out
    with ``config.seed`` (the split :func:`~segdeploy.data.samples.labelled_images` finds
    again). Segmentation masks are read with ``config.mask_values``. Decoded items are kept in
    memory when the plan says they fit.

    Raises:
        DataError: before the first step, for data that cannot train: an empty split, masks
            that ignore what they should label (0/255 without ``--mask-values``), a declared
            class absent from the training or the validation items, classification splits
            with different class folders, and any unusable file.
    """
    if config.data == "synthetic":
        return _synthetic_data(config, task, train_size, size_multiple)
    layout = folder_layout(config.data, task, config.classes)
    files, folder = _folder_readers(config, layout.class_names, size_multiple)
    if layout.has_split:
        if layout.class_names is None:
            check_split_class_folders(layout.root)
        base = folder(layout.root / "train")
        train_indices = list(range(len(base)))
        val = files(layout.root / "val").summary()
        where = (str(layout.root / "train"), str(layout.root / "val"))
        held_out = ""
    else:
        base = folder(layout.root)
        train_indices, val_indices = split_indices(len(base), DEFAULT_VAL_FRACTION, config.seed)
        val = base.summary(val_indices)
        where = (
            f"{layout.root} (all but the {len(val_indices)} images held out for validation)",
            f"{layout.root} (the {len(val_indices)} images held out with seed {config.seed})",
        )
        held_out = f" ({len(val_indices)} held out)"
    train = base.summary(train_indices)
    check_every_class(train, "train", where[0])
    check_every_class(val, "val", where[1])
    sizes = [base.image_sizes[i] for i in train_indices]
    plan = plan_folder(
        task, _user_choices(config), sizes, size_multiple, train_size, train.per_class
    )
    base.set_training_size(int(plan.img_size.value))
    if plan.in_memory.value:
        base.keep_decoded(train_indices)
    train_set = base if layout.has_split else Subset(base, train_indices)
    # Absolute: the export gates find the folder again from the card, from any directory.
    summary = DataSummary(str(layout.root.resolve()), train, val, config.mask_values)
    return TrainingData(train_set, base.class_names, base.describe() + held_out, summary, plan)


def build_datasets(
    config: TrainConfig, task: str, size: int, size_multiple: int = SIZE_MULTIPLE
) -> tuple[Dataset, tuple[str, ...], str]:
    """The training set at image size ``size``, its class names and a one-line description of
    the data: :func:`build_training_data` with ``--img-size size``, less its summary and plan."""
    sized = dataclasses.replace(config, img_size=size)
    data = build_training_data(sized, task, size, size_multiple)
    return data.train_set, data.class_names, data.description


def _user_choices(config: TrainConfig) -> UserChoices:
    return UserChoices(
        config.img_size,
        config.batch_size,
        config.epochs,
        config.class_weights,
        config.cache_mb,
        config.time_budget_s,
        config.loss,
    )


def _folder_readers(
    config: TrainConfig, names: tuple[str, ...] | None, size_multiple: int
) -> tuple[Callable[[Path], Any], Callable[[Path], Any]]:
    """``(files, folder)``: open a folder as validated files (no augmentation, own size) and
    as the training dataset (sized later by the plan); ``names`` are the segmentation class
    names (None: classification)."""
    if names is None:
        # Validation images are read by labelled_images at their own size; this size only
        # satisfies the constructor until the plan sets the training size.
        placeholder = (size_multiple, size_multiple)
        files = functools.partial(ClassificationFiles, size=placeholder)
        return files, functools.partial(ClassificationFolder, size=placeholder, augment=True)
    common = {
        "num_classes": len(names),
        "class_names": names,
        "size_multiple": size_multiple,
        "mask_values": config.mask_values,
    }
    files = functools.partial(SegmentationFiles, **common)
    return files, functools.partial(SegmentationFolder, augment=True, **common)


def _synthetic_data(
    config: TrainConfig, task: str, train_size: int, size_multiple: int
) -> TrainingData:
    """The rendered training set, after refusing an empty training or validation split."""
    for option, count, use in (
        ("--train-samples", config.train_samples, "train on"),
        ("--val-samples", config.val_samples, "validate on (no epoch could be scored or kept)"),
    ):
        if count < 1:
            raise DataError(
                f"Synthetic data: {option} {count} leaves nothing to {use}; pass {option} 1 "
                "or more."
            )
    plan = plan_synthetic(
        config.img_size,
        config.batch_size,
        config.epochs,
        train_size,
        config.time_budget_s,
        config.loss,
    )
    hw = (int(plan.img_size.value),) * 2
    make = SyntheticRoadScenes if task == "segmentation" else SyntheticRoadCrops
    train_set = make(config.train_samples, hw, config.seed, size_multiple=size_multiple)
    train = uncounted_split(config.train_samples, hw)
    summary = DataSummary("synthetic", train, uncounted_split(config.val_samples, hw))
    return TrainingData(train_set, train_set.class_names, train_set.describe(), summary, plan)
