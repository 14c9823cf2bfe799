"""``bench``, ``quantize`` and ``convert-fp16``: real runs on a briefly trained tiny U-Net."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.runtime.session import usable_providers

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny U-Net trained for a few epochs on synthetic scenes, exported to ONNX."""
    folder = tmp_path_factory.mktemp("trained")
    checkpoint, onnx_path = folder / "unet.pt", folder / "unet.onnx"
    args = ["train", "unet", "--variant", "tiny", "--img-size", "64", "--epochs", "3"]
    args += ["--train-samples", "96", "--val-samples", "16", "--out", str(checkpoint)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(onnx_path)])
    assert result.exit_code == 0, result.output
    return onnx_path


def run_bench(onnx_path, results, *args):
    """Run ``segdeploy bench`` into ``results``; return the one JSON file it wrote."""
    result = runner.invoke(app, ["bench", str(onnx_path), *args, "--results", str(results)])
    assert result.exit_code == 0, result.output
    (json_path,) = results.glob("*.json")
    return json_path


def test_bench_writes_json_and_chart_with_percentiles(trained_export, tmp_path):
    json_path = run_bench(
        trained_export,
        tmp_path,
        "--size",
        "64x64",
        "--batch",
        "1,2",
        "--warmup",
        "1",
        "--iters",
        "5",
    )
    with Image.open(json_path.with_suffix(".png")) as chart:
        assert chart.format == "PNG" and chart.height > 2 * 60  # a title and one group per case
    data = json.loads(json_path.read_text())
    assert data["environment"]["provider"] == "cpu"
    assert data["environment"]["matmul_peak_gflops_per_s"] > 0
    assert [c["batch"] for c in data["cases"]] == [1, 2]
    for case in data["cases"]:
        onnx = case["onnx"]
        assert onnx["iterations"] == 5
        assert onnx["p50_ms"] <= onnx["p90_ms"] <= onnx["p99_ms"]
        assert case["torch"]["iterations"] == 5 and case["speedup"] > 0
        assert case["gflops"] > 0


def test_bench_rounds_take_turns_and_report_the_median_speedup(trained_export, tmp_path):
    args = ["--size", "32x32", "--rounds", "3", "--warmup", "1", "--iters", "2"]
    (case,) = json.loads(run_bench(trained_export, tmp_path, *args).read_text())["cases"]
    assert case["onnx"]["iterations"] == 6 and case["torch"]["iterations"] == 6
    assert len(case["round_speedups"]) == 3
    assert case["speedup"] == pytest.approx(float(np.median(case["round_speedups"])))


def test_bench_measures_with_and_without_io_binding(trained_export, tmp_path):
    json_path = run_bench(
        trained_export,
        tmp_path,
        "--size",
        "32x32",
        "--io-binding",
        "--no-torch",
        "--warmup",
        "1",
        "--iters",
        "3",
    )
    cases = json.loads(json_path.read_text())["cases"]
    assert [c["io_binding"] for c in cases] == [False, True]
    assert all(c["torch"] is None and c["onnx"]["iterations"] == 3 for c in cases)


@pytest.mark.skipif("cuda" in usable_providers(), reason="this machine has a usable CUDA")
def test_flop_count_matches_known_figures():
    """GFLOP/s and % of peak are only as right as the count: check it against known numbers."""
    from segdeploy.core.card import ModelCard
    from segdeploy.tools.bench import count_gflops

    # torchvision's ResNet-18 at 224x224: 1.814 GMACs with a 1000-class head (published figure),
    # 2 FLOPs per multiply-accumulate; a 4-class head removes 0.5 MMACs.
    resnet = ModelCard(arch="resnet18", task="classification", class_names=("a", "b", "c", "d"))
    assert count_gflops(resnet, 224, 224) == pytest.approx(2 * (1.814 - 0.0005), rel=0.01)
    # Tiny U-Net (8..64): every convolution's MACs from its own shapes (out pixels x out channels
    # x in channels x kernel), independent of FlopCounterMode's operator-level counting.
    card = ModelCard(
        arch="unet",
        task="segmentation",
        class_names=("a", "b"),
        model_kwargs={"features": [8, 16, 32, 64]},
    )
    assert count_gflops(card, 64, 64) == pytest.approx(2 * _conv_macs(card, 64, 64) / 1e9)


def _conv_macs(card, height, width):
    import torch

    from segdeploy.models import create_model

    model = create_model(card.arch, card.num_classes, **card.model_kwargs).eval()
    out_pixels = {}

    def remember(module, inputs, output):
        out_pixels[module] = output.shape[-2] * output.shape[-1]

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [conv.register_forward_hook(remember) for conv in convs]
    with torch.inference_mode():
        model(torch.zeros(1, card.in_channels, height, width))
    for hook in hooks:
        hook.remove()
    return sum(
        out_pixels[c] * c.out_channels * (c.in_channels // c.groups) * math.prod(c.kernel_size)
        for c in convs
    )


def test_bench_profile_splits_kernel_time_by_operator(trained_export, tmp_path):
    args = ["--size", "64x64", "--no-torch", "--iters", "2", "--profile"]
    json_path = run_bench(trained_export, tmp_path, *args)
    (case,) = json.loads(json_path.read_text())["cases"]
    ops = {op["op_type"]: op for op in case["op_profile"]}
    assert sum(op["share"] for op in ops.values()) == pytest.approx(1.0)
    # The tiny U-Net runs 19 convolutions per image (fused or not, their kernels say "Conv").
    assert sum(op["calls_per_run"] for name, op in ops.items() if "Conv" in name) == 19
    assert all(op["ms_per_run"] > 0 for op in ops.values())


def test_profile_summary_leaves_out_the_first_run():
    from segdeploy.tools.opprofile import summarise

    def kernel(op, ts, dur):
        return {"cat": "Node", "name": f"n_{op}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}  # fmt: skip

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        kernel("Conv", 10, 90),  # the first run: allocation and kernel selection, left out
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        kernel("Conv", 210, 30),
        kernel("Concat", 250, 10),
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        kernel("Conv", 410, 50),
        kernel("Concat", 470, 10),
    ]
    conv, concat = summarise(events, skip_runs=1)
    assert (conv.op_type, conv.calls_per_run, conv.ms_per_run) == ("Conv", 1, 0.04)
    assert (concat.op_type, concat.ms_per_run) == ("Concat", 0.01)
    assert conv.share == pytest.approx(0.8) and concat.share == pytest.approx(0.2)


def test_bench_on_cuda_without_a_gpu_exits_2(trained_export):
    result = runner.invoke(app, ["bench", str(trained_export), "--provider", "cuda"])
    assert result.exit_code == 2
    assert "cannot use it on this machine" in result.output


def test_bench_refuses_a_missing_variant_before_timing_anything(trained_export, tmp_path):
    lone = tmp_path / "lone.onnx"  # no lone.int8.onnx beside it
    lone.write_bytes(trained_export.read_bytes())
    results = tmp_path / "results"
    args = ["bench", str(lone), "--precision", "fp32,int8", "--results", str(results)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "no int8 variant" in result.output and "segdeploy quantize" in result.output
    assert not results.exists()


def test_bench_without_models_takes_every_export_but_not_variants(
    trained_export, int8_export, tmp_path, monkeypatch
):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "road.v2.onnx").write_bytes(trained_export.read_bytes())  # a dot in the name
    (exports / "road.v2.int8.onnx").write_bytes(int8_export.read_bytes())
    monkeypatch.chdir(tmp_path)
    args = ["bench", "--precision", "fp32,int8", "--size", "32x32", "--no-torch", "--iters", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (json_path,) = (tmp_path / "benchmarks" / "results").glob("*.json")
    cases = json.loads(json_path.read_text())["cases"]
    assert [(c["model"], c["precision"]) for c in cases] == [
        ("road.v2.onnx", "fp32"),
        ("road.v2.onnx", "int8"),
    ]


def test_bench_json_copy(trained_export, tmp_path):
    copy = tmp_path / "nested" / "copy.json"
    args = ["--size", "32x32", "--no-torch", "--iters", "2", "--json", str(copy)]
    json_path = run_bench(trained_export, tmp_path / "results", *args)
    assert json.loads(copy.read_text()) == json.loads(json_path.read_text())


def test_bench_bad_input(tmp_path):
    result = runner.invoke(app, ["bench", str(tmp_path / "none.onnx")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = runner.invoke(app, ["bench", str(tmp_path / "x.onnx"), "--precision", "int4"])
    assert result.exit_code == 1 and "int4" in result.output


def test_bench_refuses_a_size_the_model_cannot_take(trained_export, tmp_path):
    args = ["bench", str(trained_export), "--size", "100x100", "--results", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "multiples of 16, e.g. 96x96" in result.output
    assert not list(tmp_path.iterdir())


def _synthetic_images(count=8, size=64):
    from segdeploy.core.card import ModelCard
    from segdeploy.core.preprocess import normalise
    from segdeploy.data.synthetic import render_road_scene

    card = ModelCard(arch="unet", task="segmentation", class_names=("a", "b"))
    images = np.stack([render_road_scene(i, size, size, seed=555)[0] for i in range(count)])
    return normalise(images, card.mean, card.std)


@pytest.fixture(scope="module")
def int8_export(trained_export):
    """``segdeploy quantize`` of the trained tiny U-Net, next to it as ``unet.int8.onnx``."""
    args = ["quantize", str(trained_export), "--samples", "16", "--eval-samples", "16"]
    result = runner.invoke(app, [*args, "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    return trained_export.with_name("unet.int8.onnx")


def test_int8_keeps_the_card_and_agrees_with_fp32(trained_export, int8_export):
    from segdeploy.export.gates import precision_parity
    from segdeploy.runtime import open_model

    assert open_model(int8_export, provider="cpu").card.arch == "unet"
    report = precision_parity(trained_export, int8_export, "int8", _synthetic_images())
    assert report.passed, report.failures()


def test_bench_reads_int8_against_the_8bit_peak(trained_export, int8_export, tmp_path):
    args = ["--precision", "fp32,int8", "--size", "64x64", "--no-torch", "--iters", "3"]
    data = json.loads(run_bench(trained_export, tmp_path, *args).read_text())
    env = data["environment"]
    assert env["int8_matmul_peak_gops_per_s"] > 0 and env["matmul_peak_gflops_per_s"] > 0
    assert [c["precision"] for c in data["cases"]] == ["fp32", "int8"]
    fp32, int8 = data["cases"]
    assert fp32["share_of_peak"] == pytest.approx(
        fp32["achieved_gflops_per_s"] / env["matmul_peak_gflops_per_s"]
    )
    assert int8["share_of_peak"] == pytest.approx(
        int8["achieved_gflops_per_s"] / env["int8_matmul_peak_gops_per_s"]
    )


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_a_variant_is_not_converted_again(command, int8_export, tmp_path):
    out = tmp_path / "again.onnx"
    result = runner.invoke(app, [command, str(int8_export), "--out", str(out)])
    assert result.exit_code == 1
    assert "is already an int8 variant" in result.output and "FP32 export" in result.output
    assert not out.exists()


def test_int8_accuracy_gate_refuses_and_leaves_no_file(trained_export, tmp_path):
    out = tmp_path / "strict.int8.onnx"
    result = runner.invoke(
        app,
        [
            "quantize",
            str(trained_export),
            "--samples",
            "8",
            "--eval-samples",
            "8",
            "--max-drop",
            "-100",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1 and "was not written" in result.output
    assert not out.exists()


def test_fp16_variant_keeps_fp32_io_and_agrees(trained_export):
    import onnx

    from segdeploy.export.gates import precision_parity

    result = runner.invoke(app, ["convert-fp16", str(trained_export)])
    assert result.exit_code == 0, result.output
    half = trained_export.with_name("unet.fp16.onnx")
    graph = onnx.load(half).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)
    report = precision_parity(trained_export, half, "fp16", _synthetic_images())
    assert report.passed, report.failures()


@pytest.mark.parametrize("command", ["quantize", "convert-fp16"])
def test_unreadable_onnx_is_one_sentence(command, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    result = runner.invoke(app, [command, str(garbage)])
    assert result.exit_code == 1
    assert "garbage.onnx is not a readable ONNX model" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
