"""INT8 and FP16 variants of a briefly trained tiny U-Net: agreement with FP32, the accuracy gate,
and refusals (``segdeploy quantize`` / ``convert-fp16`` for their exit codes and wording)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny U-Net trained for a few epochs on synthetic scenes, exported to ONNX."""
    from segdeploy.export import export_checkpoint
    from segdeploy.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("trained")
    checkpoint, onnx_path = folder / "unet.pt", folder / "unet.onnx"
    config = TrainConfig(
        arch="unet",
        variant="tiny",
        img_size=64,
        epochs=3,
        train_samples=96,
        val_samples=16,
        out=checkpoint,
    )
    train(config)
    export_checkpoint(checkpoint, out=onnx_path)
    return onnx_path


@pytest.fixture(scope="module")
def int8_export(trained_export):
    """The INT8 variant of the trained tiny U-Net, next to it as ``unet.int8.onnx``."""
    from segdeploy.export.quantize import quantize_int8

    result = quantize_int8(trained_export, samples=16, eval_samples=16, max_drop=1.0)
    assert result.path == trained_export.with_name("unet.int8.onnx")
    return result.path


def synthetic_images(count=8, size=64):
    from segdeploy.core.card import ModelCard
    from segdeploy.core.preprocess import normalise
    from segdeploy.data.synthetic import render_road_scene

    card = ModelCard(arch="unet", task="segmentation", class_names=("a", "b"))
    images = np.stack([render_road_scene(i, size, size, seed=555)[0] for i in range(count)])
    return normalise(images, card.mean, card.std)


def test_int8_keeps_the_card_and_agrees_with_fp32(trained_export, int8_export):
    from segdeploy.export.gates import precision_parity
    from segdeploy.runtime import open_model

    assert open_model(int8_export, provider="cpu").card.arch == "unet"
    report = precision_parity(trained_export, int8_export, "int8", synthetic_images())
    assert report.passed, report.failures()


def test_int8_accuracy_gate_refuses_and_leaves_no_file(trained_export, tmp_path):
    from segdeploy.core.errors import AccuracyGateError
    from segdeploy.export.quantize import quantize_int8

    out = tmp_path / "strict.int8.onnx"
    with pytest.raises(AccuracyGateError, match="was not written") as refused:
        quantize_int8(trained_export, out, samples=8, eval_samples=8, max_drop=-1.0)
    assert not refused.value.result.passed
    assert not out.exists()


def test_fp16_variant_keeps_fp32_io_and_agrees(trained_export):
    import onnx

    from segdeploy.export.fp16 import convert_fp16
    from segdeploy.export.gates import precision_parity

    half = convert_fp16(trained_export)
    assert half == trained_export.with_name("unet.fp16.onnx")
    graph = onnx.load(half).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    report = precision_parity(trained_export, half, "fp16", synthetic_images())
    assert report.passed, report.failures()


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_a_variant_is_not_converted_again(command, int8_export, tmp_path):
    out = tmp_path / "again.onnx"
    result = runner.invoke(app, [command, str(int8_export), "--out", str(out)])
    assert result.exit_code == 1
    assert "is already an int8 variant" in result.output and "FP32 export" in result.output
    assert not out.exists()


def test_the_accuracy_gate_is_one_sentence_and_exit_1(trained_export, tmp_path):
    out = tmp_path / "strict.int8.onnx"
    args = ["quantize", str(trained_export), "--samples", "8", "--eval-samples", "8"]
    result = runner.invoke(app, [*args, "--max-drop", "-100", "--out", str(out)])
    assert result.exit_code == 1 and "was not written" in result.output
    assert not out.exists()


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_unreadable_onnx_is_one_sentence(command, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    result = runner.invoke(app, [command, str(garbage)])
    assert result.exit_code == 1
    assert "garbage.onnx is not a readable ONNX model" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
