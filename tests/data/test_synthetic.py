"""The road-scene renderer and its classification crops (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.data.synthetic import ROAD_CLASSES, render_road_crop, render_road_scene

# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------


def test_render_is_deterministic_per_seed_and_index() -> None:
    a_img, a_mask = render_road_scene(3, 64, 64, seed=7)
    b_img, b_mask = render_road_scene(3, 64, 64, seed=7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, c_mask = render_road_scene(4, 64, 64, seed=7)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_mask, c_mask)
    d_img, _ = render_road_scene(3, 64, 64, seed=8)
    assert not np.array_equal(a_img, d_img)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (37, 53)])
def test_render_shapes_and_dtypes(size: tuple[int, int]) -> None:
    image, mask = render_road_scene(0, *size)
    assert image.shape == (*size, 3) and image.dtype == np.uint8
    assert mask.shape == size and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1, 2, 3}


def test_all_classes_present_in_most_images() -> None:
    with_all = sum(len(np.unique(render_road_scene(i, 64, 64)[1])) == 4 for i in range(20))
    assert with_all >= 18


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    return (hi - lo) / np.maximum(hi, 1.0)


def test_image_pixels_carry_information_about_the_mask() -> None:
    # The tutorial's trap: noise images independent of the mask. Here each class is drawn in.
    sat = {c: [] for c in range(4)}
    for i in range(12):
        image, mask = render_road_scene(i, 64, 64)
        s = _saturation(image)
        for c in range(4):
            sat[c].append(s[mask == c])
    mean_sat = {c: float(np.concatenate(v).mean()) for c, v in sat.items()}
    assert mean_sat[1] < 0.2, mean_sat  # road is grayish
    assert mean_sat[2] > mean_sat[1] + 0.25, mean_sat  # vehicles are saturated
    assert mean_sat[0] > mean_sat[1] + 0.1, mean_sat  # background is coloured (sky, grass, dirt)


def test_render_rejects_scenes_below_16_pixels() -> None:
    with pytest.raises(ValueError, match="at least 16x16"):
        render_road_scene(0, 15, 64)


# ---------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------


def test_crop_is_a_window_of_the_double_size_scene_labelled_by_its_centre() -> None:
    crop, label = render_road_crop(6, 32, 48, seed=2)
    assert crop.shape == (32, 48, 3) and crop.dtype == np.uint8 and crop.flags.c_contiguous
    scene, mask = render_road_scene(6, 64, 96, seed=2)
    # Find the window: exactly one position of the scene holds the crop.
    hits = [
        (y, x)
        for y in range(64 - 32 + 1)
        for x in range(96 - 48 + 1)
        if np.array_equal(scene[y : y + 32, x : x + 48], crop)
    ]
    assert len(hits) == 1
    y, x = hits[0]
    assert label == mask[y + 16, x + 24]


def test_crops_are_deterministic_and_cycle_through_the_classes() -> None:
    a, label_a = render_road_crop(3, 32, 32, seed=5)
    b, label_b = render_road_crop(3, 32, 32, seed=5)
    np.testing.assert_array_equal(a, b)
    assert label_a == label_b
    labels = [render_road_crop(i, 32, 32)[1] for i in range(8)]
    # Item i wants class i % 4; nearly every scene has every class inside its central window.
    assert sum(label == i % len(ROAD_CLASSES) for i, label in enumerate(labels)) >= 7
