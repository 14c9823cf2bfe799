"""Export: checkpoint -> ONNX -> simplify -> check -> model card -> parity gate -> file.

The export contract is declared per task as data (:data:`CONTRACTS`); the exporter has no
per-model branches. An export is published (atomically renamed into place) only after ONNX
Runtime agrees with PyTorch at shapes other than the traced one; otherwise the command fails and
leaves only the parity report that explains why.
"""

from __future__ import annotations

import json
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from segdeploy import __version__
from segdeploy.card import ONNX_METADATA_KEY, ModelCard
from segdeploy.checkpoint import file_sha256, load_checkpoint
from segdeploy.errors import SegdeployError
from segdeploy.fileio import atomic_write
from segdeploy.parity import (
    CaseReport,
    ParityReport,
    Tolerance,
    check_dims,
    check_names,
    compare_values,
)
from segdeploy.runtime.session import SessionOptions, create_session, usable_providers

DEFAULT_OPSET = 18
#: Parity shapes (batch, height, width): the smallest legal size, a non-square batch-1 image and
#: a non-square batch > 1; none equals the traced (2, S, S).
DEFAULT_PARITY_SHAPES = ((1, 16, 16), (1, 48, 80), (3, 64, 32))


@dataclass(frozen=True)
class ExportContract:
    """What an exported graph of one task must look like, declared as data.

    ``input_dims`` / ``output_dims`` are the ONNX dims expected after export and simplification:
    strings are symbols (``16*h`` means "height, a multiple of 16"), ``"C"``/``"K"`` stand for the
    card's input channels and number of classes.
    """

    input_name: str
    output_name: str
    input_dims: tuple[str, ...]
    output_dims: tuple[str, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def resolve(self, dims: tuple[str, ...], card: ModelCard) -> list[str | int]:
        fixed = {"C": card.in_channels, "K": card.num_classes}
        return [fixed.get(d, d) for d in dims]


CONTRACTS = {
    "segmentation": ExportContract(
        input_name="image",
        output_name="logits",
        input_dims=("batch", "C", "16*h", "16*w"),
        output_dims=("batch", "K", "16*h", "16*w"),
        tolerances={
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=0.999),
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=0.99),
            # INT8 is judged by decisions, not logits: values are not gated (atol 1e3).
            "int8": Tolerance(atol=1e3, rtol=0.0, min_argmax_agreement=0.95),
        },
    ),
    "classification": ExportContract(
        input_name="image",
        output_name="logits",
        input_dims=("batch", "C", "16*h", "16*w"),
        output_dims=("batch", "K"),
        tolerances={
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0),
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=1.0),
            "int8": Tolerance(atol=1e3, rtol=0.0, min_argmax_agreement=0.9),
        },
    ),
}


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote and measured."""

    onnx_path: Path
    report_path: Path
    report: ParityReport
    nodes_before: int
    nodes_after: int
    simplified: bool
    simplify_note: str
    seconds: dict[str, float]


def graph_dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    """Dims of a graph input/output: the symbol when symbolic, else the number."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _dynamic_shapes() -> tuple[dict[int, Any]]:
    # torch.export's "16 * Dim" is what makes the ONNX dims read 16*h and 16*w.
    batch = Dim("batch", min=1, max=4096)
    height, width = Dim("h", min=1, max=1024), Dim("w", min=1, max=1024)
    return ({0: batch, 2: 16 * height, 3: 16 * width},)


def trace_size(card: ModelCard) -> int:
    """Height and width used to trace: the training size, 64 when unknown."""
    size = int(card.training.get("img_size", 64))
    return size if size % card.size_multiple == 0 else 64


def to_onnx(model: nn.Module, card: ModelCard, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace ``model`` with torch.export and convert it with the dynamo ONNX exporter."""
    contract = CONTRACTS[card.task]
    size = trace_size(card)
    # Batch 2: torch.export specialises dims it sees as 0 or 1.
    example = torch.randn(2, card.in_channels, size, size)
    try:
        with warnings.catch_warnings(), redirect_stdout(StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[contract.input_name],
                output_names=[contract.output_name],
                dynamic_shapes=_dynamic_shapes(),
                opset_version=opset,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many internal types; report the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SegdeployError(f"torch.onnx.export failed for '{card.arch}': {first}") from None
    produced = next(
        o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")
    )
    if produced != opset:
        # Below 18 the exporter tries a version conversion and, when that fails, quietly keeps 18.
        raise SegdeployError(
            f"opset {opset} was asked for, but the exporter produced opset {produced} for "
            f"'{card.arch}' (it cannot convert this graph); use opset 18 or later"
        )
    return program.model_proto


def _run(model_bytes: bytes, name: str, x: np.ndarray, provider: str = "cpu") -> np.ndarray:
    session = create_session(model_bytes, SessionOptions(provider=provider))
    return session.run(None, {name: x})[0]


def simplify(model: onnx.ModelProto, card: ModelCard) -> tuple[onnx.ModelProto, bool, str]:
    """onnxsim, accepted only if every dim stays symbolic and outputs match at two shapes."""
    import onnxsim

    contract = CONTRACTS[card.task]
    try:
        with redirect_stdout(StringIO()):
            simplified, ok = onnxsim.simplify(model)
    except Exception as err:
        return model, False, f"onnxsim failed ({type(err).__name__}: {err}); kept the original"
    if not ok:
        return model, False, "onnxsim's own check failed; kept the original graph"
    for original, new in zip(
        [*model.graph.input, *model.graph.output],
        [*simplified.graph.input, *simplified.graph.output],
        strict=True,
    ):
        if graph_dims(original) != graph_dims(new):
            return (
                model,
                False,
                f"onnxsim froze {new.name} to {graph_dims(new)}; kept the original graph",
            )
    original_bytes, new_bytes = model.SerializeToString(), simplified.SerializeToString()
    rng = np.random.default_rng(0)
    for batch, height, width in ((1, 32, 48), (2, 16, 64)):
        x = rng.standard_normal((batch, card.in_channels, height, width), dtype=np.float32)
        before = _run(original_bytes, contract.input_name, x)
        after = _run(new_bytes, contract.input_name, x)
        if before.shape != after.shape or not np.allclose(before, after, atol=1e-4, rtol=1e-4):
            return model, False, "the simplified graph disagreed with the original; kept original"
    return simplified, True, "simplified"


def attach_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set ``metadata_props`` entries, replacing existing keys."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, or raise one :class:`SegdeployError` sentence naming it."""
    path = Path(path)
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(path)
    except Exception as err:  # protobuf raises DecodeError and others for truncated/garbage files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SegdeployError(f"{path} is not a readable ONNX model ({first})") from None


def read_card(model: onnx.ModelProto, source: str) -> ModelCard:
    """The model card stored in an ONNX model's ``metadata_props``."""
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise SegdeployError(f"{source} carries no segdeploy model card (not a segdeploy export)")
    return ModelCard.from_json(props[ONNX_METADATA_KEY], source=source)


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """Parse ``64x96,2x128x160`` into ``[(1, 64, 96), (2, 128, 160)]`` (``[B x] H x W``)."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            numbers = [int(n) for n in item.lower().split("x")]
        except ValueError:
            numbers = []
        if len(numbers) == 2:
            numbers = [1, *numbers]
        if len(numbers) != 3 or min(numbers) < 1:
            raise SegdeployError(f"cannot read shape '{item}': expected HxW or BxHxW, e.g. 2x64x96")
        shapes.append(tuple(numbers))
    if not shapes:
        raise SegdeployError("no shapes given: expected e.g. --shapes 64x96,2x128x160")
    return shapes


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
    for batch, height, width in shapes or DEFAULT_PARITY_SHAPES:
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


def default_output_path(checkpoint: Path) -> Path:
    return Path("exports") / f"{checkpoint.stem}.onnx"


def parity_report_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(f"{onnx_path.stem}.parity.json")


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    do_simplify: bool = True,
    force: bool = False,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
) -> ExportResult:
    """Export a segdeploy checkpoint to ONNX and publish it only if it passes the parity gate.

    Args:
        checkpoint: a ``.pt`` written by ``segdeploy train`` / :func:`save_checkpoint`.
        out: destination, ``exports/<checkpoint stem>.onnx`` by default.
        opset: ONNX opset for the dynamo exporter.
        do_simplify: run onnxsim (kept only if it leaves every dim symbolic and runs).
        force: replace an existing ``out``.
        shapes: parity shapes ``(batch, height, width)``; defaults to :data:`DEFAULT_PARITY_SHAPES`.
        providers: ONNX Runtime providers to check; default: every usable one.

    Raises:
        SegdeployError: bad checkpoint, existing output without ``force``, unwritable folder,
            failed export or failed parity (the report is still written next to ``out``).
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_output_path(checkpoint)
    if out.suffix != ".onnx":
        raise SegdeployError(f"output {out} must end in .onnx")
    if out.exists() and not force:
        raise SegdeployError(f"{out} already exists; pass --force to replace it")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    model, card = load_checkpoint(checkpoint)
    for _, height, width in shapes or ():
        card.require_size(height, width)  # bad --shapes are the user's error, not a parity failure
    # Fail on an unwritable folder now, not after a minute of exporting.
    atomic_write(out.with_name(f".{out.name}.probe"), lambda tmp: tmp.write_bytes(b""))
    out.with_name(f".{out.name}.probe").unlink()

    onnx_model = to_onnx(model, card, opset)
    seconds["export"] = time.perf_counter() - started
    nodes_before = len(onnx_model.graph.node)
    mark = time.perf_counter()
    simplified, note = False, "skipped (--no-simplify)"
    if do_simplify:
        onnx_model, simplified, note = simplify(onnx_model, card)
    seconds["simplify"] = time.perf_counter() - mark

    size = trace_size(card)
    attach_metadata(
        onnx_model,
        {
            ONNX_METADATA_KEY: card.to_json(),
            "segdeploy.version": __version__,
            "segdeploy.opset": str(opset),
            "segdeploy.export_shape": json.dumps([2, card.in_channels, size, size]),
            "segdeploy.checkpoint_sha256": file_sha256(checkpoint),
            "segdeploy.torch_version": torch.__version__,
        },
    )
    onnx_model.producer_name = "segdeploy"
    onnx_model.producer_version = __version__
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SegdeployError(f"the exported graph failed onnx.checker: {err}") from None

    mark = time.perf_counter()
    report = check_parity(onnx_model, model, card, shapes, providers, name=out.name)
    seconds["parity"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    report.context = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "onnx": str(out),
        "opset": opset,
        "nodes_before_simplify": nodes_before,
        "nodes_after_simplify": len(onnx_model.graph.node),
        "simplify": note,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": {
            "segdeploy": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
    }
    report_path = parity_report_path(out)
    atomic_write(report_path, lambda tmp: tmp.write_text(report.to_json()))
    if not report.passed:
        raise SegdeployError(
            f"ONNX Runtime disagrees with PyTorch, so {out} was not written: "
            f"{report.failures()[0]} (full report: {report_path})"
        )
    atomic_write(out, lambda tmp: onnx.save_model(onnx_model, tmp))
    return ExportResult(
        onnx_path=out,
        report_path=report_path,
        report=report,
        nodes_before=nodes_before,
        nodes_after=len(onnx_model.graph.node),
        simplified=simplified,
        simplify_note=note,
        seconds=seconds,
    )


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
