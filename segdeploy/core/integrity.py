"""What an artifact says it is, checked from the file alone (``segdeploy verify FILE``).

Every file segdeploy writes records the sha256 of its own bytes without that record
(``segdeploy.content_sha256``, :func:`segdeploy.export.onnx_file.seal`) and the hash of what it was
made from: the checkpoint (FP32 export), the FP32 file (INT8/FP16/bf16 variants, end-to-end
graphs), and for INT8 the calibration images (names and pixel hashes). This module recomputes the
content hash and, where the parent lies beside the file, the parent's. Torch-free, onnx-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from segdeploy.core.artifacts import (
    CALIBRATION_MANIFEST_KEY,
    CHECKPOINT_SHA256_KEY,
    CONTENT_SHA256_KEY,
    PARENT_SHA256_KEY,
)
from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import file_sha256
from segdeploy.core.onnx_header import graph_sha256, read_header


@dataclass
class Integrity:
    """The outcome of :func:`verify_file`: the content hash, the parent, what was checked."""

    path: Path
    content_sha256: str
    parent: str | None = None
    calibration_images: int | None = None
    notes: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        """One line for the CLI."""
        parts = [f"{self.path}: content sha256 {self.content_sha256[:12]}... matches"]
        parts += self.notes
        return "; ".join(parts)


def _parent_file(path: Path) -> Path:
    """``x.int8.onnx`` / ``x.e2e.onnx`` -> ``x.onnx`` beside it."""
    stem = path.name.split(".")[0]
    return path.with_name(f"{stem}.onnx")


def verify_file(path: str | Path) -> Integrity:
    """Check ``path``'s recorded content hash, and its parent's hash where the parent is beside
    it (``x.onnx`` for a variant; for an FP32 export, the checkpoint named in ``x.parity.json``).

    Raises:
        SegdeployError: a hash does not match, or the file records none.
    """
    path = Path(path)
    header = read_header(path)
    recorded = header.metadata.get(CONTENT_SHA256_KEY)
    if not recorded:
        raise SegdeployError(
            f"{path} records no content hash ({CONTENT_SHA256_KEY}): it was written by an older "
            "segdeploy or another tool; export it again to make it verifiable"
        )
    actual = graph_sha256(path, without=(CONTENT_SHA256_KEY,))
    if actual != recorded:
        raise SegdeployError(
            f"{path} was changed after segdeploy wrote it: its content hashes to {actual[:12]}..."
            f", but it records {recorded[:12]}..."
        )
    result = Integrity(path, actual)
    _check_parent(result, header.metadata)
    manifest = header.metadata.get(CALIBRATION_MANIFEST_KEY)
    if manifest:
        result.calibration_images = len(json.loads(manifest))
        result.notes.append(f"calibrated on {result.calibration_images} images (manifest kept)")
    return result


def _check_parent(result: Integrity, metadata: dict[str, str]) -> None:
    path = result.path
    if PARENT_SHA256_KEY in metadata:
        parent, recorded = _parent_file(path), metadata[PARENT_SHA256_KEY]
    elif CHECKPOINT_SHA256_KEY in metadata:
        parent, recorded = _checkpoint_of(path), metadata[CHECKPOINT_SHA256_KEY]
    else:
        return
    result.parent = recorded
    if parent is None or not parent.is_file():
        where = f" ({parent} is not there)" if parent else ""
        result.notes.append(f"parent sha256 {recorded[:12]}... recorded, not checked{where}")
        return
    actual = file_sha256(parent)
    if actual != recorded:
        raise SegdeployError(
            f"{path} was made from another file than {parent}: it records parent sha256 "
            f"{recorded[:12]}..., {parent.name} hashes to {actual[:12]}..."
        )
    result.notes.append(f"parent {parent} matches")


def _checkpoint_of(path: Path) -> Path | None:
    """The checkpoint an FP32 export's parity report names, if the report is beside it."""
    report = path.with_name(f"{path.stem}.parity.json")
    try:
        checkpoint = json.loads(report.read_text()).get("context", {}).get("checkpoint")
    except (OSError, ValueError):
        return None
    return Path(checkpoint) if checkpoint else None
