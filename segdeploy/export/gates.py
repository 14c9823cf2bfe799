"""Gates for reduced-precision variants, torch-free: task accuracy on labelled images and
precision parity (INT8/FP16 against the FP32 export on the same images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdeploy.core.card import ModelCard
from segdeploy.core.metrics import ConfusionMatrix
from segdeploy.core.parity import CaseReport, ParityReport, compare_values
from segdeploy.export.contract import CONTRACTS
from segdeploy.export.onnx_file import load_onnx, read_card
from segdeploy.runtime.session import SessionOptions, create_session


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


def precision_parity(
    reference_path: str | Path, variant_path: str | Path, precision: str, images: np.ndarray
):
    """Parity of a reduced-precision variant against its FP32 export on real images (CPU)."""
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
