"""OpenVINO, the second CPU engine: the same runtime API, the same FP32 parity gate, and bf16 only
as a gated variant it computes (never ONNX Runtime's FP32 under a bf16 name).

A tiny U-Net trained a few epochs on the real-pixel texture set, so that decisions are not
near-ties and agreement figures mean something.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import AccuracyGateError, ProviderUnavailableError, SegdeployError
from segdeploy.runtime import open_model

ov = pytest.importorskip("openvino", reason="the openvino extra is not installed")
runner = CliRunner()


@pytest.fixture(scope="module")
def trained(texture_set, tmp_path_factory):
    from real_pixels import train_texture_unet

    folder = tmp_path_factory.mktemp("openvino")
    return train_texture_unet(texture_set, folder, epochs=6)


@pytest.fixture(scope="module")
def bf16_variant(trained, texture_set):
    from segdeploy.export.bf16 import convert_bf16

    try:
        return convert_bf16(trained, data=str(texture_set), eval_samples=8)
    except ProviderUnavailableError as err:  # a CPU without AVX512-BF16 or AMX
        pytest.skip(str(err))


def _val_images(texture_set, count=6):
    return sorted((texture_set / "val" / "images").iterdir())[:count]


def test_openvino_serves_the_onnx_runtime_logits_in_fp32(trained, texture_set):
    ort_model = open_model(trained, provider="cpu")
    ov_model = open_model(trained, provider="openvino")
    assert (ov_model.provider, ov_model.precision) == ("openvino", "fp32")
    assert ov_model.session.inference_precision == ov.Type.f32
    assert ov_model.card == ort_model.card
    for path in _val_images(texture_set):  # odd sizes, JPEG and PNG
        expected, found = ort_model.logits(path), ov_model.logits(path)
        assert found.shape == expected.shape
        np.testing.assert_allclose(found, expected, atol=1e-4, rtol=1e-4)
        assert np.array_equal(ov_model.predict(path), ort_model.predict(path))


def test_verify_runs_the_fp32_parity_gate_on_openvino(trained):
    from segdeploy.export import verify_export

    report = verify_export(trained, trained.with_suffix(".pt"), providers=["openvino"])
    assert report.passed, report.structural_failures
    assert {case.provider for case in report.cases} == {"openvino"}
    assert len(report.cases) == 3  # the contract's three parity shapes


def test_threads_share_one_openvino_model(trained, texture_set):
    model = open_model(trained, provider="openvino")
    paths = _val_images(texture_set, 4)
    expected = [model.predict(path) for path in paths]
    found: dict[int, list[np.ndarray]] = {}

    def work(index: int) -> None:
        found[index] = [model.predict(path) for path in paths * 3]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for masks in found.values():
        assert all(np.array_equal(m, e) for m, e in zip(masks, expected * 3, strict=True))


def test_bf16_variant_is_gated_on_openvino_and_really_computed_in_bf16(
    trained, bf16_variant, texture_set
):
    from segdeploy.core.artifacts import gate_report_path

    assert bf16_variant.passed and bf16_variant.provider == "openvino"
    assert bf16_variant.path == trained.with_name("unet.bf16.onnx")
    assert bf16_variant.argmax_agreement >= 0.99
    report = json.loads(gate_report_path(bf16_variant.path).read_text())
    assert report["precision"] == "bf16" and len(report["images"]) == 8
    fp32 = open_model(trained, provider="openvino")
    bf16 = open_model(bf16_variant.path, provider="openvino")
    assert bf16.precision == "bf16" and bf16.session.inference_precision == ov.Type.bf16
    path = _val_images(texture_set, 1)[0]
    difference = np.abs(bf16.logits(path) - fp32.logits(path)).max()
    # bf16 keeps 8 significant bits: identical logits would mean it ran in f32.
    assert 1e-4 < difference < 0.5


def test_onnx_runtime_refuses_a_bf16_variant(bf16_variant, tmp_path):
    with pytest.raises(SegdeployError, match="bf16 variant, computed by OpenVINO"):
        open_model(bf16_variant.path, provider="cpu")
    result = runner.invoke(app, ["predict", str(bf16_variant.path), str(tmp_path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    info = runner.invoke(app, ["info", str(bf16_variant.path)])  # the card stays readable
    assert info.exit_code == 0 and "precision" in info.output


def test_bf16_gate_refuses_and_leaves_no_file(trained, texture_set, tmp_path):
    """A strict gate refuses; on a CPU without native bf16 the command refuses before the gate
    (OpenVINO would compute f32 under a bf16 name). Either way no file is left."""
    from segdeploy.core.cpu import cpu_features
    from segdeploy.export.bf16 import convert_bf16

    out = tmp_path / "strict.bf16.onnx"
    if cpu_features().bf16:
        expected, message = AccuracyGateError, r"BF16 variant is refused.*was not written"
    else:
        expected, message = ProviderUnavailableError, r"computes bf16"
    with pytest.raises(expected, match=message):
        convert_bf16(trained, out, data=str(texture_set), eval_samples=2, max_drop=-1.0)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # no staging or lock file either


def test_a_cpu_that_would_compute_bf16_in_f32_is_refused(bf16_variant, monkeypatch):
    """OpenVINO quietly uses f32 where the CPU has no bf16: the runtime must say so instead."""
    compile_model = ov.Core.compile_model

    def compile_without_bf16(self, model, device, config):
        return compile_model(self, model, device, {**config, "INFERENCE_PRECISION_HINT": "f32"})

    monkeypatch.setattr(ov.Core, "compile_model", compile_without_bf16)
    with pytest.raises(ProviderUnavailableError, match="would run it in f32"):
        open_model(bf16_variant.path, provider="openvino")


def test_missing_openvino_is_one_sentence(trained, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(ProviderUnavailableError, match=r"segdeploy\[openvino\]"):
        open_model(trained, provider="openvino")


def test_bench_measures_openvino_and_refuses_bf16_elsewhere(trained, bf16_variant, tmp_path):
    results = tmp_path / "results"
    args = ["bench", str(trained), "--provider", "openvino", "--size", "64x64", "--iters", "3"]
    result = runner.invoke(
        app, [*args, "--warmup", "1", "--precision", "fp32,bf16", "--results", str(results)]
    )
    assert result.exit_code == 0, result.output
    (json_path,) = results.glob("*.json")
    cases = json.loads(json_path.read_text())["cases"]
    assert [(c["provider"], c["precision"]) for c in cases] == [
        ("openvino", "fp32"),
        ("openvino", "bf16"),
    ]
    refused = runner.invoke(app, ["bench", str(trained), "--precision", "bf16", "--iters", "1"])
    assert refused.exit_code != 0 and "--provider openvino" in refused.output
