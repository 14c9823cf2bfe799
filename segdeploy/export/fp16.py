"""FP16 variant of an FP32 export, for the CUDA provider, behind the same gate as INT8.

``x.onnx`` -> ``x.fp16.onnx``: FP16 weights and compute, FP32 inputs and outputs. Before the file is
written, :mod:`segdeploy.export.accuracy_gate` grades FP32 and FP16 on the data's validation split
through the runtime. The gate runs on the CPU provider unless told otherwise: there ONNX Runtime
computes most FP16 ops in FP32 behind Cast nodes, so a CPU gate measures the rounding of weights and
activations at the casts but not half-precision arithmetic; pass ``provider="cuda"`` to gate where
the variant will run.
"""

from __future__ import annotations

from pathlib import Path

from segdeploy.export.accuracy_gate import GateResult, gate_variant
from segdeploy.export.contract import (
    DEFAULT_CALIBRATION,
    DEFAULT_EVAL_SAMPLES,
    DEFAULT_GATE_PROVIDER,
    MAX_METRIC_DROP,
)
from segdeploy.export.target_check import float16_lacking

#: Ops kept in FP32 by :func:`convert_fp16`: reductions and exponentials lose accuracy or
#: overflow in half precision; ONNX Runtime's own default list covers the rest.
FP16_BLOCKED_OPS = ("ReduceMean", "GlobalAveragePool", "Softmax", "Exp", "Pow", "Sqrt")


def convert_fp16(
    onnx_path: str | Path,
    out: str | Path | None = None,
    data: str = DEFAULT_CALIBRATION,
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    max_drop: float = MAX_METRIC_DROP["fp16"],
    min_agreement: float | None = None,
    force: bool = False,
    provider: str = DEFAULT_GATE_PROVIDER,
) -> GateResult:
    """Write ``<name>.fp16.onnx`` (and its ``.gate.json``) if it passes the accuracy gate.

    Meant for the CUDA provider (on CPU ONNX Runtime runs most FP16 ops slower than FP32). Keeping
    FP32 at the boundary means callers and ``predict`` need no change.

    Args:
        onnx_path: an FP32 segdeploy export.
        data: ``"synthetic"`` or a data folder; its validation split grades the variant.
        eval_samples: validation images for the gate.
        max_drop: largest tolerated drop of mIoU / accuracy (0.005 = half a point).
        min_agreement: override the contract's minimum argmax agreement with FP32.
        force: replace an existing ``out`` (never the FP32 export or the data it reads).
        provider: where the gate runs both models (``"cpu"``; ``"cuda"`` on a GPU).

    Raises:
        SegdeployError: unreadable input or data, an ``out`` that is an input, or one that
            exists without ``force``.
        AccuracyGateError: the FP16 model failed the gate (``.result``); no file was written.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    def half(model):
        # Ops the parent's target cannot run in float16 stay in FP32 (SegFormer's
        # LayerNormalization on onnxruntime 1.15/1.16), so the variant opens where its parent does.
        for_target = float16_lacking(model)
        blocked = [*DEFAULT_OP_BLOCK_LIST, *FP16_BLOCKED_OPS, *for_target]
        return convert_float_to_float16(model, keep_io_types=True, op_block_list=blocked)

    return gate_variant(
        onnx_path,
        out,
        "fp16",
        half,
        data,
        eval_samples,
        force,
        max_drop=max_drop,
        min_agreement=min_agreement,
        provider=provider,
    )
