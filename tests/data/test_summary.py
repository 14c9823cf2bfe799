"""The data summary and the mask-value mapping of the torch-free readers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import DataError
from segdeploy.data.checks import check_every_class
from segdeploy.data.folders import ClassificationFiles, SegmentationFiles, mask_value_table
from segdeploy.data.summary import DataSummary, classification_split, segmentation_split


def _pairs(root: Path, masks: list[np.ndarray]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        Image.new("RGB", mask.shape[::-1], (i * 40, 90, 200)).save(root / "images" / f"{i}.jpg")
        Image.fromarray(mask.astype(np.uint8), "L").save(root / "masks" / f"{i}.png")
    return root


def test_segmentation_summary_counts_classes_sizes_and_ignored_share() -> None:
    counts = np.array([[6, 2, 0, 2], [0, 0, 0, 0]])  # two items, 3 classes + ignored
    summary = segmentation_split(counts, [(2, 5), (10, 12)], ("a", "b", "c"))
    assert summary.per_class == {"a": 6, "b": 2, "c": 0} and summary.ignored_share == 0.2
    assert (summary.min_size, summary.max_size) == ((2, 5), (10, 12))
    assert summary.missing_classes() == ("c",)
    with pytest.raises(DataError, match=r"^Validation data here has no labelled pixel of class"):
        check_every_class(summary, "val", "here")
    both = DataSummary("data", summary, summary, (0, 7, 9))
    assert json.loads(json.dumps(both.to_dict()))["mask_values"] == [0, 7, 9]
    assert "2x5..10x12" in both.lines()[0] and "20.0 % ignored" in both.lines()[0]


def test_classification_summary_counts_images_per_class() -> None:
    summary = classification_split([0, 0, 1], [(25, 25)] * 3, ("face", "non_face", "cat"))
    assert summary.per_class == {"face": 2, "non_face": 1, "cat": 0}
    with pytest.raises(DataError, match=r"^Training data x has no image of class 'cat'"):
        check_every_class(summary, "train", "x")


def test_mask_values_map_file_values_to_classes(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), np.uint8)
    mask[:, 4:] = 255
    mask[0, 0] = 100
    files = SegmentationFiles(_pairs(tmp_path, [mask]), 3, mask_values=(0, 255, 100))
    loaded = files.load_mask(0)
    assert loaded[0, 0] == 2 and (loaded[:, 4:] == 1).all() and loaded[1, 0] == 0
    # 255 is a class here, so nothing is ignored
    assert files.summary().per_class == {"class_0": 23, "class_1": 24, "class_2": 1}
    assert files.summary().ignored_share == 0.0
    with pytest.raises(DataError, match=r"must lie in 0\.\.255"):
        mask_value_table((0, 300), ("a", "b"), "here")


def test_ignore_only_masks_name_the_classes_and_the_option(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4] = 255
    root = _pairs(tmp_path, [mask, mask])
    with pytest.raises(DataError, match=r"pass --mask-values with one mask value per class"):
        SegmentationFiles(root, 3, class_names=("bg", "car", "sky"))
    # labels 0/1 plus an ignored border are an ordinary mask
    mask[0] = 1
    (root / "masks" / "0.png").unlink()
    Image.fromarray(mask, "L").save(root / "masks" / "0.png")
    assert SegmentationFiles(root, 2).summary().per_class == {"class_0": 56, "class_1": 8}


def test_classification_files_record_own_sizes(tmp_path: Path) -> None:
    for name, size in (("a", (30, 20)), ("b", (7, 9))):
        (tmp_path / name).mkdir()
        Image.new("RGB", size).save(tmp_path / name / "x.png")
    summary = ClassificationFiles(tmp_path, (8, 8)).summary()
    assert summary.images == 2 and summary.min_size == (9, 7) and summary.max_size == (20, 30)
