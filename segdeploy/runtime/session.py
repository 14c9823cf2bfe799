"""ONNX Runtime sessions that never lie about where they run.

ONNX Runtime silently falls back to the CPU when the CUDA provider cannot load (no GPU, missing
CUDA or cuDNN libraries). :func:`create_session` checks the providers the session actually got
and raises :class:`~segdeploy.core.errors.ProviderUnavailableError` when CUDA was asked for but
is not what runs the model.

Every session is opened with the Python binding's own fallback switched off
(``enable_fallback=0``): otherwise a CUDA session that fails to start, or a CUDA kernel that fails
during a run, is retried on the CPU behind our back (with a banner on stdout), and a number
labelled CUDA would be a CPU number.

What the CUDA provider is asked for (TF32, CPU fallback) is built by the pure function
:func:`session_plan`, so it can be checked on machines without a GPU.

``provider="openvino"`` opens the model with OpenVINO instead
(:class:`~segdeploy.runtime.openvino_session.OpenVINOSession`, same calls as a session).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from segdeploy.core.artifacts import PRECISION_KEY
from segdeploy.core.errors import ProviderUnavailableError, SegdeployError
from segdeploy.core.onnx_header import identity_model, read_header
from segdeploy.core.targets import read_record, refusal
from segdeploy.runtime.engine import ort
from segdeploy.runtime.openvino_session import (
    OPENVINO_HINT,
    OpenVINOSession,
    openvino_available,
)

PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
#: ``openvino`` is the second CPU engine, not an ONNX Runtime provider.
PROVIDER_CHOICES = ("cpu", "cuda", "auto", "openvino")
#: ``intra_op_threads`` value that lets ONNX Runtime use every core.
ALL_CORES = 0
#: Session config key that makes ORT refuse a session in which any node is placed on the CPU EP.
DISABLE_CPU_FALLBACK_KEY = "session.disable_cpu_ep_fallback"
#: Session config key that records which provider got which node (ORT 1.23+).
RECORD_ASSIGNMENT_KEY = "session.record_ep_graph_assignment_info"
#: The phrase of ORT's refusal when ``session.disable_cpu_ep_fallback`` finds a node on the CPU.
_FALLBACK_REFUSAL = "fallback to CPU EP has been explicitly disabled"


@dataclass(frozen=True)
class SessionOptions:
    """How to open a session.

    Attributes:
        provider: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when it really works, else CPU) or
            ``"openvino"`` (OpenVINO on the CPU; only ``intra_op_threads`` applies to it).
        intra_op_threads: CPU threads per operator; 0 lets the engine choose (all cores).
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
        use_tf32: let the CUDA provider compute FP32 convolutions and matrix products in TF32
            (ORT's ``use_tf32`` provider option). Off by default, unlike ORT: on Ampere and newer
            GPUs TF32 keeps 10 mantissa bits instead of 23, errors of ~1e-3 relative per
            product, which is the FP32 parity gate's whole tolerance (1e-3). The gate verifies
            FP32 arithmetic, so every segdeploy session computes FP32 unless a caller opts in
            here and accepts numbers the gate never checked. No effect on the CPU.
        disable_cpu_fallback: refuse a CUDA session in which ONNX Runtime would place any node on
            the CPU (session config ``session.disable_cpu_ep_fallback``), with a
            :class:`ProviderUnavailableError` that lists those nodes. The parity gate uses it so
            that what it calls a CUDA result was computed by CUDA kernels only. No effect on a CPU
            session (ORT rejects the key when the CPU provider is asked for explicitly).
    """

    provider: str = "cpu"
    intra_op_threads: int = ALL_CORES
    device_id: int = 0
    cudnn_conv_algo_search: str = "HEURISTIC"
    allow_spinning: bool = True
    profile_prefix: str | None = None
    use_tf32: bool = False
    disable_cpu_fallback: bool = False


@dataclass(frozen=True)
class SessionPlan:
    """What ORT is handed for one provider: the provider list and the session config entries."""

    providers: list[str | tuple[str, dict[str, str]]]
    config_entries: dict[str, str]


def session_plan(options: SessionOptions, provider: str) -> SessionPlan:
    """The providers and config entries a session on ``provider`` (``cpu`` or ``cuda``) gets.

    Pure (no ORT call), so what a CUDA session is asked for is testable without a GPU.
    """
    entries = {"session.intra_op.allow_spinning": "1" if options.allow_spinning else "0"}
    if provider == "cpu":
        return SessionPlan([PROVIDER_NAMES["cpu"]], entries)
    cuda = (
        PROVIDER_NAMES["cuda"],
        {
            "device_id": str(options.device_id),
            "cudnn_conv_algo_search": options.cudnn_conv_algo_search,
            "use_tf32": "1" if options.use_tf32 else "0",
        },
    )
    if options.disable_cpu_fallback:
        # ORT refuses the key when the CPU provider is also listed explicitly ("conflicting
        # session configuration"), so the CUDA provider stands alone.
        return SessionPlan([cuda], {**entries, DISABLE_CPU_FALLBACK_KEY: "1"})
    return SessionPlan([cuda, PROVIDER_NAMES["cpu"]], entries)


def _ort_options(options: SessionOptions, plan: SessionPlan) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    for key, value in plan.config_entries.items():
        so.add_session_config_entry(key, value)
    if options.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = options.profile_prefix
    # Provider fallback and refusals are reported by us, as one sentence, not as ORT log lines.
    so.log_severity_level = 4 if DISABLE_CPU_FALLBACK_KEY in plan.config_entries else 3
    return so


def _open(source: str | bytes, options: SessionOptions, provider: str) -> ort.InferenceSession:
    plan = session_plan(options, provider)
    try:
        return ort.InferenceSession(
            source,
            sess_options=_ort_options(options, plan),
            providers=plan.providers,
            enable_fallback=0,
        )
    except Exception as err:
        # A release older than segdeploy's table (require_openable lets it through) still gets
        # one sentence for the commonest failure, not ORT's C++ source location.
        name = source if isinstance(source, str) else "this model"
        again = f"export it again with --target ort>={_minor(ort.__version__)}"
        found = re.search(
            r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", str(err)
        )
        if found:
            raise SegdeployError(
                f"{name} is ONNX IR {found[1]}, and onnxruntime {ort.__version__} opens IR "
                f"{found[2]} at most; {again}"
            ) from None
        found = re.search(
            r"Opset (\d+) is under development.* domain (\S+) is till opset (\d+)", str(err)
        )
        if found:
            raise SegdeployError(
                f"{name} imports opset {found[1]} of domain {found[2]}, and onnxruntime "
                f"{ort.__version__} opens opset {found[3]} of it at most; {again}"
            ) from None
        raise


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def create_session(
    model: str | Path | bytes, options: SessionOptions | None = None
) -> ort.InferenceSession | OpenVINOSession:
    """Open ``model`` (a path or serialized bytes) on the requested provider, or raise.

    Raises:
        ProviderUnavailableError: CUDA asked for but not usable here, or (with
            ``disable_cpu_fallback``) some nodes would run on the CPU inside the CUDA session;
            OpenVINO asked for but not installed, or unable to compute the file's precision.
        SegdeployError: an unknown provider name.
    """
    options = options or SessionOptions()
    if options.provider not in PROVIDER_CHOICES:
        raise SegdeployError(
            f"unknown provider '{options.provider}'; choose one of {', '.join(PROVIDER_CHOICES)}"
        )
    source = model if isinstance(model, bytes) else os.fspath(model)
    if options.provider == "openvino":
        return OpenVINOSession(source, options.intra_op_threads)
    if not is_ort_format(source):
        require_openable(source)  # a .ort file has no protobuf header to judge; ORT reads it
    available = ort.get_available_providers()
    if options.provider in ("cuda", "auto") and PROVIDER_NAMES["cuda"] in available:
        session = _try_cuda(source, options)
        if session is not None:
            return _refuse_bf16(session, source)
    if options.provider == "cuda":
        raise _cuda_unusable(available)
    return _refuse_bf16(_open(source, options, "cpu"), source)


def is_ort_format(source: str | bytes) -> bool:
    """Whether ``source`` is an ORT-format flatbuffer (``.ort``, for mobile and minimal builds):
    its file identifier ``ORTM`` sits at bytes 4-8."""
    if isinstance(source, bytes):
        return source[4:8] == b"ORTM"
    try:
        with open(source, "rb") as handle:
            return handle.read(8)[4:8] == b"ORTM"
    except OSError:
        return False


def require_openable(source: str | bytes) -> None:
    """Refuse, in one sentence naming the file's IR version and opset and the ``--target`` that
    fits, a file this onnxruntime cannot open (before ORT's own load error).

    Judged by the file's recorded runtime range (``segdeploy.target``) when it has one, else by
    its IR version and opset against :mod:`segdeploy.core.targets`; read from the protobuf
    itself, since a runtime that is too old cannot read the file's metadata.
    """
    header = read_header(source)
    name = source if isinstance(source, str) else "this model"
    record = read_record(header.metadata)
    problem = refusal(name, header.ir_version, header.opset, "onnxruntime", ort.__version__, record)
    if problem:
        raise SegdeployError(problem)


def _refuse_bf16(session: ort.InferenceSession, source: str | bytes) -> ort.InferenceSession:
    """ONNX Runtime has no x86 bf16 path: a bf16 variant would run in FP32 under a bf16 name."""
    if session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY) == "bf16":
        name = source if isinstance(source, str) else "this model"
        raise SegdeployError(
            f"{name} is a bf16 variant, computed by OpenVINO (provider 'openvino', "
            f"{OPENVINO_HINT}); ONNX Runtime would run it in FP32, so run its FP32 parent there"
        )
    return session


def _try_cuda(source: str | bytes, options: SessionOptions) -> ort.InferenceSession | None:
    """A session really running on CUDA; None (``auto``) or an error (``cuda``) otherwise."""
    # A CUDA provider that cannot load makes ORT print pages of loader errors; we check the
    # outcome ourselves and report it in one sentence instead.
    ort.set_default_logger_severity(4)
    try:
        session = _open(source, options, "cuda")
    except Exception as err:  # ORT raises plain RuntimeError/Fail for bad CUDA setups
        if options.provider != "cuda":
            return None
        raise _cuda_failure(source, options, err) from None
    finally:
        ort.set_default_logger_severity(2)
    return session if session_provider(session) == "cuda" else None


def _cuda_unusable(available: list[str]) -> ProviderUnavailableError:
    return ProviderUnavailableError(
        "CUDA was asked for but ONNX Runtime cannot run on it here (no usable GPU or CUDA "
        f"libraries); this onnxruntime build has {', '.join(available)}, and only the CPU one "
        "runs on this machine"
    )


def _cuda_failure(source: str | bytes, options: SessionOptions, err: Exception) -> SegdeployError:
    """The one-sentence error for a CUDA session ORT refused to open."""
    if not (options.disable_cpu_fallback and _FALLBACK_REFUSAL in str(err)):
        return ProviderUnavailableError(f"the CUDA provider failed to start: {err}")
    # ORT words "the CUDA provider did not load" and "some nodes would run on the CPU" alike.
    if "cuda" not in usable_providers():
        return _cuda_unusable(ort.get_available_providers())
    try:
        on_cpu = cpu_placed_nodes(source, options)
    except Exception:  # the listing is a courtesy; the refusal stands without it
        on_cpu = []
    listed = ", ".join(f"{op} x{n}" for op, n in Counter(on_cpu).most_common()) or "unlisted"
    return ProviderUnavailableError(
        f"ONNX Runtime would run {len(on_cpu) or 'some'} node(s) of this model on the CPU inside "
        f"the CUDA session ({listed}), and this session refuses CPU fallback so that its "
        "results are CUDA's alone; use --provider cpu to check or run it on the CPU"
    )


def cpu_placed_nodes(model: str | Path | bytes, options: SessionOptions) -> list[str]:
    """Operator types ONNX Runtime places on the CPU in a CUDA session of ``model``.

    Opens the CUDA session with CPU fallback allowed and reads ORT's node assignment (needs
    ORT 1.23+; an older ORT gives an empty list). On a CPU session every node is listed.
    """
    source = model if isinstance(model, bytes) else os.fspath(model)
    provider = "cuda" if options.provider != "cpu" else "cpu"
    plan = session_plan(replace(options, disable_cpu_fallback=False), provider)
    so = _ort_options(options, plan)
    so.add_session_config_entry(RECORD_ASSIGNMENT_KEY, "1")
    session = ort.InferenceSession(source, so, providers=plan.providers, enable_fallback=0)
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return []
    return [
        node.op_type
        for subgraph in session.get_provider_graph_assignment_info()
        if subgraph.ep_name == PROVIDER_NAMES["cpu"]
        for node in subgraph.get_nodes()
    ]


def session_provider(session: ort.InferenceSession | OpenVINOSession) -> str:
    """Short name (``cpu`` / ``cuda`` / ``openvino``) of the provider that runs ``session``."""
    first = session.get_providers()[0]
    return next((short for short, name in PROVIDER_NAMES.items() if name == first), first)


def usable_providers(engines: bool = False) -> list[str]:
    """ONNX Runtime providers this machine can really run on, probed with a one-node model;
    with ``engines``, ``openvino`` too when it is installed."""
    found = _usable_ort_providers()
    return [*found, "openvino"] if engines and openvino_available() else found


def _usable_ort_providers() -> list[str]:
    found = ["cpu"]
    if PROVIDER_NAMES["cuda"] in ort.get_available_providers():
        try:
            probe = create_session(identity_model(), SessionOptions(provider="auto"))
        except SegdeployError:
            return found
        if session_provider(probe) == "cuda":
            found.append("cuda")
    return found
