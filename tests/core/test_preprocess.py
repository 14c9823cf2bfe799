"""The one normalisation and the size rule."""

from __future__ import annotations

import numpy as np

from segdeploy.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalise, padded_size


def test_normalise_is_the_formula_channel_first():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    expected = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = normalise(pixels, IMAGENET_MEAN, IMAGENET_STD)
    assert out.dtype == np.float32 and out.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(out, expected.transpose(0, 3, 1, 2), atol=1e-6)
    assert normalise(pixels[0], IMAGENET_MEAN, IMAGENET_STD).shape == (3, 5, 7)


def test_normalise_is_bit_identical_to_the_float32_multiply_add():
    """Exactly ``x * float32(1 / (255 std)) - float32(mean / std)`` in float32, what the
    end-to-end graph computes and every gate compares against, for any channel count and for
    uint8 and float pixels alike; the result is C-contiguous, ready for the session."""
    rng = np.random.default_rng(1)
    for shape, mean, std in (
        ((61, 93, 3), IMAGENET_MEAN, IMAGENET_STD),
        ((2, 17, 5, 1), (0.5,), (0.25,)),
        ((3, 8, 8, 4), (0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)),
    ):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        scale = (1 / (255 * np.array(std))).astype(np.float32)
        shift = (np.array(mean) / np.array(std)).astype(np.float32)
        expected = np.moveaxis(pixels.astype(np.float32) * scale - shift, -1, -3)
        for source in (pixels, pixels.astype(np.float32), pixels.astype(np.float64)):
            out = normalise(source, mean, std)
            assert out.flags.c_contiguous and out.dtype == np.float32
            assert np.array_equal(out, expected)


def test_padded_size_rounds_up_to_the_multiple():
    assert padded_size(16, 17, 16) == (16, 32)
    assert padded_size(1, 33, 32) == (32, 64)
