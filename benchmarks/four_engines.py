"""Four CPU engines on the same full-size models in one run: segdeploy's ONNX Runtime path,
PyTorch eager, torch.compile and OpenVINO (batch 1, random weights, no downloads).

    pip install openvino        # into the same environment; segdeploy does not depend on it
    python benchmarks/four_engines.py [--models unet,deeplabv3_resnet50,...] [--rounds 5]
                                      [--seconds 3] [--out benchmarks/results/engines] [--keep DIR]

For each model (U-Net 'full' 64..512 at 256x256, DeepLabV3-ResNet50 and DeepLabV3-MobileNetV3
at 256x256, ResNet-18 at 224x224; torch seed 0) it writes a checkpoint with ``save_checkpoint``
and a ``ModelCard``, exports it with ``segdeploy.export.export_checkpoint`` (behind the parity
gate) and times, on the same normalised float32 input:

* ``segdeploy_ort``: ``open_model(onnx, provider="cpu").run_batch(x)``, segdeploy's default
  CPU path;
* ``segdeploy_openvino``: ``open_model(onnx, provider="openvino").run_batch(x)`` (f32, dynamic
  shapes, as segdeploy serves it);
* ``segdeploy_openvino_bf16``: the same on the ``x.bf16.onnx`` variant made by
  ``segdeploy.export.bf16.convert_bf16`` (OpenVINO's bf16 arithmetic). The weights here are
  random, so the accuracy gate is run on 4 synthetic images with its thresholds off: its verdict
  means nothing for random weights, and only the timing is wanted;
* ``torch_eager``: the PyTorch module under ``torch.inference_mode()``;
* ``torch_compile``: ``torch.compile(module)`` (default backend, inductor), under
  ``torch.inference_mode()``; skipped (and said so) when compiling fails or takes longer than
  ``--compile-limit`` seconds;
* ``openvino``: the same ONNX file read by ``openvino.Core``, reshaped to the static input
  shape and compiled for ``CPU`` with the ``LATENCY`` performance hint. Its default inference
  precision is bf16 on a CPU with AVX512-BF16 or AMX (this machine's AMD EPYC has AVX512-BF16),
  so it is not the same arithmetic as the others; the JSON records the precision it used;
* ``openvino_f32``: the same, with ``INFERENCE_PRECISION_HINT=f32`` (the others' precision).

The engines take turns: each round runs every engine for ``--seconds`` and keeps the median of
its calls, the starting engine rotating from round to round so that drift on a shared machine
hits all of them. Reported per engine: the median of the round medians and their range. An
engine is "within noise" of the fastest when its range of round medians overlaps the fastest's.
Every engine's output is compared with eager PyTorch's (largest absolute difference).
The JSON goes to ``--out/<stamp>.json``; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import segdeploy
from segdeploy.core.card import ModelCard
from segdeploy.export import export_checkpoint
from segdeploy.models import create_model, get_spec
from segdeploy.runtime import open_model
from segdeploy.tools.timing import time_calls
from segdeploy.train.checkpoint import save_checkpoint

# (arch, variant, task, classes, input size, label for the table)
MODELS = {
    "unet": ("unet", "full", "segmentation", 4, 256, "U-Net 64..512"),
    "deeplabv3_resnet50": (
        "deeplabv3_resnet50", "full", "segmentation", 21, 256, "DeepLabV3-ResNet50",
    ),
    "deeplabv3_mobilenet_v3_large": (
        "deeplabv3_mobilenet_v3_large", "full", "segmentation", 21, 256, "DeepLabV3-MobileNetV3",
    ),
    "resnet18": ("resnet18", "full", "classification", 1000, 224, "ResNet-18"),
}  # fmt: skip
ENGINES = (
    "segdeploy_ort",
    "segdeploy_openvino",
    "segdeploy_openvino_bf16",
    "torch_eager",
    "torch_compile",
    "openvino",
    "openvino_f32",
)
#: segdeploy's CPU paths: the fastest of them is "segdeploy" in the verdict.
SEGDEPLOY_ENGINES = ("segdeploy_ort", "segdeploy_openvino", "segdeploy_openvino_bf16")
ENGINE_LABELS = {
    "segdeploy_ort": "segdeploy (ORT)",
    "segdeploy_openvino": "segdeploy (OpenVINO f32)",
    "segdeploy_openvino_bf16": "segdeploy (OpenVINO bf16)",
    "torch_eager": "PyTorch eager",
    "torch_compile": "torch.compile",
    "openvino": "OpenVINO (default precision)",
    "openvino_f32": "OpenVINO f32",
}


def build(name: str, folder: Path, size: int | None) -> tuple[torch.nn.Module, Path, dict]:
    """The model (random weights, seed 0), its export, and how both were made."""
    arch, variant, task, classes, default_size, _ = MODELS[name]
    kwargs = get_spec(arch).variant_kwargs(variant)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=classes, **kwargs).eval()
    card = ModelCard(
        arch=arch,
        task=task,
        class_names=tuple(f"class{i}" for i in range(classes)),
        model_kwargs=kwargs,
    )
    checkpoint = save_checkpoint(model, card, folder / f"{name}.pt")
    started = time.perf_counter()
    onnx_path = export_checkpoint(checkpoint, out=folder / f"{name}.onnx", force=True).onnx_path
    info = {
        "arch": arch,
        "variant": variant,
        "model_kwargs": kwargs,
        "classes": classes,
        "input": [1, 3, size or default_size, size or default_size],
        "parameters": sum(p.numel() for p in model.parameters()),
        "export_seconds": round(time.perf_counter() - started, 1),
    }
    return model, onnx_path, info


def eager_call(module: Callable, x: np.ndarray) -> Callable[[], np.ndarray]:
    tensor = torch.from_numpy(x)

    def call() -> np.ndarray:
        with torch.inference_mode():
            return module(tensor).numpy()

    return call


def compile_call(
    model: torch.nn.Module, x: np.ndarray, limit_s: float
) -> tuple[Callable | None, dict]:
    """torch.compile's call, or None and why; the first call (the compile) is timed."""
    started = time.perf_counter()
    try:
        call = eager_call(torch.compile(model), x)
        call()
    except Exception as err:  # any compile failure is a result to record
        return None, {"status": "failed", "error": f"{type(err).__name__}: {err}"[:500]}
    seconds = round(time.perf_counter() - started, 1)
    if seconds > limit_s:
        return None, {"status": f"skipped: compile took {seconds} s > {limit_s} s"}
    return call, {"status": "ok", "compile_seconds": seconds}


def openvino_call(onnx_path: Path, x: np.ndarray, precision: str | None) -> tuple[Callable, dict]:
    """OpenVINO on the ONNX file at x's static shape; ``precision`` None keeps its default."""
    import openvino as ov

    core = ov.Core()
    started = time.perf_counter()
    graph = core.read_model(str(onnx_path))
    graph.reshape({graph.inputs[0].get_any_name(): ov.PartialShape(list(x.shape))})
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(graph, "CPU", config)
    request = compiled.create_infer_request()
    info = {
        "status": "ok",
        "version": ov.__version__,
        "hint": "LATENCY",
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
        "static_shape": list(x.shape),
        "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
        "compile_seconds": round(time.perf_counter() - started, 1),
    }
    return lambda: request.infer({0: x})[0], info


def segdeploy_openvino_call(onnx_path: Path, x: np.ndarray, engine: str) -> tuple[Callable, dict]:
    """segdeploy's OpenVINO path on the export (f32) or on its bf16 variant."""
    source, info = onnx_path, {"status": "ok"}
    if engine.endswith("bf16"):
        from segdeploy.export.bf16 import convert_bf16

        gate = convert_bf16(onnx_path, eval_samples=4, max_drop=1.0, min_agreement=0.0)
        source = gate.path
        info["gate_argmax_agreement_random_weights"] = gate.argmax_agreement
    runtime = open_model(source, provider="openvino")
    info["inference_precision"] = runtime.session.inference_precision.get_type_name()
    return (lambda: runtime.run_batch(x)), info


def make_calls(
    engines: list[str], model: torch.nn.Module, onnx_path: Path, x: np.ndarray, limit_s: float
) -> tuple[dict[str, Callable], dict[str, dict]]:
    """A zero-argument call per engine that runs, and what each engine's setup reported."""
    calls: dict[str, Callable] = {}
    notes: dict[str, dict] = {}
    for engine in engines:
        if engine == "segdeploy_ort":
            runtime = open_model(onnx_path, provider="cpu")
            calls[engine] = lambda r=runtime: r.run_batch(x)
            notes[engine] = {"status": "ok", "onnxruntime": ort.__version__}
        elif engine.startswith("segdeploy_openvino"):
            try:
                calls[engine], notes[engine] = segdeploy_openvino_call(onnx_path, x, engine)
            except Exception as err:  # e.g. openvino not installed, or no bf16 on this CPU
                notes[engine] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        elif engine == "torch_eager":
            calls[engine] = eager_call(model, x)
            notes[engine] = {"status": "ok", "torch_threads": torch.get_num_threads()}
        elif engine == "torch_compile":
            call, notes[engine] = compile_call(model, x, limit_s)
            if call is not None:
                calls[engine] = call
        elif engine.startswith("openvino"):
            precision = "f32" if engine == "openvino_f32" else None
            try:
                calls[engine], notes[engine] = openvino_call(onnx_path, x, precision)
            except Exception as err:  # e.g. openvino not installed
                notes[engine] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return calls, notes


def take_turns(calls: dict[str, Callable], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Per-round median ms of each call; the first engine of a round rotates each round."""
    for call in calls.values():  # warm-up: first runs allocate and pick kernels
        time_calls(call, 2, 1, 0.0)
    names = list(calls)
    medians: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples = time_calls(calls[name], 0, None, seconds)
            medians[name].append(1000 * statistics.median(samples))
    return medians


def summarise(medians: dict[str, list[float]]) -> dict[str, dict]:
    return {
        name: {
            "median_ms": round(statistics.median(ms), 2),
            "min_ms": round(min(ms), 2),
            "max_ms": round(max(ms), 2),
            "round_medians_ms": [round(m, 2) for m in ms],
        }
        for name, ms in medians.items()
    }


def verdict(summary: dict[str, dict], among: list[str]) -> dict:
    """The fastest of ``among``, and whether segdeploy's fastest path is first or within noise
    of it."""
    timed = [name for name in among if name in summary]
    if not timed:
        return {}
    first = min(timed, key=lambda name: summary[name]["median_ms"])
    result: dict = {"first": first}
    ours_timed = [name for name in timed if name in SEGDEPLOY_ENGINES]
    if ours_timed:
        fastest_ours = min(ours_timed, key=lambda name: summary[name]["median_ms"])
        ours, best = summary[fastest_ours], summary[first]
        result["segdeploy_fastest"] = fastest_ours
        result["segdeploy_over_first"] = round(ours["median_ms"] / best["median_ms"], 3)
        result["segdeploy_within_noise_of_first"] = ours["min_ms"] <= best["max_ms"]
    return result


def outputs_agree(calls: dict[str, Callable]) -> dict[str, float]:
    """Largest absolute difference of each engine's output from eager PyTorch's."""
    if "torch_eager" not in calls:
        return {}
    reference = np.asarray(calls["torch_eager"]())
    return {
        name: float(np.abs(np.asarray(call()) - reference).max()) for name, call in calls.items()
    }


def measure_model(name: str, args: argparse.Namespace, folder: Path) -> dict:
    model, onnx_path, info = build(name, folder, args.size)
    x = np.random.default_rng(0).standard_normal(info["input"], np.float32)
    calls, notes = make_calls(args.engines, model, onnx_path, x, args.compile_limit)
    print(f"# {name}: timing {list(calls)}", file=sys.stderr, flush=True)
    summary = summarise(take_turns(calls, args.rounds, args.seconds))
    # Engines computing in FP32 (OpenVINO's default may be bf16 on this CPU).
    fp32 = [e for e in summary if notes[e].get("inference_precision", "f32") == "f32"]
    result = info | {
        "engines": summary,
        "all_engines": verdict(summary, list(summary)),
        "fp32_engines": verdict(summary, fp32) | {"among": fp32},
        "setup": notes,
        "max_abs_diff_vs_eager": outputs_agree(calls),
    }
    del calls, model
    gc.collect()
    return result


def cell(result: dict, engine: str) -> str:
    timing = result["engines"].get(engine)
    if timing is None:
        return result["setup"].get(engine, {}).get("status", "not run").split(":")[0]
    text = f"{timing['median_ms']:.1f} ({timing['min_ms']:.1f}-{timing['max_ms']:.1f})"
    return f"**{text}**" if engine == result["all_engines"]["first"] else text


def standing(judged: dict) -> list[str]:
    if not judged:
        return ["-", "-"]
    ours = judged.get("segdeploy_over_first")
    if not ours:
        return [ENGINE_LABELS[judged["first"]], "-"]
    noise = "within noise" if judged.get("segdeploy_within_noise_of_first") else "outside noise"
    path = ENGINE_LABELS[judged["segdeploy_fastest"]].removeprefix("segdeploy (").rstrip(")")
    return [ENGINE_LABELS[judged["first"]], f"{ours:.3f} via {path} ({noise})"]


def markdown(results: dict[str, dict], engines: list[str]) -> str:
    head = ["model", *(ENGINE_LABELS[e] for e in engines)]
    head += ["first", "segdeploy / first", "first at FP32", "segdeploy / first at FP32"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, result in results.items():
        row = [MODELS[name][5], *(cell(result, e) for e in engines)]
        row += standing(result["all_engines"]) + standing(result["fp32_engines"])
        lines.append("| " + " | ".join(row) + " |")
    lines.append(
        "\nms per image, batch 1: median of the round medians (range of the round medians). "
        "Within noise: segdeploy's fastest round is no slower than the first engine's slowest."
    )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per engine per round")
    parser.add_argument("--compile-limit", type=float, default=180.0, help="seconds")
    parser.add_argument("--size", type=int, default=None, help="override input size (debug)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engines"))
    parser.add_argument("--keep", type=Path, default=None, help="keep checkpoints and exports here")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(args.models) - set(MODELS)) + sorted(set(args.engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown model or engine: {', '.join(unknown)}")
    return args


def main() -> None:
    args = parse_args()
    started, load_before = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results = {name: measure_model(name, args, folder) for name in args.models}
    report = {
        "models": results,
        "rounds": args.rounds,
        "seconds_per_engine_per_round": args.seconds,
        "compile_limit_s": args.compile_limit,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "segdeploy": segdeploy.__version__,
        },
        "command": " ".join(sys.argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(results, args.engines))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
