"""The end-to-end graph's own gate: it runs beside the runtime's ``predict`` on the same images
and must agree (torch-free)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.images import ImageSource, describe, load_image
from segdeploy.data.synthetic import render_road_scene
from segdeploy.export.e2e_graph import INPUT_NAME, SCORES_NAME
from segdeploy.runtime import open_model
from segdeploy.runtime.postprocess import argmax_mask
from segdeploy.runtime.session import SessionOptions, create_session

#: Share of pixels (pooled over the gate's images) where the graph's mask must equal the runtime's.
MIN_PIXEL_AGREEMENT = 0.9999
#: Largest tolerated difference of the scores from the runtime's: segmentation class scores
#: relative to the largest score, classification probabilities. The graph feeds the model the
#: same float32 numbers as the runtime, so only the order of float operations may differ.
SCORE_RTOL = 1e-4
PROBABILITY_ATOL = 1e-4
#: Gate image sizes (height, width): odd, non-square, thin and tiny (smaller than the padding).
GATE_SIZES = ((61, 93), (97, 131), (17, 200), (144, 176), (5, 9))


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


def gate_images(card: ModelCard, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``(name, pixels)`` at :data:`GATE_SIZES`: synthetic road scenes (textured surfaces,
    edges, noise), cropped for sizes under 16, with the card's channel count."""
    images = []
    for index, (height, width) in enumerate(GATE_SIZES):
        scene, _ = render_road_scene(index, max(height, 16), max(width, 16), seed=seed)
        pixels = load_image(np.ascontiguousarray(scene[:height, :width]), card.in_channels)
        images.append((f"synthetic:{seed}:{index} ({height}x{width})", pixels))
    return images


def named_images(
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
    named = named_images(images, reference.card)
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


def refusal(onnx_path: Path, report: EndToEndReport) -> str:
    worst = min(report.images, key=lambda i: i.agreeing / max(1, i.total), default=None)
    where = f"; worst image {worst.name}: {worst.agreeing}/{worst.total}" if worst else ""
    return (
        f"the end-to-end graph of {onnx_path} disagrees with the runtime's predict: "
        f"{report.agreement:.4%} agreement (needs {report.min_agreement:.4%}), score error "
        f"{report.score_error:.2g} (allowed {report.max_score_error:.2g}){where}; "
        "nothing was written"
    )
