"""INT8 and FP16 variants as files: what they carry, where they go, what is refused
(``segdeploy quantize`` / ``convert-fp16`` for their exit codes and wording).

An untrained tiny U-Net is enough here; the gate's judgement on a trained model is in
test_accuracy_gate.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app

runner = CliRunner()
# Untrained weights decide near-ties at random: these tests are not about the thresholds.
ANY_RESULT = {"max_drop": 1.0, "min_agreement": 0.0}


def strict_json(constant: str):
    raise AssertionError(f"{constant} is not JSON that every reader accepts")


@pytest.fixture(scope="module")
def fp32_export(unet_onnx, tmp_path_factory):
    """A copy of the untrained tiny U-Net export in a folder of its own."""
    return shutil.copy(unet_onnx, tmp_path_factory.mktemp("variants") / "unet.onnx")


@pytest.fixture(scope="module")
def int8_export(fp32_export):
    """The INT8 variant, next to the export as ``unet.int8.onnx``."""
    from segdeploy.export.quantize import quantize_int8

    result = quantize_int8(fp32_export, samples=8, eval_samples=4, **ANY_RESULT)
    assert result.path == fp32_export.with_name("unet.int8.onnx")
    return result.path


def test_int8_keeps_the_card_and_records_its_parent(fp32_export, int8_export):
    from segdeploy.core.artifacts import GATE_KEY, PARENT_SHA256_KEY, gate_report_path
    from segdeploy.core.fileio import file_sha256
    from segdeploy.runtime import open_model
    from segdeploy.runtime.variants import require_parent

    model = open_model(int8_export, provider="cpu")
    assert model.card.arch == "unet"
    assert model.metadata["segdeploy.precision"] == "int8"
    assert model.metadata[PARENT_SHA256_KEY] == file_sha256(fp32_export)
    require_parent(int8_export, fp32_export)
    report = json.loads(gate_report_path(int8_export).read_text(), parse_constant=strict_json)
    assert report["variant_sha256"] == file_sha256(int8_export)
    assert json.loads(model.metadata[GATE_KEY])["images"] == report["images"]


def test_int8_keeps_the_layer_that_computes_the_logits_in_fp32(int8_export):
    import onnx

    graph = onnx.load(int8_export).graph
    producer = next(node for node in graph.node if graph.output[0].name in node.output)
    weights = {init.name: init for init in graph.initializer}[producer.input[1]]
    assert producer.op_type == "Conv" and weights.data_type == onnx.TensorProto.FLOAT
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)  # the rest is INT8


def test_int8_accuracy_gate_refuses_and_leaves_no_file(fp32_export, tmp_path):
    from segdeploy.core.artifacts import gate_report_path
    from segdeploy.core.errors import AccuracyGateError
    from segdeploy.export.quantize import quantize_int8

    out = tmp_path / "strict.int8.onnx"
    with pytest.raises(AccuracyGateError, match="was not written") as refused:
        quantize_int8(fp32_export, out, samples=4, eval_samples=4, max_drop=-1.0)
    assert not refused.value.result.passed
    assert refused.value.result.images and refused.value.result.calibration_images
    assert not out.exists() and not gate_report_path(out).exists()


def test_fp16_variant_keeps_fp32_io_and_is_gated_on_the_cpu(fp32_export):
    import onnx

    from segdeploy.core.artifacts import gate_report_path
    from segdeploy.export.fp16 import convert_fp16

    result = convert_fp16(fp32_export, eval_samples=4)
    half = result.path
    assert half == fp32_export.with_name("unet.fp16.onnx")
    assert result.passed and result.provider == "cpu" and len(result.images) == 4
    assert result.argmax_agreement >= 0.99
    graph = onnx.load(half).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    assert json.loads(gate_report_path(half).read_text())["precision"] == "fp16"


def test_fp16_gate_refuses_and_leaves_no_file(fp32_export, tmp_path):
    from segdeploy.core.errors import AccuracyGateError
    from segdeploy.export.fp16 import convert_fp16

    out = tmp_path / "strict.fp16.onnx"
    with pytest.raises(AccuracyGateError, match=r"FP16 variant is refused.*was not written"):
        convert_fp16(fp32_export, out, eval_samples=2, max_drop=-1.0)
    assert not out.exists()


def test_a_classifier_is_gated_on_one_decision_per_image(resnet_onnx, tmp_path):
    from segdeploy.export.fp16 import convert_fp16
    from segdeploy.export.quantize import quantize_int8

    fp32 = shutil.copy(resnet_onnx, tmp_path / "resnet.onnx")
    int8 = quantize_int8(fp32, samples=4, eval_samples=4, **ANY_RESULT)
    half = convert_fp16(fp32, eval_samples=4)
    for result in (int8, half):
        assert result.metric == "accuracy" and result.path.is_file()
        assert result.decisions["positions"] == 4  # one argmax per image
    assert half.passed and half.argmax_agreement == 1.0


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_a_variant_is_not_converted_again(command, int8_export, tmp_path):
    out = tmp_path / "again.onnx"
    result = runner.invoke(app, [command, str(int8_export), "--out", str(out)])
    assert result.exit_code == 1
    assert "is already an int8 variant" in result.output and "FP32 export" in result.output
    assert not out.exists()


def test_the_accuracy_gate_is_one_sentence_and_exit_1(fp32_export, tmp_path):
    out = tmp_path / "strict.int8.onnx"
    args = ["quantize", str(fp32_export), "--samples", "4", "--eval-samples", "4"]
    result = runner.invoke(app, [*args, "--max-drop", "-100", "--out", str(out)])
    assert result.exit_code == 1 and "was not written" in result.output
    assert not out.exists()


def test_convert_fp16_prints_the_gate(fp32_export, tmp_path):
    out = tmp_path / "cli.fp16.onnx"
    args = ["convert-fp16", str(fp32_export), "--eval-samples", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mIoU on 2 held-out images (cpu)" in result.output and out.exists()


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_unreadable_onnx_is_one_sentence(command, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    result = runner.invoke(app, [command, str(garbage)])
    assert result.exit_code == 1
    assert "garbage.onnx is not a readable ONNX model" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ------------------------------------------------------------------------------------------------
# Nothing lost: the FP32 parent is never replaced; an existing variant only with --force
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["quantize", "convert-fp16", "convert-bf16"])
@pytest.mark.parametrize("how", ["the same path", "a symlink to it"])
def test_a_variant_out_that_is_its_fp32_input_is_refused_even_with_force(
    command, how, fp32_export, tmp_path
):
    before = fp32_export.read_bytes()
    out = fp32_export
    if how == "a symlink to it":
        out = tmp_path / "link.onnx"
        out.symlink_to(fp32_export)
    args = [command, str(fp32_export), "--out", str(out), "--force", "--eval-samples", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "never replaces an input" in result.output and "Traceback" not in result.output
    assert fp32_export.read_bytes() == before  # byte for byte


def test_an_existing_int8_variant_is_refused_without_force_and_replaced_with_it(
    fp32_export, int8_export, tmp_path
):
    from segdeploy.core.artifacts import gate_report_path
    from segdeploy.core.fileio import file_sha256
    from segdeploy.export.quantize import quantize_int8

    fp32 = shutil.copy(fp32_export, tmp_path / "unet.onnx")
    int8 = shutil.copy(int8_export, tmp_path / "unet.int8.onnx")
    shutil.copy(gate_report_path(int8_export), gate_report_path(int8))
    before = int8.read_bytes()
    args = ["quantize", str(fp32), "--samples", "4", "--eval-samples", "4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "unet.int8.onnx already exists; pass --force" in result.output
    assert int8.read_bytes() == before
    replaced = quantize_int8(fp32, samples=4, eval_samples=4, force=True, **ANY_RESULT)
    assert replaced.path == int8
    report = json.loads(gate_report_path(int8).read_text())
    assert report["variant_sha256"] == file_sha256(int8)  # the pair describes one file
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "unet.int8.gate.json", "unet.int8.onnx", "unet.onnx"
    ]  # fmt: skip


def test_an_existing_fp16_variant_is_replaced_only_with_force(fp32_export, tmp_path):
    fp32 = shutil.copy(fp32_export, tmp_path / "unet.onnx")
    args = ["convert-fp16", str(fp32), "--eval-samples", "2"]
    assert runner.invoke(app, args).exit_code == 0
    made = (tmp_path / "unet.fp16.onnx").read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "unet.fp16.onnx already exists; pass --force" in again.output
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "unet.fp16.onnx").read_bytes() == made  # the same conversion, in place
