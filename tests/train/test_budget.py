"""The time budget and the fitted loss of the training plan (issue 21)."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import SegdeployError
from segdeploy.train.plan import (
    BUDGET_SLACK,
    DEFAULT_TIME_BUDGET_S,
    MAX_BUDGET_EPOCHS,
    UserChoices,
    budget_epochs,
    on_plateau,
    parse_duration,
    plan_folder,
)

SIZES = [(100, 120)] * 8


def _user(**given) -> UserChoices:
    values = {"img_size": None, "batch_size": None, "epochs": None, "class_weights": None}
    return UserChoices(**{**values, "cache_mb": 2048, **given})


def test_rare_classes_get_ce_plus_dice_and_balanced_ones_ce() -> None:
    rare = {"background": 9_000, "road": 900, "sign": 100}  # sign: 1 % of labelled pixels
    plan = plan_folder("segmentation", _user(), SIZES, 16, 128, rare)
    assert plan.loss.value == "ce+dice"
    assert "sign 1.0%" in plan.loss.reason and "road" not in plan.loss.reason
    balanced = {"background": 500, "road": 300, "sign": 200}
    assert plan_folder("segmentation", _user(), SIZES, 16, 128, balanced).loss.value == "ce"
    assert plan_folder("classification", _user(), SIZES, 16, 128).loss.value == "ce"
    given = plan_folder("segmentation", _user(loss="dice"), SIZES, 16, 128, rare).loss
    assert (given.value, given.reason) == ("dice", "--loss")


def test_a_folder_with_a_rare_class_is_planned_ce_plus_dice(texture_set, tmp_path) -> None:
    from segdeploy.train.config import TrainConfig
    from segdeploy.train.datasets import build_training_data

    def plan_of(folder):
        return build_training_data(TrainConfig("unet", data=str(folder)), "segmentation", 128).plan

    assert plan_of(texture_set).loss.value == "ce"  # four textures, each 20-34 % of pixels
    copy = shutil.copytree(texture_set, tmp_path / "rare")
    names = (copy / "classes.txt").read_text().split()
    (copy / "classes.txt").write_text("\n".join([*names, "marking"]) + "\n")
    for split in ("train", "val"):  # a 6x6 marking in one mask of each split
        mask_path = sorted((copy / split / "masks").glob("*.png"))[0]
        with Image.open(mask_path) as im:
            mask = np.array(im)  # palette or grey: the class indices either way
        mask[:6, :6] = len(names)
        Image.fromarray(mask).save(mask_path)
    plan = plan_of(copy)
    assert plan.loss.value == "ce+dice" and "marking" in plan.loss.reason
    assert plan.to_dict()["loss"]["value"] == "ce+dice"


def test_durations_parse_with_units_and_refuse_nonsense() -> None:
    assert [parse_duration(t) for t in ("20s", "5m", "1.5h", "90", " 2M ")] == [
        20,
        300,
        5400,
        90,
        120,
    ]
    for bad in ("", "m", "-5m", "5 minutes", "0s", "nan"):
        with pytest.raises(SegdeployError, match="--time"):
            parse_duration(bad)


def test_the_budget_is_the_default_and_epochs_win() -> None:
    plan = plan_folder("segmentation", _user(), SIZES, 16, 128, {"a": 1, "b": 1})
    assert plan.budget_s == DEFAULT_TIME_BUDGET_S and plan.epochs.value == MAX_BUDGET_EPOCHS
    timed = plan_folder("segmentation", _user(time_s=20.0), SIZES, 16, 128)
    assert timed.budget_s == 20.0 and timed.time_budget.reason == "--time"
    both = plan_folder("segmentation", _user(time_s=20.0, epochs=3), SIZES, 16, 128)
    assert both.budget_s is None and both.epochs.value == 3
    assert "wins over --time" in both.time_budget.reason


def test_budget_epochs_and_plateau() -> None:
    assert budget_epochs(60, elapsed_s=12, epoch_s=10, done=1) == 5  # 48 s left: 4 more
    assert budget_epochs(60, elapsed_s=70, epoch_s=10, done=2) == 2  # over: none more
    assert budget_epochs(1e9, elapsed_s=1, epoch_s=1, done=1) == MAX_BUDGET_EPOCHS
    assert not on_plateau([0.1, 0.2, 0.3, 0.4], patience=2)
    assert on_plateau([0.1, 0.5, 0.5, 0.501], patience=2)
    assert not on_plateau([0.5, 0.5], patience=2)  # not enough epochs to tell


@pytest.mark.slow  # a 20 s budget
def test_a_timed_run_ends_within_its_budget_and_records_it(tmp_path) -> None:
    from real_pixels import write_texture_segmentation

    from segdeploy.train import TrainConfig, train

    data = write_texture_segmentation(tmp_path / "textures", train=12, val=6)
    config = TrainConfig("unet", data=str(data), variant="tiny", time_budget_s=20.0)
    config.out = tmp_path / "unet.pt"
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    # Stated slack: BUDGET_SLACK of the budget, plus the epoch under way when the estimate
    # of the next one was too short (well under 5 s for the tiny U-Net on 12 images).
    assert seconds <= 20.0 * (1 + BUDGET_SLACK) + 5.0
    budget = result.card.training["budget"]
    assert budget["seconds"] == 20.0
    assert budget["epochs_run"] == len(result.history) >= 2
    assert budget["steps_run"] == budget["epochs_run"] * 3  # 12 images, batch 4
    plan = result.card.training["plan"]
    assert plan["time_budget"]["value"] == 20.0
    assert plan["epochs"]["value"] == budget["epochs_planned"] == result.card.training["epochs"]
