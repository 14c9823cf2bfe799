"""Data checks before the first step, on real pixels: 0/255 masks, missing classes, splits.

The binary set is the texture set (real photographs, odd sizes, JPEG and PNG) with its masks
saved the usual way for one object: 0 for background, 255 for the coffee texture.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError
from segdeploy.data.folders import read_mask
from segdeploy.data.samples import MASK_VALUES_KEY, labelled_images
from segdeploy.train.config import TrainConfig
from segdeploy.train.datasets import build_datasets, build_training_data
from segdeploy.train.loop import train

pytest.importorskip("skimage")
from real_pixels import (
    TEXTURE_CLASSES,
    write_face_classification,
    write_texture_segmentation,
)

BINARY = ("background", "object")


def _remap_masks(root: Path, mapping: dict[int, int]) -> None:
    """Rewrite every mask under ``root`` with ``mapping`` (old value -> new), as mode L PNGs."""
    for path in root.rglob("masks/*.png"):
        mask = read_mask(path)
        out = mask.copy()
        for old, new in mapping.items():
            out[mask == old] = new
        Image.fromarray(out, "L").save(path)


@pytest.fixture(scope="module")
def binary_set(tmp_path_factory) -> Path:
    """Texture scenes whose masks hold 0 (brick, grass, gravel) and 255 (coffee)."""
    root = write_texture_segmentation(tmp_path_factory.mktemp("binary"), train=8, val=4)
    _remap_masks(root, {0: 0, 1: 0, 2: 0, 3: 255})
    (root / "classes.txt").unlink()
    return root


def _config(data: Path | str, img_size: int = 32, **extra) -> TrainConfig:
    return TrainConfig(arch="unet", data=str(data), variant="tiny", img_size=img_size, **extra)


# ---------------------------------------------------------------------------------------------
# 0/255 masks and --mask-values
# ---------------------------------------------------------------------------------------------


def test_binary_0_255_masks_are_refused_without_mask_values(binary_set):
    with pytest.raises(DataError) as caught:
        build_training_data(_config(binary_set, classes=BINARY), "segmentation", 32)
    message = str(caught.value)
    assert str(binary_set / "train" / "masks") in message
    assert "255 is the ignore label" in message and "'object'" in message
    assert "pass --mask-values 0,255" in message


def test_mask_values_map_0_255_to_classes_for_training_and_evaluation(binary_set):
    config = _config(binary_set, classes=BINARY, mask_values=(0, 255))
    data = build_training_data(config, "segmentation", 32)
    assert data.class_names == BINARY
    for split in (data.summary.train, data.summary.val):
        assert split.per_class["background"] > 0 and split.per_class["object"] > 0
        assert split.ignored_share == 0.0
    masks = [data.train_set.load_mask(i) for i in range(len(data.train_set))]
    assert set(np.unique(np.concatenate([m.ravel() for m in masks]))) == {0, 1}
    # evaluate and the gates read the masks the same way from the card
    card = ModelCard(arch="unet", task="segmentation", class_names=BINARY)
    card.training[MASK_VALUES_KEY] = [0, 255]
    labels = [item.label for item in labelled_images(card, str(binary_set), "val")]
    assert set(np.unique(np.concatenate([m.ravel() for m in labels]))) == {0, 1}
    # a card without the key reads raw values (refused); the keyword gives the mapping
    plain = ModelCard(arch="unet", task="segmentation", class_names=BINARY)
    with pytest.raises(DataError, match="--mask-values 0,255"):
        labelled_images(plain, str(binary_set), "val")
    items = labelled_images(plain, str(binary_set), "val", mask_values=(0, 255))
    same = labelled_images(card, str(binary_set), "val")
    assert all(np.array_equal(a.label, b.label) for a, b in zip(items, same, strict=True))


def test_training_on_0_255_masks_learns_and_scores_both_classes(binary_set, tmp_path):
    config = _config(binary_set, 64, classes=BINARY, mask_values=(0, 255), epochs=4)
    config.batch_size, config.out = 4, tmp_path / "binary.pt"
    card = train(config).card
    assert card.training[MASK_VALUES_KEY] == [0, 255]
    validation = card.training["validation"]
    iou = validation["per_class_iou"]
    assert len(iou) == 2 and all(value is not None for value in iou)
    assert iou[1] > 0.5  # the object is learned (it is coffee among grey textures)
    assert validation["miou"] < 1.0


def test_unlisted_mask_value_is_refused_naming_the_file(binary_set, tmp_path):
    root = shutil.copytree(binary_set, tmp_path / "odd")
    bad = sorted((root / "val" / "masks").glob("*.png"))[1]
    mask = read_mask(bad)
    mask[0, 0] = 128
    Image.fromarray(mask, "L").save(bad)
    config = _config(root, classes=BINARY, mask_values=(0, 255))
    with pytest.raises(DataError, match=rf"Mask {bad}: expected the values 0, 255 .* found 128"):
        build_training_data(config, "segmentation", 32)


def test_mask_values_need_one_distinct_value_per_class(binary_set):
    for values in ((0,), (0, 255, 7), (0, 0)):
        config = _config(binary_set, classes=BINARY, mask_values=values)
        with pytest.raises(DataError, match="one distinct mask value per class"):
            build_datasets(config, "segmentation", 32)


# ---------------------------------------------------------------------------------------------
# Classes absent from a split
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_textures(tmp_path_factory) -> Path:
    return write_texture_segmentation(tmp_path_factory.mktemp("small"), train=6, val=4)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_class_absent_from_a_split_is_refused_naming_split_and_class(
    small_textures, tmp_path, split
):
    root = shutil.copytree(small_textures, tmp_path / "tex")
    _remap_masks(root / split, {2: 0})  # no gravel left in this split
    with pytest.raises(DataError) as caught:
        build_training_data(_config(root), "segmentation", 32)
    message = str(caught.value)
    head = "Training" if split == "train" else "Validation"
    assert message.startswith(f"{head} data {root / split} has no labelled pixel of class")
    assert "'gravel'" in message and not any(
        f"'{name}'" in message for name in TEXTURE_CLASSES if name != "gravel"
    )


def test_summary_describes_both_splits_from_the_checked_masks(small_textures):
    data = build_training_data(_config(small_textures), "segmentation", 32)
    summary = data.summary
    assert summary.train.images == 6 and summary.val.images == 4
    assert summary.train.min_size == (64, 64) and summary.train.max_size == (200, 300)
    train_pixels = 97 * 131 + 200 * 300 + 64 * 64 + 120 * 90 + 75 * 75 + 144 * 176
    assert sum(summary.train.per_class.values()) == train_pixels  # every pixel labelled
    assert list(summary.train.per_class) == list(TEXTURE_CLASSES)
    stored = json.loads(json.dumps(summary.to_dict()))
    assert stored["val"]["images"] == 4 and stored["train"]["ignored_share"] == 0.0
    assert "images 64x64..200x300" in summary.lines()[0]


# ---------------------------------------------------------------------------------------------
# Classification splits and empty splits
# ---------------------------------------------------------------------------------------------


def test_classification_splits_with_different_class_folders_are_refused(tmp_path):
    root = tmp_path / "faces"
    write_face_classification(root / "train", per_class=3)
    write_face_classification(root / "val", per_class=2)
    shutil.rmtree(root / "val" / "non_face")
    shutil.copytree(root / "val" / "face", root / "val" / "cat")
    config = TrainConfig(arch="resnet18", data=str(root), img_size=32)
    with pytest.raises(DataError) as caught:
        build_training_data(config, "classification", 32)
    message = str(caught.value)
    assert f"Dataset {root}: train/ and val/ must hold the same class folders" in message
    assert "val/ lacks non_face and has cat that train/ lacks" in message


@pytest.mark.parametrize("option", ["train_samples", "val_samples"])
def test_empty_synthetic_splits_are_refused_in_one_sentence(option):
    config = TrainConfig(arch="unet", img_size=32, **{option: 0})
    flag = "--" + option.replace("_", "-")
    with pytest.raises(DataError, match=rf"^Synthetic data: {flag} 0 leaves nothing to"):
        build_training_data(config, "segmentation", 32)


def test_empty_folder_splits_are_refused_naming_the_folder(small_textures, tmp_path):
    root = shutil.copytree(small_textures, tmp_path / "tex")
    for path in (root / "val" / "images").iterdir():
        path.unlink()
    for path in (root / "val" / "masks").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"expected image .* in {root / 'val' / 'images'}"):
        build_training_data(_config(root), "segmentation", 32)
    single = tmp_path / "single"
    (single / "images").mkdir(parents=True)
    (single / "masks").mkdir()
    for part in ("images", "masks"):  # scene 0 is a PNG image with a PNG mask
        shutil.copy(small_textures / "train" / part / "scene_000.png", single / part)
    with pytest.raises(DataError, match=r"need at least 2 samples .* found 1"):
        build_training_data(_config(single, classes=TEXTURE_CLASSES), "segmentation", 32)
