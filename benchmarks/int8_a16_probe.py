"""Probe (issue 23, part 2): does 16-bit activation quantisation of the outlier tensor (ONNX
Runtime's ``TensorQuantOverrides``, ``quant_type=QUInt16``) let the INT8 gate pass on the
activation-outlier U-Net of tests/export/test_divergence.py, and at what latency against the
accuracy-aware loop's FP32 fallback? A one-off measurement, not part of the package.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_a16_probe.py 10000   # the outlier's scale

Works in /tmp/int8w/q16 (trains the tiny texture U-Net there once, 4 epochs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType

from segdeploy.core.errors import AccuracyGateError
from segdeploy.export import quantize as q
from segdeploy.export.accuracy_aware import latency_ms
from segdeploy.export.node_scopes import torch_modules

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "export")]
from broken_int8 import with_activation_outlier  # noqa: E402
from real_pixels import train_texture_unet, write_texture_segmentation  # noqa: E402

WORK = Path("/tmp/int8w/q16")


def outlier_model(scale: float) -> tuple[Path, list[str]]:
    """The trained U-Net with Conv inc.0's channel 0 times ``scale``, and the outlier tensors."""
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / "textures"
    if not (data / "classes.txt").exists():
        data = write_texture_segmentation(data)
    fp32 = WORK / "unet.onnx"
    if not fp32.exists():
        fp32 = train_texture_unet(data, WORK, 4)
    model = onnx.load(fp32)
    mods = torch_modules(model)
    first, second = (next(n for n, m in mods.items() if m == mod) for mod in ("inc.0", "inc.3"))
    broken = WORK / f"outlier{scale:g}.onnx"
    onnx.save(with_activation_outlier(model, first, second, scale=scale), broken)
    conv_a = next(n for n in model.graph.node if n.name == first)
    relu = next(n for n in model.graph.node if conv_a.output[0] in n.input)
    return broken, [conv_a.output[0], relu.output[0]]


def _calibration(broken: Path):
    from segdeploy.export.accuracy_gate import load_split
    from segdeploy.export.onnx_file import read_card
    from segdeploy.export.training_data import choose_data

    card = read_card(onnx.load(broken), str(broken))
    chosen = choose_data(card, None, broken)
    return q.model_inputs(card, load_split(card, chosen.source, "train", 16, chosen.seed).images)


def gate(broken: Path, label: str, overrides: dict | None, **options) -> Path:
    """Run ``quantize_int8`` (with ``overrides`` injected); the file, refused ones included."""
    real = q.quantize_static

    def patched(*args, **kwargs):
        if overrides:
            kwargs["extra_options"] = {**kwargs["extra_options"], "TensorQuantOverrides": overrides}
        return real(*args, **kwargs)

    q.quantize_static = patched
    out = WORK / f"{label}.int8.onnx"
    started = time.time()
    try:
        result = q.quantize_int8(
            broken, out, samples=16, eval_samples=12, min_speedup=0, force=True, **options
        )
        print(label, "PASS drop", result.drop, "s", round(time.time() - started, 1))
    except AccuracyGateError as refused:
        print(label, "FAIL drop", refused.result.drop, "s", round(time.time() - started, 1))
        print("   ", str(refused)[:300])
        out = WORK / f"{label}.refused.onnx"  # kept for its latency
        onnx.save(q.quantize_static_qdq(broken, "image", _calibration(broken)), out)
    finally:
        q.quantize_static = real
    return out


def main(scale: float) -> None:
    broken, tensors = outlier_model(scale)
    print("outlier scale", scale, "tensors", tensors)
    a16 = {t: [{"quant_type": QuantType.QUInt16}] for t in tensors}
    paths = {
        "fp32": broken,
        "int8": gate(broken, "full", None, max_fallback=0),
        "a16": gate(broken, "a16", a16, max_fallback=0),
        "fallback": gate(broken, "fallback", None, max_fallback=3),
    }
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256), dtype=np.float32)
    rounds: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(5):  # same run, alternating rounds
        for k, path in paths.items():
            rounds[k].append(latency_ms(str(path), x))
    for k, v in rounds.items():
        print(f"{k}: median {np.median(v):.2f} ms, range {min(v):.2f}-{max(v):.2f}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 1e4)
