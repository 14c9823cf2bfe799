"""labelled_samples: the validation items training used, normalised, without torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.preprocess import normalise
from segdeploy.data.folders import DEFAULT_VAL_FRACTION, split_indices
from segdeploy.data.samples import labelled_samples
from segdeploy.data.synthetic import (
    ROAD_CLASSES,
    VALIDATION_SEED_OFFSET,
    render_road_crop,
    render_road_scene,
)

SEGMENTER = ModelCard(arch="unet", task="segmentation", class_names=ROAD_CLASSES)
CLASSIFIER = ModelCard(arch="resnet18", task="classification", class_names=ROAD_CLASSES)


def test_synthetic_segmentation_samples_are_the_validation_scenes() -> None:
    images, masks = labelled_samples(SEGMENTER, "synthetic", 3, 32, seed=4)
    scenes = [render_road_scene(i, 32, 32, seed=4 + VALIDATION_SEED_OFFSET) for i in range(3)]
    expected = normalise(np.stack([image for image, _ in scenes]), SEGMENTER.mean, SEGMENTER.std)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.float32
    np.testing.assert_array_equal(images, expected)
    assert masks.shape == (3, 32, 32) and masks.dtype == np.int64
    np.testing.assert_array_equal(masks, np.stack([mask for _, mask in scenes]))


def test_synthetic_classification_samples_are_the_validation_crops() -> None:
    images, labels = labelled_samples(CLASSIFIER, "synthetic", 5, 16, seed=0)
    crops = [render_road_crop(i, 16, 16, seed=VALIDATION_SEED_OFFSET) for i in range(5)]
    assert images.shape == (5, 3, 16, 16)
    np.testing.assert_array_equal(labels, [label for _, label in crops])
    assert labels.dtype == np.int64


def test_card_normalisation_and_size_multiple_apply() -> None:
    card = SEGMENTER.replace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size_multiple=32)
    with pytest.raises(SegdeployError, match="multiples of 32"):
        labelled_samples(card, "synthetic", 1, 48, seed=0)
    images, _ = labelled_samples(card, "synthetic", 1, 32, seed=0)
    raw = render_road_scene(0, 32, 32, seed=VALIDATION_SEED_OFFSET)[0]
    np.testing.assert_allclose(images[0].transpose(1, 2, 0) * 255, raw, atol=1e-3)


def test_classes_that_differ_from_the_card_are_refused() -> None:
    card = SEGMENTER.replace(class_names=("a", "b", "c", "d"))
    with pytest.raises(DataError, match="differ from the model's"):
        labelled_samples(card, "synthetic", 2, 32, seed=0)


def _write_pairs(root: Path, count: int, seed: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        image, mask = render_road_scene(i, 32, 32, seed=seed)
        Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"{i:02d}.png")


def _scene_masks(indices: list[int], seed: int) -> np.ndarray:
    return np.stack([render_road_scene(i, 32, 32, seed=seed)[1] for i in indices])


def test_folder_with_val_uses_its_first_items(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "train", 2, seed=1)
    _write_pairs(tmp_path / "val", 4, seed=2)
    images, masks = labelled_samples(SEGMENTER, str(tmp_path), 3, 32, seed=0)
    assert images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(masks, _scene_masks([0, 1, 2], seed=2))


def test_unsplit_folder_uses_the_held_out_share(tmp_path: Path) -> None:
    _write_pairs(tmp_path, 10, seed=3)
    _, masks = labelled_samples(SEGMENTER, str(tmp_path), 5, 32, seed=9)
    _, held_out = split_indices(10, DEFAULT_VAL_FRACTION, seed=9)
    assert len(masks) == len(held_out) == 2  # fewer than asked: all there is
    np.testing.assert_array_equal(masks, _scene_masks(held_out, seed=3))


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        labelled_samples(SEGMENTER, str(tmp_path / "absent"), 1, 32, seed=0)
