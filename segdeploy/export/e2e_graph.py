"""Assembling the end-to-end graph around an export: uint8 image in, mask (or label) out
(torch-free). What the graph computes, step by step: :mod:`segdeploy.export.end_to_end`."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from segdeploy.core.artifacts import END_TO_END_KEY
from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.export.e2e_ops import INT64, Builder, pad, resize_like_pillow, resized_size
from segdeploy.export.onnx_file import attach_metadata

#: Name of the graph's input: ``(height, width, C)`` uint8, the decoded pixels.
INPUT_NAME = "image"
#: Outputs by task: the ``(height, width)`` uint8 mask, or the ``(K,)`` probabilities and the
#: ``()`` int64 label index.
OUTPUT_NAMES = {"segmentation": ("mask",), "classification": ("probabilities", "label")}
#: The ``(1, K, height, width)`` float32 scores before the argmax (segmentation): not an output
#: of the file, but the gate makes it one to compare the scores too.
SCORES_NAME = "e2e/scores"
#: The wrapper's ops take their axes as inputs (Squeeze, Unsqueeze, ReduceSum): ONNX opset 13.
MIN_OPSET = 13
#: Format of the :data:`END_TO_END_KEY` record.
END_TO_END_FORMAT = 1

_MODEL_PREFIX = "model/"  # the wrapped model's node and tensor names get this prefix


def _require_wrappable(model: onnx.ModelProto, card: ModelCard, source: str) -> None:
    """Refuse what the wrapper cannot take, in one sentence naming ``source``."""
    props = {p.key for p in model.metadata_props}
    if END_TO_END_KEY in props:
        raise SegdeployError(
            f"{source} is already an end-to-end graph; pass the export it came from"
        )
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise SegdeployError(
            f"{source}: the end-to-end graph needs ONNX opset {MIN_OPSET} or later, found {opset}; "
            f"export again with --opset {MIN_OPSET}"
        )
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise SegdeployError(
            f"{source}: expected one image input and one output, found {len(inputs)} and "
            f"{len(graph.output)}"
        )
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise SegdeployError(f"{source}: expected a float32 image input (an FP32 or INT8 export)")
    if card.task == "segmentation" and card.num_classes > 256:
        raise SegdeployError(
            f"{source}: masks are uint8, so at most 256 classes, found {card.num_classes}"
        )


def _model_input(b: Builder, card: ModelCard, out: str, batch: bool) -> tuple[str, str]:
    """Nodes from the uint8 image (a batch of them with ``batch``) to the model's input ``out``;
    returns the image's ``(2,)`` size and its size after the contract's resize (the region the
    model's output covers)."""
    first = 1 if batch else 0  # the axis of the height
    shape = b.op("Shape", INPUT_NAME)
    hw = b.op("Slice", shape, b.const([first]), b.const([first + 2]))  # (2,) h, w
    # (N, C, h, w) while still uint8: a quarter of the bytes to move.
    if batch:
        pixels = b.op("Transpose", INPUT_NAME, perm=[0, 3, 1, 2])
    else:
        pixels = b.op("Unsqueeze", b.op("Transpose", INPUT_NAME, perm=[2, 0, 1]), b.const([0]))
    rhw = hw
    if card.input.resize == "pad":
        x = b.op("Cast", pixels, to=TensorProto.FLOAT)
    else:
        rhw = resized_size(b, hw, card)
        x = resize_like_pillow(b, pixels, rhw, eight_bit=True)
    x = pad(b, x, rhw, card)
    # The runtime's normalise (segdeploy.core.preprocess): x * scale - shift in float32, with
    # scale and shift computed in float64, so the model sees the same numbers.
    std = np.asarray(card.std, dtype=np.float64).reshape(1, -1, 1, 1)
    mean = np.asarray(card.mean, dtype=np.float64).reshape(1, -1, 1, 1)
    scale = b.const((1.0 / (255.0 * std)).astype(np.float32), np.float32)
    shift = b.const((mean / std).astype(np.float32), np.float32)
    b.op("Sub", b.op("Mul", x, scale), shift, out=out)
    return hw, rhw


def _outputs(b: Builder, card: ModelCard, logits: str, hw: str, rhw: str, batch: bool) -> None:
    """Nodes from the model's output (``(N, ...)``) to the graph's outputs
    (:data:`OUTPUT_NAMES`), without the N axis for a one-image graph."""

    def unbatched(name: str, out: str) -> str:
        if batch:
            return b.op("Identity", name, out=out)
        return b.op("Squeeze", name, b.const([0]), out=out)

    if card.task == "classification":
        probabilities = b.op("Softmax", logits, axis=1)  # (N, K)
        unbatched(probabilities, "probabilities")
        unbatched(b.op("ArgMax", probabilities, axis=1, keepdims=0), "label")  # (N,)
        return
    scores = b.op("Slice", logits, b.const([0, 0]), rhw, b.const([2, 3]))  # (N, K, h', w')
    if card.input.resize != "pad":
        # Back to the image's size on the float scores (never the integer mask), as the runtime.
        scores = resize_like_pillow(b, scores, hw, eight_bit=False)
    scores = b.op("Identity", scores, out=SCORES_NAME)
    labels = b.op("ArgMax", scores, axis=1, keepdims=0)  # (N, h, w) int64, first maximum wins
    unbatched(b.op("Cast", labels, to=TensorProto.UINT8), "mask")


def _io(
    card: ModelCard, batch: bool
) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    # ONNX requires a main-graph input to declare its rank: one image, or a batch, per file.
    n = ["batch"] if batch else []
    image = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, [*n, "height", "width", card.in_channels]
    )
    if card.task == "segmentation":
        mask = helper.make_tensor_value_info("mask", TensorProto.UINT8, [*n, "height", "width"])
        return [image], [mask]
    return [image], [
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [*n, card.num_classes]),
        helper.make_tensor_value_info("label", INT64, n),
    ]


def io_description(card: ModelCard, batch: bool = False) -> dict[str, Any]:
    """What the :data:`END_TO_END_KEY` record says about the graph's inputs and outputs."""
    n = "N, " if batch else ""
    outputs = {"mask": f"({n}height, width) uint8 class indices"}
    if card.task == "classification":
        outputs = {
            "probabilities": f"({n}{card.num_classes}) float32, summing to 1",
            "label": f"({n.rstrip(', ')}) int64 index into the card's class_names",
        }
    what = "N images of one size" if batch else "one image"
    return {
        "format": END_TO_END_FORMAT,
        "batch": batch,
        "input": {INPUT_NAME: f"({n}height, width, {card.in_channels}) uint8, {what}"},
        "outputs": outputs,
        "steps": [
            f"pixels as float, ({'N' if batch else '1'}, C, height, width)",
            *(
                []
                if card.input.resize == "pad"
                else [
                    f"resize ({card.input.resize} "
                    f"{list(card.input.size)}) as Pillow's bilinear resize does"
                ]
            ),
            f"pad to multiples of {card.size_multiple} ({card.input.padding}, bottom/right)",
            "normalise with the card's mean and std",
            "model",
            "softmax and argmax"
            if card.task == "classification"
            else "crop" + ("" if card.input.resize == "pad" else ", resize back") + " and argmax",
        ],
    }


def build_end_to_end(
    model: onnx.ModelProto, card: ModelCard, source: str = "model", batch: bool = False
) -> onnx.ModelProto:
    """The end-to-end graph around ``model`` (an export whose card is ``card``), checked by
    ``onnx.checker`` but not yet compared with the runtime (:func:`check_end_to_end` does that).
    With ``batch`` it takes ``(N, height, width, C)`` (N images of one size) and every output
    has the N axis; without, one ``(height, width, C)`` image.

    The model's nodes and tensors are kept as they are, renamed under ``model/``; the opset and IR
    version are the model's. Metadata: the model's, plus :data:`END_TO_END_KEY`.

    Raises:
        SegdeployError: ``model`` cannot be wrapped (see :func:`_require_wrappable`).
    """
    _require_wrappable(model, card, source)
    inner = onnx.compose.add_prefix(model, _MODEL_PREFIX)
    initializers = {i.name for i in inner.graph.initializer}
    model_input = next(i.name for i in inner.graph.input if i.name not in initializers)
    b = Builder()
    hw, rhw = _model_input(b, card, model_input, batch)
    b.nodes.extend(inner.graph.node)
    _outputs(b, card, inner.graph.output[0].name, hw, rhw, batch)
    inputs, outputs = _io(card, batch)
    graph = helper.make_graph(
        b.nodes,
        f"{card.arch}_end_to_end",
        inputs,
        outputs,
        initializer=[*b.initializers, *inner.graph.initializer],
        sparse_initializer=list(inner.graph.sparse_initializer),
    )
    wrapped = helper.make_model(
        graph,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        functions=list(inner.functions),
        producer_name="segdeploy",
    )
    attach_metadata(wrapped, {p.key: p.value for p in model.metadata_props})
    record = json.dumps(io_description(card, batch), sort_keys=True)
    attach_metadata(wrapped, {END_TO_END_KEY: record})
    onnx.checker.check_model(wrapped)
    return wrapped
