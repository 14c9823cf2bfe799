"""Which 8-bit types ONNX Runtime's x86 kernels run fastest: U8 or S8 activations, reduce_range.

    python benchmarks/sweeps/int8_activation_types.py exports/resnet18.onnx 224

Quantises the export four ways (static QDQ, per-channel S8 weights, MinMax calibration on 32
synthetic images) into a temporary folder and prints each variant's p50 ms next to FP32 on the
same input. The table and the choice taken from it (U8 activations) are in benchmarks/README.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from segdeploy.core.preprocess import normalise
from segdeploy.data.samples import labelled_images
from segdeploy.export.onnx_file import read_card
from segdeploy.export.quantize import CalibrationBatches
from segdeploy.tools.bench import Timing, time_calls


def p50_ms(path: Path, x: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    samples = time_calls(lambda: session.run(None, feed), 3, None, 4.0)
    return round(Timing.from_samples(samples, 1).p50_ms, 2)


def main(path: Path, size: int) -> None:
    card = read_card(onnx.load(path), str(path))
    # 32 validation crops, sized for the model by its input contract, normalised.
    items = labelled_images(card, "synthetic", "val", 32, seed=1)
    pixels = [card.input.to_model_pixels(item.pixels, card.size_multiple) for item in items]
    images = normalise(np.stack(pixels), card.mean, card.std)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), np.float32)
    print("fp32", p50_ms(path, x))
    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(path, prepared, skip_symbolic_shape=True)
        for activation, name in ((QuantType.QUInt8, "u8s8"), (QuantType.QInt8, "s8s8")):
            for reduce_range in (False, True):
                out = Path(folder) / f"{name}_{reduce_range}.onnx"
                quantize_static(
                    prepared,
                    out,
                    CalibrationBatches(
                        onnx.load(path, load_external_data=False).graph.input[0].name, images
                    ),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=activation,
                    weight_type=QuantType.QInt8,
                    reduce_range=reduce_range,
                    calibrate_method=CalibrationMethod.MinMax,
                )
                print(name, "reduce_range" if reduce_range else "", p50_ms(out, x), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
