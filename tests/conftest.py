"""Shared fixtures: tiny checkpoints made on the fly (nothing is downloaded)."""

from __future__ import annotations

import pytest


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
