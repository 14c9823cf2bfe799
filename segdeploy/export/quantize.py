"""Static INT8 quantisation for CPU (QDQ, per-channel weights) behind an accuracy gate.

``x.onnx`` -> ``x.int8.onnx``: ONNX Runtime's pre-processing (symbolic shape inference skipped:
it fails on the ``16*h`` dims), calibration on images the model will see (synthetic scenes or a
folder), then an evaluation on a held-out set: the INT8 model is kept only if its mIoU (or
accuracy) is at most ``max_drop`` below FP32's. INT8 is for the CPU provider; on CUDA ONNX Runtime
runs QDQ graphs with CPU kernels, so use FP16 there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from segdeploy.core.artifacts import CALIBRATION_KEY, PRECISION_KEY, variant_path
from segdeploy.core.errors import AccuracyGateError
from segdeploy.core.fileio import atomic_write
from segdeploy.data.samples import labelled_samples
from segdeploy.export.contract import (
    DEFAULT_CALIBRATION,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_EVAL_SAMPLES,
    DEFAULT_MAX_DROP,
)
from segdeploy.export.gates import evaluate_onnx
from segdeploy.export.onnx_file import attach_metadata, load_onnx, read_card, require_fp32


@dataclass
class QuantizeResult:
    """The accuracy gate's measurement: FP32 and INT8 scores on the same held-out images."""

    path: Path
    metric: str
    fp32: float
    int8: float
    max_drop: float
    passed: bool

    @property
    def drop_points(self) -> float:
        return 100 * (self.fp32 - self.int8)


class CalibrationBatches(CalibrationDataReader):
    """Feeds ``images`` to ONNX Runtime's calibrator in batches of ``batch``."""

    def __init__(self, name: str, images: np.ndarray, batch: int = 8):
        self._feeds = iter({name: images[i : i + batch]} for i in range(0, len(images), batch))

    def get_next(self):
        return next(self._feeds, None)


def quantize_static_qdq(
    onnx_path: Path, input_name: str, calib_images: np.ndarray
) -> onnx.ModelProto:
    """ONNX Runtime's static QDQ quantisation of ``onnx_path``, calibrated on ``calib_images``.

    Per-channel S8 weights, U8 activations, MinMax calibration; the pre-processing skips
    symbolic shape inference, which fails on the ``16*h`` dims.
    """
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            CalibrationBatches(input_name, calib_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # U8 activations x S8 weights: on an AVX2 CPU without VNNI this ran ResNet-18 and the
            # full U-Net 1.85x / 1.91x faster than FP32, where S8 activations gained 1.0x / 1.3x
            # (ORT's x86 int8 kernels multiply unsigned by signed bytes). benchmarks/README.md.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return onnx.load(quantized)


def quantize_int8(
    onnx_path: str | Path,
    out: str | Path | None = None,
    calib: str = DEFAULT_CALIBRATION,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    eval_samples: int = DEFAULT_EVAL_SAMPLES,
    size: int | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
) -> QuantizeResult:
    """Write ``<name>.int8.onnx`` next to ``onnx_path`` if the accuracy drop is within budget.

    Args:
        onnx_path: an FP32 segdeploy export.
        calib: ``"synthetic"`` or a data folder in the layout ``segdeploy train`` reads.
        samples: calibration images; ``eval_samples``: held-out images for the gate.
        size: square calibration/evaluation size (default: the training size on the card).
        max_drop: largest tolerated drop of mIoU / accuracy (0.01 = 1 point).

    Raises:
        SegdeployError: unreadable input, or an accuracy drop above ``max_drop`` (no file left).
    """
    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    require_fp32(model, onnx_path, "quantize")
    out = Path(out) if out else variant_path(onnx_path, "int8")
    card = read_card(model, str(onnx_path))
    size = size or int(card.training.get("img_size", 128))
    calib_images, _ = labelled_samples(card, calib, samples, size, seed=1)
    # A different seed: the gate must not grade the model on its calibration images.
    eval_images, eval_labels = labelled_samples(card, calib, eval_samples, size, seed=2)

    int8_model = quantize_static_qdq(onnx_path, model.graph.input[0].name, calib_images)
    attach_metadata(
        int8_model,
        {p.key: p.value for p in model.metadata_props}
        | {PRECISION_KEY: "int8", CALIBRATION_KEY: f"{calib}, {samples} images"},
    )
    fp32 = evaluate_onnx(str(onnx_path), card, eval_images, eval_labels)
    int8 = evaluate_onnx(int8_model.SerializeToString(), card, eval_images, eval_labels)
    result = QuantizeResult(
        out,
        "mIoU" if card.task == "segmentation" else "accuracy",
        fp32,
        int8,
        max_drop,
        passed=fp32 - int8 <= max_drop,
    )
    if not result.passed:
        raise AccuracyGateError(
            f"INT8 loses {result.drop_points:.2f} points of {result.metric} "
            f"({fp32:.4f} -> {int8:.4f}), more than the allowed {100 * max_drop:.2f}; "
            f"{out} was not written",
            result,
        )
    atomic_write(out, lambda tmp: onnx.save_model(int8_model, tmp))
    return result
