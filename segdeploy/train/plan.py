"""The training plan: what a run does when the user did not say, fitted to the data, and why.

``segdeploy train unet --data DIR`` must learn on a folder no one here wrote, without tuning
flags. Every choice the user leaves open is made here, from what the data checks already read
(image sizes, number of items, labelled pixels per class), and recorded with its reason: the
plan is printed before the first epoch and stored in the card (``training["plan"]``).

* **Image size** (segmentation folders): random crops at the data's own scale, never larger than
  most images (no up-scaling, no padding of most crops with ignored pixels): the largest multiple
  of the size multiple within the 25th percentile of the shorter sides, at most
  :data:`MAX_FITTED_CROP`. Classification folders: images resized to the median shorter side,
  rounded down to the size multiple, at most the architecture's training size.
* **Batch size**: about :data:`TARGET_STEPS_PER_EPOCH` steps per epoch, between
  :data:`MIN_FITTED_BATCH` and :data:`MAX_FITTED_BATCH`.
* **Epochs**: about :data:`TARGET_STEPS` optimiser steps in all, between :data:`MIN_FITTED_EPOCHS`
  and :data:`MAX_FITTED_EPOCHS` (small sets get more passes; the warm-up + cosine schedule is
  stretched over whatever the count is).
* **Class weights** (segmentation folders): ``auto``, median-frequency weights clipped to
  ``[1/MAX_CLASS_WEIGHT_RATIO, MAX_CLASS_WEIGHT_RATIO]`` of the median
  (:func:`~segdeploy.data.class_weights.median_frequency_weights`): a rare class is not drowned,
  and a class with a handful of pixels cannot blow the loss up.
* **Decoded data in memory** when it fits ``--cache-mb`` (each file decoded once); DataLoader
  worker processes otherwise.

Synthetic data keeps its fixed defaults (:data:`SYNTHETIC_EPOCHS`, :data:`SYNTHETIC_BATCH`, the
architecture's training size, no class weights): its size is whatever ``--train-samples`` says.

This module is torch-free: it decides from numbers, the training package applies the decisions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: Synthetic data: epochs and batch size when not given (what the README's demo timing measured).
SYNTHETIC_EPOCHS = 10
SYNTHETIC_BATCH = 16
#: Fitted crop sizes of segmentation folders stay at or below this side.
MAX_FITTED_CROP = 256
#: Fitted batch sizes aim at this many optimiser steps per epoch, within the bounds below.
TARGET_STEPS_PER_EPOCH = 20
MIN_FITTED_BATCH, MAX_FITTED_BATCH = 4, 16
#: Fitted epoch counts aim at this many optimiser steps in all, within the bounds below.
TARGET_STEPS = 1000
MIN_FITTED_EPOCHS, MAX_FITTED_EPOCHS = 8, 60
#: ``auto`` class weights stay within this factor of the median class's weight.
MAX_CLASS_WEIGHT_RATIO = 5.0
#: DataLoader workers when the decoded data does not fit the memory budget.
MAX_LOADER_WORKERS = 4


@dataclass(frozen=True)
class PlanChoice:
    """One decision: its value and why (``"--flag"`` when the user gave it)."""

    value: int | str | bool
    reason: str


@dataclass(frozen=True)
class TrainingPlan:
    """Every open choice of a run, with its reason (see the module notes)."""

    img_size: PlanChoice
    batch_size: PlanChoice
    epochs: PlanChoice
    class_weights: PlanChoice
    in_memory: PlanChoice
    loader_workers: int

    def lines(self) -> list[str]:
        """One line per choice, for the run's summary."""
        return [
            f"{name.replace('_', ' ')}: {choice.value} ({choice.reason})"
            for name, choice in self._choices()
        ]

    def to_dict(self) -> dict[str, dict[str, int | str | bool]]:
        """The card's ``training["plan"]`` entry."""
        return {name: asdict(choice) for name, choice in self._choices()}

    def _choices(self) -> list[tuple[str, PlanChoice]]:
        return [
            ("img_size", self.img_size),
            ("batch_size", self.batch_size),
            ("epochs", self.epochs),
            ("class_weights", self.class_weights),
            ("in_memory", self.in_memory),
        ]


def given(value: int | str, flag: str) -> PlanChoice:
    """A choice the user made with ``flag``."""
    return PlanChoice(value, f"{flag}")


def fit_crop_size(shorter_sides: Sequence[int], multiple: int) -> PlanChoice:
    """Segmentation crops: within the 25th percentile of the images' shorter sides, a multiple
    of ``multiple``, at most :data:`MAX_FITTED_CROP`, at least ``multiple``."""
    quartile = int(np.percentile(np.asarray(shorter_sides), 25))
    side = max(multiple, min(MAX_FITTED_CROP, quartile) // multiple * multiple)
    return PlanChoice(
        side, f"crops within 3/4 of the training images' shorter sides ({quartile} px and up)"
    )


def fit_resize(shorter_sides: Sequence[int], multiple: int, largest: int) -> PlanChoice:
    """Classification: the median shorter side, rounded down to ``multiple`` (at least one
    multiple), at most ``largest`` (the architecture's training size)."""
    median = int(np.median(np.asarray(shorter_sides)))
    side = max(multiple, min(largest, median // multiple * multiple))
    return PlanChoice(side, f"median shorter side {median} px, at most {largest}")


def fit_batch_size(train_items: int) -> PlanChoice:
    """About :data:`TARGET_STEPS_PER_EPOCH` steps per epoch."""
    batch = min(MAX_FITTED_BATCH, max(MIN_FITTED_BATCH, train_items // TARGET_STEPS_PER_EPOCH))
    return PlanChoice(batch, f"{train_items} training items, about {TARGET_STEPS_PER_EPOCH} steps")


def fit_epochs(train_items: int, batch_size: int) -> PlanChoice:
    """About :data:`TARGET_STEPS` optimiser steps over the run."""
    steps_per_epoch = max(1, train_items // batch_size)
    epochs = math.ceil(TARGET_STEPS / steps_per_epoch)
    epochs = min(MAX_FITTED_EPOCHS, max(MIN_FITTED_EPOCHS, epochs))
    return PlanChoice(epochs, f"{steps_per_epoch} steps per epoch, about {TARGET_STEPS} in all")


def fit_in_memory(decoded_bytes: int, budget_mb: int) -> tuple[PlanChoice, int]:
    """Keep the decoded data in memory when it fits ``budget_mb``; else worker processes.

    Returns the choice and the number of DataLoader workers (0 when in memory).
    """
    mb = decoded_bytes / 2**20
    if mb <= budget_mb:
        return PlanChoice(True, f"{mb:.0f} MB decoded, within --cache-mb {budget_mb}"), 0
    workers = min(MAX_LOADER_WORKERS, os.cpu_count() or 1)
    reason = f"{mb:.0f} MB decoded exceeds --cache-mb {budget_mb}: {workers} loader workers"
    return PlanChoice(False, reason), workers


def plan_synthetic(
    img_size: int | None, batch_size: int | None, epochs: int | None, default_size: int
) -> TrainingPlan:
    """Synthetic data: the fixed defaults where not given (see the module notes)."""
    fixed = "synthetic default"
    return TrainingPlan(
        img_size=given(img_size, "--img-size") if img_size else PlanChoice(default_size, fixed),
        batch_size=given(batch_size, "--batch-size")
        if batch_size
        else PlanChoice(SYNTHETIC_BATCH, fixed),
        epochs=given(epochs, "--epochs") if epochs else PlanChoice(SYNTHETIC_EPOCHS, fixed),
        class_weights=PlanChoice("none", fixed),
        in_memory=PlanChoice(False, "rendered on the fly"),
        loader_workers=0,
    )


@dataclass(frozen=True)
class UserChoices:
    """What the user gave (``None``: fit it): the open fields of a ``TrainConfig``."""

    img_size: int | None
    batch_size: int | None
    epochs: int | None
    class_weights: str | None
    cache_mb: int


def plan_folder(
    task: str,
    user: UserChoices,
    image_sizes: Sequence[tuple[int, int]],
    size_multiple: int,
    train_size: int,
) -> TrainingPlan:
    """A data folder's plan from its training images' ``(height, width)`` (see module notes)."""
    shorter = [min(h, w) for h, w in image_sizes]
    if user.img_size:
        img_size = given(user.img_size, "--img-size")
    elif task == "segmentation":
        img_size = fit_crop_size(shorter, size_multiple)
    else:
        img_size = fit_resize(shorter, size_multiple, train_size)
    items = len(image_sizes)
    batch = given(user.batch_size, "--batch-size") if user.batch_size else fit_batch_size(items)
    epochs = given(user.epochs, "--epochs") if user.epochs else fit_epochs(items, batch.value)
    if user.class_weights:
        weights = given(user.class_weights, "--class-weights")
    elif task == "segmentation":
        weights = PlanChoice("auto", f"median frequency, within {MAX_CLASS_WEIGHT_RATIO:g}x")
    else:
        weights = PlanChoice("none", "classification")
    side = int(img_size.value)
    if task == "segmentation":  # whole images and masks: 3 + 1 bytes a pixel
        decoded = sum(h * w * 4 for h, w in image_sizes)
    else:  # images resized to the training size
        decoded = items * side * side * 3
    in_memory, workers = fit_in_memory(decoded, user.cache_mb)
    return TrainingPlan(img_size, batch, epochs, weights, in_memory, workers)
