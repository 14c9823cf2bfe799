"""The accuracy gate of reduced-precision variants (INT8, FP16), torch-free.

A variant is written only after it was measured against its FP32 export through the real serving
path: both files are opened with :func:`segdeploy.runtime.open_model` (the candidate from a
temporary file) and predict the validation images of the data at their own size, under the
card's input contract, exactly as ``predict`` and ``evaluate`` do. The gate judges

* the task metric (mIoU or accuracy, :func:`~segdeploy.core.metrics.score_predictions`): the
  variant may lose at most ``max_drop`` (``MAX_METRIC_DROP`` in the contract);
* the decisions: argmax agreement with FP32 pooled over every pixel (or image) of the set, and
  values where the precision's tolerance declares them (``CONTRACTS``).

Calibration images (INT8) come from the training split, the gate's from the validation split,
and the two are proven disjoint by name before anything is measured. The result (scores, drop
and its jackknife standard error, images used, data description) goes into the variant's
``metadata_props`` and into ``x.<precision>.gate.json`` beside it; a refused variant raises
:class:`~segdeploy.core.errors.AccuracyGateError` carrying the result, and no file is written.

The pair is published through :mod:`segdeploy.core.publish`: a variant ``out`` that is its FP32
parent (or any file the command reads) is refused even with ``force`` (replacing an FP32 parent
is never what a user means: its parity report would describe a file that is gone); an existing
``out`` is replaced only with ``force``; one writer per variant at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from segdeploy.core.artifacts import (
    CALIBRATION_KEY,
    GATE_KEY,
    PARENT_SHA256_KEY,
    PRECISION_KEY,
    VARIANT_COMMANDS,
    gate_report_path,
)
from segdeploy.core.card import ModelCard
from segdeploy.core.errors import AccuracyGateError, SegdeployError
from segdeploy.core.fileio import file_sha256
from segdeploy.core.metrics import (
    confusion_matrix,
    ignore_label,
    metrics_from_confusion,
    score_predictions,
)
from segdeploy.core.parity import CaseReport, Tolerance, compare_values, pool_cases
from segdeploy.core.publish import Staging, publishing, refuse_existing, refuse_overlap
from segdeploy.data.samples import LabelledImage, labelled_images
from segdeploy.export.contract import CONTRACTS, DEFAULT_GATE_PROVIDER, MAX_METRIC_DROP
from segdeploy.export.onnx_file import (
    attach_metadata,
    open_fp32_parent,
    read_card,
    seal,
    stamp_parent_format,
)
from segdeploy.export.target_check import variant_on_target
from segdeploy.export.training_data import choose_data
from segdeploy.runtime import open_model
from segdeploy.runtime.model import SegmentationModel


@dataclass(frozen=True)
class GateData:
    """Labelled images one stage uses (calibration or the gate) and what they are."""

    description: str
    images: list[LabelledImage]

    @property
    def names(self) -> list[str]:
        return [image.name for image in self.images]


#: What each split is for, in messages.
_USE = {"train": "calibrate", "val": "grade the variant"}


def load_split(card: ModelCard, source: str, split: str, count: int, seed: int) -> GateData:
    """The first ``count`` images of ``source``'s ``split`` (``"train"``/``"val"``), own size.

    The split is the one training used for the same data and seed (the card's training seed).
    """
    images = labelled_images(card, source, split, count, seed)
    if not images:
        raise SegdeployError(f"{source} has no {split} images to {_USE[split]} with")
    kind = "synthetic road scenes" if source == "synthetic" else f"data folder {source}"
    description = f"{kind}, {split} split (seed {seed}), {len(images)} images at their own size"
    return GateData(description, images)


def require_disjoint(calibration: GateData, held_out: GateData) -> None:
    """Raise when a calibration image is also a gate image: the gate would grade on its own
    calibration data."""
    shared = sorted(set(calibration.names) & set(held_out.names))
    if shared:
        raise SegdeployError(
            f"{len(shared)} calibration images are also gate images (e.g. {shared[0]}); "
            "calibrate on the training split and grade on the validation split"
        )


@dataclass
class GateResult:
    """What the gate measured and decided for one variant (FP32 against it, same images).

    ``drop_stderr`` is the jackknife standard error of ``fp32 - variant`` over the gate images
    (leave one image out, recompute both pooled metrics): the metric is pooled over pixels, so
    per-image scores would not average to it. ``None`` with fewer than two images.
    """

    precision: str
    path: Path
    metric: str
    fp32: float
    variant: float
    max_drop: float
    drop_stderr: float | None
    argmax_agreement: float | None
    min_argmax_agreement: float
    provider: str
    data: str
    images: list[str]
    parent_sha256: str
    calibration_data: str | None = None
    calibration_images: list[str] = field(default_factory=list)
    decisions: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def drop(self) -> float:
        return self.fp32 - self.variant

    @property
    def drop_points(self) -> float:
        return 100 * self.drop

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        for key in ("fp32", "variant", "drop_stderr", "argmax_agreement"):
            data[key] = _finite_or_none(data[key])
        return {**data, "drop": _finite_or_none(self.drop), "passed": self.passed}


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class _Measurements:
    """Both models' predictions on the gate set and the per-image comparison of their scores."""

    predictions: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))
    confusions: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))
    cases: list[CaseReport] = field(default_factory=list)


def _image_scores(model, image: LabelledImage) -> np.ndarray:
    """Class scores of one image by the serving path: ``(K, H, W)`` logits at the image's own
    size, or a classifier's ``(K,)`` log-probabilities (its logits up to a constant)."""
    if isinstance(model, SegmentationModel):
        return model.logits(image.pixels)
    _, probabilities = model.predict(image.pixels)
    return np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))


def _measure(models, gate: GateData, tolerance: Tolerance, num_classes: int) -> _Measurements:
    """Run both models (FP32 first) on every gate image; compare their scores per image."""
    found = _Measurements()
    # Masks are uint8 in the runtime (at most 256 classes): keep the predictions that small.
    dtype = np.uint8 if num_classes <= 256 else np.int64
    ignore = ignore_label(models[0].card.task)  # 255 is a class of a 300-class classifier
    for image in gate.images:
        scores = [_image_scores(model, image) for model in models]
        case = CaseReport(provider=models[0].provider, input_shape=tuple(image.pixels.shape))
        found.cases.append(compare_values(scores[0], scores[1], tolerance, case, class_axis=0))
        for index, score in enumerate(scores):
            prediction = np.argmax(score, axis=0).astype(dtype)
            found.predictions[index].append(prediction)
            found.confusions[index].append(
                confusion_matrix(prediction, np.asarray(image.label), num_classes, ignore)
            )
    return found


def _metric_of(matrix: np.ndarray, task: str) -> float:
    """The task metric of a confusion matrix, as :func:`score_predictions` defines it."""
    if task == "segmentation":
        return metrics_from_confusion(matrix).miou
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else math.nan


def jackknife_drop_stderr(
    fp32_confusions: list[np.ndarray], variant_confusions: list[np.ndarray], task: str
) -> float | None:
    """Jackknife standard error of the pooled metric's drop ``fp32 - variant`` over images.

    Confusion matrices add up, so leaving image ``i`` out is a subtraction; the spread of the
    ``n`` leave-one-out drops, scaled by ``(n - 1) / n``, estimates the drop's sampling error.
    """
    if len(fp32_confusions) < 2:
        return None
    totals = sum(fp32_confusions), sum(variant_confusions)
    drops = np.array(
        [
            _metric_of(totals[0] - fp32, task) - _metric_of(totals[1] - variant, task)
            for fp32, variant in zip(fp32_confusions, variant_confusions, strict=True)
        ]
    )
    drops = drops[np.isfinite(drops)]
    if len(drops) < 2:
        return None
    count = len(drops)
    return float(np.sqrt((count - 1) / count * np.sum((drops - drops.mean()) ** 2)))


def _failures(result: GateResult, pooled: CaseReport, images: int) -> list[str]:
    """The gate's verdict as sentences (empty when the variant passes)."""
    found = []
    if not (math.isfinite(result.fp32) and math.isfinite(result.variant)):
        found.append(f"{result.metric} cannot be measured on the {images} gate images")
    elif result.drop > result.max_drop:
        stderr = result.drop_stderr
        error = f", standard error {100 * stderr:.2f}" if stderr is not None else ""
        found.append(
            f"it loses {result.drop_points:.2f} points of {result.metric} "
            f"({result.fp32:.4f} -> {result.variant:.4f}{error}, on {images} held-out images), "
            f"more than the allowed {100 * result.max_drop:.2f}"
        )
    found += [f"against FP32, {failure}" for failure in pooled.failures]
    return found


def measure_variant(
    fp32_path: str | Path,
    candidate: str | Path,
    precision: str,
    gate: GateData,
    max_drop: float | None = None,
    min_agreement: float | None = None,
    provider: str = DEFAULT_GATE_PROVIDER,
) -> GateResult:
    """Score ``fp32_path`` and the ``candidate`` file on ``gate`` through the runtime; judge.

    ``max_drop`` (a fraction of the metric) and ``min_agreement`` default to the contract's
    ``MAX_METRIC_DROP`` and the precision's tolerance. Returns the :class:`GateResult`
    (``.passed``, ``.failures``) without raising or writing; ``path`` is the candidate,
    ``parent_sha256`` that of ``fp32_path``.
    """
    max_drop = MAX_METRIC_DROP[precision] if max_drop is None else max_drop
    parent_sha256 = file_sha256(fp32_path)
    # The two sessions take turns: idle threads spinning would steal the other's cores.
    models = [
        open_model(path, provider=provider, allow_spinning=False) for path in (fp32_path, candidate)
    ]
    card = models[0].card
    tolerance = CONTRACTS[card.task].tolerances[precision]
    if min_agreement is not None:
        tolerance = replace(tolerance, min_argmax_agreement=min_agreement)
    found = _measure(models, gate, tolerance, card.num_classes)
    labels = [image.label for image in gate.images]
    fp32, variant = (
        score_predictions(zip(predictions, labels, strict=True), card.task, card.num_classes)
        for predictions in found.predictions
    )
    pooled = pool_cases(found.cases, tolerance, models[0].provider)
    result = GateResult(
        precision=precision,
        path=Path(candidate),
        metric=fp32.metric_name,
        fp32=fp32.metric,
        variant=variant.metric,
        max_drop=max_drop,
        drop_stderr=jackknife_drop_stderr(*found.confusions, card.task),
        argmax_agreement=pooled.argmax_agreement,
        min_argmax_agreement=tolerance.min_argmax_agreement,
        provider=models[0].provider,
        data=gate.description,
        images=gate.names,
        parent_sha256=parent_sha256,
        decisions={"tolerance": tolerance.to_dict(), **pooled.to_dict()},
    )
    result.failures = _failures(result, pooled, len(gate.images))
    return result


def variant_inputs(fp32_path: str | Path, data: str | None = None) -> list[Path]:
    """What making a variant reads, which its ``out`` must never replace: the FP32 export and,
    unless synthetic, the data folder."""
    inputs = [Path(fp32_path)]
    if data is not None and data != "synthetic":
        inputs.append(Path(data))
    return inputs


def check_destination(out: Path, inputs: list[Path], force: bool, precision: str) -> None:
    """Refuse ``out`` before minutes of work: an input (always), or existing without ``force``
    (checked again under the lock when the variant is published)."""
    refuse_overlap(out, inputs, f"{precision.upper()} variant")
    refuse_overlap(gate_report_path(out), inputs, f"{precision.upper()} gate report")
    refuse_existing(out, force)


def gate_and_write(
    fp32_path: str | Path,
    variant: onnx.ModelProto,
    out: str | Path,
    gate: GateData,
    calibration: GateData | None = None,
    force: bool = False,
    inputs: list[Path] | None = None,
    **thresholds: Any,
) -> GateResult:
    """Gate ``variant`` against its FP32 export, then write it and its report, or refuse.

    ``variant`` must carry its FP32 parent's metadata (the model card) and its precision
    (``PRECISION_KEY``); ``thresholds`` are :func:`measure_variant`'s ``max_drop``,
    ``min_agreement`` and ``provider``. The variant records its parent's sha256, calibration and
    the gate's result in ``metadata_props``; the same result goes to ``x.<precision>.gate.json``.
    ``out`` must not be ``fp32_path`` nor one of ``inputs``; an existing ``out`` is replaced only
    with ``force``.

    Raises:
        AccuracyGateError: the variant failed the gate (``.result``); nothing was written.
        SegdeployError: ``out`` is an input, exists without ``force``, or is being written by
            another process.
    """
    out = Path(out)
    precision = next(p.value for p in variant.metadata_props if p.key == PRECISION_KEY)
    inputs = inputs or variant_inputs(fp32_path)
    check_destination(out, inputs, force, precision)
    if calibration is not None:
        require_disjoint(calibration, gate)
    with publishing(out, f"{precision.upper()} variant", force, inputs) as staging:
        result = _measure_candidate(fp32_path, variant, out, precision, gate, thresholds)
        if calibration is not None:
            result.calibration_data = calibration.description
            result.calibration_images = calibration.names
        if not result.passed:
            raise AccuracyGateError(
                f"the {precision.upper()} variant is refused: {'; '.join(result.failures)}; "
                f"{out} was not written",
                result,
            )
        metadata = {PARENT_SHA256_KEY: result.parent_sha256, GATE_KEY: json.dumps(result.to_dict())}
        if calibration is not None:
            metadata[CALIBRATION_KEY] = calibration.description
        attach_metadata(variant, metadata)
        stamp_parent_format(variant, fp32_path)
        variant_on_target(variant, read_card(variant, str(out)), precision)
        seal(variant)
        _stage_pair(staging, variant, result)
    return result


def _measure_candidate(
    fp32_path: str | Path,
    variant: onnx.ModelProto,
    out: Path,
    precision: str,
    gate: GateData,
    thresholds: dict[str, Any],
) -> GateResult:
    """:func:`measure_variant` of ``variant`` saved to a temporary file; ``path`` is ``out``."""
    with tempfile.TemporaryDirectory(prefix="segdeploy-gate-") as tmp:
        candidate = Path(tmp) / out.name
        onnx.save_model(variant, candidate)
        result = measure_variant(fp32_path, candidate, precision, gate, **thresholds)
    result.path = out
    return result


def gate_variant(
    onnx_path: str | Path,
    out: str | Path | None,
    precision: str,
    make: Callable[[onnx.ModelProto], onnx.ModelProto],
    data: str | None,
    eval_samples: int,
    force: bool = False,
    preflight: Callable[[Path], None] | None = None,
    **thresholds: Any,
) -> GateResult:
    """What every variant graded on data alone (FP16, bf16) does: open the FP32 export, make the
    variant with ``make(model)``, mark it with its parent's metadata and ``precision``, and gate
    it on ``eval_samples`` validation images of ``data`` (:func:`gate_and_write`); ``None``: the
    data the card says the model was trained on. ``preflight(onnx_path)`` runs once the
    destination is known to be acceptable, before any work (bf16: can this CPU compute it?)."""
    command = VARIANT_COMMANDS[precision]
    onnx_path, model, out, card = open_fp32_parent(onnx_path, out, precision, command)
    chosen = choose_data(card, data, onnx_path, option="--data")
    inputs = variant_inputs(onnx_path, chosen.source)
    check_destination(out, inputs, force, precision)
    if preflight is not None:
        preflight(onnx_path)
    gate = load_split(card, chosen.source, "val", eval_samples, chosen.seed)
    parent_metadata = {p.key: p.value for p in model.metadata_props}
    variant = make(model)
    attach_metadata(variant, parent_metadata | {PRECISION_KEY: precision})
    return gate_and_write(onnx_path, variant, out, gate, None, force, inputs, **thresholds)


def _stage_pair(staging: Staging, variant: onnx.ModelProto, result: GateResult) -> None:
    """Stage the variant, then its report (with the variant's sha256); renamed into place back
    to back, the old report removed first (:class:`~segdeploy.core.publish.Staging`): a crash
    leaves a variant without a report (its metadata still holds the result), never a report
    that describes another file."""
    data = variant.SerializeToString()
    staging.stage(result.path, lambda tmp: tmp.write_bytes(data))
    report = {**result.to_dict(), "variant_sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(report, indent=2) + "\n"
    staging.stage(gate_report_path(result.path), lambda tmp: tmp.write_text(text))
