"""ONNX Runtime's thread spinning on a small CPU: one model alone, and two engines taking turns.

    python benchmarks/sweeps/spinning.py exports/resnet18.onnx:224 exports/unet_small.onnx:256

For each model: p50 latency of one session with ``session.intra_op.allow_spinning`` on and off
(blocks of runs, order ABAB so drift cancels), then two sessions of the model run in turns, then
one session in turns with PyTorch eager. Writes ``benchmarks/results/sweeps/spinning.json``; run it from the
repository root with segdeploy installed. The figures and
the default chosen from them are in benchmarks/README.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from segdeploy.runtime import open_model
from segdeploy.tools.bench import eager_model


def session(path: str, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def p50_ms(samples: list[float]) -> float:
    return round(float(np.median(samples)) * 1e3, 2)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(path: str, size: int, runs: int) -> dict:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    feed = {"image": x}
    eager = eager_model(open_model(path, provider="cpu").card)
    tensor = torch.from_numpy(x)
    row: dict = {"model": path, "size": size}
    alone: dict[bool, list[float]] = {True: [], False: []}
    for spinning in (True, False, True, False):
        s = session(path, spinning)
        for _ in range(3):
            s.run(None, feed)
        alone[spinning] += [timed(lambda s=s: s.run(None, feed)) for _ in range(runs)]
    for spinning in (True, False):
        key = "spinning" if spinning else "no_spinning"
        row[f"alone_p50_ms_{key}"] = p50_ms(alone[spinning])
        a, b = session(path, spinning), session(path, spinning)
        turns = []
        for i in range(runs + 3):
            turns.append(timed(lambda s=(a if i % 2 else b): s.run(None, feed)))
        row[f"two_sessions_in_turns_p50_ms_{key}"] = p50_ms(turns[3:])
        ort_times, eager_times = [], []
        with torch.inference_mode():
            for _ in range(runs + 3):
                ort_times.append(timed(lambda a=a: a.run(None, feed)))
                eager_times.append(timed(lambda: eager(tensor)))
        row[f"with_eager_in_turns_ort_p50_ms_{key}"] = p50_ms(ort_times[3:])
        row[f"with_eager_in_turns_eager_p50_ms_{key}"] = p50_ms(eager_times[3:])
    return row


def main(args: list[str]) -> None:
    rows = []
    for item in args:
        path, size = item.rsplit(":", 1)
        rows.append(measure(path, int(size), runs=30))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(__file__).resolve().parents[1] / "results" / "sweeps" / "spinning.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
