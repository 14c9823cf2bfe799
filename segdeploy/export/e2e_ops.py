"""Graph-building blocks of the end-to-end graph: a node builder, Pillow's bilinear resize and
numpy's padding as ONNX ops (torch-free).

Why these are built from index arithmetic and Gather rather than ONNX ``Resize`` and ``Pad``: see
:mod:`segdeploy.export.end_to_end`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segdeploy.core.card import ModelCard

INT64, INT32 = TensorProto.INT64, TensorProto.INT32


class Builder:
    """Nodes of one graph of the wrapper (the main graph or a subgraph), in topological order.

    Names are ``e2e/<op>_<n>``, unique across the main graph and its subgraphs; constants all go
    to the main graph's initializers, which subgraphs see from the outer scope.
    """

    def __init__(self, root: Builder | None = None) -> None:
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

    def child(self) -> Builder:
        """A builder for a subgraph (a Loop body, an If branch)."""
        return Builder(self._root)


def resized_size(b: Builder, hw: str, card: ModelCard) -> str:
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
    return b.op("Cast", b.op("Max", rounded, b.const([1.0], np.float64)), to=INT64)


def _pillow_taps(b: Builder, size: str, target: str, eight_bit: bool) -> tuple[str, str]:
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
        "Cast", b.op("Add", b.op("Mul", b.op("Ceil", support), _f64(b, 2)), _f64(b, 1)), to=INT64
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
    return b.op("Cast", b.op("Min", source, last), to=INT64), weight


def value_info(name: str, elem_type: int, shape: list | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _pillow_rows(b: Builder, x: str, target: str, eight_bit: bool) -> str:
    """``(1, C, n, m)`` resized along its rows (axis 2) to ``target`` (``()`` int64) as one pass
    of Pillow's bilinear resize.

    8-bit (``eight_bit``, ``x`` int32 pixel values): Pillow's integer arithmetic exactly, sums of
    pixels times 22-bit weights, then ``(sum + 2**21) >> 22`` clipped to 0..255. Float (``x``
    float32, mode ``F``): float32 sums (Pillow's are float64: about 1e-7 apart).

    The sum over the taps is a Loop adding one gathered tap (whole rows, so the gathers copy
    contiguous memory) at a time: memory stays at one output-sized tensor however much the image
    shrinks (a 4000-pixel side resized to 128 has 65 taps).
    """
    kind = INT32 if eight_bit else TensorProto.FLOAT
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
        [
            value_info(step, INT64, []),
            value_info(keep, TensorProto.BOOL, []),
            value_info(total, kind),
        ],
        [value_info(kept, TensorProto.BOOL, []), value_info(added, kind)],
    )
    taps = b.op("Gather", b.op("Shape", index), b.const(1), axis=0)
    result = b.op("Loop", taps, "", zeros, body=loop_body)
    if eight_bit:  # a non-negative sum: integer division is the shift
        result = b.op(
            "Div", b.op("Add", result, b.const(1 << 21, np.int32)), b.const(1 << 22, np.int32)
        )
        result = b.op("Clip", result, b.const(0, np.int32), b.const(255, np.int32))
    return result


def _f64(b: Builder, value: float) -> str:
    return b.const(float(value), np.float64)


def resize_like_pillow(b: Builder, x: str, hw: str, eight_bit: bool) -> str:
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
        x = b.op("Cast", x, to=INT32)
    kind = INT32 if eight_bit else TensorProto.FLOAT
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
        branches[branch] = helper.make_graph(
            sub.nodes, sub.name("order"), [], [value_info(out, kind)]
        )
    resized = b.op("If", vertical_first, **branches)
    return b.op("Cast", resized, to=TensorProto.FLOAT) if eight_bit else resized


def _source_indices(b: Builder, size: str, target: str, mode: str) -> str:
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


def pad(b: Builder, x: str, rhw: str, card: ModelCard) -> str:
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
