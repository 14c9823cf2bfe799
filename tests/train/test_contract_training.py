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
        img_size=img_size,
        out=tmp_path / f"{arch}.pt",
        **{"epochs": 1, "batch_size": 8, **extra},
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


# ---------------------------------------------------------------------------------------------
# A photograph over the tiling threshold: validated, evaluated and served as the same windows
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phone_photo_run(tmp_path_factory):
    """A tiny U-Net trained on small texture scenes and validated on one 2049 x 2071 real-pixel
    photograph (odd sides, 4.24 MP: over the runtime's 2048² tiling threshold)."""
    pytest.importorskip("skimage")
    from real_pixels import _save_pair, _textures, texture_scene, write_texture_segmentation

    folder = tmp_path_factory.mktemp("phone_photo")
    data = write_texture_segmentation(folder / "data", train=24, val=0)
    height, width = 2049, 2071
    textures = [np.pad(t, ((0, height), (0, width), (0, 0)), mode="reflect") for t in _textures()]
    image, mask = texture_scene(4, height, width, textures, seed=11)  # all 4 classes show
    _save_pair(data / "val", "phone", image, mask, 0)
    # 2 epochs of 6 steps (the texture recipe): masks that are not one class everywhere.
    return _train(folder, "unet", str(data), 64, epochs=2, batch_size=4, lr=5e-3), data


@pytest.mark.slow  # 2 epochs validating a 4.2 MP photo, and its export: 90-200 s on 2 shared cores
def test_validation_of_a_photo_over_the_tiling_threshold_is_what_predict_gets(
    phone_photo_run, tmp_path
):
    from segdeploy.export import export_checkpoint
    from segdeploy.runtime import open_model, tiling

    result, data = phone_photo_run
    (item,) = labelled_images(result.card, str(data), "val")
    assert item.pixels.shape[:2] == (2049, 2071)
    grid = tiling.card_grid(result.card, 2049, 2071)
    assert grid is not None and grid.windows == 25  # 512-pixel windows, 5 x 5

    def score(mask):
        return score_predictions([(mask, item.label)], "segmentation", 4)

    # The runtime's windows and blending over the checkpoint's own window logits:
    predictor = TorchPredictor.from_checkpoint(result.checkpoint)
    window_logits = lambda window: predictor.logits(window, max_pixels=None)  # noqa: E731
    tiled = tiling.tiled_mask(item.pixels, window_logits, 4, grid)
    validation = result.card.training["validation"]
    assert abs(validation["miou"] - score(tiled).metric) <= 1e-9
    np.testing.assert_allclose(validation["per_class_iou"], score(tiled).per_class, atol=1e-9)
    whole = predictor.predict(item.pixels, max_pixels=None)
    print(f"tiled vs whole: {(whole != tiled).mean():.5f} of pixels differ")
    assert (whole != tiled).any()  # so validating the whole image would report another number

    # ...and the export, through the runtime's predict, gets that mIoU.
    onnx_path = tmp_path / "unet.onnx"
    export_checkpoint(result.checkpoint, out=onnx_path, shapes=[(1, 32, 32)], providers=["cpu"])
    served = open_model(onnx_path, provider="cpu").predict(item.pixels)
    print(
        f"served vs tiled: {(served == tiled).mean():.6f} agree, mIoU "
        f"{score(served).metric:.9f} vs validation {validation['miou']:.9f}"
    )
    assert (served == tiled).mean() >= 0.9999
    # (validating the whole image instead reported 6.8e-6 more than predict gets)
    assert abs(score(served).metric - validation["miou"]) <= 1e-6
