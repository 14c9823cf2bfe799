"""INT8 on held-out images: FP32 / full INT8 / accuracy-aware INT8 per model, each calibration
method on each model, and the time the loop takes. Writes results/int8/<stamp>.json.

    PYTHONPATH=. python benchmarks/int8_accuracy.py MODEL.onnx [MODEL.onnx ...] \
        [--max-fallback 5] [--eval-samples 12] [--samples 16]

Each model is calibrated and graded on the data its card says it was trained on (training split
calibrates and ranks, validation split grades). Latency: median of 7 ONNX Runtime CPU runs on the
largest calibration image (the loop's own timing input), FP32 and each file.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from segdeploy.core.errors import AccuracyGateError
from segdeploy.export.accuracy_aware import latency_ms
from segdeploy.export.accuracy_gate import load_split
from segdeploy.export.onnx_file import load_onnx, read_card
from segdeploy.export.quantize import model_inputs, quantize_int8
from segdeploy.export.training_data import choose_data

RESULTS = Path(__file__).parent / "results" / "int8"


def _gate_dict(result) -> dict:
    return {
        "fp32": result.fp32,
        "int8": result.variant,
        "drop_points": 100 * result.drop,
        "stderr_points": None if result.drop_stderr is None else 100 * result.drop_stderr,
        "argmax_agreement": result.argmax_agreement,
        "passed": result.passed,
        "failures": result.failures,
    }


def one_model(path: Path, args, tmp: Path) -> dict:
    card = read_card(load_onnx(path), str(path))
    data = choose_data(card, None, path)
    calib = load_split(card, data.source, "train", args.samples, data.seed)
    timing = max(model_inputs(card, calib.images), key=lambda x: x.size)
    fp32_ms = latency_ms(str(path), timing)
    found = {
        "model": str(path),
        "data": data.source,
        "seed": data.seed,
        "timing_input": list(timing.shape),
        "fp32_ms": fp32_ms,
        "methods": {},
    }
    common = {"samples": args.samples, "eval_samples": args.eval_samples}
    for method in ("minmax", "entropy", "percentile"):
        out = tmp / f"{path.stem}.{method}.int8.onnx"
        started = time.perf_counter()
        # Thresholds off: measure every method's file, judged below against the default gate.
        result = quantize_int8(path, out, max_drop=1.0, min_agreement=0.0, method=method, **common)
        found["methods"][method] = {
            **_gate_dict(result),
            "int8_ms": latency_ms(str(out), timing),
            "seconds": time.perf_counter() - started,
            "size_mb": out.stat().st_size / 1e6,
        }
    started = time.perf_counter()
    out = tmp / f"{path.stem}.aware.int8.onnx"
    try:
        result = quantize_int8(
            path, out, max_fallback=args.max_fallback, method=args.calibration, **common
        )
        record = getattr(result, "fallback", None)
        found["accuracy_aware"] = {
            **_gate_dict(result),
            "int8_ms": latency_ms(str(out), timing),
            "excluded": record.excluded if record else [],
            "steps": [vars(s) for s in record.steps] if record else [],
            "calibration": record.calibration if record else args.calibration,
        }
    except AccuracyGateError as refused:
        found["accuracy_aware"] = {**_gate_dict(refused.result), "refused": str(refused)}
    found["accuracy_aware"]["loop_seconds"] = time.perf_counter() - started
    full = found["methods"]["minmax"]
    print(
        f"{path.name}: fp32 {full['fp32']:.4f}, full int8 {full['int8']:.4f} "
        f"(x{fp32_ms / full['int8_ms']:.2f}), aware {found['accuracy_aware']['int8']:.4f} "
        f"in {found['accuracy_aware']['loop_seconds']:.0f} s"
    )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--max-fallback", type=int, default=5)
    parser.add_argument("--calibration", default="minmax")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--eval-samples", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = [one_model(path, args, Path(tmp)) for path in args.models]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"{stamp}.json"
    machine = {"platform": platform.platform(), "processor": platform.processor()}
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "args": vars(args) | {"models": [str(m) for m in args.models]},
                "models": models,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
