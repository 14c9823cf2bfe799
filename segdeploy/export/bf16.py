"""bf16 variant of an FP32 export, for OpenVINO on CPUs with AVX512-BF16 or AMX, gated like INT8.

``x.onnx`` -> ``x.bf16.onnx``: the same graph and FP32 weights, marked ``segdeploy.precision =
bf16``. The mark is what changes the arithmetic: :class:`~segdeploy.runtime.openvino_session.
OpenVINOSession` compiles a marked file with OpenVINO's bf16 inference precision (about twice
the speed of FP32 on such CPUs) and every other file with f32, and ONNX Runtime refuses the
marked file rather than run it in FP32 under a bf16 name. So bf16, like INT8 and FP16, is a
file that exists only once it passed the accuracy gate: FP32 and bf16 both run on OpenVINO over
the data's validation split, through the runtime's ``predict``.
"""

from __future__ import annotations

from pathlib import Path

from segdeploy.core.cpu import cpu_features
from segdeploy.core.errors import ProviderUnavailableError
from segdeploy.export.accuracy_gate import GateResult, gate_variant
from segdeploy.export.contract import (
    BF16_GATE_PROVIDER,
    DEFAULT_CALIBRATION,
    DEFAULT_EVAL_SAMPLES,
    MAX_METRIC_DROP,
)


def convert_bf16(
    onnx_path: str | Path,
    out: str | Path | None = None,
    data: str | None = DEFAULT_CALIBRATION,
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    max_drop: float = MAX_METRIC_DROP["bf16"],
    min_agreement: float | None = None,
    force: bool = False,
) -> GateResult:
    """Write ``<name>.bf16.onnx`` (and its ``.gate.json``) if it passes the accuracy gate.

    Args:
        onnx_path: an FP32 segdeploy export.
        data: ``"synthetic"`` or a data folder; its validation split grades the variant
            (by default the data the card says the model was trained on).
        eval_samples: validation images for the gate.
        max_drop: largest tolerated drop of mIoU / accuracy (0.005 = half a point).
        min_agreement: override the contract's minimum argmax agreement with FP32.
        force: replace an existing ``out`` (never the FP32 export or the data it reads).

    Raises:
        SegdeployError: unreadable input or data, an ``out`` that is an input, or one that
            exists without ``force``.
        ProviderUnavailableError: OpenVINO is not installed, or this CPU cannot compute bf16.
        AccuracyGateError: the bf16 model failed the gate (``.result``); no file was written.
    """
    return gate_variant(
        onnx_path,
        out,
        "bf16",
        lambda model: model,  # the same graph: the precision mark alone changes the arithmetic
        data,
        eval_samples,
        force,
        _require_native_bf16,
        max_drop=max_drop,
        min_agreement=min_agreement,
        provider=BF16_GATE_PROVIDER,
    )


def _require_native_bf16(onnx_path: str | Path) -> None:
    """Refuse before minutes of work where the CPU's flags say it has no bf16 arithmetic (the
    gate would grade f32 under a bf16 name); unknown flags are left to OpenVINO's own check."""
    cpu = cpu_features()
    if cpu.bf16 is False:
        raise ProviderUnavailableError(
            f"{onnx_path}: a bf16 variant needs a CPU that computes bf16 (AVX512-BF16 or AMX), "
            f"and this one ({cpu.model}) has neither, so OpenVINO would run it in f32; "
            "convert it on such a CPU, or ship the FP32 or INT8 file"
        )
