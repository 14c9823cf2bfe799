"""The end-to-end graph: uint8 image in, uint8 class mask out, every step inside one ONNX file.

``x.onnx`` -> ``x.e2e.onnx``. The graph wraps the export's model in the steps the Python runtime
(:mod:`segdeploy.runtime`) does in numpy and Pillow, so an app in C++, C#, Java, Rust or
JavaScript needs nothing but an ONNX Runtime binding and the decoded pixels::

    image (height, width, C) uint8       one image per call, any height and width
                                         (or, made with batch=True, (N, height, width, C):
                                         N images of one size; every output gains the N axis)
      -> float, (1, C, height, width)
      -> resize by the card's input contract ('fixed', 'shorter_side'; nothing for 'pad')
      -> pad at the bottom and right to the size multiple with the card's padding mode
      -> normalise: (pixel / 255 - mean) / std
      -> the model
      -> segmentation: crop the padding, resize the scores back ('fixed', 'shorter_side'),
         argmax -> mask (height, width) uint8
      -> classification: softmax -> probabilities (K,) float32, argmax -> label () int64

Two steps are built from index arithmetic and Gather rather than the ONNX op of the same name,
because the runtime's results differ from the op's:

* padding: ONNX ``Pad``'s reflect mode needs the pad to be smaller than the image (a 5-pixel-high
  image padded to 16 breaks it), while numpy reflects again and again. The graph computes numpy's
  source row and column for every padded position (a triangle wave of period ``2 (n - 1)``;
  ``edge``: the last one), so images of any size, down to 1x1, get the runtime's pixels.
* resizing: the runtime resizes with Pillow, whose bilinear filter widens when shrinking, drops
  taps outside the image and, for 8-bit images, rounds the weights to 22-bit fixed point and the
  result after each pass, in an order that depends on the sizes. ONNX ``Resize`` with
  ``antialias`` and ``exclude_outside`` computes the same filter in float and rounds differently
  on about 1 % of the pixels; the graph computes Pillow's coefficients and integer sums and gets
  its pixels exactly (at some cost: a 4000x3000 photo resized to 224x224 took about 0.4 s here,
  Pillow 0.2 s).

The graph always runs the whole image; ``predict`` may tile images above a pixel budget
(tiled prediction), so the two are compared below it.

The card stays in ``metadata_props``, with :data:`~segdeploy.core.artifacts.END_TO_END_KEY`
describing the inputs, outputs and the parity gate's result. The gate (:func:`check_end_to_end`)
runs the graph and ``open_model(export).predict`` on the same images at odd, non-square and tiny
sizes; the file is written only if the masks agree on at least :data:`MIN_PIXEL_AGREEMENT` of the
pixels and the scores behind them within :data:`SCORE_RTOL` (classification: every label, the
probabilities within :data:`PROBABILITY_ATOL`). Torch-free: it needs onnx and onnxruntime.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segdeploy.core.artifacts import END_TO_END_KEY, PARENT_SHA256_KEY, end_to_end_path
from segdeploy.core.card import ModelCard
from segdeploy.core.errors import ParityError, SegdeployError
from segdeploy.core.fileio import atomic_write, file_sha256
from segdeploy.core.images import ImageSource, describe, load_image
from segdeploy.data.synthetic import render_road_scene
from segdeploy.export.onnx_file import attach_metadata, load_onnx, read_card, seal
from segdeploy.export.target_check import end_to_end_on_target
from segdeploy.runtime import open_model
from segdeploy.runtime.postprocess import argmax_mask
from segdeploy.runtime.session import SessionOptions, create_session

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
#: Share of pixels (pooled over the gate's images) where the graph's mask must equal the runtime's.
MIN_PIXEL_AGREEMENT = 0.9999
#: Largest tolerated difference of the scores from the runtime's: segmentation class scores
#: relative to the largest score, classification probabilities. The graph feeds the model the
#: same float32 numbers as the runtime, so only the order of float operations may differ.
SCORE_RTOL = 1e-4
PROBABILITY_ATOL = 1e-4
#: Gate image sizes (height, width): odd, non-square, thin and tiny (smaller than the padding).
GATE_SIZES = ((61, 93), (97, 131), (17, 200), (144, 176), (5, 9))
#: Format of the :data:`END_TO_END_KEY` record.
END_TO_END_FORMAT = 1

_MODEL_PREFIX = "model/"  # the wrapped model's node and tensor names get this prefix
_INT64, _INT32 = TensorProto.INT64, TensorProto.INT32


class _Builder:
    """Nodes of one graph of the wrapper (the main graph or a subgraph), in topological order.

    Names are ``e2e/<op>_<n>``, unique across the main graph and its subgraphs; constants all go
    to the main graph's initializers, which subgraphs see from the outer scope.
    """

    def __init__(self, root: _Builder | None = None) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._root = root or self
        if root is None:
            self.initializers: list[onnx.TensorProto] = []
            self._count = 0

    def name(self, kind: str) -> str:
        self._root._count += 1
        return f"e2e/{kind}_{self._root._count}"

    def const(self, values: Any, dtype: Any = np.int64) -> str:
        name = self.name("const")
        tensor = numpy_helper.from_array(np.asarray(values, dtype=dtype), name)
        self._root.initializers.append(tensor)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def child(self) -> _Builder:
        """A builder for a subgraph (a Loop body, an If branch)."""
        return _Builder(self._root)


# ------------------------------------------------------------------------------------------------
# Building the graph
# ------------------------------------------------------------------------------------------------


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


def _resized_size(b: _Builder, hw: str, card: ModelCard) -> str:
    """``(2,)`` int64: the image's size after the contract's resize (``InputContract``)."""
    contract = card.input
    if contract.resize == "fixed":
        return b.const(list(contract.size))
    # shorter_side, in float64 as Python computes it: scale = size / min(h, w), round(h * scale)
    # (both round half to even), at least 1.
    hw_f64 = b.op("Cast", hw, to=TensorProto.DOUBLE)
    shorter = b.op("ReduceMin", hw_f64, keepdims=1)
    scale = b.op("Div", b.const([float(contract.size[0])], np.float64), shorter)
    rounded = b.op("Round", b.op("Mul", hw_f64, scale))
    return b.op("Cast", b.op("Max", rounded, b.const([1.0], np.float64)), to=_INT64)


def _pillow_taps(b: _Builder, size: str, target: str, eight_bit: bool) -> tuple[str, str]:
    """Pillow's bilinear coefficients (``precompute_coeffs`` in its ``Resample.c``) for resizing
    ``size`` samples to ``target`` (both ``()`` int64), computed in float64 in Pillow's order.

    Returns ``(index, weight)``, both ``(target, taps)``: output sample ``j`` is
    ``sum_t x[index[j, t]] * weight[j, t]``. Pillow centres output pixels at half-pixel positions,
    widens the triangle filter by the shrink factor (its antialiasing), drops taps outside the
    image and renormalises; for 8-bit images (``eight_bit``) it rounds the weights to 22-bit
    fixed point.
    """
    f64, half = TensorProto.DOUBLE, _f64(b, 0.5)
    size_f, target_f = b.op("Cast", size, to=f64), b.op("Cast", target, to=f64)
    scale = b.op("Div", size_f, target_f)
    support = b.op("Max", scale, _f64(b, 1.0))  # the filter's support (1), widened
    taps = b.op(
        "Cast", b.op("Add", b.op("Mul", b.op("Ceil", support), _f64(b, 2)), _f64(b, 1)), to=_INT64
    )
    out = b.op("Cast", b.op("Range", b.const(0), target, b.const(1)), to=f64)  # (target,)
    centre = b.op("Mul", b.op("Add", out, half), scale)
    centre = b.op("Unsqueeze", centre, b.const([1]))  # (target, 1)
    # xmin = (int)(centre - support + 0.5) clamped at 0; xmin + xmax = (int)(centre + support + 0.5)
    # clamped at size (both positive where it matters, so truncation is floor).
    first = b.op("Max", b.op("Floor", b.op("Add", b.op("Sub", centre, support), half)), _f64(b, 0))
    stop = b.op("Min", b.op("Floor", b.op("Add", b.op("Add", centre, support), half)), size_f)
    tap = b.op("Cast", b.op("Range", b.const(0), taps, b.const(1)), to=f64)
    source = b.op("Add", first, b.op("Unsqueeze", tap, b.const([0])))  # (target, taps)
    # filter((x + xmin - centre + 0.5) * (1 / support)), the triangle max(0, 1 - |d|)
    inverse = b.op("Div", _f64(b, 1.0), support)
    distance = b.op("Mul", b.op("Add", b.op("Sub", source, centre), half), inverse)
    weight = b.op("Max", b.op("Sub", _f64(b, 1.0), b.op("Abs", distance)), _f64(b, 0))
    weight = b.op("Where", b.op("Less", source, stop), weight, _f64(b, 0))
    weight = b.op("Div", weight, b.op("ReduceSum", weight, b.const([1]), keepdims=1))
    if eight_bit:  # (int)(0.5 + k * 2**22)
        weight = b.op("Floor", b.op("Add", b.op("Mul", weight, _f64(b, 1 << 22)), half))
    last = b.op("Sub", size_f, _f64(b, 1.0))
    return b.op("Cast", b.op("Min", source, last), to=_INT64), weight


def _value(name: str, elem_type: int, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _pillow_rows(b: _Builder, x: str, target: str, eight_bit: bool) -> str:
    """``(1, C, n, m)`` resized along its rows (axis 2) to ``target`` (``()`` int64) as one pass
    of Pillow's bilinear resize.

    8-bit (``eight_bit``, ``x`` int32 pixel values): Pillow's integer arithmetic exactly, sums of
    pixels times 22-bit weights, then ``(sum + 2**21) >> 22`` clipped to 0..255. Float (``x``
    float32, mode ``F``): float32 sums (Pillow's are float64: about 1e-7 apart).

    The sum over the taps is a Loop adding one gathered tap (whole rows, so the gathers copy
    contiguous memory) at a time: memory stays at one output-sized tensor however much the image
    shrinks (a 4000-pixel side resized to 128 has 65 taps).
    """
    kind = _INT32 if eight_bit else TensorProto.FLOAT
    shape = b.op("Shape", x)
    index, weight = _pillow_taps(b, b.op("Gather", shape, b.const(2), axis=0), target, eight_bit)
    weight = b.op("Cast", weight, to=kind)  # (target, taps): exact integers when eight_bit
    out_shape = b.op(
        "Concat",
        b.op("Slice", shape, b.const([0]), b.const([2])),
        b.op("Unsqueeze", target, b.const([0])),
        b.op("Slice", shape, b.const([3]), b.const([4])),
        axis=0,
    )
    zeros = b.op("ConstantOfShape", out_shape, value=helper.make_tensor("zero", kind, [1], [0]))
    body = b.child()
    step, keep, total = body.name("step"), body.name("keep"), body.name("total")
    tap_weight = body.op("Unsqueeze", body.op("Gather", weight, step, axis=1), body.const([1]))
    tap = body.op("Gather", x, body.op("Gather", index, step, axis=1), axis=2)  # (1, C, target, m)
    added = body.op("Add", total, body.op("Mul", tap, tap_weight))
    kept = body.op("Identity", keep)
    loop_body = helper.make_graph(
        body.nodes,
        body.name("taps"),
        [_value(step, _INT64, []), _value(keep, TensorProto.BOOL, []), _value(total, kind)],
        [_value(kept, TensorProto.BOOL, []), _value(added, kind)],
    )
    taps = b.op("Gather", b.op("Shape", index), b.const(1), axis=0)
    result = b.op("Loop", taps, "", zeros, body=loop_body)
    if eight_bit:  # a non-negative sum: integer division is the shift
        result = b.op(
            "Div", b.op("Add", result, b.const(1 << 21, np.int32)), b.const(1 << 22, np.int32)
        )
        result = b.op("Clip", result, b.const(0, np.int32), b.const(255, np.int32))
    return result


def _f64(b: _Builder, value: float) -> str:
    return b.const(float(value), np.float64)


def _resize_like_pillow(b: _Builder, x: str, hw: str, eight_bit: bool) -> str:
    """``(1, C, h, w)`` resized to ``hw`` (``(2,)`` int64) as Pillow's bilinear ``resize`` (the
    runtime's) does it, as float32: exactly for uint8 pixels (``eight_bit``), to about 1e-7 for
    float32 scores (mode ``F``).

    Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
    pixels as the width, else the horizontal pass first; with 8-bit rounding after each pass the
    order shows in the result, so the graph picks the same one (an If on the sizes). The
    horizontal pass runs on the transposed image, so that its gathers copy whole rows too.
    """
    shape = b.op("Shape", x)
    sizes = {axis: b.op("Gather", hw, b.const(axis - 2), axis=0) for axis in (2, 3)}
    shrink = {
        axis: b.op("Sub", b.op("Gather", shape, b.const(axis), axis=0), sizes[axis])
        for axis in (2, 3)
    }
    vertical_first = b.op(
        "And",
        b.op("Greater", shrink[2], b.const(0)),
        b.op("Greater", shrink[2], b.op("Mul", shrink[3], b.const(2))),
    )
    if eight_bit:
        x = b.op("Cast", x, to=_INT32)
    kind = _INT32 if eight_bit else TensorProto.FLOAT
    branches = {}
    for first, branch in ((2, "then_branch"), (3, "else_branch")):
        sub, y = b.child(), x
        for axis in (first, 5 - first):
            if axis == 3:
                y = sub.op("Transpose", y, perm=[0, 1, 3, 2])
            y = _pillow_rows(sub, y, sizes[axis], eight_bit)
            if axis == 3:
                y = sub.op("Transpose", y, perm=[0, 1, 3, 2])
        out = sub.op("Identity", y)
        branches[branch] = helper.make_graph(sub.nodes, sub.name("order"), [], [_value(out, kind)])
    resized = b.op("If", vertical_first, **branches)
    return b.op("Cast", resized, to=TensorProto.FLOAT) if eight_bit else resized


def _source_indices(b: _Builder, size: str, target: str, mode: str) -> str:
    """``(target - size,)`` int64: which of ``size`` rows numpy's ``np.pad(mode)`` copies to each
    padded row ``size .. target - 1``."""
    rows = b.op("Range", size, target, b.const(1))
    last = b.op("Sub", size, b.const(1))
    if mode == "edge":
        return b.op("Min", rows, last)
    # reflect: numpy reflects again and again when the pad exceeds the image, which is a
    # triangle wave of period 2 (size - 1): 0 1 2 1 0 1 2 ... (size 1: always 0).
    period = b.op("Max", b.op("Mul", last, b.const(2)), b.const(1))
    phase = b.op("Mod", rows, period)
    return b.op("Where", b.op("Less", phase, size), phase, b.op("Sub", period, phase))


def _pad(b: _Builder, x: str, rhw: str, card: ModelCard) -> str:
    """``(1, C, h, w)`` padded at the bottom and right to multiples of the card's multiple."""
    multiple = card.size_multiple
    padded = b.op(
        "Mul",
        b.op("Div", b.op("Add", rhw, b.const(multiple - 1)), b.const(multiple)),
        b.const(multiple),
    )  # (2,) int64: h and w rounded up
    if card.input.padding == "constant":  # np.pad's default constant is 0
        pads = b.op("Concat", b.const([0] * 6), b.op("Sub", padded, rhw), axis=0)
        return b.op("Pad", x, pads, b.const(0.0, np.float32), mode="constant")
    for axis in (2, 3):
        size = b.op("Gather", rhw, b.const(axis - 2), axis=0)  # () int64
        target = b.op("Gather", padded, b.const(axis - 2), axis=0)
        # Only the strip is gathered (a gather of the whole image along the width, element by
        # element, took 25 ms at 640x480); the image itself is copied by Concat.
        strip = b.op("Gather", x, _source_indices(b, size, target, card.input.padding), axis=axis)
        x = b.op("Concat", x, strip, axis=axis)
    return x


def _model_input(b: _Builder, card: ModelCard, out: str, batch: bool) -> tuple[str, str]:
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
        rhw = _resized_size(b, hw, card)
        x = _resize_like_pillow(b, pixels, rhw, eight_bit=True)
    x = _pad(b, x, rhw, card)
    # The runtime's normalise (segdeploy.core.preprocess): x * scale - shift in float32, with
    # scale and shift computed in float64, so the model sees the same numbers.
    std = np.asarray(card.std, dtype=np.float64).reshape(1, -1, 1, 1)
    mean = np.asarray(card.mean, dtype=np.float64).reshape(1, -1, 1, 1)
    scale = b.const((1.0 / (255.0 * std)).astype(np.float32), np.float32)
    shift = b.const((mean / std).astype(np.float32), np.float32)
    b.op("Sub", b.op("Mul", x, scale), shift, out=out)
    return hw, rhw


def _outputs(b: _Builder, card: ModelCard, logits: str, hw: str, rhw: str, batch: bool) -> None:
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
        scores = _resize_like_pillow(b, scores, hw, eight_bit=False)
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
        helper.make_tensor_value_info("label", _INT64, n),
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
    b = _Builder()
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


# ------------------------------------------------------------------------------------------------
# The parity gate and the file
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCheck:
    """One gate image: its size and how the graph's result compared with the runtime's.

    ``agreeing`` of ``total`` pixels (segmentation) or labels (classification, 1 of 1) were
    equal; ``score_error`` is the largest difference of the scores behind them: the class
    scores before the argmax relative to the largest score (segmentation), or the probabilities
    (classification).
    """

    name: str
    height: int
    width: int
    agreeing: int
    total: int
    score_error: float


@dataclass(frozen=True)
class EndToEndReport:
    """The gate's result: per image and pooled; ``passed`` decides whether the file is written."""

    task: str
    images: tuple[ImageCheck, ...]
    min_agreement: float
    max_score_error: float

    @property
    def agreement(self) -> float:
        """Share of pixels (or labels) where the graph equals the runtime, pooled."""
        return sum(i.agreeing for i in self.images) / max(1, sum(i.total for i in self.images))

    @property
    def score_error(self) -> float:
        return max((i.score_error for i in self.images), default=float("inf"))

    @property
    def passed(self) -> bool:
        # The scores as well as the decisions: an untrained model that predicts one class
        # everywhere agrees on every pixel even when the preprocessing is wrong.
        return (
            bool(self.images)
            and self.agreement >= self.min_agreement
            and self.score_error <= self.max_score_error
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "passed": self.passed,
            "agreement": self.agreement,
            "min_agreement": self.min_agreement,
            "score_error": self.score_error,
            "max_score_error": self.max_score_error,
            "images": [asdict(i) for i in self.images],
        }


@dataclass(frozen=True)
class EndToEndResult:
    """What :func:`export_end_to_end` wrote: the file, the gate's report and the seconds taken."""

    path: Path
    report: EndToEndReport
    seconds: float


def gate_images(card: ModelCard, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``(name, pixels)`` at :data:`GATE_SIZES`: synthetic road scenes (textured surfaces,
    edges, noise), cropped for sizes under 16, with the card's channel count."""
    images = []
    for index, (height, width) in enumerate(GATE_SIZES):
        scene, _ = render_road_scene(index, max(height, 16), max(width, 16), seed=seed)
        pixels = load_image(np.ascontiguousarray(scene[:height, :width]), card.in_channels)
        images.append((f"synthetic:{seed}:{index} ({height}x{width})", pixels))
    return images


def _named_images(
    images: Sequence[ImageSource] | None, card: ModelCard
) -> list[tuple[str, np.ndarray]]:
    if images is None:
        return gate_images(card)
    return [(describe(image), load_image(image, card.in_channels)) for image in images]


def _run(session, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs by name."""
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: pixels}), strict=True))


def _row(found: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
    """One image's outputs out of a batch graph's, shaped as a one-image graph's."""
    return {
        name: value[row : row + 1] if name == SCORES_NAME else value[row]
        for name, value in found.items()
    }


def _checks(session, reference, named: list[tuple[str, np.ndarray]], batch: bool) -> list:
    """Every gate image through the graph (as a batch of 1 in a batch graph), and for a batch
    graph also the first image with its mirror image as a batch of 2, each row compared alone."""
    if not batch:
        return [_compare(reference, n, p, _run(session, p)) for n, p in named]
    checks = [_compare(reference, n, p, _row(_run(session, p[None]), 0)) for n, p in named]
    name, pixels = named[0]
    pair = np.stack([pixels, np.ascontiguousarray(pixels[:, ::-1])])
    found = _run(session, pair)
    for row in range(2):
        label = f"batch of 2, row {row}: {name}"
        checks.append(_compare(reference, label, pair[row], _row(found, row)))
    return checks


def _compare(reference, name: str, pixels: np.ndarray, found: dict[str, np.ndarray]) -> ImageCheck:
    """Compare the graph's outputs for one image with the runtime's ``predict``."""
    height, width = pixels.shape[:2]
    if reference.card.task == "classification":
        label, probabilities = reference.predict(pixels)
        same = reference.card.class_names[int(found["label"])] == label
        error = float(np.max(np.abs(found["probabilities"] - probabilities)))
        return ImageCheck(name, height, width, int(same), 1, error)
    scores = reference.logits(pixels)  # (K, H, W): what predict takes the argmax of
    expected = argmax_mask(scores)
    mask, graph_scores = found["mask"], found[SCORES_NAME][0]
    if mask.shape != expected.shape or graph_scores.shape != scores.shape:
        return ImageCheck(name, height, width, 0, expected.size, float("inf"))
    largest = max(float(np.max(np.abs(scores))), np.finfo(np.float32).tiny)
    error = float(np.max(np.abs(graph_scores - scores))) / largest
    return ImageCheck(name, height, width, int(np.sum(mask == expected)), expected.size, error)


def _with_scores(e2e: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a segmentation graph that also outputs its scores (:data:`SCORES_NAME`)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(e2e)
    if any(n.output[0] == SCORES_NAME for n in probe.graph.node):
        probe.graph.output.append(
            helper.make_tensor_value_info(SCORES_NAME, TensorProto.FLOAT, None)
        )
    return probe


def check_end_to_end(
    e2e: onnx.ModelProto,
    onnx_path: str | Path,
    images: Sequence[ImageSource] | None = None,
    min_agreement: float = MIN_PIXEL_AGREEMENT,
) -> EndToEndReport:
    """Compare ``e2e`` with ``open_model(onnx_path)``'s ``predict`` on ``images`` (CPU).

    Masks (labels) must agree on ``min_agreement`` of the pixels (images), pooled; the scores
    behind them within :data:`SCORE_RTOL` of the largest score (segmentation) or
    :data:`PROBABILITY_ATOL` (classification). A batch graph also runs a batch of 2 images, each
    row compared with the runtime alone.

    Args:
        e2e: the end-to-end graph (from :func:`build_end_to_end`), not yet written.
        onnx_path: the export it wraps.
        images: paths, PIL images or arrays; default :func:`gate_images`.
        min_agreement: pooled share of pixels (labels) that must be equal.
    """
    reference = open_model(onnx_path, provider="cpu")
    named = _named_images(images, reference.card)
    try:
        session = create_session(
            _with_scores(e2e).SerializeToString(), SessionOptions(provider="cpu")
        )
        batch = len(e2e.graph.input[0].type.tensor_type.shape.dim) == 4
        checks = tuple(_checks(session, reference, named, batch))
    except Exception as err:  # ORT rejects a malformed graph with several exception types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SegdeployError(
            f"the end-to-end graph of {onnx_path} does not run ({first})"
        ) from None
    task = reference.card.task
    tolerance = SCORE_RTOL if task == "segmentation" else PROBABILITY_ATOL
    return EndToEndReport(task, checks, min_agreement, tolerance)


def _refusal(onnx_path: Path, report: EndToEndReport) -> str:
    worst = min(report.images, key=lambda i: i.agreeing / max(1, i.total), default=None)
    where = f"; worst image {worst.name}: {worst.agreeing}/{worst.total}" if worst else ""
    return (
        f"the end-to-end graph of {onnx_path} disagrees with the runtime's predict: "
        f"{report.agreement:.4%} agreement (needs {report.min_agreement:.4%}), score error "
        f"{report.score_error:.2g} (allowed {report.max_score_error:.2g}){where}; "
        "nothing was written"
    )


def export_end_to_end(
    onnx_path: str | Path,
    out: str | Path | None = None,
    images: Sequence[ImageSource] | None = None,
    force: bool = False,
    batch: bool = False,
) -> EndToEndResult:
    """Write the end-to-end graph of a segdeploy export (``x.onnx`` -> ``x.e2e.onnx``); with
    ``batch``, one that takes ``(N, height, width, C)`` (:func:`build_end_to_end`).

    The graph is built, checked against ``segdeploy.runtime``'s ``predict`` on ``images``
    (default: :func:`gate_images`, odd, non-square and tiny sizes) and written atomically only if
    it passes; the gate's result goes into its metadata.

    Raises:
        SegdeployError: unreadable export or one that cannot be wrapped, an existing ``out``
            without ``force``.
        ParityError: the graph disagrees with the runtime (``.report`` is the
            :class:`EndToEndReport`); nothing is written.
    """
    started = time.perf_counter()
    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else end_to_end_path(onnx_path)
    model = load_onnx(onnx_path)
    card = read_card(model, str(onnx_path))
    if out.exists() and not force:
        raise SegdeployError(f"{out} already exists; pass --force to replace it")
    if out.resolve() == onnx_path.resolve():
        raise SegdeployError(f"{out}: the end-to-end graph cannot replace the export it wraps")
    e2e = build_end_to_end(model, card, str(onnx_path), batch)
    report = check_end_to_end(e2e, onnx_path, images)
    if not report.passed:
        raise ParityError(_refusal(onnx_path, report), report)
    # On the target's own runtime too (onnxruntime-web for ort-web): the masks must be the bytes
    # predict writes.
    on_target = end_to_end_on_target(e2e, model, onnx_path, _named_images(images, card), batch)
    record = io_description(card, batch) | {"gate": report.to_dict(), "on_target": on_target}
    attach_metadata(
        e2e,
        {
            END_TO_END_KEY: json.dumps(record, sort_keys=True),
            PARENT_SHA256_KEY: file_sha256(onnx_path),
        },
    )
    seal(e2e)
    atomic_write(out, lambda tmp: onnx.save(e2e, tmp))
    return EndToEndResult(out, report, time.perf_counter() - started)
