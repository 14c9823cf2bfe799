"""Export: checkpoint -> ONNX -> simplify -> check -> model card -> parity gate -> file.

The export contract is declared per task as data (:mod:`segdeploy.export.contract`); the exporter
has no per-model branches. An export is published (atomically renamed into place) only after ONNX
Runtime agrees with PyTorch at shapes other than the traced one
(:mod:`segdeploy.export.parity_gate`); otherwise it raises :class:`ParityError`.

Pairs that belong together. ``x.onnx`` and ``x.parity.json`` are always the two halves of one
passing export: both are staged first and renamed into place back to back. A refused export never
touches them: its report is written as ``x.parity.rejected.json``, whether or not an earlier export
is there, and the next passing export removes it. Why this rule rather than "write the failing
report as ``x.parity.json`` and delete the old ``x.onnx``": a failed ``--force`` then costs the
user nothing (the last good model and its variants stay deployable and consistent), a refusal is
one atomic file write with no moment where an old model sits beside a report about another, and
``x.parity.json`` never needs reading to know whether ``x.onnx`` passed.

Published through :mod:`segdeploy.core.publish`: one export per destination at a time
(``.x.onnx.lock``, created with ``O_CREAT | O_EXCL``, held for the whole export, so a second
export to the same path fails at once with "another export to x.onnx is in progress" instead of
racing the first); an ``out`` that is the checkpoint itself is refused even with ``force``.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from segdeploy import __version__
from segdeploy.core import artifacts, publish
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard
from segdeploy.core.errors import ParityError, SegdeployError, first_line
from segdeploy.core.fileio import file_sha256
from segdeploy.core.parity import ParityReport
from segdeploy.core.publish import refuse_overlap, write_file
from segdeploy.core.targets import MOBILE_TARGET, TARGET_KEY, Target
from segdeploy.export.contract import CONTRACTS, DEFAULT_OPSET, default_parity_shapes
from segdeploy.export.first_divergence import FirstDivergence, first_divergence
from segdeploy.export.mobile import build_mobile
from segdeploy.export.node_scopes import copy_torch_modules, tag_torch_modules
from segdeploy.export.onnx_file import attach_metadata, graph_dims, seal
from segdeploy.export.parity_gate import check_parity
from segdeploy.export.target_check import TargetPlan, require_target_ops, target_plan
from segdeploy.runtime.session import SessionOptions, create_session, usable_providers
from segdeploy.train.checkpoint import load_checkpoint


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


def _dynamic_shapes(size_multiple: int) -> tuple[dict[int, Any]]:
    # torch.export's "16 * Dim" is what makes the ONNX dims read 16*h and 16*w.
    batch = Dim("batch", min=1, max=4096)
    height, width = Dim("h", min=1, max=1024), Dim("w", min=1, max=1024)
    return ({0: batch, 2: size_multiple * height, 3: size_multiple * width},)


def trace_size(card: ModelCard) -> int:
    """Height and width used to trace: the training size, else 4 size multiples (64)."""
    size = int(card.training.get("img_size", 0))
    return size if size and size % card.size_multiple == 0 else 4 * card.size_multiple


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
                dynamic_shapes=_dynamic_shapes(card.size_multiple),
                opset_version=opset,
                verbose=False,
            )
    except Exception as err:  # the exporter raises many internal types; report the first line
        first = first_line(err)
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
    tag_torch_modules(model)
    try:
        with redirect_stdout(StringIO()):
            simplified, ok = onnxsim.simplify(model)
    except Exception as err:
        return model, False, f"onnxsim failed ({type(err).__name__}: {err}); kept the original"
    if not ok:
        return model, False, "onnxsim's own check failed; kept the original graph"
    # onnxsim drops node metadata: put back which torch module each node came from.
    copy_torch_modules(model, simplified)
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
    m = card.size_multiple
    for batch, height, width in ((1, 2 * m, 3 * m), (2, m, 4 * m)):
        x = rng.standard_normal((batch, card.in_channels, height, width), dtype=np.float32)
        before = _run(original_bytes, contract.input_name, x)
        after = _run(new_bytes, contract.input_name, x)
        if before.shape != after.shape or not np.allclose(before, after, atol=1e-4, rtol=1e-4):
            return model, False, "the simplified graph disagreed with the original; kept original"
    return simplified, True, "simplified"


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``seconds[stage]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started


def _check_destination(out: Path, checkpoint: Path) -> None:
    """Refuse a bad ``out`` before a minute of exporting (the lock then proves the folder
    writable)."""
    if out.suffix != ".onnx":
        raise SegdeployError(f"output {out} must end in .onnx")
    refuse_overlap(out, [checkpoint], "export")


def export_lock(out: str | Path) -> AbstractContextManager[Path]:
    """Hold the exclusive lock of the export destination ``out`` (``.x.onnx.lock``; see
    :func:`segdeploy.core.publish.lock`): a second export to ``out`` fails at once with
    "another export to x.onnx is in progress"."""
    return publish.lock(out, "export")


def _refuse(out: Path, report: ParityReport, first: FirstDivergence | None = None) -> None:
    """Write the refused export's report as ``x.parity.rejected.json`` and raise; ``first``
    (the node where the graph first departs from PyTorch) is the message's second line."""
    rejected = artifacts.rejected_report_path(out)
    if first is not None:
        report.context["first_divergence"] = first.to_dict()
    write_file(rejected, lambda tmp: tmp.write_text(report.to_json()))
    kept = " (the export already there is unchanged)" if out.exists() else ""
    where = f"\n{first.line()}" if first is not None else ""
    raise ParityError(
        f"ONNX Runtime disagrees with PyTorch, so {out} was not written{kept}: "
        f"{report.failures()[0]} (full report: {rejected}){where}",
        report,
    )


def _stage_pair(
    staging: publish.Staging, out: Path, onnx_model: onnx.ModelProto, report: ParityReport
) -> Path:
    """Stage ``out`` and its report as one pair: renamed into place back to back when the
    export's publishing block ends (the old report goes first, see :class:`publish.Staging`)."""
    report_path = artifacts.parity_report_path(out)
    staging.stage(out, lambda tmp: onnx.save_model(onnx_model, tmp))
    staging.stage(report_path, lambda tmp: tmp.write_text(report.to_json()))
    return report_path


def _finish_graph(
    onnx_model: onnx.ModelProto, card: ModelCard, checkpoint: Path, opset: int, target: Target
):
    """Stamp the target's IR version, put the card, provenance and target record into
    ``metadata_props``, run onnx's full check, then seal the file with its content hash."""
    size = trace_size(card)
    # The exporter stamps onnx's newest IR; the graph holds nothing newer than the target's
    # (it is checked on the target's runtime below), so the stamp is lowered to what it opens.
    onnx_model.ir_version = min(onnx_model.ir_version, target.max_ir)
    require_target_ops(onnx_model, target)
    attach_metadata(
        onnx_model,
        {
            ONNX_METADATA_KEY: card.to_json(),
            artifacts.VERSION_KEY: __version__,
            artifacts.OPSET_KEY: str(opset),
            artifacts.EXPORT_SHAPE_KEY: json.dumps([2, card.in_channels, size, size]),
            artifacts.CHECKPOINT_SHA256_KEY: file_sha256(checkpoint),
            artifacts.TORCH_VERSION_KEY: torch.__version__,
            TARGET_KEY: target.record(onnx_model.ir_version, opset),
        },
    )
    onnx_model.producer_name = "segdeploy"
    onnx_model.producer_version = __version__
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SegdeployError(f"the exported graph failed onnx.checker: {err}") from None
    seal(onnx_model)


def _report_context(
    checkpoint: Path,
    out: Path,
    opset: int,
    nodes: tuple[int, int],
    note: str,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What the parity report records besides the comparison: provenance, timings, versions."""
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_sha256(checkpoint),
        "onnx": str(out),
        "opset": opset,
        "nodes_before_simplify": nodes[0],
        "nodes_after_simplify": nodes[1],
        "simplify": note,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "versions": {
            "segdeploy": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
        },
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    do_simplify: bool = True,
    force: bool = False,
    shapes: list[tuple[int, int, int]] | None = None,
    providers: list[str] | None = None,
    target: str | None = None,
) -> ExportResult:
    """Export a segdeploy checkpoint to ONNX and publish it only if it passes the parity gate.

    Args:
        checkpoint: a ``.pt`` written by ``segdeploy train`` / :func:`save_checkpoint`.
        out: destination, ``exports/<checkpoint stem>.onnx`` by default.
        opset: ONNX opset for the dynamo exporter.
        do_simplify: run onnxsim (kept only if it leaves every dim symbolic and runs).
        force: replace an existing ``out`` (only if the new export passes the gate).
        shapes: parity shapes ``(batch, height, width)``; defaults to
            :data:`~segdeploy.export.contract.DEFAULT_PARITY_SHAPES`.
        providers: ONNX Runtime providers to check; default: every usable one.
        target: the runtime the file must open in, e.g. ``"ort>=1.16"``, ``"ort-web"``,
            ``"openvino>=2025.0"``, ``"ort"`` (the installed onnxruntime); default
            :data:`~segdeploy.core.targets.DEFAULT_TARGET`. The file gets the IR version that
            release opens, and the parity gate runs on that release too
            (:mod:`segdeploy.export.target_check`).

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch (the report is written as
            ``x.parity.rejected.json``, and carried by the error; an existing ``out`` and its
            report are left as they were). Its second line names the first node, in graph
            order, whose output departs from its torch module's
            (:mod:`segdeploy.export.first_divergence`), when one does.
        ProviderUnavailableError: a CUDA parity session would run nodes on the CPU.
        SegdeployError: bad checkpoint, existing output without ``force``, unwritable folder, a
            failed export, or another export to ``out`` in progress.
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else artifacts.default_export_path(checkpoint)
    plan = target_plan(target, opset)  # a target that cannot be met fails before the export
    _check_destination(out, checkpoint)
    with publish.publishing(out, "export", force, inputs=[checkpoint]) as staging:
        result = _export_and_stage(
            checkpoint, out, opset, do_simplify, shapes, providers, plan, staging
        )
    artifacts.rejected_report_path(out).unlink(missing_ok=True)
    return result


def _export_and_stage(
    checkpoint: Path,
    out: Path,
    opset: int,
    do_simplify: bool,
    shapes: list[tuple[int, int, int]] | None,
    providers: list[str] | None,
    plan: TargetPlan,
    staging: publish.Staging,
) -> ExportResult:
    """The body of :func:`export_checkpoint`, run while holding the destination's lock: the
    pair is staged only when the gate passed."""
    if plan.providers:
        providers = [*(providers or usable_providers()), *plan.providers]
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with _timed(seconds, "export"):
        model, card = load_checkpoint(checkpoint)
        for _, height, width in shapes or ():
            card.require_size(height, width)  # bad --shapes are the user's error, not parity's
        onnx_model = to_onnx(model, card, opset)
    nodes_before = len(onnx_model.graph.node)
    simplified, note = False, "skipped (--no-simplify)"
    with _timed(seconds, "simplify"):
        if do_simplify:
            onnx_model, simplified, note = simplify(onnx_model, card)
    _finish_graph(onnx_model, card, checkpoint, opset, plan.target)
    with _timed(seconds, "parity"):
        report = check_parity(
            onnx_model, model, card, shapes, providers, name=out.name, target_env=plan.env
        )
    seconds["total"] = time.perf_counter() - started
    nodes = (nodes_before, len(onnx_model.graph.node))
    report.context = _report_context(checkpoint, out, opset, nodes, note, seconds)
    report.context["target"] = {"target": plan.target.spec, "checked_on": plan.note}
    if not report.passed:
        # Only on a refusal: one forward and one ONNX Runtime run, to name the node.
        with _timed(seconds, "first_divergence"):
            first = first_divergence(onnx_model, model, card.in_channels, report)
        report.context["seconds"]["first_divergence"] = round(seconds["first_divergence"], 3)
        _refuse(out, report, first)
    mobile = None
    if plan.target.name == MOBILE_TARGET:
        with _timed(seconds, "mobile"):
            mobile = build_mobile(
                onnx_model.SerializeToString(),
                out,
                CONTRACTS[card.task].input_name,
                shapes or default_parity_shapes(card.size_multiple),
                card.in_channels,
            )
        report.context["mobile"] = {
            "files": [p.name for p in mobile.files],
            "parity_ort_vs_onnx": mobile.parity,
        }
    report_path = _stage_pair(staging, out, onnx_model, report)
    for path, data in (mobile.files if mobile else {}).items():
        staging.stage(path, lambda tmp, data=data: tmp.write_bytes(data))
    return ExportResult(out, report_path, report, *nodes, simplified, note, seconds)
