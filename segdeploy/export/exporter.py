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

One export per destination at a time: :func:`export_lock` holds ``.x.onnx.lock`` (created with
``O_CREAT | O_EXCL``) for the whole export, so a second export to the same path fails at once
with "another export to x.onnx is in progress" instead of racing the first.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
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
from segdeploy.core import artifacts
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard
from segdeploy.core.errors import ParityError, SegdeployError
from segdeploy.core.fileio import atomic_write, file_sha256
from segdeploy.core.parity import ParityReport
from segdeploy.export.contract import CONTRACTS, DEFAULT_OPSET
from segdeploy.export.node_scopes import copy_torch_modules, tag_torch_modules
from segdeploy.export.onnx_file import attach_metadata, graph_dims
from segdeploy.export.parity_gate import check_parity
from segdeploy.runtime.session import SessionOptions, create_session
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


def _check_destination(out: Path) -> None:
    """Refuse a bad ``out`` and an unwritable folder before a minute of exporting."""
    if out.suffix != ".onnx":
        raise SegdeployError(f"output {out} must end in .onnx")
    # One probe name per process and thread: two exports to one path probe at the same time
    # (the export lock comes later), and a shared name let one delete the other's probe.
    probe = out.with_name(f".{out.name}.{os.getpid()}.{threading.get_ident()}.probe")
    atomic_write(probe, lambda tmp: tmp.write_bytes(b""))
    probe.unlink(missing_ok=True)


#: A lock older than this is stale whoever holds it: an export takes minutes, not hours.
STALE_LOCK_SECONDS = 3600.0
#: A lock file still empty after this long was left by an export that died while creating it.
_EMPTY_LOCK_GRACE_SECONDS = 60.0


@contextmanager
def export_lock(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of the export destination ``out`` for the ``with`` block.

    The lock is ``.x.onnx.lock`` beside ``out``, created with ``O_CREAT | O_EXCL`` (atomic on
    local file systems) and removed when the block ends, however it ends. A lock is stale, and
    taken over, when the process that wrote it is gone from this machine or it is older than
    :data:`STALE_LOCK_SECONDS`.

    Raises:
        SegdeployError: another export to ``out`` holds the lock, or the folder is unwritable.
    """
    out = Path(out)
    lock = artifacts.lock_path(out)
    _acquire(lock, out)
    try:
        yield lock
    finally:
        lock.unlink(missing_ok=True)


def _acquire(lock: Path, out: Path) -> None:
    """Create ``lock`` exclusively (taking over a stale one once), recording who holds it."""
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if attempt == 0 and _is_stale(lock):
                lock.unlink(missing_ok=True)
                continue
            raise SegdeployError(
                f"another export to {out} is in progress ({_holder(lock)}); wait for it to "
                f"finish, or delete {lock} if no export is running"
            ) from None
        except OSError as err:
            raise SegdeployError(f"cannot write to folder {lock.parent} ({err.strerror})") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        return


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None  # gone, or created but not yet written by its owner
    return holder if isinstance(holder, dict) else None


def _holder(lock: Path) -> str:
    holder = _read_lock(lock)
    if not holder:
        return f"lock {lock}"
    return f"process {holder.get('pid')} on {holder.get('host')} holds {lock}"


def _is_stale(lock: Path) -> bool:
    """Whether the export that wrote ``lock`` is gone (dead on this machine, or too old)."""
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return True  # released between our attempt and this look: try again
    holder = _read_lock(lock)
    if holder is None:
        return age > _EMPTY_LOCK_GRACE_SECONDS
    if age > STALE_LOCK_SECONDS:
        return True
    same_host = holder.get("host") == socket.gethostname()
    return same_host and not _process_alive(int(holder.get("pid", 0)))


def _process_alive(pid: int) -> bool:
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _publish(out: Path, report_path: Path, onnx_model: onnx.ModelProto, report: ParityReport):
    """Put ``out`` and its report in place as one pair, and drop a stale rejected report.

    Both are fully written first; the two renames then follow each other, so a reader never
    finds a new report beside an old model for longer than a rename.
    """
    staged = out.with_name(f".{out.name}.staged")  # the lock makes this name ours alone
    atomic_write(staged, lambda tmp: onnx.save_model(onnx_model, tmp))
    try:
        atomic_write(report_path, lambda tmp: tmp.write_text(report.to_json()))
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    artifacts.rejected_report_path(out).unlink(missing_ok=True)


def _finish_graph(onnx_model: onnx.ModelProto, card: ModelCard, checkpoint: Path, opset: int):
    """Put the card and provenance into ``metadata_props``, then run onnx's full check."""
    size = trace_size(card)
    attach_metadata(
        onnx_model,
        {
            ONNX_METADATA_KEY: card.to_json(),
            artifacts.VERSION_KEY: __version__,
            artifacts.OPSET_KEY: str(opset),
            artifacts.EXPORT_SHAPE_KEY: json.dumps([2, card.in_channels, size, size]),
            artifacts.CHECKPOINT_SHA256_KEY: file_sha256(checkpoint),
            artifacts.TORCH_VERSION_KEY: torch.__version__,
        },
    )
    onnx_model.producer_name = "segdeploy"
    onnx_model.producer_version = __version__
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise SegdeployError(f"the exported graph failed onnx.checker: {err}") from None


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

    Raises:
        ParityError: ONNX Runtime disagrees with PyTorch (the report is written as
            ``x.parity.rejected.json``, and carried by the error; an existing ``out`` and its
            report are left as they were).
        ProviderUnavailableError: a CUDA parity session would run nodes on the CPU.
        SegdeployError: bad checkpoint, existing output without ``force``, unwritable folder, a
            failed export, or another export to ``out`` in progress.
    """
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else artifacts.default_export_path(checkpoint)
    _check_destination(out)
    with export_lock(out):
        if out.exists() and not force:
            raise SegdeployError(f"{out} already exists; pass --force to replace it")
        return _export_and_publish(checkpoint, out, opset, do_simplify, shapes, providers)


def _export_and_publish(
    checkpoint: Path,
    out: Path,
    opset: int,
    do_simplify: bool,
    shapes: list[tuple[int, int, int]] | None,
    providers: list[str] | None,
) -> ExportResult:
    """The body of :func:`export_checkpoint`, run while holding the destination's lock."""
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
    _finish_graph(onnx_model, card, checkpoint, opset)
    with _timed(seconds, "parity"):
        report = check_parity(onnx_model, model, card, shapes, providers, name=out.name)
    seconds["total"] = time.perf_counter() - started
    nodes = (nodes_before, len(onnx_model.graph.node))
    report.context = _report_context(checkpoint, out, opset, nodes, note, seconds)
    if not report.passed:
        rejected = artifacts.rejected_report_path(out)
        atomic_write(rejected, lambda tmp: tmp.write_text(report.to_json()))
        kept = " (the export already there is unchanged)" if out.exists() else ""
        raise ParityError(
            f"ONNX Runtime disagrees with PyTorch, so {out} was not written{kept}: "
            f"{report.failures()[0]} (full report: {rejected})",
            report,
        )
    report_path = artifacts.parity_report_path(out)
    _publish(out, report_path, onnx_model, report)
    return ExportResult(out, report_path, report, *nodes, simplified, note, seconds)
