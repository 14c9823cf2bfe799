"""``--target ort-mobile``: the .ort file, its operator config and usability report, and the
runtime opening a .ort like an .onnx (card read from the flatbuffer's own metadata)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segdeploy.core.errors import SegdeployError

pytest.importorskip("onnxruntime.tools.convert_onnx_models_to_ort")


@pytest.fixture(scope="module")
def mobile_files(unet_onnx, tmp_path_factory):
    """The ort-mobile files of the tiny U-Net export, published beside a copy of it."""
    from segdeploy.core import publish
    from segdeploy.export.mobile import build_mobile

    out = tmp_path_factory.mktemp("mobile") / "unet.onnx"
    data = unet_onnx.read_bytes()
    build = build_mobile(data, out, "image", [(1, 16, 16), (2, 48, 80)], 3)
    with publish.publishing(out, "export") as staging:
        staging.stage(out, lambda tmp: tmp.write_bytes(data))
        for path, content in build.files.items():
            staging.stage(path, lambda tmp, content=content: tmp.write_bytes(content))
    return out, build


def _photo(height: int = 37, width: int = 53) -> np.ndarray:
    """A real-pixel image of odd size (scikit-image's coffee)."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.coffee()[100 : 100 + height, 200 : 200 + width])


def test_writes_ort_operator_config_and_usability_report(mobile_files):
    out, build = mobile_files
    ort_file = out.with_suffix(".ort")
    assert ort_file.read_bytes()[4:8] == b"ORTM"  # the ORT flatbuffer's file identifier
    config = out.with_suffix(".required_operators.config").read_text()
    assert "ai.onnx;11;Conv" in config and "unet.ort" in config
    assert "segdeploy-mobile-" not in config  # names the published file, not the temp folder
    usability = out.with_suffix(".mobile_usability.txt").read_text()
    assert "NNAPI" in usability and "CoreML" in usability and "verdict:" in usability
    assert build.parity["passed"] and len(build.parity["shapes"]) == 2
    assert all(row["argmax_agreement"] == 1.0 for row in build.parity["shapes"])


def test_open_model_on_ort_predicts_the_onnx_mask(mobile_files):
    from segdeploy.runtime import open_model

    out, _ = mobile_files
    onnx_model, ort_model = open_model(out), open_model(out.with_suffix(".ort"))
    assert ort_model.card == onnx_model.card  # the card travels inside the .ort
    photo = _photo()
    np.testing.assert_array_equal(ort_model.predict(photo), onnx_model.predict(photo))
    np.testing.assert_allclose(ort_model.logits(photo), onnx_model.logits(photo), atol=1e-5)


def test_ort_without_card_is_refused_in_one_sentence(mobile_files, tmp_path):
    import onnx
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    from segdeploy.runtime import open_model

    out, _ = mobile_files
    foreign = onnx.load(out)
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    convert_onnx_models_to_ort(
        tmp_path / "foreign.onnx", optimization_styles=[OptimizationStyle.Fixed]
    )
    with pytest.raises(SegdeployError) as err:
        open_model(tmp_path / "foreign.ort")
    message = str(err.value)
    assert "foreign.ort" in message and "model card" in message and "\n" not in message


def test_an_ort_of_another_model_fails_the_ort_parity_check(mobile_files, unet_onnx):
    import onnx
    from onnx import numpy_helper

    from segdeploy.export.mobile import compare_ort

    out, _ = mobile_files
    other = onnx.load(unet_onnx)
    rng = np.random.default_rng(0)
    for tensor in other.graph.initializer:  # a same-shaped model with other weights
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32 and array.ndim == 4:  # conv weights
            noisy = array + rng.standard_normal(array.shape).astype(np.float32) * 0.1
            tensor.CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    from segdeploy.export.mobile import build_mobile

    other_ort = build_mobile(
        other.SerializeToString(), out.parent / "other.onnx", "image", [(1, 16, 16)], 3
    ).files[out.parent / "other.ort"]
    parity = compare_ort(unet_onnx.read_bytes(), other_ort, "image", [(1, 16, 16)], 3)
    assert not parity["passed"] and parity["max_abs"] > 1e-3


def test_mobile_target_is_the_writing_release():
    import onnxruntime

    from segdeploy.core.targets import version_tuple
    from segdeploy.export.target_check import resolve_target

    target = resolve_target("ort-mobile")
    assert target.min_version == version_tuple(onnxruntime.__version__)
    record = json.loads(target.record(10, 18))
    assert record["runtimes"] == {
        "onnxruntime": f">={target.min_version[0]}.{target.min_version[1]}"
    }
    with pytest.raises(
        SegdeployError, match=r"^target 'ort-mobile>=1.16': the .ort file is"
    ) as err:
        resolve_target("ort-mobile>=1.16")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_export_target_ort_mobile_writes_the_files_and_reports_parity(tiny_checkpoints, tmp_path):
    from segdeploy.export import export_checkpoint

    out = tmp_path / "unet.onnx"
    result = export_checkpoint(
        tiny_checkpoints["unet"],
        out=out,
        shapes=[(1, 16, 16)],
        providers=["cpu"],
        target="ort-mobile",
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "unet.mobile_usability.txt",
        "unet.onnx",
        "unet.ort",
        "unet.parity.json",
        "unet.required_operators.config",
    ]
    mobile = json.loads(result.report_path.read_text())["context"]["mobile"]
    assert mobile["parity_ort_vs_onnx"]["passed"]
    assert mobile["files"] == [
        "unet.ort",
        "unet.required_operators.config",
        "unet.mobile_usability.txt",
    ]
