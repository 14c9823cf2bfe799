"""FP16 variant of an FP32 export, for the CUDA provider."""

from __future__ import annotations

from pathlib import Path

import onnx

from segdeploy.core.artifacts import PRECISION_KEY, variant_path
from segdeploy.core.fileio import atomic_write
from segdeploy.export.onnx_file import attach_metadata, load_onnx, read_card, require_fp32

#: Ops kept in FP32 by :func:`convert_fp16`: reductions and exponentials lose accuracy or
#: overflow in half precision; ONNX Runtime's own default list covers the rest.
FP16_BLOCKED_OPS = ("ReduceMean", "GlobalAveragePool", "Softmax", "Exp", "Pow", "Sqrt")


def convert_fp16(onnx_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``<name>.fp16.onnx``: FP16 weights and compute, FP32 inputs and outputs.

    Meant for the CUDA provider (on CPU ONNX Runtime runs most FP16 ops slower than FP32). Keeping
    FP32 at the boundary means callers and ``predict`` need no change.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    require_fp32(model, onnx_path, "convert-fp16")
    out = Path(out) if out else variant_path(onnx_path, "fp16")
    read_card(model, str(onnx_path))
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_BLOCKED_OPS],
    )
    attach_metadata(half, {PRECISION_KEY: "fp16"})
    atomic_write(out, lambda tmp: onnx.save_model(half, tmp))
    return out
