"""The accuracy gate on real pixels: a tiny U-Net trained briefly on the texture set (real
photographs and textures, odd image sizes), its real INT8 and FP16 variants, and a deliberately
damaged INT8 model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from segdeploy.core.artifacts import GATE_KEY, PARENT_SHA256_KEY, gate_report_path
from segdeploy.core.errors import AccuracyGateError, SegdeployError
from segdeploy.core.fileio import file_sha256
from segdeploy.core.parity import CaseReport, compare_values
from segdeploy.export.accuracy_gate import GateData, gate_and_write, load_split, require_disjoint
from segdeploy.export.contract import CONTRACTS, MAX_METRIC_DROP
from segdeploy.runtime import open_model
from segdeploy.runtime.variants import require_parent


@pytest.fixture(scope="module")
def textures_unet(texture_set, tmp_path_factory):
    """A tiny U-Net trained on the texture set (validation mIoU about 0.5), exported."""
    from real_pixels import train_texture_unet

    return train_texture_unet(texture_set, tmp_path_factory.mktemp("textures_unet"), 5)


@pytest.fixture(scope="module")
def int8_result(textures_unet, texture_set):
    """The real INT8 variant at the default thresholds: calibrated on train/, gated on val/."""
    from segdeploy.export.quantize import quantize_int8

    return quantize_int8(textures_unet, calib=str(texture_set))


def card_of(path):
    return open_model(path, provider="cpu").card


def two_bit_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every INT8 weight of a QDQ graph rounded to 2 bits (4 levels: -128, -64, 0, 64)."""
    damaged = onnx.ModelProto()
    damaged.CopyFrom(model)
    for init in damaged.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and int(np.prod(init.dims)) > 1:
            weights = numpy_helper.to_array(init).astype(np.int32)
            rounded = np.clip(np.round(weights / 64), -2, 1) * 64
            init.CopyFrom(numpy_helper.from_array(rounded.astype(np.int8), init.name))
    return damaged


def test_a_real_int8_export_passes_the_default_gate(int8_result, textures_unet):
    result = int8_result
    assert result.passed, result.failures
    assert result.max_drop == MAX_METRIC_DROP["int8"] and result.drop <= result.max_drop
    assert result.metric == "mIoU" and result.fp32 > 0.3  # the model learnt something
    # The gate grades FP32 on the split training validated on, the way training did.
    assert result.fp32 == pytest.approx(card_of(textures_unet).training["best_metric"], abs=1e-3)
    assert len(result.images) == 12 and result.drop_stderr is not None
    assert (
        result.argmax_agreement >= CONTRACTS["segmentation"].tolerances["int8"].min_argmax_agreement
    )
    assert result.path.is_file() and result.provider == "cpu"


def test_calibration_and_gate_images_are_disjoint(int8_result, texture_set):
    calibration, gate = set(int8_result.calibration_images), set(int8_result.images)
    assert len(calibration) == 24 and len(gate) == 12
    assert not calibration & gate
    assert all("/train/" in name for name in calibration)
    assert all("/val/" in name for name in gate)
    assert "train split" in int8_result.calibration_data and "val split" in int8_result.data


def test_the_result_is_in_the_variant_and_in_its_report(int8_result, textures_unet):
    variant = int8_result.path
    metadata = open_model(variant, provider="cpu").metadata
    assert metadata[PARENT_SHA256_KEY] == file_sha256(textures_unet)
    stored = json.loads(metadata[GATE_KEY])
    report = json.loads(gate_report_path(variant).read_text())
    assert report.pop("variant_sha256") == file_sha256(variant)
    assert stored == report == json.loads(json.dumps(int8_result.to_dict()))
    assert report["fp32"] == int8_result.fp32 and report["variant"] == int8_result.variant
    require_parent(variant, textures_unet)


def test_real_int8_logits_pass_and_broken_ones_fail(int8_result, textures_unet, texture_set):
    from segdeploy.data.samples import labelled_images

    card = card_of(textures_unet)
    image = labelled_images(card, str(texture_set), "val", 1)[0].pixels  # 97 x 131
    reference = open_model(textures_unet, provider="cpu").logits(image)
    int8 = open_model(int8_result.path, provider="cpu").logits(image)
    zeroed = reference.copy()
    zeroed[int(np.bincount(reference.argmax(0).ravel()).argmax())] = 0.0  # its main class
    for precision in ("int8", "fp16"):
        tolerance = CONTRACTS["segmentation"].tolerances[precision]

        def check(candidate, tolerance=tolerance):
            return compare_values(reference, candidate, tolerance, CaseReport("cpu", ()), 0)

        if precision == "int8":
            assert check(int8).passed, check(int8).failures
        for broken in (-reference, zeroed):
            assert any(f.startswith("argmax") for f in check(broken).failures)


def test_a_damaged_int8_model_is_refused_at_the_default_threshold(
    int8_result, textures_unet, texture_set, tmp_path
):
    card, source = card_of(textures_unet), str(texture_set)
    damaged = two_bit_weights(onnx.load(int8_result.path))
    out = tmp_path / "damaged.int8.onnx"
    calibration = load_split(card, source, "train", 24, 0)
    with pytest.raises(AccuracyGateError, match="was not written") as refused:
        gate_and_write(
            textures_unet, damaged, out, load_split(card, source, "val", 64, 0), calibration
        )
    result = refused.value.result
    # The metric alone refuses it, and so does the agreement with FP32.
    assert result.drop > MAX_METRIC_DROP["int8"]
    assert any("points of mIoU" in f for f in result.failures)
    assert any("argmax agrees" in f for f in result.failures)
    assert not out.exists() and not gate_report_path(out).exists()


def test_overlapping_calibration_and_gate_images_are_refused(textures_unet, texture_set):
    card = card_of(textures_unet)
    val = load_split(card, str(texture_set), "val", 3, 0)
    with pytest.raises(SegdeployError, match="calibration images are also gate images"):
        require_disjoint(GateData("the val split again", val.images[1:]), val)


def test_a_real_fp16_variant_passes_its_gate_on_the_cpu(textures_unet, texture_set):
    from segdeploy.export.fp16 import convert_fp16

    result = convert_fp16(textures_unet, data=str(texture_set))
    assert result.passed, result.failures
    assert result.provider == "cpu" and result.max_drop == MAX_METRIC_DROP["fp16"]
    assert abs(result.drop) <= result.max_drop and result.argmax_agreement >= 0.99
    assert json.loads(gate_report_path(result.path).read_text())["precision"] == "fp16"
    require_parent(result.path, textures_unet)


def test_a_variant_beside_a_re_exported_parent_is_refused(int8_result, unet_onnx, tmp_path):
    import shutil

    parent = shutil.copy(unet_onnx, tmp_path / "unet.onnx")  # another export, the same name
    variant = shutil.copy(int8_result.path, tmp_path / "unet.int8.onnx")
    with pytest.raises(SegdeployError, match="made from another FP32 export"):
        require_parent(variant, parent)
