"""ONNX Runtime sessions that never lie about where they run.

ONNX Runtime silently falls back to the CPU when the CUDA provider cannot load (no GPU, missing
CUDA or cuDNN libraries). :func:`create_session` checks the providers the session actually got
and raises :class:`~segdeploy.core.errors.ProviderUnavailableError` when CUDA was asked for but
is not what runs the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from segdeploy.core.errors import ProviderUnavailableError, SegdeployError

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDER_CHOICES = ("cpu", "cuda", "auto")
#: ``intra_op_threads`` value that lets ONNX Runtime use every core.
ALL_CORES = 0


@dataclass(frozen=True)
class SessionOptions:
    """How to open a session.

    Attributes:
        provider: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when it really works, else CPU).
        intra_op_threads: CPU threads per operator; 0 lets ONNX Runtime choose (all cores).
        device_id: CUDA device.
        cudnn_conv_algo_search: ``HEURISTIC`` by default: ``EXHAUSTIVE`` re-benchmarks every
            convolution for each new input shape, which costs hundreds of ms when sizes vary.
        allow_spinning: let idle CPU worker threads busy-wait for the next run (ONNX Runtime's
            default). Alone, a model runs within a few percent either way; but when another
            session or PyTorch computes in the same process between runs, the spinning threads
            take its cores: on 2 cores two sessions taking turns ran 1.7-1.9x slower with
            spinning (benchmarks/README.md). Turn it off when several engines share the CPU.
        profile_prefix: switch on ONNX Runtime's profiler, writing ``<prefix>_<time>.json``
            (see :mod:`segdeploy.tools.opprofile`).
    """

    provider: str = "cpu"
    intra_op_threads: int = ALL_CORES
    device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    allow_spinning: bool = True
    profile_prefix: str | None = None


def _ort_options(options: SessionOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if options.allow_spinning else "0"
    )
    if options.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = options.profile_prefix
    so.log_severity_level = 3  # provider fallback is reported by us, as an error, not a warning
    return so


def _cuda_provider(options: SessionOptions) -> tuple[str, dict[str, str]]:
    return (
        PROVIDER_NAMES["cuda"],
        {
            "device_id": str(options.device_id),
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
        },
    )


def create_session(
    model: str | Path | bytes, options: SessionOptions | None = None
) -> ort.InferenceSession:
    """Open ``model`` (a path or serialized bytes) on the requested provider, or raise."""
    options = options or SessionOptions()
    if options.provider not in PROVIDER_CHOICES:
        raise SegdeployError(
            f"unknown provider '{options.provider}'; choose one of {', '.join(PROVIDER_CHOICES)}"
        )
    source = model if isinstance(model, bytes) else os.fspath(model)
    available = ort.get_available_providers()
    want_cuda = options.provider in ("cuda", "auto")
    if want_cuda and PROVIDER_NAMES["cuda"] in available:
        # A CUDA provider that cannot load makes ORT print pages of loader errors and fall back;
        # we check the outcome ourselves and report it in one sentence instead.
        ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(
                source,
                sess_options=_ort_options(options),
                providers=[_cuda_provider(options), PROVIDER_NAMES["cpu"]],
            )
        except Exception as err:  # ORT raises plain RuntimeError/Fail for bad CUDA setups
            if options.provider == "cuda":
                message = f"the CUDA provider failed to start: {err}"
                raise ProviderUnavailableError(message) from None
            session = None
        finally:
            ort.set_default_logger_severity(2)
        if session is not None and session.get_providers()[0] == PROVIDER_NAMES["cuda"]:
            return session
    if options.provider == "cuda":
        raise ProviderUnavailableError(
            "CUDA was asked for but ONNX Runtime cannot run on it here (no usable GPU or CUDA "
            f"libraries); this onnxruntime build has {', '.join(available)}, and only the CPU one "
            "runs on this machine"
        )
    return ort.InferenceSession(
        source, sess_options=_ort_options(options), providers=[PROVIDER_NAMES["cpu"]]
    )


def session_provider(session: ort.InferenceSession) -> str:
    """Short name (``cpu`` / ``cuda``) of the provider that actually runs ``session``."""
    first = session.get_providers()[0]
    return next((short for short, name in PROVIDER_NAMES.items() if name == first), first)


def usable_providers() -> list[str]:
    """Providers this machine can really run on, probed with a one-node model."""
    found = ["cpu"]
    if PROVIDER_NAMES["cuda"] in ort.get_available_providers():
        try:
            probe = create_session(_identity_model(), SessionOptions(provider="auto"))
        except SegdeployError:
            return found
        if session_provider(probe) == "cuda":
            found.append("cuda")
    return found


def _identity_model() -> bytes:
    """A serialized one-node ONNX model (Identity on a float vector), built without onnx."""

    # Hand-written protobuf keeps the runtime free of the onnx package: ModelProto{ir_version=8,
    # opset_import{version=13}, graph{node{Identity x->y}, name, input x, output y}}.
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2]) + _varint(len(payload)) + payload

    def value_info(name: bytes) -> bytes:
        tensor_type = b"\x08\x01" + field(2, field(1, b"\x08\x01"))  # FLOAT, shape [1]
        return field(1, name) + field(2, field(1, tensor_type))

    node = field(1, b"x") + field(2, b"y") + field(4, b"Identity")
    graph = field(1, node) + field(2, b"probe") + field(11, value_info(b"x"))
    graph += field(12, value_info(b"y"))
    return b"\x08\x08" + field(7, graph) + field(8, b"\x10\x0d")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
