"""``segdeploy bench`` through the CLI: exit codes, wording, and the files it writes or not.

What the measurements hold is tested on the library, in tests/tools/test_bench.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.runtime.session import usable_providers

runner = CliRunner()


def test_bench_writes_its_json_and_a_copy(unet_onnx, tmp_path):
    copy = tmp_path / "nested" / "copy.json"
    results = tmp_path / "results"
    args = ["--size", "32x32", "--no-torch", "--iters", "2", "--json", str(copy)]
    result = runner.invoke(app, ["bench", str(unet_onnx), *args, "--results", str(results)])
    assert result.exit_code == 0, result.output
    (json_path,) = results.glob("*.json")
    assert json.loads(copy.read_text()) == json.loads(json_path.read_text())


@pytest.mark.skipif("cuda" in usable_providers(), reason="CUDA works here; this checks the refusal")
def test_bench_on_cuda_without_a_gpu_exits_2(unet_onnx):
    result = runner.invoke(app, ["bench", str(unet_onnx), "--provider", "cuda"])
    assert result.exit_code == 2
    assert "cannot use it on this machine" in result.output


def test_bench_refuses_a_missing_variant_before_timing_anything(unet_onnx, tmp_path):
    lone = shutil.copy(unet_onnx, tmp_path / "lone.onnx")  # no lone.int8.onnx beside it
    results = tmp_path / "results"
    args = ["bench", str(lone), "--precision", "fp32,int8", "--results", str(results)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "no int8 variant" in result.output and "segdeploy quantize" in result.output
    assert not results.exists()


def test_bench_refuses_a_variant_that_is_not_its_parents(unet_onnx, resnet_onnx, tmp_path):
    from segdeploy.core.artifacts import PARENT_SHA256_KEY, PRECISION_KEY

    onnx = pytest.importorskip("onnx")
    fp32 = shutil.copy(unet_onnx, tmp_path / "m.onnx")
    variant = onnx.load(resnet_onnx)  # stands in for a variant made from another export
    for key, value in ((PRECISION_KEY, "int8"), (PARENT_SHA256_KEY, "0" * 64)):
        variant.metadata_props.add(key=key, value=value)
    onnx.save(variant, tmp_path / "m.int8.onnx")
    results = tmp_path / "results"
    args = ["bench", str(fp32), "--precision", "int8", "--results", str(results)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "was made from another FP32 export" in result.output
    assert not results.exists()


def test_bench_bad_input(tmp_path):
    result = runner.invoke(app, ["bench", str(tmp_path / "none.onnx")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["bench", str(tmp_path / "x.onnx"), "--precision", "int4"])
    assert result.exit_code == 1 and "int4" in result.output


def test_bench_refuses_a_size_the_model_cannot_take(unet_onnx, tmp_path):
    args = ["bench", str(unet_onnx), "--size", "100x100", "--results", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "multiples of 16, e.g. 96x96" in result.output
    assert not list(tmp_path.iterdir())


def test_only_bench_exits_2_for_an_unusable_provider():
    from segdeploy.cli.errors import exit_code
    from segdeploy.core.errors import ProviderUnavailableError, SegdeployError

    unusable = ProviderUnavailableError("CUDA was asked for but cannot run here")
    assert exit_code("bench", unusable) == 2
    assert exit_code("predict", unusable) == exit_code("verify", unusable) == 1
    assert exit_code("bench", SegdeployError("no models to benchmark")) == 1


def test_an_existing_json_copy_is_replaced_only_with_force(unet_onnx, tmp_path):
    copy, results = tmp_path / "copy.json", tmp_path / "results"
    copy.write_text("an earlier run")
    args = ["bench", str(unet_onnx), "--size", "32x32", "--no-torch", "--iters", "2"]
    args += ["--json", str(copy), "--results", str(results)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "copy.json already exists; pass --force" in refused.output
    assert copy.read_text() == "an earlier run" and not results.exists()  # before timing
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    (json_path,) = results.glob("*.json")
    assert json.loads(copy.read_text()) == json.loads(json_path.read_text())


def test_two_runs_in_one_second_keep_both_results(tmp_path, monkeypatch):
    from segdeploy.tools import bench

    monkeypatch.setattr(bench.time, "strftime", lambda fmt: "20260101-120000")
    first = bench.write_results([], {"provider": "cpu"}, tmp_path)
    second = bench.write_results([], {"provider": "cpu"}, tmp_path)
    assert (first.name, second.name) == ("20260101-120000-cpu.json", "20260101-120000-cpu-2.json")


@pytest.fixture(scope="module")
def unet_with_int8(unet_onnx, tmp_path_factory):
    """A copy of the tiny U-Net export with its INT8 variant beside it."""
    from segdeploy.export.quantize import quantize_int8

    fp32 = shutil.copy(unet_onnx, tmp_path_factory.mktemp("int8") / "unet.onnx")
    # Untrained weights: the gate is not what these tests are about, so any drop is allowed.
    quantize_int8(fp32, samples=8, eval_samples=8, max_drop=1.0, min_agreement=0.0)
    return fp32


@pytest.mark.parametrize(
    ("sample", "says_no_vnni"), [("EPYC_AVX2", True), ("XEON_SAPPHIRE_RAPIDS", False)]
)
def test_int8_on_a_cpu_without_vnni_gets_one_line_with_the_runs_ratios(
    unet_with_int8, tmp_path, monkeypatch, sample, says_no_vnni
):
    import cpuinfo_samples

    from segdeploy.core.cpu import parse_cpuinfo
    from segdeploy.tools import bench

    features = parse_cpuinfo(getattr(cpuinfo_samples, sample), "x86_64")
    monkeypatch.setattr(bench, "cpu_features", lambda: features)
    args = ["bench", str(unet_with_int8), "--precision", "fp32,int8", "--size", "32x32"]
    args += ["--no-torch", "--iters", "2", "--results", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"CPU {features.summary()}" in result.output  # the table's caption
    (json_path,) = tmp_path.glob("*.json")
    fp32, int8 = json.loads(json_path.read_text())["cases"]
    measured = (
        f"in this run INT8 ran {fp32['onnx']['p50_ms'] / int8['onnx']['p50_ms']:.2f}x FP32's "
        f"speed with {fp32['file_bytes'] / int8['file_bytes']:.2f}x smaller files"
    )
    # One line, whichever wording the measured speed chose (tests/tools/test_bench.py has both).
    lines = [line for line in result.output.splitlines() if f"({features.model}, no VNNI" in line]
    assert len(lines) == (1 if says_no_vnni else 0)
    assert (measured in result.output) is says_no_vnni
