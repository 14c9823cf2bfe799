"""FP32 graphs built to break naive INT8, and deliberately damaged copies, for the divergence map
and the accuracy-aware loop.

:func:`with_activation_outlier` keeps the FP32 function (almost) unchanged but gives one
activation a channel 1e4 times larger than the rest: Conv ``A``'s output channel ``c`` (weights
and bias) times ``scale``, and Conv ``B``'s weights that read channel ``c`` divided by it. ReLU
between them is positively homogeneous, so FP32 computes the same logits; INT8 with one scale per
activation tensor spends its 256 levels on the outlier channel and rounds every other channel of
``B``'s input to zero.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def _scale(init: onnx.TensorProto, factor: np.ndarray) -> None:
    values = numpy_helper.to_array(init).astype(np.float32) * factor
    init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))


def node_named(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def with_activation_outlier(
    model: onnx.ModelProto, a: str, b: str, channel: int = 0, scale: float = 1e4
) -> onnx.ModelProto:
    """A copy of ``model`` where Conv ``a``'s output ``channel`` is ``scale`` times larger and
    Conv ``b`` (which reads it through a ReLU) compensates."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = _initializers(out)
    conv_a, conv_b = node_named(out, a), node_named(out, b)
    weight_a = inits[conv_a.input[1]]
    factor = np.ones((weight_a.dims[0], 1, 1, 1), np.float32)
    factor[channel] = scale
    _scale(weight_a, factor)
    if len(conv_a.input) > 2 and conv_a.input[2]:
        _scale(inits[conv_a.input[2]], factor.reshape(-1))
    weight_b = inits[conv_b.input[1]]
    inverse = np.ones((1, weight_b.dims[1], 1, 1), np.float32)
    inverse[0, channel] = 1 / scale
    _scale(weight_b, inverse)
    return out


def with_weights_times(model: onnx.ModelProto, node: str, factor: float) -> onnx.ModelProto:
    """A copy of ``model`` whose node ``node`` has its weights multiplied by ``factor``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _scale(_initializers(out)[node_named(out, node).input[1]], np.float32(factor))
    return out
