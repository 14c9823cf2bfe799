"""ONNX file helpers that need the ``onnx`` package but no torch: load, read the card, metadata.

Quantisation and FP16 conversion work on exported files only, so they use these and never pull in
torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from segdeploy.core.artifacts import CONTENT_SHA256_KEY, PRECISION_KEY, variant_path
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard
from segdeploy.core.errors import SegdeployError, first_line


def graph_dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    """Dims of a graph input/output: the symbol when symbolic, else the number."""
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def attach_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Set ``metadata_props`` entries, replacing existing keys."""
    kept = [p for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def seal(model: onnx.ModelProto) -> str:
    """Record in ``model`` the sha256 of its own serialized bytes without that record
    (``CONTENT_SHA256_KEY``), and return it; call it last, after every other change.

    :func:`segdeploy.core.onnx_header.graph_sha256` recomputes it from the file alone (it skips
    that one ``metadata_props`` entry), so ``segdeploy verify FILE`` needs neither onnx nor the
    model that made the file.
    """
    kept = [p for p in model.metadata_props if p.key != CONTENT_SHA256_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    attach_metadata(model, {CONTENT_SHA256_KEY: digest})
    return digest


def stamp_parent_format(variant: onnx.ModelProto, parent: str | Path) -> None:
    """Keep a variant inside its FP32 parent's target: the parent's IR version, and only the
    operator domains its nodes use.

    ORT's quantizer saves with onnx's newest IR and imports every domain it knows (measured with
    onnxruntime 1.31: ``ai.onnx.ml`` opset 5, ``com.microsoft``, ``ai.onnx.preview`` ...), and
    onnxruntime 1.16.3 refuses the INT8 file at load ("Opset 5 is under development ... domain
    ai.onnx.ml is till opset 3") although no node uses the domain.
    """
    from segdeploy.core.onnx_header import read_header

    variant.ir_version = min(variant.ir_version, read_header(Path(parent)).ir_version)
    used = {node.domain for node in variant.graph.node} | {""}
    kept = [o for o in variant.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del variant.opset_import[:]
    variant.opset_import.extend(kept)


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, or raise one :class:`SegdeployError` sentence naming it."""
    path = Path(path)
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(path)
    except Exception as err:  # protobuf raises DecodeError and others for truncated/garbage files
        first = first_line(err)
        raise SegdeployError(f"{path} is not a readable ONNX model ({first})") from None


def read_card(model: onnx.ModelProto, source: str) -> ModelCard:
    """The model card stored in an ONNX model's ``metadata_props``."""
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY not in props:
        raise SegdeployError(f"{source} carries no segdeploy model card (not a segdeploy export)")
    return ModelCard.from_json(props[ONNX_METADATA_KEY], source=source)


def require_fp32(model: onnx.ModelProto, path: Path, command: str) -> None:
    """Refuse a variant as input: quantising an INT8 or FP16 graph again breaks or degrades it."""
    precision = next((p.value for p in model.metadata_props if p.key == PRECISION_KEY), "fp32")
    if precision != "fp32":
        raise SegdeployError(
            f"{path} is already an {precision} variant; {command} takes the FP32 export it was "
            "made from"
        )


def open_fp32_parent(
    onnx_path: str | Path, out: str | Path | None, precision: str, command: str
) -> tuple[Path, onnx.ModelProto, Path, ModelCard]:
    """What making a ``precision`` variant starts from: the FP32 export (refusing a variant),
    the variant's path (``x.<precision>.onnx`` unless ``out``) and the export's card."""
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    require_fp32(model, onnx_path, command)
    out = Path(out) if out else variant_path(onnx_path, precision)
    return onnx_path, model, out, read_card(model, str(onnx_path))
