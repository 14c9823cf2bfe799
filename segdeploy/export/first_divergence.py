"""Where an FP32 export first departs from PyTorch: the node the parity gate's refusal names.

Run only when the FP32 gate refused on values, on one input (batch 1, the first failing case's
height and width), so it costs one PyTorch forward and one ONNX Runtime run.

The two sides are paired through :mod:`segdeploy.export.node_scopes`: every ONNX node that
carries a torch module path (``inc.0``) is paired with that module's output, captured by a
forward hook; the ONNX tensor is the output of the last node, in graph order, that carries the
module. Modules called more than once are skipped (one hook sees several outputs for one node).

Fusions move an output: onnxsim folds a BatchNorm into the Conv before it, so the Conv tagged
``inc.0`` computes what ``inc.1`` (the BatchNorm) returns in PyTorch, and no node carries
``inc.1`` any more. So a module's PyTorch value is followed forward, by tensor identity, through
modules that read it and that no ONNX node carries (folded away); comparing the Conv against the
Conv's eager output would name the first convolution of every healthy U-Net.

A pair diverges where it fails the gate's own value rule, ``|onnx - torch| <= atol + rtol *
|torch|``; the first such pair in graph order is named, with its relative error (``||onnx -
torch|| / ||torch||``). The ONNX side runs on the CPU with graph optimisations off
(:func:`segdeploy.export.divergence._session`), so every exposed tensor exists.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from segdeploy.core.parity import ParityReport, Tolerance
from segdeploy.export.divergence import _expose, _float_tensor_types, _session
from segdeploy.export.node_scopes import torch_modules


@dataclass
class FirstDivergence:
    """The first ONNX node whose output departs from its torch module's beyond tolerance."""

    node: str
    op_type: str
    module: str
    tensor: str
    atol_needed: float
    max_abs_error: float
    relative_error: float
    pairs_checked: int
    input_shape: tuple[int, ...]

    def line(self) -> str:
        """The refusal's node line."""
        return (
            f"first diverging node: {self.node} ({self.op_type}) from torch module "
            f"'{self.module}', max abs error {self.max_abs_error:.3g}, relative error "
            f"{self.relative_error:.3g} (of {self.pairs_checked} node outputs compared with "
            f"their modules on one {'x'.join(map(str, self.input_shape))} input)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Call:
    module: str
    inputs: set[int]  # id() of the tensors it read
    output: torch.Tensor  # kept alive so that no later tensor reuses its id()
    value: np.ndarray  # copied at once: an in-place ReLU later would overwrite the output


def _torch_calls(model: nn.Module, x: torch.Tensor) -> list[_Call]:
    """Every leaf module's call on ``x``, in execution order, with its output tensor."""
    calls: list[_Call] = []

    def hook(name):
        def record(_module, args, output):
            if isinstance(output, torch.Tensor):
                ids = {id(a) for a in args if isinstance(a, torch.Tensor)}
                calls.append(_Call(name, ids, output, output.detach().numpy().copy()))

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if name and not any(True for _ in module.children())
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _module_values(calls: list[_Call], carried: set[str]) -> dict[str, np.ndarray]:
    """``{module: the value its ONNX nodes compute}`` for modules called once that ONNX nodes
    carry, following each output through modules no node carries (fused away)."""
    counts: dict[str, int] = {}
    for call in calls:
        counts[call.module] = counts.get(call.module, 0) + 1
    values = {}
    for index, call in enumerate(calls):
        if call.module not in carried or counts[call.module] != 1:
            continue
        value = call
        for later in calls[index + 1 :]:
            if later.module not in carried and id(value.output) in later.inputs:
                value = later  # e.g. the BatchNorm folded into this Conv
        values[call.module] = value.value
    return values


def _last_nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """``{module: the last node in graph order that carries it}``, leaving out modules one of
    whose nodes reads a ``.weight`` other nodes read too: the exporter merges equal initializers
    (every LayerNorm of an untrained SegFormer has weight 1 and bias 0), and a node is credited
    to the module its weight is named after, so such a module's "last node" may be another's."""
    modules = torch_modules(model)
    weights = {i.name for i in model.graph.initializer if i.name.endswith(".weight")}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input) & weights:
            readers[name] = readers.get(name, 0) + 1
    shared = {
        modules[n.name]
        for n in model.graph.node
        if n.name in modules and any(readers.get(i, 0) > 1 for i in n.input)
    }
    return {
        modules[n.name]: n
        for n in model.graph.node
        if n.name in modules and modules[n.name] not in shared
    }


def _first_failing_shape(report: ParityReport) -> tuple[int, int] | None:
    failing = next((c for c in report.cases if not c.passed), None)
    return (failing.input_shape[2], failing.input_shape[3]) if failing else None


def _needed(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance) -> tuple:
    """``(atol needed, max abs error, relative error)`` of one pair."""
    reference = reference.astype(np.float64)
    diff = np.abs(candidate.astype(np.float64) - reference)
    needed = float(np.max(diff - tolerance.rtol * np.abs(reference))) if diff.size else 0.0
    norm = float(np.linalg.norm(reference))
    relative = float(np.linalg.norm(diff)) / norm if norm > 0 else math.inf
    return needed, float(np.max(diff)) if diff.size else 0.0, relative


def first_divergence(
    onnx_model: onnx.ModelProto,
    torch_model: nn.Module,
    in_channels: int,
    report: ParityReport,
) -> FirstDivergence | None:
    """The first node, in graph order, whose output fails ``report``'s tolerance against its
    torch module's output, on one input of the first failing case's size; ``None`` when no
    case failed on values, values are not judged, or every compared pair is within tolerance
    (the divergence then lies in nodes that carry no module)."""
    size = _first_failing_shape(report)
    if size is None or not report.tolerance.judges_values:
        return None
    nodes = _last_nodes(onnx_model)
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((1, in_channels, *size), dtype=np.float32)
    values = _module_values(_torch_calls(torch_model, torch.from_numpy(x)), set(nodes))
    types = _float_tensor_types(onnx_model)
    # Graph order: the pairs are ranked by where their ONNX node sits.
    order = {node.name: i for i, node in enumerate(onnx_model.graph.node)}
    pairs = sorted(
        ((m, nodes[m]) for m in values if nodes[m].output[0] in types),
        key=lambda pair: order[pair[1].name],
    )
    tensors = {node.output[0]: types[node.output[0]] for _, node in pairs}
    session = _session(_expose(onnx_model, tensors))
    outputs = session.run(list(tensors), {onnx_model.graph.input[0].name: x})
    found = dict(zip(tensors, outputs, strict=True))
    compared = [(m, n) for m, n in pairs if found[n.output[0]].shape == values[m].shape]
    for module, node in compared:
        needed, max_abs, relative = _needed(values[module], found[node.output[0]], report.tolerance)
        if needed > report.tolerance.atol:
            return FirstDivergence(
                node.name,
                node.op_type,
                module,
                node.output[0],
                needed,
                max_abs,
                relative,
                len(compared),
                x.shape,
            )
    return None
