"""Variants belong to their parent: an ``x.int8.onnx`` is only ever paired with the ``x.onnx`` it
was made from.

Pairing by name alone would let ``bench`` or ``evaluate`` compare a variant with an FP32 export
re-made since (another checkpoint, another ``export --force``). Every variant records the sha256
of its FP32 parent file (``PARENT_SHA256_KEY``); :func:`require_parent` checks it. Torch-free and
onnx-free: the metadata is read from the protobuf (:mod:`segdeploy.core.onnx_header`).
"""

from __future__ import annotations

from pathlib import Path

from segdeploy.core.artifacts import PARENT_SHA256_KEY, PRECISION_KEY, VARIANT_COMMANDS
from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import file_sha256
from segdeploy.core.onnx_header import read_header


def read_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props``, read from the protobuf itself (no ONNX Runtime: a
    runtime too old for the file could not read them, and ``info`` must still say what it is)."""
    return read_header(Path(path)).metadata


def recorded_parent(variant: str | Path) -> str | None:
    """The sha256 of the FP32 file ``variant`` records as its parent, or ``None``."""
    return read_metadata(variant).get(PARENT_SHA256_KEY)


def require_parent(variant: str | Path, parent: str | Path) -> None:
    """Raise :class:`SegdeployError` unless ``variant`` was made from the file ``parent``.

    Raises:
        SegdeployError: the variant records no parent, or the sha256 of another file.
    """
    variant, parent = Path(variant), Path(parent)
    metadata = read_metadata(variant)
    if not parent.is_file():
        raise SegdeployError(f"{variant} needs its FP32 parent {parent} beside it, found nothing")
    command = VARIANT_COMMANDS.get(metadata.get(PRECISION_KEY, ""), "quantize")
    remake = f"re-create it with `segdeploy {command} {parent}`"
    recorded, actual = metadata.get(PARENT_SHA256_KEY), file_sha256(parent)
    if recorded is None:
        raise SegdeployError(
            f"{variant} records no FP32 parent, so nothing shows it was made from {parent}; "
            f"{remake}"
        )
    if recorded != actual:
        raise SegdeployError(
            f"{variant} was made from another FP32 export than {parent} (its parent has sha256 "
            f"{recorded[:12]}..., {parent.name} has {actual[:12]}...); {remake}"
        )
