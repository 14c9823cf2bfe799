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
* **Epochs**: from the time budget (below). :func:`fit_epochs` (about :data:`TARGET_STEPS`
  optimiser steps, :data:`MIN_FITTED_EPOCHS` to :data:`MAX_FITTED_EPOCHS`) only sizes the
  warm-up of the first epochs, before the budget has fixed the count.
* **Class weights** (segmentation folders): ``auto``, median-frequency weights clipped to
  ``[1/MAX_CLASS_WEIGHT_RATIO, MAX_CLASS_WEIGHT_RATIO]`` of the median
  (:func:`~segdeploy.data.class_weights.median_frequency_weights`): a rare class is not drowned,
  and a class with a handful of pixels cannot blow the loss up.
* **Decoded data in memory** when it fits ``--cache-mb`` (each file decoded once); DataLoader
  worker processes otherwise.
* **Time budget** (folders without ``--epochs``): ``--time`` or :data:`DEFAULT_TIME_BUDGET_S`.
  The loop times the first two epochs (training and validation; the first carries one-off
  warm-up work), then fixes the epoch count so the
  warm-up + cosine schedule ends when the budget does (at most :data:`MAX_BUDGET_EPOCHS`), and
  stops early on a plateau (:func:`plateau_patience`). ``--epochs`` wins over any budget.
* **Loss** (segmentation folders): cross-entropy + Dice when a class holds less than
  :data:`RARE_CLASS_SHARE` of the labelled training pixels (Dice scores each class's overlap
  whatever its size, so a rare class weighs as much as the background), plain cross-entropy
  otherwise.

Synthetic data keeps its fixed defaults (:data:`SYNTHETIC_EPOCHS`, :data:`SYNTHETIC_BATCH`, the
architecture's training size, no class weights): its size is whatever ``--train-samples`` says.

This module is torch-free: it decides from numbers, the training package applies the decisions.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from segdeploy.core.errors import SegdeployError

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
#: Training time of a folder run given neither ``--epochs`` nor ``--time``. The fixed plan of
#: about 1000 steps stopped issue 21's rare-class folder after 5.5 min at mIoU 0.53 still
#: climbing; 10 min doubles that on the same CPU, and the plateau stop ends runs that have
#: converged sooner.
DEFAULT_TIME_BUDGET_S = 600
#: Budgeted runs train at most this many epochs (a tiny folder in a long budget).
MAX_BUDGET_EPOCHS = 200
#: A budgeted run may overrun its budget by this share (one epoch's timing noise); an epoch
#: that would end past it is not started.
BUDGET_SLACK = 0.10
#: Plateau: stop when the last ``plateau_patience`` epochs beat the best before them by less
#: than this (mIoU or accuracy, 0-1).
PLATEAU_MIN_DELTA = 0.002
PLATEAU_MIN_EPOCHS = 5
PLATEAU_FRACTION = 0.2
#: A segmentation class under this share of labelled training pixels is rare: ce+dice.
RARE_CLASS_SHARE = 0.02
#: Synthetic data keeps the loss of its fixed recipe.
SYNTHETIC_LOSS = "ce+dice"
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}


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
    #: Seconds (``"none"``: the epoch count is fixed); see :data:`DEFAULT_TIME_BUDGET_S`.
    time_budget: PlanChoice = PlanChoice("none", "fixed epoch count")
    loss: PlanChoice = PlanChoice(SYNTHETIC_LOSS, "default")

    @property
    def budget_s(self) -> float | None:
        """The time budget in seconds, ``None`` when the epoch count is fixed."""
        value = self.time_budget.value
        return None if value == "none" else float(value)

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
            ("time_budget", self.time_budget),
            ("loss", self.loss),
        ]


def parse_duration(text: str | float | int) -> float:
    """Seconds of a duration: ``"90"`` or ``"90s"``, ``"5m"``, ``"1.5h"`` (a number: seconds).

    Raises:
        SegdeployError: not a positive number with an optional unit s, m or h.
    """
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        raw = text.strip().lower()
        unit = _DURATION_UNITS.get(raw[-1:])
        number = raw[:-1] if unit else raw
        try:
            seconds = float(number) * (unit or 1)
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise SegdeployError(
            f"--time must be a positive duration such as 90s, 5m or 1.5h, found {text!r}"
        )
    return seconds


def budget_epochs(budget_s: float, elapsed_s: float, epoch_s: float, done: int) -> int:
    """The epoch count that ends a run of ``budget_s`` seconds: ``done`` epochs in ``elapsed_s``
    (setup included), each further one taking ``epoch_s``; between ``done`` and
    :data:`MAX_BUDGET_EPOCHS`."""
    more = int((budget_s - elapsed_s) // max(epoch_s, 1e-9))
    return max(done, min(MAX_BUDGET_EPOCHS, done + more))


def plateau_patience(epochs: int) -> int:
    """Epochs without an improvement of :data:`PLATEAU_MIN_DELTA` that end a budgeted run:
    :data:`PLATEAU_FRACTION` of its epochs, at least :data:`PLATEAU_MIN_EPOCHS`."""
    return max(PLATEAU_MIN_EPOCHS, math.ceil(PLATEAU_FRACTION * epochs))


def on_plateau(metrics: Sequence[float], patience: int) -> bool:
    """Whether the last ``patience`` of ``metrics`` (one per epoch) failed to beat the best of
    the epochs before them by :data:`PLATEAU_MIN_DELTA`."""
    if len(metrics) <= patience:
        return False
    before = max(metrics[:-patience])
    return max(metrics[-patience:]) < before + PLATEAU_MIN_DELTA


def fit_loss(class_pixels: Mapping[str, int] | None) -> PlanChoice:
    """``ce+dice`` when a class holds under :data:`RARE_CLASS_SHARE` of the labelled pixels
    ``class_pixels`` (class name -> count), else ``ce``; ``None`` (uncounted): ``ce+dice``."""
    if not class_pixels:
        return PlanChoice("ce+dice", "labelled pixels not counted")
    total = sum(class_pixels.values()) or 1
    shares = {name: count / total for name, count in class_pixels.items()}
    rare = [f"{name} {share:.1%}" for name, share in shares.items() if share < RARE_CLASS_SHARE]
    limit = f"{RARE_CLASS_SHARE:.0%} of labelled pixels"
    if rare:
        return PlanChoice("ce+dice", f"rare classes under {limit}: {', '.join(rare)}")
    return PlanChoice(
        "ce", f"every class holds at least {limit} (smallest {min(shares.values()):.1%})"
    )


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
    img_size: int | None,
    batch_size: int | None,
    epochs: int | None,
    default_size: int,
    time_s: float | None = None,
    loss: str | None = None,
) -> TrainingPlan:
    """Synthetic data: the fixed defaults where not given (see the module notes); a budget
    only with ``--time`` (and no ``--epochs``)."""
    fixed = "synthetic default"
    if time_s and not epochs:
        return dataclasses.replace(
            plan_synthetic(img_size, batch_size, None, default_size, None, loss),
            epochs=_budget_epochs_choice(time_s),
            time_budget=PlanChoice(round(time_s, 3), "--time"),
        )
    return TrainingPlan(
        img_size=given(img_size, "--img-size") if img_size else PlanChoice(default_size, fixed),
        batch_size=given(batch_size, "--batch-size")
        if batch_size
        else PlanChoice(SYNTHETIC_BATCH, fixed),
        epochs=given(epochs, "--epochs") if epochs else PlanChoice(SYNTHETIC_EPOCHS, fixed),
        class_weights=PlanChoice("none", fixed),
        in_memory=PlanChoice(False, "rendered on the fly"),
        loader_workers=0,
        time_budget=PlanChoice("none", "--epochs" if epochs else "synthetic default epochs"),
        loss=given(loss, "--loss") if loss else PlanChoice(SYNTHETIC_LOSS, fixed),
    )


def _budget_epochs_choice(time_s: float) -> PlanChoice:
    """The provisional epoch count of a budgeted run (the loop fixes it after epoch 1)."""
    reason = f"fitted to the {time_s:g} s budget after timing epoch 1 (at most this many)"
    return PlanChoice(MAX_BUDGET_EPOCHS, reason)


def _budget(user: UserChoices) -> tuple[PlanChoice, PlanChoice | None]:
    """``(time_budget, epochs)``: ``--epochs`` wins (no budget); else ``--time`` or the
    default budget, with the provisional epoch count."""
    if user.epochs:
        reason = "--epochs given" + (" (it wins over --time)" if user.time_s else "")
        return PlanChoice("none", reason), None
    if user.time_s:
        return PlanChoice(round(user.time_s, 3), "--time"), _budget_epochs_choice(user.time_s)
    reason = (
        f"default: twice the {TARGET_STEPS}-step plan's 5.5 min that left issue 21's rare-class "
        "folder still improving; a plateau ends it sooner"
    )
    seconds = DEFAULT_TIME_BUDGET_S
    return PlanChoice(seconds, reason), _budget_epochs_choice(seconds)


@dataclass(frozen=True)
class UserChoices:
    """What the user gave (``None``: fit it): the open fields of a ``TrainConfig``."""

    img_size: int | None
    batch_size: int | None
    epochs: int | None
    class_weights: str | None
    cache_mb: int
    time_s: float | None = None
    loss: str | None = None


def plan_folder(
    task: str,
    user: UserChoices,
    image_sizes: Sequence[tuple[int, int]],
    size_multiple: int,
    train_size: int,
    class_pixels: Mapping[str, int] | None = None,
) -> TrainingPlan:
    """A data folder's plan from its training images' ``(height, width)`` and, segmentation,
    its labelled training pixels per class (see module notes)."""
    shorter = [min(h, w) for h, w in image_sizes]
    if user.img_size:
        img_size = given(user.img_size, "--img-size")
    elif task == "segmentation":
        img_size = fit_crop_size(shorter, size_multiple)
    else:
        img_size = fit_resize(shorter, size_multiple, train_size)
    items = len(image_sizes)
    batch = given(user.batch_size, "--batch-size") if user.batch_size else fit_batch_size(items)
    time_budget, budget_epochs_choice = _budget(user)
    epochs = given(user.epochs, "--epochs") if user.epochs else budget_epochs_choice
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
    if user.loss:
        loss = given(user.loss, "--loss")
    elif task == "segmentation":
        loss = fit_loss(class_pixels)
    else:
        loss = PlanChoice("ce", "classification")
    return TrainingPlan(img_size, batch, epochs, weights, in_memory, workers, time_budget, loss)
