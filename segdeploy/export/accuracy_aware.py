"""Accuracy-aware INT8: when the full-INT8 file fails its gate, keep the nodes that lose the
metric in FP32, one at a time, until the held-out gate holds, or refuse with the map.

1. **Calibration as a choice.** ``minmax`` (ONNX Runtime's default), ``entropy`` or
   ``percentile``; ``auto`` tries them in that order and keeps the first that passes the gate.
2. **Ranking.** The quantized nodes are ranked by the noise they add
   (:mod:`segdeploy.export.divergence`) on a *ranking subset of the training split* (the first
   ``rank_samples`` calibration images), never the gate's images: the gate must stay a held-out
   measurement of a file it did not help choose.
3. **Fallback.** The worst node goes to FP32 (``nodes_to_exclude``), the file is re-quantized
   (calibration read back from ONNX Runtime's calibration cache) and gated again on the
   held-out images, then the next node, until the gate holds or ``max_fallback`` nodes are out.
4. **Bounds.** At most ``max_fallback`` steps and ``max_seconds`` of wall time (checked before
   each step); and every step's latency is measured against FP32 on the same input (the largest
   calibration image, median of 7 runs): a partly quantized graph adds Q/DQ pairs, so when it is
   no longer ``min_speedup`` times faster than FP32 (default 1.0: no longer faster) the loop
   stops and refuses; 0 switches the check off.

The file written records what was kept in FP32 (nodes, torch modules, steps, latencies) in its
``metadata_props`` (:data:`FALLBACK_KEY`) and in its ``.gate.json``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod

from segdeploy.core.artifacts import PRECISION_KEY, gate_report_path
from segdeploy.core.errors import AccuracyGateError, SegdeployError
from segdeploy.core.fileio import atomic_write
from segdeploy.export.accuracy_gate import GateData, GateResult, gate_and_write
from segdeploy.export.contract import (
    CALIBRATION_CHOICES,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_MAX_FALLBACK,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MIN_SPEEDUP,
)
from segdeploy.export.divergence import DivergenceMap, divergence_map
from segdeploy.export.node_scopes import torch_modules
from segdeploy.export.onnx_file import attach_metadata

#: Calibration methods by their ``--calibration`` name; ``auto`` tries them in this order.
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
#: Training images the ranking map runs on.
DEFAULT_RANK_SAMPLES = 8
#: Key of the fallback record (:class:`FallbackRecord`) in the variant's ``metadata_props``.
FALLBACK_KEY = "segdeploy.int8_fallback"
#: Ops whose inputs ONNX Runtime's QDQ quantizer rounds: the nodes worth keeping in FP32.
_QUANTIZED_OPS = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "Add",
    "Mul",
    "Concat",
    "Resize",
    "AveragePool",
    "GlobalAveragePool",
    "MaxPool",
    "Softmax",
)
_TIMING_RUNS = 7


@dataclass
class Step:
    """One gated attempt: which calibration, which nodes in FP32, what the gate and clock said."""

    calibration: str
    excluded: list[str]
    metric: float
    drop: float
    passed: bool
    latency_ms: float
    seconds: float


@dataclass
class FallbackRecord:
    """What the loop did; stored in the variant and its gate report."""

    calibration: str
    excluded: list[dict[str, Any]] = field(default_factory=list)
    fp32_latency_ms: float = 0.0
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    ranking_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    """Everything a quantize run fixed before the first attempt (see :func:`quantize_int8`)."""

    onnx_path: Path
    out: Path
    input_name: str
    #: The FP32 parent's metadata (the card) and the calibration manifest, for every attempt.
    variant_metadata: dict[str, str]
    calibration: GateData
    calib_inputs: list[np.ndarray]
    gate: GateData
    max_drop: float
    min_agreement: float | None
    method: str = DEFAULT_CALIBRATION_METHOD
    max_fallback: int = DEFAULT_MAX_FALLBACK
    rank_samples: int = DEFAULT_RANK_SAMPLES
    max_seconds: float = DEFAULT_MAX_SECONDS
    min_speedup: float = DEFAULT_MIN_SPEEDUP
    #: Replace an existing ``out``; ``reads``: what the run reads, which ``out`` must never be.
    force: bool = False
    reads: list[Path] | None = None
    #: The full-INT8 graph of the first attempt (``method``, or minmax for auto).
    full_int8: onnx.ModelProto | None = None


def with_method(calibration: GateData, method: str) -> GateData:
    """``calibration`` whose description names the calibration method (recorded in the file)."""
    return replace(calibration, description=f"{calibration.description}; {method} calibration")


def check_method(method: str) -> None:
    """Raise one sentence for a calibration method that is not one of
    :data:`CALIBRATION_CHOICES`."""
    if method not in CALIBRATION_CHOICES:
        raise SegdeployError(
            f"calibration method {method!r} is not one of {', '.join(CALIBRATION_CHOICES)}"
        )


def latency_ms(path_or_bytes, x: np.ndarray) -> float:
    """Median of a few runs of one input on the CPU provider (full optimisation)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(_TIMING_RUNS):
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(1000 * (time.perf_counter() - started))
    return float(np.median(times))


class _Loop:
    """The state of one run: the clock, the FP32 latency, the cache and the attempts."""

    def __init__(self, request: Request, tmp: Path):
        self.request, self.tmp = request, tmp
        self.started = time.perf_counter()
        # The timing input: the largest calibration image, the size that dominates latency.
        self.timing_input = max(request.calib_inputs, key=lambda x: x.size)
        self.fp32_ms = latency_ms(str(request.onnx_path), self.timing_input)
        self.steps: list[Step] = []
        self.quantized: set[str] = set()  # nodes of the full-INT8 graph that read Q/DQ values
        self.full_model = onnx.ModelProto()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def quantize(self, method: str, excluded: list[str]) -> onnx.ModelProto:
        from segdeploy.export.quantize import quantize_static_qdq

        r = self.request
        model = quantize_static_qdq(
            r.onnx_path,
            r.input_name,
            r.calib_inputs,
            CALIBRATION_METHODS[method],
            tuple(excluded),
            self.tmp / f"calibration-{method}.json",
        )
        attach_metadata(model, r.variant_metadata | {PRECISION_KEY: "int8"})
        return model

    def too_slow(self, latency: float) -> bool:
        minimum = self.request.min_speedup
        return minimum > 0 and self.fp32_ms / latency < minimum

    def attempt(self, method: str, excluded: list[str], record: FallbackRecord | None):
        """Time one file, then (unless it is too slow, when ``record`` is given) gate it.

        Returns ``(result or None, error or None)``; a file too slow is never gated or written
        (``(None, None)``)."""
        step_started = time.perf_counter()
        model = self.quantize(method, excluded)
        latency = latency_ms(model.SerializeToString(), self.timing_input)
        if record is not None and self.too_slow(latency):
            self.steps.append(
                Step(
                    method,
                    list(excluded),
                    math.nan,
                    math.nan,
                    False,
                    round(latency, 3),
                    round(time.perf_counter() - step_started, 2),
                )
            )
            return None, None
        if record is not None:
            attach_metadata(model, {FALLBACK_KEY: json.dumps(record.to_dict())})
        r = self.request
        try:
            result = gate_and_write(
                r.onnx_path,
                model,
                r.out,
                r.gate,
                with_method(r.calibration, method),
                r.force,
                r.reads,
                max_drop=r.max_drop,
                min_agreement=r.min_agreement,
            )
            error = None
        except AccuracyGateError as refused:
            result, error = refused.result, refused
        self.steps.append(
            Step(
                method,
                list(excluded),
                result.variant,
                result.drop,
                result.passed,
                round(latency, 3),
                round(time.perf_counter() - step_started, 2),
            )
        )
        return (result if error is None else None), error


def rank_nodes(
    fp32: Path, candidate: Path, inputs: list[np.ndarray], names: list[str]
) -> DivergenceMap:
    """The divergence map of ``candidate`` on the ranking inputs (training images)."""
    return divergence_map(fp32, candidate, inputs, names)


def _quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes of a QDQ graph that read a dequantized activation."""
    dequantized = {
        out for n in model.graph.node if n.op_type == "DequantizeLinear" for out in n.output
    }
    return {
        node.name
        for node in model.graph.node
        if node.op_type in _QUANTIZED_OPS and any(i in dequantized for i in node.input)
    }


def _feeders(model: onnx.ModelProto, name: str) -> list[str]:
    """The quantized nodes whose outputs reach node ``name`` through a Q/DQ pair."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = next(n for n in model.graph.node if n.name == name)
    found = []
    for tensor in node.input:
        dq = producers.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producers.get(dq.input[0])
        source = (
            producers.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        )
        if source is not None and source.op_type in _QUANTIZED_OPS and source.name not in found:
            found.append(source.name)
    return found


def _refusal(first: AccuracyGateError, loop: _Loop, ranking: DivergenceMap | None, why: str):
    where = f"; worst nodes on the training images: {ranking.summary(5)}" if ranking else ""
    steps = len([s for s in loop.steps if s.excluded])
    tried = f" (after {steps} fallback steps, {loop.elapsed():.0f} s)" if loop.steps else ""
    error = AccuracyGateError(f"{first}{where}; {why}{tried}", first.result)
    error.divergence = ranking  # type: ignore[attr-defined]
    return error


def quantize_until_gate_holds(request: Request, first: AccuracyGateError) -> GateResult:
    """After the full-INT8 file (``request.method``) failed with ``first``: try the other
    calibration methods (``auto``), then keep nodes in FP32 one by one (``max_fallback``).

    Raises:
        AccuracyGateError: nothing passed within the bounds; the message names the five worst
            nodes of the ranking map and why the loop stopped. No file is written.
    """
    with tempfile.TemporaryDirectory(prefix="segdeploy-int8-") as tmp:
        return _run(request, first, Path(tmp))


def _run(request: Request, first: AccuracyGateError, tmp: Path) -> GateResult:
    loop = _Loop(request, tmp)
    best_method, best_drop = request.method, first.result.drop
    if request.method == "auto":
        best_method = "minmax"
        for method in ("entropy", "percentile"):
            result, error = loop.attempt(method, [], None)
            if result is not None:
                return _finish(loop, result, FallbackRecord(method))
            if error.result.drop < best_drop:
                best_method, best_drop = method, error.result.drop
    ranking = _ranking(request, loop, best_method, tmp)
    if request.max_fallback <= 0:
        raise _refusal(
            first, loop, ranking, "pass --max-fallback N to keep up to N of them in FP32"
        )
    return _fall_back(request, loop, first, ranking, best_method)


def _fall_back(
    request: Request, loop: _Loop, first: AccuracyGateError, ranking: DivergenceMap, method: str
) -> GateResult:
    """Keep the ranked nodes in FP32 one by one, within the bounds; the first file that passes."""
    candidates = [n for n in ranking.worst() if n.node in loop.quantized]
    modules = torch_modules(onnx.load(request.onnx_path))
    record = FallbackRecord(
        method,
        fp32_latency_ms=round(loop.fp32_ms, 3),
        steps=loop.steps,
        ranking_images=ranking.images,
    )
    excluded: list[str] = []
    for node in candidates[: request.max_fallback]:
        if loop.elapsed() > request.max_seconds:
            raise _refusal(first, loop, ranking, f"the {request.max_seconds:.0f} s bound passed")
        # ONNX Runtime rounds a tensor at its producer's output too: the nodes that feed this
        # one its rounded activations leave INT8 with it, or its input stays rounded.
        feeders = _feeders(loop.full_model, node.node)
        added = [n for n in (node.node, *feeders) if n not in excluded]
        excluded += added
        record.excluded += [
            {
                "node": n,
                "module": modules.get(n, ""),
                "ranked": n == node.node,
                "sqnr_db": node.sqnr_db if n == node.node else None,
            }
            for n in added
        ]
        result, _ = loop.attempt(method, excluded, record)
        latency = loop.steps[-1].latency_ms
        if loop.too_slow(latency):
            raise _refusal(
                first,
                loop,
                ranking,
                f"with {len(excluded)} nodes in FP32 it runs in {latency:.1f} ms against "
                f"FP32's {loop.fp32_ms:.1f} ms, less than the {request.min_speedup:.2f}x "
                "speed-up asked for (--min-speedup)",
            )
        if result is not None:
            return _finish(loop, result, record)
    raise _refusal(first, loop, ranking, f"the gate still fails with {len(excluded)} nodes in FP32")


def _ranking(request: Request, loop: _Loop, method: str, tmp: Path) -> DivergenceMap:
    """Rank on the first ``rank_samples`` calibration (training) images, never the gate's."""
    first = "minmax" if request.method == "auto" else request.method
    if request.full_int8 is not None and method == first:
        model = request.full_int8
    else:
        model = loop.quantize(method, [])
    loop.quantized = _quantized_nodes(model)
    loop.full_model = model
    candidate = tmp / "full-int8.onnx"
    onnx.save(model, candidate)
    count = request.rank_samples
    return rank_nodes(
        request.onnx_path,
        candidate,
        request.calib_inputs[:count],
        request.calibration.names[:count],
    )


def _finish(loop: _Loop, result: GateResult, record: FallbackRecord) -> GateResult:
    """Complete the record (all steps, time) in the gate report written beside the variant."""
    record.steps, record.seconds = loop.steps, round(loop.elapsed(), 2)
    record.fp32_latency_ms = round(loop.fp32_ms, 3)
    report_path = gate_report_path(result.path)
    report = json.loads(report_path.read_text())
    report["int8_fallback"] = record.to_dict()
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(report_path, lambda tmp: tmp.write_text(text))
    result.fallback = record  # type: ignore[attr-defined]
    return result
