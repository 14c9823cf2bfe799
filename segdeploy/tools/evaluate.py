"""``segdeploy evaluate``: the task metric of checkpoints, exports and their variants on one
labelled set, each model run the way it is served.

A ``.pt`` runs through :class:`~segdeploy.train.inference.TorchPredictor` and an ``.onnx``
(``.int8.onnx``, ``.fp16.onnx``) through the runtime's ``predict``: both size images and map
results back with the card's input contract, so the numbers here are what a user of ``predict``
gets, not what a square-resized validation loader would say. The labelled set is read once and is
the split training validated on (:func:`~segdeploy.data.samples.labelled_images`); every model is
scored on it with one confusion matrix (:func:`~segdeploy.core.metrics.score_predictions`).

Torch is imported only when a ``.pt`` is evaluated, so exports can be evaluated with the base
install.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.core import artifacts
from segdeploy.core.card import ModelCard
from segdeploy.core.errors import DataError, ProviderUnavailableError, SegdeployError
from segdeploy.core.metrics import TaskScore, score_predictions
from segdeploy.core.publish import publish_file
from segdeploy.data.folders import data_root, folder_class_names
from segdeploy.data.samples import (
    LabelledImage,
    card_seed,
    labelled_images,
    split_depends_on_seed,
)
from segdeploy.runtime.session import PROVIDER_CHOICES

#: Where models run unless told: the CPU, the one provider every machine has, so that two
#: evaluations of one model are comparable across machines.
DEFAULT_PROVIDER = "cpu"
#: The split scored unless told: the one training validated on.
DEFAULT_SPLIT = "val"
#: File endings evaluate accepts (a variant ``x.int8.onnx`` ends with ``.onnx`` too).
MODEL_SUFFIXES = (".pt", ".onnx")
#: Called after each image is scored: ``(images scored so far, images to score in all)``.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's result on the labelled set.

    Attributes:
        path: the model file.
        format: ``"pt"`` or ``"onnx"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        provider: what really ran it: ``"cpu"`` or ``"cuda"``.
        score: the task metric, per-class values and details.
        seconds: time spent in ``predict`` only (reading and scoring excluded).
        images_per_s: images / ``seconds``.
        delta_points: ``(metric - first model's metric) * 100``; 0 for the first, ``None`` when
            either metric is undefined.
        parent: the FP32 export a variant was checked against, when it lies beside it.
        training_metric: the validation metric the card says training reached, if it says.
    """

    path: Path
    format: str
    precision: str
    provider: str
    score: TaskScore
    seconds: float
    images_per_s: float
    delta_points: float | None
    parent: Path | None = None
    training_metric: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "precision": self.precision,
            "provider": self.provider,
            "score": self.score.to_dict(),
            "seconds": self.seconds,
            "images_per_s": self.images_per_s,
            "delta_points": self.delta_points,
            "parent": None if self.parent is None else str(self.parent),
            "training_metric": self.training_metric,
        }


@dataclass(frozen=True)
class EvaluateReport:
    """Every model's result on one labelled set, and what that set was.

    Attributes:
        models: one :class:`ModelEvaluation` per model, in the order given.
        task, class_names: shared by every model.
        data: the data argument (a folder or ``"synthetic"``); ``split``, ``seed``: which items.
        seed_from: ``"card"`` (the seed the models trained with) or ``"option"`` (given).
        description: one line about the set (split, count, sizes).
        image_names: the items scored (file paths or ``synthetic:<seed>:<index>``).
        image_sizes: ``(height, width)`` of each item, in the same order.
        provider: the provider asked for (each model says which one ran it).
        versions: of segdeploy, Python, numpy, ONNX Runtime and, when installed, torch.
    """

    models: list[ModelEvaluation]
    task: str
    class_names: tuple[str, ...]
    data: str
    split: str
    seed: int
    description: str
    image_names: list[str]
    image_sizes: list[tuple[int, int]]
    provider: str
    versions: dict[str, str] = field(default_factory=dict)
    seed_from: str = "card"

    @property
    def metric_name(self) -> str:
        return self.models[0].score.metric_name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (undefined metrics are ``null``)."""
        return {
            "task": self.task,
            "metric": self.metric_name,
            "class_names": list(self.class_names),
            "data": {
                "source": self.data,
                "split": self.split,
                "seed": self.seed,
                "seed_from": self.seed_from,
                "description": self.description,
                "images": len(self.image_names),
                "image_names": self.image_names,
                "image_sizes": [list(size) for size in self.image_sizes],
            },
            "provider": self.provider,
            "models": [model.to_dict() for model in self.models],
            "versions": self.versions,
        }


def write_evaluate_report(
    report: EvaluateReport, path: str | Path, force: bool = False, inputs: Sequence = ()
) -> Path:
    """Write ``report`` as JSON to ``path`` atomically (a crash leaves the old file or none).

    Raises:
        SegdeployError: ``path`` exists and not ``force``, or it is one of ``inputs`` (the models
            and data evaluated), ``force`` or not (:mod:`segdeploy.core.publish`).
    """
    text = json.dumps(report.to_dict(), indent=2)
    return publish_file(path, lambda tmp: tmp.write_text(text), "evaluate report", force, inputs)


def evaluate_models(
    models: list[Path],
    data: str,
    provider: str = DEFAULT_PROVIDER,
    split: str = DEFAULT_SPLIT,
    count: int | None = None,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> EvaluateReport:
    """Score every model on the ``split`` items of ``data``, each through its serving path.

    Args:
        models: ``.pt`` checkpoints and ``.onnx`` exports or variants sharing one task and class
            names; differences are reported against the first.
        data: a data folder or ``"synthetic"``, as given to ``segdeploy train``.
        provider: ``"cpu"``, ``"cuda"`` (fails unless CUDA really runs the model) or ``"auto"``.
        split: ``"val"`` (what training validated on) or ``"train"``.
        count: score only the first ``count`` items; all of them by default.
        seed: the data seed that picks the held-out share of an unsplit folder (and the
            synthetic scenes); by default the one the models' cards record, so a model is scored
            on the images its training held out. Give it to score on another model's split.
        progress: called after each scored image with ``(done, total)``.

    Raises:
        SegdeployError: no model, a missing or unsupported file, models of different tasks or
            classes, an unknown provider or split, a variant whose parent beside it is not the
            file it was made from, models trained with other seeds on data the seed splits
            (without ``seed``); :class:`DataError` for unusable data or classes that differ
            from the models'; :class:`ProviderUnavailableError` for CUDA where it cannot run.
    """
    _check_request(models, provider, split, count)
    opened = [_open_model(Path(path), provider) for path in models]
    card = _shared_card(opened)
    _check_folder_classes(card, data)
    seed_from = "card" if seed is None else "option"
    seed = _card_seed(opened, data) if seed is None else seed
    items = labelled_images(card, data, split, count, seed)
    if not items:
        raise SegdeployError(f"data {data}: expected labelled {split} images, found none")
    results = _evaluate_in_turn(opened, items, progress)
    return EvaluateReport(
        models=results,
        task=card.task,
        class_names=card.class_names,
        data=str(data),
        split=split,
        seed=seed,
        description=describe_images(data, split, items, _seed_note(data, seed, seed_from)),
        image_names=[item.name for item in items],
        image_sizes=[_size_of(item) for item in items],
        provider=provider,
        versions=versions(any(m.format == "pt" for m in results)),
        seed_from=seed_from,
    )


def _evaluate_in_turn(
    opened: list[_OpenModel], items: list[LabelledImage], progress: ProgressCallback | None
) -> list[ModelEvaluation]:
    """Evaluate the models one after the other, each compared with the first."""
    total, done = len(opened) * len(items), 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    results: list[ModelEvaluation] = []
    for index, model in enumerate(opened):
        reference = results[0].score.metric if results else None
        results.append(_evaluate_one(model, items, reference, advance))
        opened[index] = None  # free the session or the weights before the next model runs
    return results


def _check_request(models: list[Path], provider: str, split: str, count: int | None) -> None:
    """Refuse, before anything is loaded, what cannot be evaluated."""
    if not models:
        raise SegdeployError("no model given: expected one or more .pt or .onnx files")
    if provider not in PROVIDER_CHOICES:
        raise SegdeployError(
            f"unknown provider '{provider}'; choose one of {', '.join(PROVIDER_CHOICES)}"
        )
    if split not in ("train", "val"):
        raise SegdeployError(f"unknown split '{split}'; choose train or val")
    if count is not None and count < 1:
        raise SegdeployError(f"count must be at least 1, found {count}")
    for path in map(Path, models):
        if path.suffix not in MODEL_SUFFIXES:
            raise SegdeployError(
                f"model {path}: expected a .pt checkpoint or an .onnx export, found "
                f"'{path.suffix or 'no suffix'}'"
            )
        if not path.is_file():
            raise SegdeployError(f"model {path}: expected an existing file, found nothing")


@dataclass
class _OpenModel:
    """A loaded model: its ``predict``, card and what the report says about it."""

    path: Path
    format: str
    precision: str
    provider: str
    card: ModelCard
    predict: Callable[[np.ndarray], Any]
    parent: Path | None = None


def _open_model(path: Path, provider: str) -> _OpenModel:
    if path.suffix == ".pt":
        return _open_checkpoint(path, provider)
    from segdeploy.runtime import open_model

    model = open_model(path, provider=provider)
    precision = model.metadata.get(artifacts.PRECISION_KEY) or precision_from_name(path)
    parent = _checked_parent(path, precision)
    return _OpenModel(path, "onnx", precision, model.provider, model.card, model.predict, parent)


def _open_checkpoint(path: Path, provider: str) -> _OpenModel:
    """A ``.pt`` on the device matching ``provider`` (CPU for ``cpu`` and ``openvino``, CUDA
    for ``cuda`` and ``auto`` where it runs) through TorchPredictor, which runs it with TF32 off
    as every ONNX Runtime session is (torch imported here only)."""
    try:
        import torch

        from segdeploy.train.inference import TorchPredictor, torch_device
    except ImportError:
        raise SegdeployError(
            f"model {path}: evaluating a .pt checkpoint needs torch; install segdeploy[train] "
            "or evaluate its .onnx export"
        ) from None
    cuda = torch.cuda.is_available()
    if provider == "cuda" and not cuda:
        raise ProviderUnavailableError(
            f"provider 'cuda' for {path}: PyTorch cannot use CUDA here; use --provider cpu or auto"
        )
    device = torch_device(provider)
    predictor = TorchPredictor.from_checkpoint(path, device=device)
    return _OpenModel(path, "pt", "fp32", device, predictor.card, predictor.predict)


def precision_from_name(path: str | Path) -> str:
    """``x.int8.onnx`` -> ``int8``, ``x.fp16.onnx`` -> ``fp16``, anything else ``fp32``."""
    name = Path(path).name
    return next((p for p in artifacts.VARIANT_PRECISIONS if name.endswith(f".{p}.onnx")), "fp32")


def _checked_parent(path: Path, precision: str) -> Path | None:
    """The FP32 export beside a variant, after checking the variant was made from it."""
    if precision == "fp32":
        return None
    parent = path.with_name(path.name.removesuffix(f".{precision}.onnx") + ".onnx")
    if parent == path or not parent.is_file():
        return None
    from segdeploy.runtime.variants import require_parent

    require_parent(path, parent)
    return parent


def _shared_card(opened: list[_OpenModel]) -> ModelCard:
    """The first model's card, after checking every model has its task and class names."""
    first = opened[0]
    for model in opened[1:]:
        if (model.card.task, model.card.class_names) != (first.card.task, first.card.class_names):
            raise SegdeployError(
                f"models disagree: {first.path.name} is {first.card.task} of "
                f"{list(first.card.class_names)} but {model.path.name} is {model.card.task} "
                f"of {list(model.card.class_names)}; evaluate models of one task and classes"
            )
    return first.card


def _card_seed(opened: list[_OpenModel], data: str) -> int:
    """The data seed the models trained with (:func:`~segdeploy.data.samples.card_seed`, the
    gates' too); refused, where the seed chooses the items, when their cards disagree."""
    seeds = [(model.path.name, card_seed(model.card)) for model in opened]
    if len({seed for _, seed in seeds}) > 1 and split_depends_on_seed(data):
        listed = ", ".join(f"{name} seed {seed}" for name, seed in seeds)
        raise SegdeployError(
            f"data {data}: the models were trained with other data seeds ({listed}), so each "
            "held out other images; pass --seed to score them all on one seed's split"
        )
    return seeds[0][1]


def _check_folder_classes(card: ModelCard, data: str) -> None:
    """Refuse a segmentation folder whose ``classes.txt`` names other classes than the card.

    ``labelled_images`` reads a folder with the card's class names, which win over the
    folder's own, so a model would otherwise be scored on masks whose labels mean other classes.
    """
    if data == "synthetic" or card.task != "segmentation":
        return
    try:
        names = folder_class_names(data_root(data), None)
    except DataError:  # no classes.txt: the masks' labels are read as the card's classes
        return
    if names != card.class_names:
        raise DataError(
            f"data classes {list(names)} (from {data}/classes.txt) differ from the model's "
            f"{list(card.class_names)}"
        )


def _evaluate_one(
    model: _OpenModel,
    items: list[LabelledImage],
    reference: float | None,
    advance: Callable[[], None],
) -> ModelEvaluation:
    """Predict every item (timed), score the predictions, compare with the reference metric."""
    # One untimed call first: a session's or a model's first run pays one-off set-up costs
    # (allocations, kernel choices) that are not part of serving an image.
    model.predict(items[0].pixels)
    predictions, seconds = [], 0.0
    for item in items:
        started = time.perf_counter()
        output = model.predict(item.pixels)
        seconds += time.perf_counter() - started
        predictions.append(_as_label(output, model.card.task))
        advance()
    pairs = zip(predictions, (item.label for item in items), strict=True)
    score = score_predictions(pairs, model.card.task, model.card.num_classes)
    training_metric = model.card.training.get("best_metric")
    return ModelEvaluation(
        path=model.path,
        format=model.format,
        precision=model.precision,
        provider=model.provider,
        score=score,
        seconds=seconds,
        images_per_s=len(items) / seconds if seconds > 0 else math.inf,
        delta_points=_delta_points(score.metric, reference),
        parent=model.parent,
        training_metric=None if training_metric is None else float(training_metric),
    )


def _as_label(output: Any, task: str) -> np.ndarray | int:
    """A mask as it is, or a classifier's ``(label, probabilities)`` as the class index."""
    if task == "segmentation":
        return output
    return int(np.argmax(output[1]))


def _delta_points(metric: float, reference: float | None) -> float | None:
    if reference is None:
        return 0.0
    if math.isnan(metric) or math.isnan(reference):
        return None
    return (metric - reference) * 100.0


def _size_of(item: LabelledImage) -> tuple[int, int]:
    return tuple(int(n) for n in item.pixels.shape[:2])  # type: ignore[return-value]


def _seed_note(data: str, seed: int, seed_from: str) -> str:
    """``" (seed 3, from the card)"`` where the seed chose the items, else nothing."""
    if not split_depends_on_seed(data):
        return ""
    return f" (seed {seed}, from {'the card' if seed_from == 'card' else '--seed'})"


def describe_images(data: str, split: str, items: list[LabelledImage], note: str = "") -> str:
    """One line about the set: ``"<data>, val split<note>: 16 images, 64x64 to 200x300"``."""
    sizes = [_size_of(item) for item in items]
    smallest = min(sizes, key=lambda s: s[0] * s[1])
    largest = max(sizes, key=lambda s: s[0] * s[1])
    span = f"{smallest[0]}x{smallest[1]}"
    if largest != smallest:
        span += f" to {largest[0]}x{largest[1]}"
    return f"{data}, {split} split{note}: {len(items)} images, {span}"


def versions(with_torch: bool) -> dict[str, str]:
    """Versions that bear on the numbers (torch's only when a checkpoint was evaluated)."""
    import onnxruntime

    from segdeploy import __version__

    found = {
        "segdeploy": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if with_torch:
        # The installed version, read without importing torch.
        found["torch"] = importlib.metadata.version("torch")
    return found
