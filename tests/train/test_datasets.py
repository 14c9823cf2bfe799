"""The torch datasets: synthetic scenes and crops, folder datasets (items, augmentation,
validation errors) and class weights.

The torch-free parts they wrap (renderer, folder readers, splits) are tested in tests/data/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdeploy.core.errors import SegdeployError
from segdeploy.core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from segdeploy.data.synthetic import ROAD_CLASSES, render_road_scene
from segdeploy.train.datasets import (
    ClassificationFolder,
    SegmentationFolder,
    SyntheticRoadCrops,
    SyntheticRoadScenes,
    compute_class_weights,
)

# ---------------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------------


def test_synthetic_dataset_items() -> None:
    ds = SyntheticRoadScenes(4, size=(48, 64), seed=1)
    assert len(ds) == 4 and ds.num_classes == 4 and ds.class_names == ROAD_CLASSES
    image, mask = ds[2]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32
    assert mask.shape == (48, 64) and mask.dtype == torch.int64
    raw_img, raw_mask = render_road_scene(2, 48, 64, seed=1)
    np.testing.assert_array_equal(mask.numpy(), raw_mask)
    # normalised with ImageNet statistics
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    restored = (image * std + mean) * 255
    np.testing.assert_allclose(restored.permute(1, 2, 0).numpy(), raw_img, atol=1e-3)
    assert ds.describe() == "synthetic road scenes, 4 images 48x64, seed 1"
    with pytest.raises(IndexError):
        ds[4]


def test_synthetic_augment_flips_image_and_mask_together() -> None:
    ds = SyntheticRoadScenes(1, size=(32, 32), augment=True)
    raw_mask = torch.from_numpy(render_road_scene(0, 32, 32)[1].astype(np.int64))
    plain = SyntheticRoadScenes(1, size=(32, 32))[0][0]
    torch.manual_seed(0)
    seen = set()
    for _ in range(16):
        image, mask = ds[0]
        flipped = torch.equal(mask, raw_mask.flip(-1))
        assert flipped or torch.equal(mask, raw_mask)
        assert torch.equal(image, plain.flip(-1) if flipped else plain)
        seen.add(flipped)
    assert seen == {True, False}


@pytest.mark.parametrize("size", [(100, 128), (128, 120)])
def test_synthetic_size_not_multiple_of_16_raises(size: tuple[int, int]) -> None:
    with pytest.raises(SegdeployError, match="multiples of 16"):
        SyntheticRoadScenes(2, size=size)


# ---------------------------------------------------------------------------------------------
# SegmentationFolder
# ---------------------------------------------------------------------------------------------


def _blocks_mask(h: int, w: int) -> np.ndarray:
    """Large blocks of classes 0..3 plus an ignore stripe."""
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[:, w // 4 : w // 2] = 1
    mask[h // 2 :, w // 2 :] = 2
    mask[: h // 2, 3 * w // 4 :] = 3
    mask[:2, :] = 255
    return mask


def _palette_png(path: Path, mask: np.ndarray) -> None:
    im = Image.fromarray(mask, "P")
    im.putpalette([0, 0, 0, 128, 64, 128, 0, 0, 142, 220, 20, 60] + [255, 255, 255] * 252)
    im.save(path)


def _make_seg_root(tmp_path: Path, h: int = 32, w: int = 48) -> Path:
    root = tmp_path / "seg"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = _blocks_mask(h, w)
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / "a.png")
    _palette_png(root / "masks" / "a.png", mask)
    Image.fromarray(rgb[..., 0]).save(root / "images" / "b.jpg")  # grayscale JPEG
    Image.fromarray(mask, "L").save(root / "masks" / "b.png")
    return root


def test_segmentation_folder_happy_path(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    ds = SegmentationFolder(root, num_classes=4)
    assert len(ds) == 2 and ds.class_names == ("class_0", "class_1", "class_2", "class_3")
    for i in range(2):
        image, mask = ds[i]
        assert image.shape == (3, 32, 48) and image.dtype == torch.float32
        assert mask.shape == (32, 48) and mask.dtype == torch.int64
        # raw indices survive: palette indices are not turned into colours, nothing is scaled
        np.testing.assert_array_equal(mask.numpy(), _blocks_mask(32, 48))
        assert set(mask.unique().tolist()) == {0, 1, 2, 3, 255}
    assert "2 image/mask pairs" in ds.describe()


def test_segmentation_folder_resize_uses_nearest_for_masks(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    ds = SegmentationFolder(root, num_classes=4, size=(64, 96), class_names=list("abcd"))
    image, mask = ds[0]
    assert image.shape == (3, 64, 96) and mask.shape == (64, 96)
    assert set(mask.unique().tolist()) == {0, 1, 2, 3, 255}  # no interpolated in-between labels
    assert ds.load_mask(0).shape == (64, 96)
    with pytest.raises(SegdeployError, match="multiples of 16"):
        SegmentationFolder(root, num_classes=4, size=(60, 96))


def test_segmentation_augment_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    # Each pixel's grey value encodes its class, so after flip/scale-crop we can check that
    # image and mask still agree pixel by pixel (bilinear blur only touches block edges).
    root = tmp_path / "aligned"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = _blocks_mask(64, 64)
    codes = np.array([0, 70, 140, 210], dtype=np.uint8)
    grey = np.where(mask == 255, 250, codes[np.minimum(mask, 3)]).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(root / "images" / "x.png")
    Image.fromarray(mask, "L").save(root / "masks" / "x.png")
    ds = SegmentationFolder(root, num_classes=4, augment=True, mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(0)
    changed = False
    for _ in range(10):
        image, m = ds[0]
        value = image[0].numpy() * 255
        decoded = np.where(value > 240, 255, np.abs(value[..., None] - codes).argmin(-1))
        agreement = (decoded == m.numpy()).mean()
        assert agreement > 0.93, agreement
        changed |= not np.array_equal(m.numpy(), mask)
    assert changed


def _expect_error(root: Path, name: str, **kwargs) -> None:
    with pytest.raises(SegdeployError) as info:
        SegmentationFolder(root, **{"num_classes": 4, **kwargs})
    assert name in str(info.value)


def test_error_missing_mask(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    Image.new("RGB", (48, 32)).save(root / "images" / "lonely.png")
    _expect_error(root, "lonely.png")


def test_error_missing_image(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    Image.new("L", (48, 32)).save(root / "masks" / "orphan.png")
    _expect_error(root, "orphan.png")


def test_error_size_mismatch(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    Image.new("RGB", (48, 32)).save(root / "images" / "c.png")
    Image.new("L", (40, 32)).save(root / "masks" / "c.png")
    _expect_error(root, "c.png")


def test_error_label_out_of_range(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    _expect_error(root, "a.png", num_classes=3)  # masks hold label 3
    with pytest.raises(SegdeployError, match="found 3"):
        SegmentationFolder(root, num_classes=3)


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_error_corrupt_file(tmp_path: Path, folder: str) -> None:
    root = _make_seg_root(tmp_path)
    (root / "images" / "bad.png").write_bytes(b"not a png")
    (root / "masks" / "bad.png").write_bytes(b"not a png")
    if folder == "masks":
        Image.new("RGB", (48, 32)).save(root / "images" / "bad.png")
    with pytest.raises(SegdeployError) as info:
        SegmentationFolder(root, num_classes=4)
    assert str(Path(folder) / "bad.png") in str(info.value)


def test_error_colour_mask(tmp_path: Path) -> None:
    root = _make_seg_root(tmp_path)
    Image.new("RGB", (48, 32)).save(root / "masks" / "b.png")
    _expect_error(root, "b.png")


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_error_missing_folder(tmp_path: Path, missing: str) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    (root / ("masks" if missing == "images" else "images")).mkdir()
    _expect_error(root, missing)


def test_error_no_images(tmp_path: Path) -> None:
    root = tmp_path / "none"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    _expect_error(root, "images")


# ---------------------------------------------------------------------------------------------
# ClassificationFolder
# ---------------------------------------------------------------------------------------------


def test_classification_folder_happy_path(tmp_path: Path) -> None:
    for name, colour in [("dog", (200, 10, 10)), ("cat", (10, 10, 200))]:
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 30), colour).save(tmp_path / name / "one.png")
        Image.new("L", (20, 20), 100).save(tmp_path / name / "two.jpg")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = ClassificationFolder(tmp_path, size=(32, 32), augment=True)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2 and len(ds) == 4
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.ndim == 0 and label.item() == 0
    assert ds[3][1].item() == 1
    assert "4 images, 2 classes" in ds.describe()


def test_classification_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(SegdeployError, match="sub-folder"):
        ClassificationFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(SegdeployError, match="empty_class"):
        ClassificationFolder(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "empty_class" / "ok.png")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.png").write_bytes(b"not a png")
    with pytest.raises(SegdeployError, match=r"x\.png"):
        ClassificationFolder(tmp_path)
    with pytest.raises(SegdeployError, match="absent"):
        ClassificationFolder(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# Class weights
# ---------------------------------------------------------------------------------------------


def test_auto_class_weights_are_median_frequency() -> None:
    # class 0: 6 pixels, class 1: 2 pixels, class 2: 0 pixels; 255 ignored
    mask = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 255, 255]])
    dataset = [(torch.zeros(3, 1, 10), mask)]
    w = compute_class_weights(dataset, num_classes=3)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert w.mean().item() == pytest.approx(1.0)
    # median of the present classes' counts (6, 2) is 4: weights 4/6 and 4/2, 3x apart
    assert w[1].item() == pytest.approx(3 * w[0].item())  # 3x rarer -> 3x heavier
    assert w[2].item() == pytest.approx(w[1].item())  # unseen class: max weight, never 0


def test_class_weights_synthetic_rare_classes_heavier() -> None:
    ds = SyntheticRoadScenes(100, size=(64, 64))
    w = compute_class_weights(ds, 4, max_items=8)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[2] > w[1] > w[0] and w[3] > w[1]


def test_class_weights_all_ignored_raises() -> None:
    with pytest.raises(SegdeployError):
        compute_class_weights([(None, torch.full((2, 2), 255))], 2)


def test_synthetic_crops_are_labelled_by_their_centre_and_balanced():
    crops = SyntheticRoadCrops(16, size=(64, 64), seed=3)
    labels = [int(crops[i][1]) for i in range(len(crops))]
    images = [crops[i][0] for i in range(2)]
    assert images[0].shape == (3, 64, 64)
    assert torch.equal(crops[5][0], crops[5][0])
    assert len(set(labels)) == 4 and max(labels.count(k) for k in range(4)) <= 6
