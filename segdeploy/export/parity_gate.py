"""The parity gate: ONNX Runtime against PyTorch, in layers, at shapes other than the traced one.

Layers: output names, symbolic dims, then per (provider, shape) output shape and values
(:mod:`segdeploy.core.parity` does the comparison). ``export`` runs it before publishing a file;
``verify`` runs it on an existing export.

On CUDA the gate checks what it claims to check (:func:`gate_session_options`): FP32 arithmetic
(TF32 off, so the 1e-3 FP32 tolerance holds on Ampere and newer GPUs instead of being spent on
TF32's 10-bit mantissa) computed by CUDA kernels only (a node ONNX Runtime would place on the CPU
makes the session fail with a :class:`ProviderUnavailableError` that lists it, rather than a
"CUDA" result that was partly computed on the CPU).

Where nodes run is read from ONNX Runtime's node assignment
(``InferenceSession.get_provider_graph_assignment_info``, new in ONNX Runtime 1.23). An older
ONNX Runtime has no such listing and would report "no node on the CPU" for any graph, so there a
CUDA case fails the gate in one sentence (:func:`placement_unknown`) instead of passing
unchecked; the ``gpu`` extra asks for ``onnxruntime-gpu>=1.23``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.parity import CaseReport, ParityReport, check_dims, check_names, compare_values
from segdeploy.export.contract import CONTRACTS, default_parity_shapes
from segdeploy.export.onnx_file import graph_dims, load_onnx, read_card
from segdeploy.export.target_check import RuntimeEnv
from segdeploy.runtime.session import (
    SessionOptions,
    cpu_placed_nodes,
    create_session,
    usable_providers,
)
from segdeploy.train.checkpoint import load_checkpoint


def gate_session_options(provider: str) -> SessionOptions:
    """The session every parity or accuracy gate opens on ``provider``.

    TF32 stays off (not a separate CUDA tolerance) because the gate's job is to verify the FP32
    arithmetic the runtime serves, and every segdeploy session runs with TF32 off by default;
    loosening the tolerance for CUDA would pass graphs whose FP32 results were never compared.
    CPU fallback stays allowed: ORT's CUDA provider hands small shape subgraphs (Shape, Concat,
    Gather before a Resize) to the CPU on purpose, and refusing every CPU node would refuse
    DeepLab. :func:`cuda_compute_on_cpu` lists instead what would really run there.
    """
    return SessionOptions(provider=provider, use_tf32=False)


#: Operators whose presence on the CPU inside a CUDA session means the model is not really
#: running on the GPU (shape arithmetic on the CPU is ORT's normal placement and is allowed).
GPU_COMPUTE_OPS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization", "Resize", "Softmax"}
)


#: The ONNX Runtime method that lists where a session's nodes run (ONNX Runtime 1.23+).
ASSIGNMENT_API = "get_provider_graph_assignment_info"


def placement_unknown() -> str | None:
    """Why this ONNX Runtime cannot say which nodes of a CUDA session run on the CPU (it lacks
    :data:`ASSIGNMENT_API`), as the gate's failure sentence; ``None`` where it can."""
    if hasattr(ort.InferenceSession, ASSIGNMENT_API):
        return None
    return (
        f"cuda: onnxruntime {ort.__version__} cannot list which nodes run on the CPU (its "
        f"InferenceSession has no {ASSIGNMENT_API}, new in 1.23), so a CUDA result could be "
        "partly the CPU's; install onnxruntime-gpu>=1.23, or gate on the cpu provider"
    )


def cuda_compute_on_cpu(model_bytes: bytes) -> list[str]:
    """The compute operators ONNX Runtime would place on the CPU in a CUDA session, if any."""
    placed = cpu_placed_nodes(model_bytes, gate_session_options("cuda"))
    return sorted({op for op in placed if op in GPU_COMPUTE_OPS})


def check_parity(
    onnx_model: onnx.ModelProto,
    torch_model: nn.Module,
    card: ModelCard,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
    precision: str = "fp32",
    name: str = "model",
    target_env: RuntimeEnv | None = None,
) -> ParityReport:
    """Compare ONNX Runtime against PyTorch in layers on every shape and provider.

    Layers: output names, symbolic dims, then per (provider, shape): output shape and values.
    Shapes whose height or width is not a multiple of ``card.size_multiple`` are reported as
    failures of the input, not run. Sessions are opened with :func:`gate_session_options`.

    On CUDA, a graph whose compute operators ONNX Runtime would place on the CPU fails the
    gate (:func:`cuda_compute_on_cpu`). With ``target_env``, every shape also runs on the
    target's own runtime release (:mod:`segdeploy.export.target_check`), as more cases.
    """
    contract = CONTRACTS[card.task]
    report = ParityReport(model=name, tolerance=contract.tolerances[precision])
    report.structural_failures += structural_failures(onnx_model, card)
    if report.structural_failures:
        return report
    model_bytes = onnx_model.SerializeToString()
    inputs = _reference_outputs(torch_model, card, shapes, report)
    for provider in providers or usable_providers():
        unknown = placement_unknown() if provider == "cuda" else None
        if unknown:  # "no CPU node" would be vacuous: refuse rather than pass unchecked
            report.structural_failures.append(unknown)
            continue
        on_cpu = cuda_compute_on_cpu(model_bytes) if provider == "cuda" else []
        if on_cpu:  # a CUDA case must be a CUDA result, not a CPU one under CUDA's name
            report.structural_failures.append(f"cuda: ONNX Runtime would run {on_cpu} on the CPU")
            continue
        session = create_session(model_bytes, gate_session_options(provider))
        for x, reference in inputs:
            case = CaseReport(provider=provider, input_shape=tuple(x.shape))
            candidate = session.run(None, {contract.input_name: x})[0]
            report.cases.append(compare_values(reference, candidate, report.tolerance, case))
    if target_env is not None:
        report.cases += target_cases(target_env, onnx_model, contract.input_name, inputs, report)
    return report


def target_cases(
    env: RuntimeEnv, onnx_model: onnx.ModelProto, input_name: str, inputs, report: ParityReport
) -> list[CaseReport]:
    """The parity cases of ``inputs`` run on the target runtime ``env`` (one process)."""
    with tempfile.TemporaryDirectory(prefix="segdeploy-parity-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            onnx.save_model(onnx_model, path)
        except OSError as err:  # a full temporary disk, a file-size limit
            raise SegdeployError(
                f"cannot check {report.model} on {env.label}: writing its temporary copy in "
                f"{tmp} failed ({err.strerror}); nothing was replaced"
            ) from None
        outputs = env.run(path, [{input_name: x} for x, _ in inputs])
    cases = []
    for (x, reference), output in zip(inputs, outputs, strict=True):
        case = CaseReport(provider=env.label, input_shape=tuple(x.shape))
        candidate = next(iter(output.values()))
        cases.append(compare_values(reference, candidate, report.tolerance, case))
    return cases


def structural_failures(onnx_model: onnx.ModelProto, card: ModelCard) -> list[str]:
    """Layers 1 and 2: the graph's input/output names, then their symbolic dims."""
    contract = CONTRACTS[card.task]
    graph = onnx_model.graph
    found = check_names([contract.input_name], [i.name for i in graph.input], "input")
    found += check_names([contract.output_name], [o.name for o in graph.output], "output")
    if found:
        return found
    found += check_dims(
        contract.resolve(contract.input_dims, card), graph_dims(graph.input[0]), "input"
    )
    found += check_dims(
        contract.resolve(contract.output_dims, card), graph_dims(graph.output[0]), "output"
    )
    return found


def _reference_outputs(torch_model: nn.Module, card: ModelCard, shapes, report: ParityReport):
    """``(input, PyTorch output)`` per parity shape; sizes the model cannot take are reported
    in ``report`` as failures of the input, not run."""
    rng = np.random.default_rng(1234)
    inputs = []
    for batch, height, width in shapes or default_parity_shapes(card.size_multiple):
        try:
            card.require_size(height, width)
        except SegdeployError as err:  # reported in the layered report, like any other failure
            report.structural_failures.append(f"batch {batch}, {err}")
            continue
        x = rng.standard_normal((batch, card.in_channels, height, width), dtype=np.float32)
        with torch.no_grad():
            inputs.append((x, torch_model(torch.from_numpy(x)).numpy()))
    return inputs


def verify_export(
    onnx_path: str | Path,
    checkpoint: str | Path,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
) -> ParityReport:
    """Run the parity check of an existing export against its checkpoint, on demand, on
    ``providers`` (default: every usable ONNX Runtime provider, and ``openvino`` if installed)."""
    onnx_path = Path(onnx_path)
    onnx_model = load_onnx(onnx_path)
    onnx_card = read_card(onnx_model, str(onnx_path))
    model, card = load_checkpoint(checkpoint)
    if (onnx_card.arch, onnx_card.class_names) != (card.arch, card.class_names):
        raise SegdeployError(
            f"{onnx_path} holds a '{onnx_card.arch}' with classes {list(onnx_card.class_names)} "
            f"but {checkpoint} holds a '{card.arch}' with {list(card.class_names)}"
        )
    for _, height, width in shapes or ():
        card.require_size(height, width)
    # On demand, every engine that could serve the file is checked, OpenVINO too when installed.
    providers = providers or usable_providers(engines=True)
    return check_parity(onnx_model, model, card, shapes, providers, name=onnx_path.name)
