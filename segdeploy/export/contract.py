"""The export contract, declared as data: what an exported graph of each task must look like.

The exporter and the parity gates read this table; they have no per-model branches. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from segdeploy.core.card import ModelCard
from segdeploy.core.parity import VALUES_NOT_JUDGED, Tolerance
from segdeploy.core.preprocess import SIZE_MULTIPLE

DEFAULT_OPSET = 18
#: Parity shapes (batch, height, width) in size multiples: the smallest legal size, a non-square
#: batch-1 image and a non-square batch > 1; none equals the traced (2, S, S).
PARITY_SHAPES_IN_MULTIPLES = ((1, 1, 1), (1, 3, 5), (3, 4, 2))

# The accuracy gates of the variants (``segdeploy quantize`` and ``convert-fp16``): the data
# ("synthetic" scenes or a data folder) whose training split calibrates INT8 and whose validation
# split both gates grade FP32 and the variant on, how many images of each, and the largest
# tolerated drop of mIoU / accuracy per precision as a fraction (0.01 = 1 point). The minimum
# argmax agreement is the precision's tolerance in CONTRACTS below. The data defaults to ``None``:
# what the card says the model was trained on (segdeploy.export.training_data).
DEFAULT_CALIBRATION: str | None = None
DEFAULT_CALIBRATION_SAMPLES = 64
DEFAULT_EVAL_SAMPLES = 64
MAX_METRIC_DROP = {
    "int8": 0.01,
    # FP16 keeps 10 mantissa bits: losing more than half a point means something overflowed or
    # was cast badly, not rounding.
    "fp16": 0.005,
    # bf16 keeps 7 mantissa bits (FP16 10) but FP32's range: more rounding, no overflow.
    "bf16": 0.005,
}
DEFAULT_MAX_DROP = MAX_METRIC_DROP["int8"]
# Accuracy-aware INT8 (segdeploy.export.accuracy_aware): the calibration method (``auto`` tries
# each), how many nodes may stay FP32 when full INT8 fails (0: refuse with the divergence map),
# the wall-time bound of that loop in seconds.
CALIBRATION_CHOICES = ("minmax", "entropy", "percentile", "auto")
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_MAX_FALLBACK = 0
DEFAULT_MAX_SECONDS = 900.0
#: A partly quantized file must run this many times faster than FP32 or the loop stops.
DEFAULT_MIN_SPEEDUP = 1.0
#: Where the gates run both models. INT8 QDQ graphs are meant for the CPU provider. FP16 is gated
#: on the CPU too unless a GPU is asked for (``convert-fp16 --provider cuda``); on the CPU, ONNX
#: Runtime computes most FP16 ops in FP32 behind Casts, so a CPU gate measures the rounding of the
#: weights and activations at the casts, not half-precision arithmetic.
DEFAULT_GATE_PROVIDER = "cpu"
#: bf16 exists for OpenVINO only (ONNX Runtime has no x86 bf16 path): both sides of its gate run
#: there, the FP32 export in f32 (itself checked against PyTorch by ``verify --provider openvino``).
BF16_GATE_PROVIDER = "openvino"


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
            # Against PyTorch: values, and decisions where the top-2 margin exceeds twice the
            # atol (closer than that, a legitimate rounding difference may flip the argmax).
            "fp32": Tolerance(
                atol=1e-3, rtol=1e-3, min_argmax_agreement=0.999, decisive_margin=2e-3
            ),
            # Against the FP32 export: decisions at every pixel (margin 0); FP16 values too.
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=0.99),
            # INT8 logits move by far more than any useful atol: decisions only.
            "int8": Tolerance(atol=VALUES_NOT_JUDGED, rtol=0.0, min_argmax_agreement=0.95),
            # bf16 rounding moves logits by up to ~0.1 on full-size models: decisions only.
            "bf16": Tolerance(atol=VALUES_NOT_JUDGED, rtol=0.0, min_argmax_agreement=0.99),
        },
    ),
    "classification": ExportContract(
        input_name="image",
        output_name="logits",
        input_dims=("batch", "C", "M*h", "M*w"),
        output_dims=("batch", "K"),
        tolerances={
            "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_argmax_agreement=1.0, decisive_margin=2e-3),
            # One flipped image in a hundred: a gate set of 64 images tolerates none.
            "fp16": Tolerance(atol=5e-2, rtol=2e-2, min_argmax_agreement=0.99),
            "int8": Tolerance(atol=VALUES_NOT_JUDGED, rtol=0.0, min_argmax_agreement=0.9),
            "bf16": Tolerance(atol=VALUES_NOT_JUDGED, rtol=0.0, min_argmax_agreement=0.99),
        },
    ),
}
