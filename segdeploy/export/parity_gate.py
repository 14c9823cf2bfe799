"""The parity gate: ONNX Runtime against PyTorch, in layers, at shapes other than the traced one.

Layers: output names, symbolic dims, then per (provider, shape) output shape and values
(:mod:`segdeploy.core.parity` does the comparison). ``export`` runs it before publishing a file;
``verify`` runs it on an existing export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.parity import CaseReport, ParityReport, check_dims, check_names, compare_values
from segdeploy.export.contract import CONTRACTS, default_parity_shapes
from segdeploy.export.onnx_file import graph_dims, load_onnx, read_card
from segdeploy.runtime.session import SessionOptions, create_session, usable_providers
from segdeploy.train.checkpoint import load_checkpoint


def check_parity(
    onnx_model: onnx.ModelProto,
    torch_model: nn.Module,
    card: ModelCard,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
    precision: str = "fp32",
    name: str = "model",
) -> ParityReport:
    """Compare ONNX Runtime against PyTorch in layers on every shape and provider.

    Layers: output names, symbolic dims, then per (provider, shape): output shape and values.
    Shapes whose height or width is not a multiple of ``card.size_multiple`` are reported as
    failures of the input, not run.
    """
    contract = CONTRACTS[card.task]
    tolerance = contract.tolerances[precision]
    report = ParityReport(model=name, tolerance=tolerance)
    graph = onnx_model.graph
    report.structural_failures += check_names(
        [contract.input_name], [i.name for i in graph.input], "input"
    )
    report.structural_failures += check_names(
        [contract.output_name], [o.name for o in graph.output], "output"
    )
    if not report.structural_failures:
        report.structural_failures += check_dims(
            contract.resolve(contract.input_dims, card), graph_dims(graph.input[0]), "input"
        )
        report.structural_failures += check_dims(
            contract.resolve(contract.output_dims, card), graph_dims(graph.output[0]), "output"
        )
    if report.structural_failures:
        return report

    model_bytes = onnx_model.SerializeToString()
    providers = providers or usable_providers()
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
    for provider in providers:
        session = create_session(model_bytes, SessionOptions(provider=provider))
        for x, reference in inputs:
            case = CaseReport(provider=provider, input_shape=tuple(x.shape))
            candidate = session.run(None, {contract.input_name: x})[0]
            report.cases.append(compare_values(reference, candidate, tolerance, case))
    return report


def verify_export(
    onnx_path: str | Path,
    checkpoint: str | Path,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
) -> ParityReport:
    """Run the parity check of an existing export against its checkpoint, on demand."""
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
    return check_parity(onnx_model, model, card, shapes, providers, name=onnx_path.name)
