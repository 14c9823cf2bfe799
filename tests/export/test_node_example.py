"""``examples/node``: the end-to-end graph run from Node.js (onnxruntime-node, pngjs), no Python.

The test installs the example's npm packages itself (``npm ci``, from package-lock.json) when
``node_modules`` is missing, runs ``predict.mjs`` on PNG files of real pixels, and compares the
mask PNG it writes with ``segdeploy.runtime``'s ``predict`` on the same file, byte for byte. It
skips, saying why, where ``node``/``npm`` are not installed or the npm registry cannot be reached.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402

from segdeploy.export.end_to_end import export_end_to_end  # noqa: E402
from segdeploy.runtime import open_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"


@pytest.fixture(scope="module")
def node_example():
    """``examples/node`` with its packages installed (``npm ci`` when missing)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed: the Node.js example cannot run here")
    if not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"`npm ci` in {EXAMPLE} failed (is the npm registry reachable?): {last}")
    return EXAMPLE


@pytest.fixture(scope="module")
def e2e_model(unet_onnx, tmp_path_factory):
    """The tiny U-Net (last bias zeroed, so masks follow the pixels) and its end-to-end graph."""
    model = onnx.load(unet_onnx)
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    bias = next(i for i in model.graph.initializer if i.name == last.input[2])
    bias.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(bias)), bias.name))
    path = tmp_path_factory.mktemp("node") / "unet.onnx"
    onnx.save(model, path)
    return path, export_end_to_end(path).path


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """Real-pixel PNG files in the colour types cameras and tools write: RGB, grey, RGBA,
    palette; odd and non-square sizes."""
    pytest.importorskip("skimage")
    from real_pixels import _textures, texture_scene

    folder, textures = tmp_path_factory.mktemp("pngs"), _textures()
    paths = []
    for index, ((height, width), mode) in enumerate(
        (((61, 93), "RGB"), ((97, 131), "L"), ((17, 200), "RGBA"), ((45, 38), "P"))
    ):
        image = Image.fromarray(texture_scene(index, height, width, textures, seed=5)[0])
        if mode == "RGBA":
            image.putalpha(Image.fromarray(np.full((height, width), 90, np.uint8)))
        elif mode != "RGB":
            image = image.convert(mode)
        paths.append(folder / f"scene_{index}_{mode}.png")
        image.save(paths[-1])
    return paths


@pytest.mark.slow  # about 15 s with node_modules installed, 40 s when it runs `npm ci` first
def test_node_writes_the_mask_python_predicts(node_example, e2e_model, pngs, tmp_path):
    onnx_path, e2e_path = e2e_model
    reference = open_model(onnx_path, provider="cpu")
    classes = set()
    for png in pngs:
        out = tmp_path / f"{png.stem}.mask.png"
        done = subprocess.run(
            ["node", "predict.mjs", str(e2e_path), str(png), str(out)],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        written = Image.open(out)
        assert written.mode == "L"
        expected = reference.predict(png)
        assert np.asarray(written).tobytes() == expected.tobytes(), png.name
        classes |= set(np.unique(expected).tolist())
    assert len(classes) >= 2  # the masks are not one class everywhere


def test_node_reports_a_missing_file_in_one_line(node_example, e2e_model, tmp_path):
    done = subprocess.run(
        ["node", "predict.mjs", str(e2e_model[1]), str(tmp_path / "none.png"), "x.png"],
        cwd=node_example,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.startswith("error:") and "none.png" in done.stderr
