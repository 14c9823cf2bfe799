"""The training plan: choices fitted to the data, recorded with their reasons."""

from __future__ import annotations

import shutil

import pytest
import torch

from segdeploy.train.config import TrainConfig
from segdeploy.train.datasets import build_training_data
from segdeploy.train.plan import (
    MAX_FITTED_CROP,
    MAX_FITTED_EPOCHS,
    MIN_FITTED_EPOCHS,
    UserChoices,
    fit_batch_size,
    fit_crop_size,
    fit_epochs,
    fit_in_memory,
    plan_folder,
)


def test_crop_never_upscales_most_images_and_stays_a_multiple() -> None:
    # Shorter sides of the texture set's sizes (tests/real_pixels.py SIZES).
    assert fit_crop_size([97, 200, 64, 90, 75, 144], 16).value == 64
    assert fit_crop_size([480] * 10, 16).value == MAX_FITTED_CROP  # large photos: crops
    assert fit_crop_size([20, 25, 30], 16).value == 16  # at least one multiple
    assert fit_crop_size([100, 100, 100], 32).value == 96


def test_small_sets_get_more_epochs_and_smaller_batches() -> None:
    assert fit_batch_size(48).value == 4 and fit_batch_size(160).value == 8
    assert fit_batch_size(10_000).value == 16
    assert fit_epochs(160, 8).value == 50  # 20 steps an epoch, 1000 steps
    assert fit_epochs(48, 4).value == MAX_FITTED_EPOCHS
    assert fit_epochs(100_000, 16).value == MIN_FITTED_EPOCHS


def test_data_over_the_memory_budget_uses_loader_workers() -> None:
    choice, workers = fit_in_memory(100 * 2**20, budget_mb=200)
    assert choice.value is True and workers == 0
    choice, workers = fit_in_memory(300 * 2**20, budget_mb=200)
    assert choice.value is False and workers >= 1 and "exceeds --cache-mb 200" in choice.reason


def test_given_values_win_and_say_so() -> None:
    user = UserChoices(img_size=32, batch_size=2, epochs=3, class_weights="none", cache_mb=0)
    plan = plan_folder("segmentation", user, [(100, 120)] * 8, 16, 128)
    assert plan.to_dict()["img_size"] == {"value": 32, "reason": "--img-size"}
    assert (plan.batch_size.value, plan.epochs.value, plan.class_weights.value) == (2, 3, "none")
    assert plan.in_memory.value is False  # --cache-mb 0


def test_folder_plan_is_applied_to_the_training_set(texture_set, tmp_path) -> None:
    data = build_training_data(TrainConfig("unet", data=str(texture_set)), "segmentation", 128)
    assert data.plan.img_size.value == 64 and data.plan.class_weights.value == "auto"
    assert data.plan.in_memory.value is True
    image, mask = data.train_set[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    assert "img size: 64 (crops within" in "\n".join(data.plan.lines())


def test_kept_data_is_decoded_once(texture_set, tmp_path) -> None:
    copy = shutil.copytree(texture_set, tmp_path / "copy")
    data = build_training_data(TrainConfig("unet", data=str(copy)), "segmentation", 128)
    shutil.rmtree(copy / "train" / "images")  # reading from disk now would fail
    torch.manual_seed(0)
    assert all(data.train_set[i][0].shape == (3, 64, 64) for i in range(len(data.train_set)))


def test_over_budget_data_is_read_from_disk(texture_set, tmp_path) -> None:
    copy = shutil.copytree(texture_set, tmp_path / "copy")
    config = TrainConfig("unet", data=str(copy), cache_mb=0)
    data = build_training_data(config, "segmentation", 128)
    assert data.plan.in_memory.value is False and data.plan.loader_workers >= 1
    shutil.rmtree(copy / "train" / "images")
    with pytest.raises(Exception, match="images"):
        data.train_set[0]
