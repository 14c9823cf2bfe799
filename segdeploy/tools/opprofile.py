"""Where an ONNX Runtime session spends its time, by operator type.

ONNX Runtime's built-in profiler records every kernel call; :func:`profile_ops` runs a model a few
times with it on and sums the kernel times per operator type. The graph is the optimised one, so
fused kernels (``QLinearConv``, ``FusedConv``, NCHWc ``Conv``) appear under their own names. This
is what ``segdeploy bench --profile`` prints: whether a model is bound by its convolutions or by
the operators around them.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdeploy.runtime.session import SessionOptions, create_session


@dataclass(frozen=True)
class OpShare:
    """Kernel time of one operator type: per run, and as a share of all kernel time."""

    op_type: str
    calls_per_run: int
    ms_per_run: float
    share: float


def profile_ops(
    model: str | Path | bytes, x: np.ndarray, options: SessionOptions, runs: int = 10
) -> list[OpShare]:
    """Kernel time per operator type over ``runs`` runs on ``x``, largest first.

    One extra run comes first and is left out (memory allocation, kernel selection).
    """
    with tempfile.TemporaryDirectory() as folder:
        prefix = str(Path(folder) / "ort_profile")
        session = create_session(model, dataclasses.replace(options, profile_prefix=prefix))
        feed = {session.get_inputs()[0].name: x}
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return summarise(events, skip_runs=1)


def summarise(events: list[dict], skip_runs: int = 0) -> list[OpShare]:
    """Sum the ``*_kernel_time`` events (microseconds) of an ORT profile per operator type.

    Runs are told apart by the profile's ``model_run`` events; the first ``skip_runs`` are
    left out.
    """
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    runs = runs[skip_runs:]
    total_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in runs):
            continue
        op = event["args"]["op_name"]
        total_us[op] += event["dur"]
        calls[op] += 1
    count = max(len(runs), 1)
    grand = sum(total_us.values()) or 1.0
    shares = [
        OpShare(op, calls[op] // count, total_us[op] / count / 1e3, total_us[op] / grand)
        for op in total_us
    ]
    return sorted(shares, key=lambda s: s.ms_per_run, reverse=True)
