"""labelled_images: the items training validated on, at their own size, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError
from segdeploy.data.folders import DEFAULT_VAL_FRACTION, split_indices
from segdeploy.data.samples import card_seed, labelled_images
from segdeploy.data.synthetic import (
    ROAD_CLASSES,
    VALIDATION_SEED_OFFSET,
    render_road_crop,
    render_road_scene,
)

SEGMENTER = ModelCard(
    arch="unet", task="segmentation", class_names=ROAD_CLASSES, training={"img_size": 32}
)
CLASSIFIER = ModelCard(
    arch="resnet18", task="classification", class_names=ROAD_CLASSES, training={"img_size": 16}
)


def test_synthetic_segmentation_items_are_the_validation_scenes() -> None:
    items = labelled_images(SEGMENTER, "synthetic", "val", 3, seed=4)
    scenes = [render_road_scene(i, 32, 32, seed=4 + VALIDATION_SEED_OFFSET) for i in range(3)]
    assert [item.name for item in items] == [f"synthetic:10004:{i}" for i in range(3)]
    for item, (image, mask) in zip(items, scenes, strict=True):
        np.testing.assert_array_equal(item.pixels, image)
        np.testing.assert_array_equal(item.label, mask)


def test_synthetic_classification_items_are_the_validation_crops() -> None:
    items = labelled_images(CLASSIFIER, "synthetic", "val", 5, seed=0)
    crops = [render_road_crop(i, 16, 16, seed=VALIDATION_SEED_OFFSET) for i in range(5)]
    assert items[0].pixels.shape == (16, 16, 3)
    assert [item.label for item in items] == [label for _, label in crops]


def test_the_training_split_is_rendered_from_the_seed_itself() -> None:
    items = labelled_images(SEGMENTER, "synthetic", "train", 2, seed=4)
    np.testing.assert_array_equal(items[1].pixels, render_road_scene(1, 32, 32, seed=4)[0])


def test_classes_that_differ_from_the_card_are_refused(tmp_path: Path) -> None:
    for name in ("cat", "dog"):  # a classification folder's sub-folders are its classes
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(DataError, match="differ from the model's"):
        labelled_images(CLASSIFIER, str(tmp_path), "val")


def test_the_seed_comes_from_the_card() -> None:
    assert card_seed(SEGMENTER) == 0
    assert card_seed(SEGMENTER.replace(training={"seed": 3})) == 3


def _write_pairs(root: Path, count: int, seed: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, mask = render_road_scene(i, 32, 32, seed=seed)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"{i:02d}.png")


def _scene_masks(indices: list[int], seed: int) -> list[np.ndarray]:
    return [render_road_scene(i, 32, 32, seed=seed)[1] for i in indices]


def test_folder_with_val_uses_its_first_items(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "train", 2, seed=1)
    _write_pairs(tmp_path / "val", 4, seed=2)
    items = labelled_images(SEGMENTER, str(tmp_path), "val", 3, seed=0)
    np.testing.assert_array_equal([i.label for i in items], _scene_masks([0, 1, 2], seed=2))


def test_unsplit_folder_uses_the_held_out_share(tmp_path: Path) -> None:
    _write_pairs(tmp_path, 10, seed=3)
    items = labelled_images(SEGMENTER, str(tmp_path), "val", 5, seed=9)
    train, held_out = split_indices(10, DEFAULT_VAL_FRACTION, seed=9)
    assert len(items) == len(held_out) == 2  # fewer than asked: all there is
    np.testing.assert_array_equal([i.label for i in items], _scene_masks(held_out, seed=3))
    trained = labelled_images(SEGMENTER, str(tmp_path), "train", None, seed=9)
    assert len(trained) == len(train) == 8
    assert not {i.name for i in trained} & {i.name for i in items}


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        labelled_images(SEGMENTER, str(tmp_path / "absent"), "val")
