"""Serving an export on Triton Inference Server.

:func:`~segdeploy.serve.triton_repo.write_triton_repo` writes a model repository for Triton's
native onnxruntime backend (what GPU servers run). Torch-free: it reads the graph's signature
and the model card through ONNX Runtime only.
"""

from segdeploy.serve.triton_repo import (
    TritonRepo,
    TritonRepoOptions,
    parse_model_config,
    write_triton_repo,
)

__all__ = ["TritonRepo", "TritonRepoOptions", "parse_model_config", "write_triton_repo"]
