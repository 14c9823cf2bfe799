"""OpenVINO as a second CPU engine behind the runtime's session API (``provider="openvino"``).

Why a second engine: on x86 CPUs with AVX512-BF16 or AMX, OpenVINO computes convolutions in
bfloat16, about twice as fast as any FP32 engine (benchmarks/README.md, four engines). ONNX
Runtime's CPU provider has no bf16 path on x86, so no export or session option closes that gap.
In FP32 the two engines are within a few percent of each other, either way round.

What it computes is never left to OpenVINO's defaults, which differ by CPU:

* an FP32 export (``x.onnx``, ``x.int8.onnx``) runs with ``INFERENCE_PRECISION_HINT=f32``, so
  it is the same arithmetic the FP32 parity gate checks (``segdeploy verify --provider
  openvino`` runs that gate on this engine);
* the bf16 variant (``x.bf16.onnx``, made and gated by ``segdeploy convert-bf16``) runs with
  ``bf16``, and a CPU on which OpenVINO would quietly compute it in f32 instead is refused,
  like a CUDA session that would run on the CPU.

:class:`OpenVINOSession` offers the part of ``onnxruntime.InferenceSession`` the runtime uses
(inputs, outputs, metadata, ``run``), so :mod:`segdeploy.runtime.model` serves both engines with
one code path. Torch-free and ONNX-Runtime-free: an OpenVINO-only install can predict.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from segdeploy.core.artifacts import PRECISION_KEY
from segdeploy.core.errors import ProviderUnavailableError

#: How to get OpenVINO, for error sentences and the README.
OPENVINO_HINT = "pip install 'segdeploy[openvino]'"
#: The name :meth:`OpenVINOSession.get_providers` reports (``session_provider`` -> "openvino").
PROVIDER = "openvino"
#: OpenVINO inference precision per segdeploy precision; everything not listed runs in f32.
_PRECISION_HINTS = {"bf16": "bf16"}
# ONNX Runtime's spelling of the element types a segdeploy graph uses.
_ORT_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "u8": "tensor(uint8)"}


@dataclass(frozen=True)
class NodeArg:
    """An input or output as ``onnxruntime.NodeArg`` describes it: dynamic dims are strings."""

    name: str
    shape: list[int | str]
    type: str


@dataclass(frozen=True)
class _ModelMeta:
    custom_metadata_map: dict[str, str]


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ProviderUnavailableError(
            f"OpenVINO was asked for but is not installed: {OPENVINO_HINT}"
        ) from None
    return openvino


def openvino_available() -> bool:
    """Whether the ``openvino`` package imports here (its CPU plugin runs on any x86/ARM CPU)."""
    try:
        _openvino()
    except ProviderUnavailableError:
        return False
    return True


def _name(source: str | os.PathLike | bytes) -> str:
    return "the model in memory" if isinstance(source, bytes) else os.fspath(source)


class OpenVINOSession:
    """A model compiled by OpenVINO for the CPU, used like an ``onnxruntime.InferenceSession``.

    Args:
        source: an ONNX file or its serialized bytes.
        threads: CPU threads for inference; 0 lets OpenVINO choose (all cores).

    Raises:
        ProviderUnavailableError: OpenVINO is not installed, or the file is the bf16 variant and
            this CPU cannot compute bf16 (OpenVINO would silently run it in f32).
    """

    def __init__(self, source: str | os.PathLike | bytes, threads: int = 0) -> None:
        ov = _openvino()
        core = ov.Core()
        model = core.read_model(source if isinstance(source, bytes) else os.fspath(source))
        self._metadata = _framework_metadata(model)
        precision = self._metadata.get(PRECISION_KEY, "fp32")
        wanted = _PRECISION_HINTS.get(precision, "f32")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": wanted,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(model, "CPU", config)
        #: The precision OpenVINO really computes in (``f32`` or ``bf16``).
        self.inference_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        if self.inference_precision != getattr(ov.Type, wanted):
            raise ProviderUnavailableError(
                f"{_name(source)}: this {precision} model needs a CPU that computes {wanted} "
                "(AVX512-BF16 or AMX), "
                f"and OpenVINO would run it in {self.inference_precision.get_type_name()} here; "
                "run its FP32 parent instead"
            )
        self._inputs = [_node_arg(port) for port in model.inputs]
        self._outputs = [_node_arg(port) for port in model.outputs]
        # An infer request holds its input and output buffers, so each thread gets its own.
        self._local = threading.local()

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_modelmeta(self) -> _ModelMeta:
        return _ModelMeta(dict(self._metadata))

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs by name (all of them for ``None``), as ``InferenceSession.run`` returns them."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        # infer() copies the outputs out of the request's buffers (share_outputs=False).
        results = request.infer(feeds)
        names = output_names or [arg.name for arg in self._outputs]
        by_name = {arg.name: index for index, arg in enumerate(self._outputs)}
        return [results[self._compiled.outputs[by_name[name]]] for name in names]


def _framework_metadata(model: Any) -> dict[str, str]:
    """The ONNX file's ``metadata_props``: OpenVINO keeps them in rt_info under ``framework``."""
    if not model.has_rt_info(["framework"]):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()["framework"].items()}


def _node_arg(port: Any) -> NodeArg:
    shape: list[int | str] = [
        dim.get_length() if dim.is_static else f"dim{axis}"
        for axis, dim in enumerate(port.get_partial_shape())
    ]
    type_name = port.get_element_type().get_type_name()
    return NodeArg(port.get_any_name(), shape, _ORT_TYPES.get(type_name, f"tensor({type_name})"))
