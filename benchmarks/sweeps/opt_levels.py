"""ONNX Runtime CPU tuning: graph optimisation level x intra-op threads, same input, p50 over 3 s.

    python benchmarks/sweeps/opt_levels.py exports/unet.onnx:256 exports/resnet18.onnx:224

Writes ``benchmarks/results/sweeps/opt_levels.json``; the table and the defaults chosen from it are in
benchmarks/README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from segdeploy.tools.timing import Timing, time_calls

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def main(args: list[str]) -> None:
    rows = []
    for item in args:
        path, size = item.rsplit(":", 1)
        x = np.random.default_rng(0).standard_normal((1, 3, int(size), int(size)), np.float32)
        for threads in (1, 2):
            for name, level in LEVELS.items():
                options = ort.SessionOptions()
                options.graph_optimization_level = level
                options.intra_op_num_threads = threads
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                feed = {session.get_inputs()[0].name: x}
                samples = time_calls(lambda s=session, f=feed: s.run(None, f), 3, None, 3.0)
                p50 = Timing.from_samples(samples, 1).p50_ms
                rows.append(
                    {"model": path, "size": int(size), "threads": threads, "opt_level": name,
                     "p50_ms": round(p50, 2)}
                )  # fmt: skip
                print(rows[-1], flush=True)
    out = Path(__file__).resolve().parents[1] / "results" / "sweeps" / "opt_levels.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
