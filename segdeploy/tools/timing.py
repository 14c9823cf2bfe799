"""Timing primitives: latency samples, their percentiles, and this machine's matrix-multiply peaks.

Engine-agnostic, so the sweeps under ``benchmarks/sweeps`` time other engines (OpenVINO, other
session options) with the same clock and statistics as ``segdeploy bench``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segdeploy.runtime.session import SessionOptions, create_session

# Where run_bench records the peak each precision is read against (CPU runs only).
PEAK_KEYS = {"fp32": "matmul_peak_gflops_per_s", "int8": "int8_matmul_peak_gops_per_s"}


@dataclass
class Timing:
    """Latency statistics of one engine on one case."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    iterations: int
    images_per_s: float

    @classmethod
    def from_samples(cls, seconds: list[float], batch: int) -> Timing:
        ms = np.asarray(seconds) * 1e3
        return cls(
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            iterations=len(ms),
            images_per_s=float(batch * 1e3 / np.median(ms)),
        )


def time_calls(
    call: Callable[[], object], warmup: int, iters: int | None, seconds: float
) -> list[float]:
    """Run ``call`` ``warmup`` times untimed, then ``iters`` times (or for ``seconds``)."""
    for _ in range(warmup):
        call()
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    while (len(samples) < iters) if iters else (time.perf_counter() < deadline or len(samples) < 5):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def measure_matmul_peak(threads: int = 0, size: int = 2048, repeats: int = 10) -> float:
    """Single-precision matrix-multiply GFLOP/s of this machine (PyTorch's BLAS, best of N)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure_int8_matmul_peak(threads: int = 0, size: int = 2048, repeats: int = 10) -> float:
    """8-bit matrix-multiply GOP/s of this machine through ONNX Runtime (best of N).

    A one-node ``MatMulInteger`` graph, uint8 activations x int8 weights: the same MLAS integer
    GEMM that ``QLinearConv`` uses, so INT8 models can be read against it as FP32 models are read
    against :func:`measure_matmul_peak`. Their ratio is the most INT8 can gain on this CPU.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "int8_matmul_peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(weights, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = create_session(
        model.SerializeToString(), SessionOptions(provider="cpu", intra_op_threads=threads)
    )
    feed = {"A": rng.integers(0, 256, (size, size), dtype=np.uint8)}
    session.run(None, feed)
    best = min(time_calls(lambda: session.run(None, feed), warmup=0, iters=repeats, seconds=0))
    return 2 * size**3 / best / 1e9
