"""The export contract, declared as data: what an exported graph of each task must look like.

The exporter and the parity gates read this table; they have no per-model branches. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segdeploy.core.card import ModelCard
from segdeploy.core.parity import Tolerance
from segdeploy.core.preprocess import SIZE_MULTIPLE

DEFAULT_OPSET = 18
#: Parity shapes (batch, height, width) in size multiples: the smallest legal size, a non-square
#: batch-1 image and a non-square batch > 1; none equals the traced (2, S, S).
PARITY_SHAPES_IN_MULTIPLES = ((1, 1, 1), (1, 3, 5), (3, 4, 2))

# The INT8 accuracy gate (``segdeploy quantize``): calibration images ("synthetic" scenes or a
# data folder), held-out images it grades FP32 and INT8 on, and the largest tolerated drop of
# mIoU / accuracy as a fraction (0.01 = 1 point).
DEFAULT_CALIBRATION = "synthetic"
DEFAULT_CALIBRATION_SAMPLES = 64
DEFAULT_EVAL_SAMPLES = 64
DEFAULT_MAX_DROP = 0.01


def default_parity_shapes(size_multiple: int) -> list[tuple[int, int, int]]:
    """:data:`PARITY_SHAPES_IN_MULTIPLES` in pixels: (1, 16, 16), (1, 48, 80), (3, 64, 32) at 16."""
    return [(b, h * size_multiple, w * size_multiple) for b, h, w in PARITY_SHAPES_IN_MULTIPLES]


#: The parity shapes of every model here (size multiple 16), for help texts.
DEFAULT_PARITY_SHAPES = tuple(default_parity_shapes(SIZE_MULTIPLE))


@dataclass(frozen=True)
class ExportContract:
    """What an exported graph of one task must look like, declared as data.

    ``input_dims`` / ``output_dims`` are the ONNX dims expected after export and simplification:
    strings are symbols, ``"C"``/``"K"`` stand for the card's input channels and number of
    classes, ``"M*h"``/``"M*w"`` for height and width as multiples of the card's size multiple
    (``16*h`` in the file for a multiple of 16).
    """

    input_name: str
    output_name: str
    input_dims: tuple[str, ...]
    output_dims: tuple[str, ...]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def resolve(self, dims: tuple[str, ...], card: ModelCard) -> list[str | int]:
        fixed = {"C": card.in_channels, "K": card.num_classes}
        multiple = str(card.size_multiple)
        return [fixed.get(d, d.replace("M*", f"{multiple}*")) for d in dims]


CONTRACTS = {
    "segmentation": ExportContract(
        input_name="image",
        output_name="logits",
        input_dims=("batch", "C", "M*h", "M*w"),
        output_dims=("batch", "K", "M*h", "M*w"),
        tolerances={
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=0.999),
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=0.99),
            # INT8 is judged by decisions, not logits: values are not gated (atol 1e3).
            "int8": Tolerance(atol=1e3, rtol=0.0, min_argmax_agreement=0.95),
        },
    ),
    "classification": ExportContract(
        input_name="image",
        output_name="logits",
        input_dims=("batch", "C", "M*h", "M*w"),
        output_dims=("batch", "K"),
        tolerances={
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0),
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=1.0),
            "int8": Tolerance(atol=1e3, rtol=0.0, min_argmax_agreement=0.9),
        },
    ),
}
