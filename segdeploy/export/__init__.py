"""Export: checkpoint -> ONNX behind the parity gate, and the variants made from an export.

    contract     the export contract per task, as data (torch-free)
    onnx_file    load / read the card / write metadata of ONNX files (onnx, no torch)
    exporter     torch -> ONNX -> onnxsim -> checker -> card -> parity gate -> file
    parity_gate  ONNX Runtime against PyTorch, in layers (``export`` and ``verify``)
    accuracy_gate  the accuracy gate of INT8/FP16/bf16 variants (torch-free)
    quantize     static INT8 for CPU behind the accuracy gate (torch-free)
    fp16         FP16 variant for CUDA (torch-free)
    end_to_end   one graph from uint8 image to class mask, gated against the runtime (torch-free)

Names are loaded on first use, so ``segdeploy.export.quantize`` works without torch installed
while ``from segdeploy.export import export_checkpoint`` still reads naturally.
"""

from __future__ import annotations

from segdeploy.core.lazy import lazy_attributes

_LAZY = {
    "CONTRACTS": "contract",
    "DEFAULT_OPSET": "contract",
    "DEFAULT_PARITY_SHAPES": "contract",
    "ExportContract": "contract",
    "ExportResult": "exporter",
    "export_checkpoint": "exporter",
    "simplify": "exporter",
    "to_onnx": "exporter",
    "check_parity": "parity_gate",
    "verify_export": "parity_gate",
    "load_onnx": "onnx_file",
    "read_card": "onnx_file",
    "quantize_int8": "quantize",
    "convert_fp16": "fp16",
    "convert_bf16": "bf16",
    "build_end_to_end": "end_to_end",
    "check_end_to_end": "end_to_end",
    "export_end_to_end": "end_to_end",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
