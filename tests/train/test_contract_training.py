"""Training measures what ``predict`` serves: one input contract from the training card on.

On real pixels (the texture and face sets): segmentation trains on crops at the data's own scale
and its reported validation equals evaluating the saved checkpoint image by image at each image's
own size; a classifier's card says ``fixed`` at the training size, so no padding enters its answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdeploy.core.card import ModelCard
from segdeploy.core.input_contract import InputContract
from segdeploy.core.metrics import IGNORE_INDEX, score_predictions
from segdeploy.data.folders import load_rgb, read_mask
from segdeploy.data.samples import labelled_images
from segdeploy.train.config import TrainConfig
from segdeploy.train.datasets import SegmentationFolder, build_datasets
from segdeploy.train.inference import TorchPredictor
from segdeploy.train.loop import train

TEXTURE_CLASSES = ("brick", "grass", "gravel", "coffee")


def _train(tmp_path: Path, arch: str, data: str, img_size: int, **extra):
    config = TrainConfig(
        arch=arch,
        data=data,
        variant="tiny" if arch == "unet" else None,
        epochs=1,
        batch_size=8,
        img_size=img_size,
        out=tmp_path / f"{arch}.pt",
        **extra,
    )
    return train(config)


# ---------------------------------------------------------------------------------------------
# Segmentation: validation equals evaluating the checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["texture_set", "synthetic"])
def test_reported_validation_equals_evaluating_the_checkpoint(tmp_path, request, source):
    data = "synthetic" if source == "synthetic" else str(request.getfixturevalue(source))
    result = _train(tmp_path, "unet", data, 32, train_samples=16, val_samples=6)
    card = result.card
    assert card.input == InputContract("pad")

    predictor = TorchPredictor.from_checkpoint(result.checkpoint)
    count = 6 if source == "synthetic" else None  # training validated on val_samples scenes
    items = labelled_images(predictor.card, data, "val", count, 0)
    if source == "texture_set":
        # the set holds sizes that are neither square nor multiples of 16
        assert {(97, 131), (200, 300)} <= {item.pixels.shape[:2] for item in items}
    score = score_predictions(
        ((predictor.predict(item.pixels), item.label) for item in items), "segmentation", 4
    )
    validation = card.training["validation"]
    assert abs(result.best_metric - score.metric) <= 1e-9
    assert abs(validation["miou"] - score.metric) <= 1e-9
    assert validation["images"] == len(items) == score.images
    np.testing.assert_allclose(
        np.array(validation["per_class_iou"], dtype=float), score.per_class, atol=1e-9
    )
    assert abs(validation["pixel_accuracy"] - score.details["pixel_accuracy"]) <= 1e-9
    assert abs(validation["fw_iou"] - score.details["fw_iou"]) <= 1e-9


# ---------------------------------------------------------------------------------------------
# Segmentation: training crops are windows of the original pixels
# ---------------------------------------------------------------------------------------------


def _find_window(original: np.ndarray, window: np.ndarray) -> list[tuple[int, int]]:
    """Every (top, left) where ``window`` sits in ``original`` pixel for pixel."""
    size_h, size_w = window.shape[:2]
    reachable = original[: original.shape[0] - size_h + 1, : original.shape[1] - size_w + 1]
    candidates = np.argwhere((reachable == window[0, 0]).all(axis=-1))
    return [
        (int(top), int(left))
        for top, left in candidates
        if np.array_equal(original[top : top + size_h, left : left + size_w], window)
    ]


def _raw_item(folder: SegmentationFolder, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Item ``index`` back as uint8 pixels (the folder normalises with mean 0 and std 1)."""
    image, mask = folder[index]
    pixels = np.rint(image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return pixels, mask.numpy()


@pytest.mark.parametrize("crop", [32, 112])
def test_training_crops_are_windows_of_the_original_pixels(texture_set, crop):
    folder = SegmentationFolder(
        texture_set / "train", 4, mean=(0, 0, 0), std=(1, 1, 1), crop=(crop, crop)
    )
    torch.manual_seed(0)
    for index in range(4):  # 97x131, 200x300, 64x64, 120x90
        pixels, mask = _raw_item(folder, index)
        assert pixels.shape == (crop, crop, 3) and mask.shape == (crop, crop)
        original = load_rgb(folder.samples[index][0])
        original_mask = read_mask(folder.samples[index][1])
        height, width = original_mask.shape
        # smaller than the crop: reflect-padded image, mask padded with ignore
        pad = ((0, max(0, crop - height)), (0, max(0, crop - width)))
        padded = np.pad(original, (*pad, (0, 0)), mode="reflect")
        padded_mask = np.pad(original_mask, pad, constant_values=IGNORE_INDEX)
        spots = _find_window(padded, pixels)
        assert any(
            np.array_equal(padded_mask[t : t + crop, x : x + crop], mask) for t, x in spots
        ), f"item {index} is not a window of its image"
        assert ((mask == IGNORE_INDEX).any()) == (height < crop or width < crop)


def test_folder_training_items_are_crops_at_the_training_size(texture_set):
    config = TrainConfig(arch="unet", data=str(texture_set))
    train_set, names, description = build_datasets(config, "segmentation", 48)
    assert names == TEXTURE_CLASSES and "random 48x48 crops" in description
    sizes = {tuple(train_set[i][0].shape) for i in range(6)}
    assert sizes == {(3, 48, 48)}


def test_unsplit_folder_trains_on_what_validation_does_not_score(texture_set):
    config = TrainConfig(arch="unet", data=str(texture_set / "train"), classes=TEXTURE_CLASSES)
    train_set, _, _ = build_datasets(config, "segmentation", 32)
    trained = {str(train_set.dataset.samples[i][0]) for i in train_set.indices}
    card = ModelCard(arch="unet", task="segmentation", class_names=TEXTURE_CLASSES)
    validated = {item.name for item in labelled_images(card, config.data, "val", None, 0)}
    assert validated and trained and not trained & validated
    assert len(trained | validated) == len(train_set.dataset)


# ---------------------------------------------------------------------------------------------
# Classification: resized to the training size, never padded
# ---------------------------------------------------------------------------------------------


def test_classifier_card_is_fixed_and_ignores_padding(tmp_path, face_set):
    result = _train(tmp_path, "resnet18", str(face_set), 32)
    assert result.card.input == InputContract("fixed", (32, 32))
    predictor = TorchPredictor.from_checkpoint(result.checkpoint)
    assert predictor.card.input == InputContract("fixed", (32, 32))

    face = load_rgb(next((face_set / "face").iterdir()))  # 25x25
    small = np.asarray(Image.fromarray(face).resize((17, 17), Image.Resampling.BILINEAR))
    resized = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(predictor.logits(small), predictor.logits(resized))
    assert predictor.predict(small)[0] == predictor.predict(resized)[0]

    # and training's reported accuracy is evaluating the checkpoint on the held-out share
    items = labelled_images(predictor.card, str(face_set), "val", None, 0)
    names = predictor.card.class_names
    pairs = ((names.index(predictor.predict(item.pixels)[0]), item.label) for item in items)
    score = score_predictions(pairs, "classification", 2)
    assert abs(result.best_metric - score.metric) <= 1e-9
    assert result.card.training["validation"]["images"] == len(items)
