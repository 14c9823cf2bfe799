"""What segdeploy writes and how it names it: precisions, variant files, reports, metadata keys.

An FP32 export ``x.onnx`` may have variants ``x.fp16.onnx``, ``x.int8.onnx`` and ``x.bf16.onnx``
(the same graph, marked for OpenVINO's bf16 arithmetic) beside it, a
parity report ``x.parity.json``, one gate report per variant (``x.int8.gate.json``) and an
end-to-end graph ``x.e2e.onnx`` (uint8 image in, class mask out); every stage finds them through
the functions here.
"""

from __future__ import annotations

from pathlib import Path

from segdeploy.core import publish
from segdeploy.core.errors import SegdeployError

#: Every precision segdeploy can run; fp32 is the export itself, the others are variants.
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
#: Precisions written as ``<name>.<precision>.onnx`` next to the FP32 export they come from.
VARIANT_PRECISIONS = ("fp16", "int8", "bf16")
#: Where exports go when no output path is given.
EXPORTS_FOLDER = Path("exports")

# Keys of an export's ``metadata_props`` besides the model card (``card.ONNX_METADATA_KEY``).
VERSION_KEY = "segdeploy.version"
OPSET_KEY = "segdeploy.opset"
EXPORT_SHAPE_KEY = "segdeploy.export_shape"
CHECKPOINT_SHA256_KEY = "segdeploy.checkpoint_sha256"
TORCH_VERSION_KEY = "segdeploy.torch_version"
#: Marks a reduced-precision variant (absent on FP32 exports).
PRECISION_KEY = "segdeploy.precision"
CALIBRATION_KEY = "segdeploy.calibration"
#: sha256 of the FP32 file a variant was made from: a variant belongs to that file only.
PARENT_SHA256_KEY = "segdeploy.parent_sha256"
#: The accuracy gate's result (JSON) that let a variant be written.
GATE_KEY = "segdeploy.gate"
#: Marks an end-to-end graph (``x.e2e.onnx``): its input/output description and parity result.
END_TO_END_KEY = "segdeploy.end_to_end"
#: sha256 of the file's own bytes without this entry (``onnx_file.seal``): what it is, checked by
#: ``segdeploy verify FILE``.
CONTENT_SHA256_KEY = "segdeploy.content_sha256"
#: INT8: the calibration images, ``[{"name": ..., "sha256": ...}]`` over their decoded pixels.
CALIBRATION_MANIFEST_KEY = "segdeploy.calibration_manifest"
#: The command that makes each variant, for messages that tell the user how to re-create one.
VARIANT_COMMANDS = {"int8": "quantize", "fp16": "convert-fp16", "bf16": "convert-bf16"}


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of an FP32 export lives: ``x.onnx`` -> ``x.int8.onnx``."""
    onnx_path = Path(onnx_path)
    if precision == "fp32":
        return onnx_path
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.onnx")


def end_to_end_path(onnx_path: str | Path) -> Path:
    """Where the end-to-end graph made from an export lives: ``x.onnx`` -> ``x.e2e.onnx``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.e2e.onnx")


def is_variant(onnx_path: str | Path) -> bool:
    """Whether a file name is that of a file made from an export (``x.int8.onnx``,
    ``x.e2e.onnx``) rather than an FP32 export."""
    suffixes = (*(f".{p}.onnx" for p in VARIANT_PRECISIONS), ".e2e.onnx")
    return Path(onnx_path).name.endswith(suffixes)


def default_export_path(checkpoint: str | Path) -> Path:
    """``exports/<checkpoint stem>.onnx``."""
    return EXPORTS_FOLDER / f"{Path(checkpoint).stem}.onnx"


def _beside(path: str | Path, suffix: str) -> Path:
    """``x.onnx`` -> ``x<suffix>`` in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.stem}{suffix}")


def parity_report_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.parity.json``, the report the export gate writes beside it."""
    return _beside(onnx_path, ".parity.json")


def rejected_report_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.parity.rejected.json``: where a refused export's parity report goes."""
    return _beside(onnx_path, ".parity.rejected.json")


def gate_report_path(variant: str | Path) -> Path:
    """``x.int8.onnx`` -> ``x.int8.gate.json``, the accuracy gate's report beside the variant."""
    return _beside(variant, ".gate.json")


def lock_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``.x.onnx.lock``, held by the export writing ``x.onnx``
    (:func:`segdeploy.core.publish.lock_path`)."""
    return publish.lock_path(onnx_path)


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


def format_shapes(shapes: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]) -> str:
    """The inverse of :func:`parse_shapes`: ``[(1, 16, 16), (3, 64, 32)]`` -> ``16x16,3x64x32``."""
    return ",".join(f"{h}x{w}" if batch == 1 else f"{batch}x{h}x{w}" for batch, h, w in shapes)
