"""OpenVINO's CPU runtime against ONNX Runtime on the same ONNX files and input (p50 ms, batch 1).

    pip install --target /tmp/ovsite openvino      # kept out of segdeploy's environment
    PYTHONPATH=/tmp/ovsite python benchmarks/sweeps/openvino_vs_ort.py exports/resnet18.onnx:224

Prints one row per model: ONNX Runtime p50, then OpenVINO p50 with the LATENCY and THROUGHPUT
hints and the largest absolute output difference. The table and the decision taken from it are
in benchmarks/README.md.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import openvino as ov

from segdeploy.tools.timing import Timing, time_calls


def p50_ms(call) -> float:
    return round(Timing.from_samples(time_calls(call, 5, None, 5.0), 1).p50_ms, 2)


def compare(core: ov.Core, path: str, size: int) -> list:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    reference = session.run(None, feed)[0]
    row: list = [path, size, p50_ms(lambda: session.run(None, feed))]
    for hint in ("LATENCY", "THROUGHPUT"):
        compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": hint})
        request = compiled.create_infer_request()
        row += [hint, p50_ms(lambda r=request: r.infer({0: x}))]
        difference = np.abs(request.infer({0: x})[0] - reference).max()
        row.append(f"max abs {difference:.1e}")
    return row


def main(args: list[str]) -> None:
    core = ov.Core()
    for item in args:
        path, size = item.rsplit(":", 1)
        print(compare(core, path, int(size)), "openvino", ov.__version__, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
