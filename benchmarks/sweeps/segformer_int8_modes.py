"""Static (QDQ, what ``segdeploy quantize`` writes) against dynamic INT8 for SegFormer.

    python benchmarks/sweeps/segformer_int8_modes.py FP32.onnx STATIC_INT8.onnx DATA_DIR

SegFormer's encoder is mostly MatMul (attention and MLP), which ONNX Runtime's dynamic
quantization covers without calibration; its convolutions (patch embeddings, the decode head's
fuse layer) stay FP32 there. This writes ``FP32.dynamic-int8.onnx`` with
``onnxruntime.quantization.quantize_dynamic`` (signed 8-bit weights), then times the three files
at 512x512, batch 1, in alternating rounds (median and range of each round's median), and scores
each on the validation split of DATA_DIR through the runtime (mIoU, argmax agreement with FP32).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from segdeploy.core.metrics import score_predictions
from segdeploy.data.samples import labelled_images
from segdeploy.runtime import open_model


def _median_ms(model, batch: np.ndarray, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run_batch(batch)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main() -> None:
    fp32_path, static_path, data = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    dynamic_path = fp32_path.with_suffix(".dynamic-int8.onnx")
    quantize_dynamic(fp32_path, dynamic_path, weight_type=QuantType.QInt8)
    fp32 = open_model(fp32_path, provider="cpu")
    models = {
        "fp32": fp32,
        "static int8 (QDQ)": open_model(static_path, provider="cpu", card=fp32.card),
        "dynamic int8": open_model(dynamic_path, provider="cpu", card=fp32.card),
    }
    batch = np.random.default_rng(0).standard_normal((1, 3, 512, 512), dtype=np.float32)
    rounds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(5):
        for name, model in models.items():
            model.run_batch(batch)
            rounds[name].append(_median_ms(model, batch, 5))
    items = labelled_images(fp32.card, data, "val", None, 0)
    reference = [fp32.predict(item.pixels) for item in items]
    result = {}
    for name, model in models.items():
        masks = [model.predict(item.pixels) for item in items]
        score = score_predictions(
            ((mask, item.label) for mask, item in zip(masks, items, strict=True)),
            "segmentation",
            fp32.card.num_classes,
        )
        agreement = np.mean(
            np.concatenate([(m == r).ravel() for m, r in zip(masks, reference, strict=True)])
        )
        result[name] = {
            "ms_median": round(statistics.median(rounds[name]), 1),
            "ms_range": [round(min(rounds[name]), 1), round(max(rounds[name]), 1)],
            "miou": round(score.metric, 4),
            "argmax_agreement_with_fp32": round(float(agreement), 4),
            "images": len(items),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
