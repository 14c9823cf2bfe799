"""Shared fixtures: tiny checkpoints made on the fly (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """``{arch: path}`` of an untrained smallest-variant checkpoint for every registered arch."""
    torch = pytest.importorskip("torch")
    from segdeploy.core.card import ModelCard
    from segdeploy.models import create_model, get_spec, list_models
    from segdeploy.train.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for arch in list_models():
        spec = get_spec(arch)
        kwargs = spec.variant_kwargs(spec.smallest_variant)
        torch.manual_seed(0)
        model = create_model(arch, num_classes=4, **kwargs).eval()
        card = ModelCard(
            arch=arch,
            task=spec.task,
            class_names=("background", "road", "vehicle", "pedestrian"),
            model_kwargs=kwargs,
            size_multiple=spec.size_multiple,
        )
        paths[arch] = save_checkpoint(model, card, folder / f"{arch}.pt")
    return paths


def _export_once(checkpoint):
    """Export a tiny checkpoint next to itself, once per session."""
    out = checkpoint.with_suffix(".onnx")
    if not out.exists():
        from segdeploy.export import export_checkpoint

        export_checkpoint(checkpoint, out=out, shapes=[(1, 16, 16)], providers=["cpu"])
    return out


@pytest.fixture(scope="session")
def unet_onnx(tiny_checkpoints):
    """A tiny U-Net export (untrained) for runtime and predict tests."""
    return _export_once(tiny_checkpoints["unet"])


@pytest.fixture(scope="session")
def resnet_onnx(tiny_checkpoints):
    """A ResNet-18 export (untrained) for classification runtime tests."""
    return _export_once(tiny_checkpoints["resnet18"])


def _write_image(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def write_image():
    """``write_image(path, height, width, mode="RGB", seed=0)``: a random image file."""
    return _write_image


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with images at two levels, a non-image file, a hidden file and a corrupt PNG."""
    folder = tmp_path / "photos"
    _write_image(folder / "a.png", 37, 53)
    _write_image(folder / "b.jpg", 20, 33, mode="L", seed=1)
    _write_image(folder / "nested" / "c.png", 48, 16, mode="RGBA", seed=2)
    (folder / "notes.txt").write_text("not an image")
    _write_image(folder / ".hidden.png", 16, 16)
    return folder


@pytest.fixture
def snapshot():
    """``snapshot(folder)``: every file under ``folder`` with its bytes, to prove it unchanged."""

    def files(folder: Path) -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    return files


@pytest.fixture(scope="session")
def texture_set(tmp_path_factory) -> Path:
    """A real-pixel segmentation folder (``train/`` + ``val/``, classes.txt): see real_pixels."""
    pytest.importorskip("skimage")
    from real_pixels import write_texture_segmentation

    return write_texture_segmentation(tmp_path_factory.mktemp("textures"))


@pytest.fixture(scope="session")
def face_set(tmp_path_factory) -> Path:
    """A real-pixel classification folder: lfw_subset faces and non-faces."""
    pytest.importorskip("skimage")
    from real_pixels import write_face_classification

    return write_face_classification(tmp_path_factory.mktemp("faces"))
