"""Torch-free folder readers: file readers, segmentation and classification folders, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.metrics import IGNORE_INDEX
from segdeploy.data.folders import (
    DEFAULT_VAL_FRACTION,
    ClassificationFiles,
    SegmentationFiles,
    crop_pair,
    data_root,
    folder_class_names,
    has_train_val_split,
    load_rgb,
    split_indices,
)

# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def test_load_rgb_converts_modes(tmp_path: Path) -> None:
    sixteen = np.full((4, 5), 65535, dtype=np.uint16)
    sixteen[0, 0] = 0
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "grey.png")
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert deep.shape == (4, 5, 3) and deep[0, 0, 0] == 0 and deep[1, 1, 0] == 255
    assert np.asarray(load_rgb(tmp_path / "alpha.png"))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(load_rgb(tmp_path / "grey.png"))[0, 0].tolist() == [77, 77, 77]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(SegdeployError, match=r"broken\.jpg"):
        load_rgb(tmp_path / "broken.jpg")
    with pytest.raises(SegdeployError, match=r"absent\.png"):
        load_rgb(tmp_path / "absent.png")


def test_crop_pair_cuts_a_window_and_pads_past_the_edge_with_ignore() -> None:
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    mask = (np.arange(5 * 7).reshape(5, 7) % 3).astype(np.uint8)
    window, labels = crop_pair(image, mask, 1, 2, (3, 4))
    np.testing.assert_array_equal(window, image[1:4, 2:6])  # pixels as they are, no resizing
    np.testing.assert_array_equal(labels, mask[1:4, 2:6])
    window, labels = crop_pair(image, mask, 2, 5, (4, 4))  # 1 row and 2 columns past the edge
    assert window.shape == (4, 4, 3) and labels.shape == (4, 4)
    np.testing.assert_array_equal(window[:3, :2], image[2:5, 5:7])
    np.testing.assert_array_equal(window[3, :2], image[3, 5:7])  # reflected, not a black border
    np.testing.assert_array_equal(window[:3, 2], image[2:5, 5])
    assert (labels[3] == IGNORE_INDEX).all() and (labels[:, 2:] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(labels[:3, :2], mask[2:5, 5:7])


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def _gradient_folder(root: Path, count: int, h: int = 24, w: int = 40) -> Path:
    """``count`` image/mask pairs: a horizontal grey ramp and a mask of 0 left, 1 right."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ramp = np.linspace(0, 255, w).astype(np.uint8)
    mask = (np.arange(w) >= w // 2).astype(np.uint8)
    for i in range(count):
        Image.fromarray(np.broadcast_to(ramp[None, :, None], (h, w, 3)).copy()).save(
            root / "images" / f"{i:02d}.png"
        )
        Image.fromarray(np.broadcast_to(mask, (h, w)).copy(), "L").save(
            root / "masks" / f"{i:02d}.png"
        )
    return root


def test_segmentation_files_read_uint8_items_resized(tmp_path: Path) -> None:
    files = SegmentationFiles(_gradient_folder(tmp_path / "seg", 3), 2, size=(32, 64))
    assert len(files) == 3 and files.class_names == ("class_0", "class_1")
    image, mask = files.read(1)
    assert image.shape == (32, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (32, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}  # nearest neighbour: no in-between labels
    np.testing.assert_array_equal(files.load_mask(1), mask)
    assert files.describe().endswith("3 image/mask pairs, 2 classes, resized to 32x64")


def test_segmentation_files_native_size_and_size_multiple(tmp_path: Path) -> None:
    root = _gradient_folder(tmp_path / "seg", 1)
    image, mask = SegmentationFiles(root, 2).read(0)
    assert image.shape == (24, 40, 3) and mask.shape == (24, 40)
    with pytest.raises(SegdeployError, match="multiples of 32"):
        SegmentationFiles(root, 2, size=(48, 48), size_multiple=32)
    resized, _ = SegmentationFiles(root, 2, size=(48, 48), size_multiple=8).read(0)
    assert resized.shape == (48, 48, 3)


def test_segmentation_files_errors_are_data_errors(tmp_path: Path) -> None:
    root = _gradient_folder(tmp_path / "seg", 1)
    with pytest.raises(DataError, match=r"00\.png.*expected labels in 0\.\.0"):
        SegmentationFiles(root, 1)
    with pytest.raises(DataError, match="num_classes"):
        SegmentationFiles(root, 0)
    with pytest.raises(DataError, match="expected 2 class names"):
        SegmentationFiles(root, 2, class_names=("only",))


def test_classification_files_read_resized_items_with_labels(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / name / "x.png")
    files = ClassificationFiles(tmp_path, size=(10, 12))
    assert files.class_names == ("a", "b") and len(files) == 2
    image, label = files.read(1)
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8 and label == 1
    assert image[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="sub-folder"):
        ClassificationFiles(tmp_path / "a")


# ---------------------------------------------------------------------------------------------
# From a data argument to train and validation items
# ---------------------------------------------------------------------------------------------


def test_data_root_and_train_val_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        data_root(tmp_path / "absent")
    assert data_root(str(tmp_path)) == tmp_path
    assert not has_train_val_split(tmp_path)
    (tmp_path / "train").mkdir()
    assert not has_train_val_split(tmp_path)
    (tmp_path / "val").mkdir()
    assert has_train_val_split(tmp_path)


def test_folder_class_names_from_argument_then_classes_txt(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no classes\.txt"):
        folder_class_names(tmp_path, None)
    (tmp_path / "classes.txt").write_text("background\n\n road \n")
    assert folder_class_names(tmp_path, None) == ("background", "road")
    assert folder_class_names(tmp_path, ["x", "y", "z"]) == ("x", "y", "z")


def test_split_indices_is_a_seeded_partition() -> None:
    train, val = split_indices(10, DEFAULT_VAL_FRACTION, seed=3)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert split_indices(10, DEFAULT_VAL_FRACTION, seed=3) == (train, val)
    assert split_indices(10, DEFAULT_VAL_FRACTION, seed=4) != (train, val)
    assert len(split_indices(3, 0.01, seed=0)[1]) == 1  # at least one held out
    with pytest.raises(DataError, match="at least 2 samples"):
        split_indices(1, 0.5, seed=0)


@pytest.mark.parametrize(
    ("line", "found"),
    [
        ("background d0 d1 d2", "looks like 4 names on one line"),
        ("background,road,car", "looks like 3 names on one line"),
        ("background", "found one line, 'background'"),
    ],
)
def test_classes_txt_of_one_line_is_one_sentence_not_one_class(tmp_path, line, found) -> None:
    # Masks hold labels 0..3; read as one class "background d0 d1 d2" the user used to read
    # "expected labels in 0..0" about a mask instead of what is wrong: classes.txt.
    from segdeploy.data.folders import folder_layout

    root = _gradient_folder(tmp_path / "seg", 3)
    (root / "classes.txt").write_text(line + "\n")
    with pytest.raises(DataError) as caught:
        folder_layout(root, "segmentation", None)
    message = str(caught.value)
    assert message.startswith(f"{root / 'classes.txt'}: expected one class name per line")
    assert found in message and "0..0" not in message and message.count(". ") == 0
