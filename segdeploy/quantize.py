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

from segdeploy.card import ModelCard
from segdeploy.errors import SegdeployError
from segdeploy.export import attach_metadata, load_onnx, read_card
from segdeploy.fileio import atomic_write
from segdeploy.metrics import ConfusionMatrix
from segdeploy.runtime.session import SessionOptions, create_session


@dataclass
class QuantizeResult:
    path: Path
    metric: str
    fp32: float
    int8: float
    max_drop: float
    passed: bool

    @property
    def drop_points(self) -> float:
        return 100 * (self.fp32 - self.int8)


def _normalise(images: np.ndarray, card: ModelCard) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 normalised with the card's mean/std."""
    mean = np.asarray(card.mean, np.float32)
    std = np.asarray(card.std, np.float32)
    return ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy()


def labelled_samples(
    card: ModelCard, source: str, count: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalised images ``(N, C, size, size)`` and their labels (masks or classes)."""
    from torch.utils.data import Subset

    from segdeploy.train import TrainConfig, build_datasets

    config = TrainConfig(
        arch=card.arch,
        data=source,
        seed=seed,
        train_samples=count,
        val_samples=count,
        classes=card.class_names,
    )
    _, val_set, names, _ = build_datasets(config, card.task, size)
    if tuple(names) != card.class_names:
        raise SegdeployError(
            f"data classes {list(names)} differ from the model's {card.class_names}"
        )
    if len(val_set) > count:
        val_set = Subset(val_set, range(count))
    images, labels = zip(*(val_set[i] for i in range(len(val_set))), strict=True)
    return np.stack([i.numpy() for i in images]), np.stack([np.asarray(t) for t in labels])


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, images: np.ndarray, batch: int = 8):
        self._feeds = iter({name: images[i : i + batch]} for i in range(0, len(images), batch))

    def get_next(self):
        return next(self._feeds, None)


def evaluate_onnx(path_or_bytes, card: ModelCard, images: np.ndarray, labels: np.ndarray) -> float:
    """mIoU (segmentation) or accuracy (classification) of an ONNX model on normalised images."""
    session = create_session(path_or_bytes, SessionOptions(provider="cpu"))
    name = session.get_inputs()[0].name
    confusion = ConfusionMatrix(card.num_classes)
    correct = 0
    for start in range(0, len(images), 8):
        logits = session.run(None, {name: images[start : start + 8]})[0]
        pred = logits.argmax(1)
        if card.task == "segmentation":
            confusion.update(pred, labels[start : start + 8])
        else:
            correct += int((pred == labels[start : start + 8]).sum())
    if card.task == "segmentation":
        return confusion.compute().miou
    return correct / len(images)


#: Metadata key that marks a reduced-precision variant (absent on FP32 exports).
PRECISION_KEY = "segdeploy.precision"
#: Precisions written as ``<name>.<precision>.onnx`` next to the FP32 export they come from.
VARIANT_PRECISIONS = ("fp16", "int8")


def variant_path(onnx_path: str | Path, precision: str) -> Path:
    """Where the ``precision`` variant of an FP32 export lives: ``x.onnx`` -> ``x.int8.onnx``."""
    onnx_path = Path(onnx_path)
    if precision == "fp32":
        return onnx_path
    return onnx_path.with_name(f"{onnx_path.stem}.{precision}.onnx")


def is_variant(onnx_path: str | Path) -> bool:
    """Whether a file name is that of a variant (``x.int8.onnx``) rather than an FP32 export."""
    return Path(onnx_path).name.endswith(tuple(f".{p}.onnx" for p in VARIANT_PRECISIONS))


def _require_fp32(model: onnx.ModelProto, path: Path, command: str) -> None:
    """Refuse a variant as input: quantising an INT8 or FP16 graph again breaks or degrades it."""
    precision = next((p.value for p in model.metadata_props if p.key == PRECISION_KEY), "fp32")
    if precision != "fp32":
        raise SegdeployError(
            f"{path} is already an {precision} variant; {command} takes the FP32 export it was "
            "made from"
        )


def quantize_int8(
    onnx_path: str | Path,
    out: str | Path | None = None,
    calib: str = "synthetic",
    samples: int = 64,
    eval_samples: int = 64,
    size: int | None = None,
    max_drop: float = 0.01,
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
    _require_fp32(model, onnx_path, "quantize")
    out = Path(out) if out else variant_path(onnx_path, "int8")
    card = read_card(model, str(onnx_path))
    size = size or int(card.training.get("img_size", 128))
    calib_images, _ = labelled_samples(card, calib, samples, size, seed=1)
    # A different seed: the gate must not grade the model on its calibration images.
    eval_images, eval_labels = labelled_samples(card, calib, eval_samples, size, seed=2)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "int8.onnx"
        quant_pre_process(onnx_path, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            quantized,
            _Batches(model.graph.input[0].name, calib_images),
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
        int8_model = onnx.load(quantized)
    attach_metadata(
        int8_model,
        {p.key: p.value for p in model.metadata_props}
        | {PRECISION_KEY: "int8", "segdeploy.calibration": f"{calib}, {samples} images"},
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
        raise SegdeployError(
            f"INT8 loses {result.drop_points:.2f} points of {result.metric} "
            f"({fp32:.4f} -> {int8:.4f}), more than the allowed {100 * max_drop:.2f}; "
            f"{out} was not written"
        )
    atomic_write(out, lambda tmp: onnx.save_model(int8_model, tmp))
    return result


#: Ops kept in FP32 by :func:`convert_fp16`: reductions and exponentials lose accuracy or
#: overflow in half precision; ONNX Runtime's own default list covers the rest.
FP16_BLOCKED_OPS = ("ReduceMean", "GlobalAveragePool", "Softmax", "Exp", "Pow", "Sqrt")


def convert_fp16(onnx_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``<name>.fp16.onnx``: FP16 weights and compute, FP32 inputs and outputs.

    Meant for the CUDA provider (on CPU ONNX Runtime runs most FP16 ops slower than FP32). Keeping
    FP32 at the boundary means callers and ``predict`` need no change.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    onnx_path = Path(onnx_path)
    model = load_onnx(onnx_path)
    _require_fp32(model, onnx_path, "convert-fp16")
    out = Path(out) if out else variant_path(onnx_path, "fp16")
    read_card(model, str(onnx_path))
    half = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_BLOCKED_OPS],
    )
    attach_metadata(half, {PRECISION_KEY: "fp16"})
    atomic_write(out, lambda tmp: onnx.save_model(half, tmp))
    return out


def precision_parity(
    reference_path: str | Path, variant_path: str | Path, precision: str, images: np.ndarray
):
    """Parity of a reduced-precision variant against its FP32 export on real images (CPU)."""
    from segdeploy.export import CONTRACTS
    from segdeploy.parity import CaseReport, ParityReport, compare_values

    card = read_card(load_onnx(reference_path), str(reference_path))
    tolerance = CONTRACTS[card.task].tolerances[precision]
    report = ParityReport(model=Path(variant_path).name, tolerance=tolerance)
    # The two sessions take turns: idle threads spinning would steal the other's cores.
    options = SessionOptions(provider="cpu", allow_spinning=False)
    sessions = [create_session(str(p), options) for p in (reference_path, variant_path)]
    name = sessions[0].get_inputs()[0].name
    for start in range(0, len(images), 4):
        batch = images[start : start + 4]
        reference, candidate = (s.run(None, {name: batch})[0] for s in sessions)
        case = CaseReport(provider="cpu", input_shape=tuple(batch.shape))
        report.cases.append(compare_values(reference, candidate, tolerance, case))
    return report
