"""The bench library: plans, timings, rounds, IO binding, FLOPs, operator profiles, peaks.

Called directly (``config_from_options``, ``plan_cases``, ``run_bench``, ``write_results``,
``draw_chart``) on the session's tiny U-Net export; the command's exit codes and wording are in
tests/cli/test_bench_cli.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import ProviderUnavailableError, SegdeployError
from segdeploy.runtime.session import usable_providers
from segdeploy.tools.bench import (
    count_gflops,
    eager_call,
    plan_cases,
    run_bench,
    write_results,
)
from segdeploy.tools.bench_chart import draw_chart
from segdeploy.tools.bench_config import RESULTS_FOLDER, BenchConfig, config_from_options


@pytest.fixture(scope="module")
def int8_variant(unet_onnx, tmp_path_factory):
    """A copy of the tiny U-Net export with its INT8 variant beside it: ``(fp32, int8)``."""
    from segdeploy.export.quantize import quantize_int8

    folder = tmp_path_factory.mktemp("int8")
    fp32 = Path(shutil.copy(unet_onnx, folder / "unet.onnx"))
    # Untrained weights: the gate is not what these tests are about, so any drop is allowed.
    result = quantize_int8(fp32, samples=16, eval_samples=16, max_drop=1.0, min_agreement=0.0)
    return fp32, result.path


def bench_json(config: BenchConfig, results: Path) -> Path:
    """Run ``config`` and write its JSON and chart into ``results``, as the command does."""
    cases, env = run_bench(config)
    json_path = write_results(cases, env, results)
    draw_chart(cases, json_path.with_suffix(".png"))
    return json_path


def test_bench_writes_json_and_chart_with_percentiles(unet_onnx, tmp_path):
    config = BenchConfig([unet_onnx], sizes=((64, 64),), batches=(1, 2), warmup=1, iters=5)
    json_path = bench_json(config, tmp_path)
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


def test_bench_rounds_take_turns_and_report_the_median_speedup(unet_onnx, tmp_path):
    config = BenchConfig([unet_onnx], sizes=((32, 32),), rounds=3, warmup=1, iters=2)
    (case,) = json.loads(bench_json(config, tmp_path).read_text())["cases"]
    assert case["onnx"]["iterations"] == 6 and case["torch"]["iterations"] == 6
    assert len(case["round_speedups"]) == 3
    assert case["speedup"] == pytest.approx(float(np.median(case["round_speedups"])))


def test_bench_measures_with_and_without_io_binding(unet_onnx, tmp_path):
    config = BenchConfig(
        [unet_onnx],
        sizes=((32, 32),),
        io_binding=(False, True),
        compare_torch=False,
        warmup=1,
        iters=3,
    )
    json_path = bench_json(config, tmp_path)
    cases = json.loads(json_path.read_text())["cases"]
    assert [c["io_binding"] for c in cases] == [False, True]
    assert all(c["torch"] is None and c["onnx"]["iterations"] == 3 for c in cases)


@pytest.mark.skipif("cuda" in usable_providers(), reason="this machine has a usable CUDA")
def test_flop_count_matches_known_figures():
    """GFLOP/s and % of peak are only as right as the count: check it against known numbers."""
    from segdeploy.core.card import ModelCard

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
    assert count_gflops(card, 64, 64) == pytest.approx(2 * conv_macs(card, 64, 64) / 1e9)


def conv_macs(card, height, width):
    """Multiply-accumulates of every convolution of ``card``'s model, from the layers' shapes."""
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


def test_bench_profile_splits_kernel_time_by_operator(unet_onnx, tmp_path):
    config = BenchConfig([unet_onnx], sizes=((64, 64),), compare_torch=False, iters=2, profile=True)
    (case,) = json.loads(bench_json(config, tmp_path).read_text())["cases"]
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


def test_plan_refuses_a_missing_variant_and_a_size_the_model_cannot_take(unet_onnx, tmp_path):
    lone = shutil.copy(unet_onnx, tmp_path / "lone.onnx")  # no lone.int8.onnx beside it
    with pytest.raises(SegdeployError, match="no int8 variant") as missing:
        plan_cases(BenchConfig(models=[lone], precisions=("fp32", "int8")))
    assert "segdeploy quantize" in str(missing.value)
    with pytest.raises(SegdeployError, match=re.escape("multiples of 16, e.g. 96x96")):
        plan_cases(BenchConfig(models=[lone], sizes=((100, 100),)))


def test_options_are_checked_before_any_timing(unet_onnx, tmp_path):
    options = {"provider": "cpu", "batch": "1", "size": None, "precision": "fp32"}
    config = config_from_options([unet_onnx], **options, io_binding=True, rounds=2)
    assert config.io_binding == (False, True) and config.rounds == 2
    with pytest.raises(SegdeployError, match="int4"):
        config_from_options([unet_onnx], **{**options, "precision": "int4"}, io_binding=False)
    with pytest.raises(SegdeployError, match="positive integers"):
        config_from_options([unet_onnx], **{**options, "batch": "0"}, io_binding=False)
    with pytest.raises(SegdeployError, match="does not exist"):
        config_from_options([tmp_path / "none.onnx"], **options, io_binding=False)


@pytest.mark.skipif("cuda" in usable_providers(), reason="CUDA works here; this checks the refusal")
def test_cuda_is_refused_before_any_timing_where_it_cannot_run(unet_onnx):
    options = {"provider": "cuda", "batch": "1", "size": None, "precision": "fp32"}
    with pytest.raises(ProviderUnavailableError, match="cannot use it on this machine"):
        config_from_options([unet_onnx], **options, io_binding=False)


def test_eager_call_crosses_the_bus_exactly_when_ort_does(tiny_checkpoints):
    torch = pytest.importorskip("torch")
    from segdeploy.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoints["unet"])
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32), dtype=np.float32)
    # Without io-binding ORT takes and returns host arrays: so does the eager call.
    host = eager_call(model, x, "cpu", half=False, host_io=True)()
    assert isinstance(host, np.ndarray) and host.shape == (1, 4, 32, 32)
    # With io-binding both keep the output on the device: a tensor, not a host array.
    bound = eager_call(model, x, "cpu", half=False, host_io=False)()
    assert isinstance(bound, torch.Tensor) and bound.device.type == "cpu"
    np.testing.assert_allclose(bound.numpy(), host, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(host, model(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_each_row_picks_its_eager_call_by_binding(unet_onnx, monkeypatch):
    from segdeploy.tools import bench

    seen = []
    real = bench.eager_call
    monkeypatch.setattr(bench, "eager_call", lambda *a, **k: seen.append(a[-1]) or real(*a, **k))
    config = BenchConfig(models=[unet_onnx], sizes=((32, 32),), iters=2, warmup=1)
    config.io_binding = (False, True)
    run_bench(config)
    assert seen == [True, False]  # host copies without io-binding, none with it


def test_a_variant_of_another_fp32_export_is_refused(int8_variant, resnet_onnx, tmp_path):
    _, int8 = int8_variant
    shutil.copy(resnet_onnx, tmp_path / "unet.onnx")  # same name, another model
    shutil.copy(int8, tmp_path / "unet.int8.onnx")
    with pytest.raises(SegdeployError, match="was made from another FP32 export"):
        plan_cases(BenchConfig(models=[tmp_path / "unet.onnx"], precisions=("fp32", "int8")))


def test_bench_without_models_takes_every_export_but_not_variants(
    int8_variant, tmp_path, monkeypatch
):
    fp32, int8 = int8_variant
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "road.v2.onnx").write_bytes(fp32.read_bytes())  # a dot in the name
    (exports / "road.v2.int8.onnx").write_bytes(int8.read_bytes())
    monkeypatch.chdir(tmp_path)
    options = {"provider": "cpu", "batch": "1", "size": "32x32", "precision": "fp32,int8"}
    config = config_from_options(None, **options, io_binding=False, compare_torch=False, iters=2)
    bench_json(config, RESULTS_FOLDER)
    (json_path,) = (tmp_path / "benchmarks" / "results").glob("*.json")
    cases = json.loads(json_path.read_text())["cases"]
    assert [(c["model"], c["precision"]) for c in cases] == [
        ("road.v2.onnx", "fp32"),
        ("road.v2.onnx", "int8"),
    ]


@pytest.fixture(scope="module")
def int8_run(int8_variant):
    """One short FP32 + INT8 run of the tiny U-Net: ``(cases, env)``."""
    export, _ = int8_variant
    config = BenchConfig(
        [export], precisions=("fp32", "int8"), sizes=((64, 64),), compare_torch=False, iters=3
    )
    return run_bench(config)


def test_bench_records_the_cpu_features_and_each_file_size(int8_variant, int8_run, tmp_path):
    from segdeploy.core.cpu import cpu_features

    fp32_path, int8_path = int8_variant
    data = json.loads(write_results(*int8_run, tmp_path).read_text())
    features = data["environment"]["cpu_features"]
    assert features == cpu_features().to_dict() and features["model"] == data["environment"]["cpu"]
    assert set(features) >= {"flags", "vnni", "bf16", "int8_path"}
    fp32, int8 = data["cases"]
    for case, path in ((fp32, fp32_path), (int8, int8_path)):
        assert case["file"] == path.name and case["file_bytes"] == path.stat().st_size
        assert case["file_mb"] == pytest.approx(case["file_bytes"] / 1e6)
    assert int8["file_bytes"] < fp32["file_bytes"]  # 8-bit weights


def test_the_no_vnni_note_cites_this_runs_ratios_only_without_vnni(int8_run):
    from dataclasses import replace

    from cpuinfo_samples import EPYC_AVX2, NEOVERSE_N1, XEON_COOPER_LAKE

    from segdeploy.core.cpu import parse_cpuinfo
    from segdeploy.tools.bench import int8_without_vnni_note

    cases, env = int8_run
    fp32, int8 = cases

    def note(text: str, arch: str = "x86_64", benched=cases):
        features = parse_cpuinfo(text, arch)
        machine = {**env, "cpu": features.model, "cpu_features": features.to_dict()}
        return int8_without_vnni_note(benched, machine)

    def int8_at(speed: float):  # the measured INT8 case, as if it ran `speed` x FP32's speed
        return replace(int8, onnx=replace(int8.onnx, p50_ms=fp32.onnx.p50_ms / speed))

    size = f"{fp32.file_bytes / int8.file_bytes:.2f}x smaller files"
    peaks = env["int8_matmul_peak_gops_per_s"] / env["matmul_peak_gflops_per_s"]
    assert note(EPYC_AVX2, benched=[fp32, int8_at(0.93)]) == (
        "INT8 is mostly a size win on this CPU (AMD EPYC 7B13, no VNNI): in this run INT8 ran "
        f"0.93x FP32's speed with {size}"
    )
    assert note(EPYC_AVX2, benched=[fp32, int8_at(1.8)]) == (
        "INT8 gains less speed on this CPU (AMD EPYC 7B13, no VNNI; its 8-bit matrix-multiply "
        f"peak is {peaks:.1f}x FP32's) than with VNNI: in this run INT8 ran 1.80x FP32's speed "
        f"with {size}"
    )
    measured = fp32.onnx.p50_ms / int8.onnx.p50_ms
    assert f"INT8 ran {measured:.2f}x FP32's speed with {size}" in note(EPYC_AVX2)
    alone = note(EPYC_AVX2, benched=[int8])  # no FP32 case: the measured peaks' ratio
    assert alone.endswith(f"its 8-bit matrix-multiply peak is {peaks:.1f}x FP32's here")
    assert note(XEON_COOPER_LAKE) is None
    assert note(NEOVERSE_N1, "aarch64") is None  # the note is about x86 VNNI
    assert note("", "x86_64") is None  # unknown flags: no claim
    assert note(EPYC_AVX2, benched=[fp32]) is None  # no INT8 benched


def test_bench_reads_int8_against_the_8bit_peak(int8_run, tmp_path):
    data = json.loads(write_results(*int8_run, tmp_path).read_text())
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
