"""Tiled prediction: the window grid, the blending, agreement with whole-image masks on real
pixels, memory that does not grow with the image, and one sentence for an image over every limit.
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.input_contract import InputContract
from segdeploy.runtime import open_model
from segdeploy.runtime.files import predict_files
from segdeploy.runtime.tiling import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_TILE,
    blended_bands,
    ramp,
    tile_grid,
    tiled_logits,
)

runner = CliRunner()


def pixel_logits(window: np.ndarray) -> np.ndarray:
    """A "model" whose scores at a pixel depend on that pixel only: tiling must change nothing."""
    return np.moveaxis(window.astype(np.float32), -1, 0)  # (C, h, w)


# --- the grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 300, 512, 513, 1000, 1537])
@pytest.mark.parametrize("tile, overlap", [(512, 64), (128, 50), (64, 0), (32, 16)])
def test_windows_cover_the_image_on_the_models_grid(size, tile, overlap):
    grid = tile_grid(size, size + 7, tile, overlap, multiple=16)
    assert grid.overlap >= overlap and (tile - grid.overlap) % 16 == 0
    for starts, length in ((grid.rows, grid.height), (grid.cols, grid.width)):
        assert starts[0] == 0 and all(s % 16 == 0 for s in starts)
        assert min(starts[-1] + tile, length) == length  # the last window reaches the edge
        ends = [min(s + tile, length) for s in starts]
        # each window overlaps the next by the (rounded) overlap, none is redundant
        assert all(end - nxt == grid.overlap for end, nxt in zip(ends, starts[1:], strict=False))
        assert all(start < length for start in starts)


@pytest.mark.parametrize(
    "tile, overlap, expected",
    [
        (100, 16, "found 100 (use 96 or 112)"),
        (0, 0, "found 0 (use 16)"),
        (128, 128, "expected 0 to 112 pixels"),
        (128, -1, "expected 0 to 112 pixels"),
    ],
)
def test_unusable_tiles_are_one_sentence(tile, overlap, expected):
    with pytest.raises(SegdeployError, match=re.escape(expected)):
        tile_grid(1000, 1000, tile, overlap, multiple=16)


def test_the_ramp_is_positive_symmetric_and_flat_inside():
    weights = ramp(100, 20)
    assert weights.min() > 0 and weights.max() == 1.0
    np.testing.assert_array_equal(weights, weights[::-1])
    assert (weights[20:80] == 1.0).all() and (np.diff(weights[:20]) > 0).all()


# --- the blending -------------------------------------------------------------------------------


@pytest.mark.parametrize("tile, overlap", [(64, 16), (64, 0), (128, 48), (32, 16)])
def test_blending_a_pixelwise_model_reproduces_it_exactly(tile, overlap):
    image = np.random.default_rng(0).integers(0, 256, (301, 517, 3), dtype=np.uint8)
    grid = tile_grid(*image.shape[:2], tile, overlap, multiple=16)
    bands = list(blended_bands(image, pixel_logits, 3, grid))
    assert [top for top, _ in bands] == list(grid.rows)  # one band per row of windows
    np.testing.assert_allclose(
        np.concatenate([b for _, b in bands], axis=1), pixel_logits(image), atol=1e-4
    )


def test_neighbouring_windows_are_cross_faded_over_their_overlap():
    calls = []

    def window_number(window: np.ndarray) -> np.ndarray:
        calls.append(window.shape)
        return np.full((1, *window.shape[:2]), float(len(calls) - 1), np.float32)

    image = np.zeros((40, 200, 3), np.uint8)  # one row of windows: 0-64, 48-112, 96-160, 144-200
    grid = tile_grid(40, 200, 64, 16, multiple=16)
    blended = tiled_logits(image, window_number, 1, grid)[0, 20]  # one image row
    assert len(calls) == 4 and blended[:48] == pytest.approx(0.0)
    assert blended[56] == pytest.approx(0.5, abs=0.05)  # the middle of the first overlap
    assert blended[64:96] == pytest.approx(1.0)  # inside window 1 only
    assert 1.0 < blended[100] < blended[104] < blended[108] < 2.0  # rising towards window 2


# --- the model ----------------------------------------------------------------------------------


def test_small_images_run_whole_and_large_ones_tile(unet_onnx):
    model = open_model(unet_onnx, provider="cpu")
    assert model.tile_grid(480, 640) is None  # the default budget keeps photos whole
    assert model.tile_grid(4000, 4000).tile == DEFAULT_TILE  # 16 MP > DEFAULT_MAX_PIXELS
    assert model.tile_grid(2048, 2048) is None and DEFAULT_MAX_PIXELS == 2048 * 2048
    assert model.tile_grid(40, 600, max_pixels=1000).cols == (0, 448)
    assert model.tile_grid(9000, 9000, max_pixels=None) is None
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    np.testing.assert_array_equal(  # a tile bigger than the image is the whole image
        model.logits(image, tile=64, overlap=16), model.logits(image, max_pixels=None)
    )


def test_tiled_logits_are_the_tiling_modules_blend(unet_onnx):
    model = open_model(unet_onnx, provider="cpu")
    image = np.random.default_rng(2).integers(0, 256, (70, 150, 3), dtype=np.uint8)
    grid = model.tile_grid(70, 150, tile=32, overlap=16)
    expected = tiled_logits(image, model._window_logits, model.card.num_classes, grid)
    np.testing.assert_array_equal(model.logits(image, tile=32, overlap=16), expected)
    mask = model.predict(image, tile=32, overlap=16)
    np.testing.assert_array_equal(mask, np.argmax(expected, axis=0))


def test_models_that_resize_images_never_tile(unet_onnx):
    model = open_model(unet_onnx, provider="cpu")
    card = model.card.replace(input=InputContract("fixed", (64, 64)))
    fixed = open_model(unet_onnx, provider="cpu", card=card)
    assert fixed.tile_grid(5000, 5000) is None
    with pytest.raises(SegdeployError, match="only models that keep the image's size"):
        fixed.predict(np.zeros((80, 80, 3), np.uint8), tile=64)


def test_classifiers_ignore_tiling(resnet_onnx, photos, tmp_path):
    model = open_model(resnet_onnx, provider="cpu")
    summary = predict_files(model, [photos / "a.png"], tmp_path / "out", tile=32, max_pixels=0)
    assert summary.images == 1 and summary.tiled == 0


@pytest.fixture(scope="module")
def textures_unet(texture_set, tmp_path_factory):
    """A tiny U-Net trained on the real-pixel texture set until its masks are confident."""
    from real_pixels import train_texture_unet

    return train_texture_unet(texture_set, tmp_path_factory.mktemp("tiling_unet"), 10)


def texture_photo(height: int, width: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A real-pixel scene (brick, grass, gravel, coffee cells) larger than the 512² textures."""
    from real_pixels import _textures, texture_scene

    textures = [np.pad(t, ((0, height), (0, width), (0, 0)), mode="reflect") for t in _textures()]
    return texture_scene(index, height, width, textures, seed=11)


@pytest.mark.slow  # trains a tiny U-Net for 10 epochs: 30-120 s on the shared 2 cores
@pytest.mark.parametrize("index", [0, 2])
def test_tiled_masks_agree_with_whole_image_masks_on_real_pixels(textures_unet, index):
    model = open_model(textures_unet, provider="cpu")
    image, truth = texture_photo(768, 1024, index)
    whole = model.predict(image, max_pixels=None)
    shares = np.bincount(whole.ravel(), minlength=4) / whole.size
    assert (shares > 0.05).sum() >= 3  # a real segmentation, not one class everywhere
    assert (whole == truth).mean() > 0.35  # the model learned something (chance: about 0.25)
    tiled = model.predict(image, max_pixels=0)  # the default tile and overlap: 2 x 3 windows
    assert model.tile_grid(768, 1024, max_pixels=0).windows == 6
    assert (tiled == whole).mean() >= 0.99
    # The measure can fail: 32-pixel windows stitched without overlap lose their context.
    stitched = model.predict(image, tile=32, overlap=0)
    assert (stitched == whole).mean() < 0.99


# --- memory -------------------------------------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from segdeploy.runtime import open_model

    def mib(field):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

    model = open_model(sys.argv[1], provider="cpu")
    height, width, options = int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    before = mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    mask = model.predict(image, **options)
    print(json.dumps({"extra_mib": mib("VmHWM") - before, "peak_mib": mib("VmHWM")}))
    """
)


def predict_memory(model: Path, height: int, width: int, **options) -> dict:
    """Peak RSS of ``model.predict`` on a ``height`` x ``width`` image, in a fresh process."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEMORY_SCRIPT,
            str(model),
            str(height),
            str(width),
            json.dumps(options),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tiled_memory_does_not_grow_with_the_image_height(unet_onnx):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    short = predict_memory(unet_onnx, 512, 512, tile=256, overlap=32)["extra_mib"]
    tall = predict_memory(unet_onnx, 4096, 512, tile=256, overlap=32)["extra_mib"]
    whole = predict_memory(unet_onnx, 4096, 512, max_pixels=None)["extra_mib"]
    # 8x the pixels: only the 2 MB mask more; the whole image needs its activations (> 300 MB).
    assert tall < short + 16, (short, tall)
    assert whole > 4 * tall, (tall, whole)


#: The stated bound: 8000 x 8000 RGB (183 MiB) + its mask (61 MiB) + one band of logits and the
#: tiny U-Net on one 512² window, in a process that holds ONNX Runtime (about 75 MiB).
PEAK_BOUND_MIB = 1024


@pytest.mark.slow  # 64 MP through a tiny U-Net: 30-90 s on 2 cores
def test_an_8000_pixel_square_image_stays_under_the_stated_bound(unet_onnx):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    peak = predict_memory(unet_onnx, 8000, 8000)["peak_mib"]  # tiled automatically
    assert peak < PEAK_BOUND_MIB, peak


# --- an image over every limit ------------------------------------------------------------------


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` RGB and that holds no pixel data: what
    a decompression bomb looks like before it is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 60_000])  # Pillow's warning range, its error range
def test_an_image_over_every_limit_is_one_sentence(unet_onnx, tmp_path, side):
    path = png_header_only(tmp_path / "huge.png", side, side)
    model = open_model(unet_onnx, provider="cpu")
    with pytest.raises(DataError, match=f"found {side * side:,};") as err:
        model.predict(path)
    assert str(path) in str(err.value) and "PIL.Image.MAX_IMAGE_PIXELS" in str(err.value)


def test_the_cli_skips_such_an_image_with_one_sentence_and_exits_1(unet_onnx, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    png_header_only(inputs / "huge.png", 60_000, 60_000)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(inputs / "small.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(unet_onnx), str(inputs), "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "huge.png: expected at most 89,478,485 pixels" in " ".join(result.output.split())
    assert (out / "small.png").is_file()  # the other image is still written


# --- the command line ---------------------------------------------------------------------------


def test_cli_tiles_on_request_and_matches_the_python_api(unet_onnx, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (70, 150, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    args = ["predict", str(unet_onnx), str(tmp_path / "scene.png"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--tile", "32", "--overlap", "16"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 images ran as overlapping tiles" in result.output
    expected = open_model(unet_onnx, provider="cpu").predict(image, tile=32, overlap=16)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "scene.png")), expected)


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--tile", "100"], "multiple of the model's size multiple 16, found 100"),
        (["--tile", "64", "--overlap", "64"], "expected 0 to 48 pixels"),
    ],
)
def test_cli_refuses_unusable_tiles_before_predicting(
    unet_onnx, photos, tmp_path, options, expected
):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["predict", str(unet_onnx), str(photos), "--out", str(out), *options]
    )
    assert result.exit_code == 1
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not out.exists()
