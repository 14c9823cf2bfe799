"""Batch prediction on Ray: the ``--engine ray`` side of ``segdeploy predict``.

The image paths go into a Ray Dataset (:func:`ray.data.from_items`); a pool of actors, each of
which opens the model once, loads, predicts and writes the masks with the same functions as the
local engine (:mod:`segdeploy.runtime.files`), so the files are byte for byte the same. The driver
collects per-file failures and a classifier's rows (written as one CSV, in input order).

Ray runs locally by default (a private ``ray.init("local")`` sized to the workers, no dashboard);
with ``RAY_ADDRESS`` set it joins that cluster instead. Workers read the inputs and write the
outputs by path, so on a multi-machine cluster both must be on storage every node mounts.

Ray is optional (``pip install 'segdeploy[ray]'``) and only imported when this engine runs; this
module stays torch-free like the rest of the runtime.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from segdeploy.core.errors import SegdeployError, first_line
from segdeploy.core.fileio import atomic_write
from segdeploy.core.images import load_image
from segdeploy.runtime.files import (
    CSV_NAME,
    DEFAULT_BATCH_SIZE,
    PredictSummary,
    ProgressCallback,
    check_output_disk,
    file_failure,
    output_names,
    plan_outputs,
    write_csv,
    write_masks,
)
from segdeploy.runtime.model import DEFAULT_PROVIDER, SegmentationModel, open_model
from segdeploy.runtime.session import ALL_CORES
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP

INSTALL_HINT = "pip install 'segdeploy[ray]'"
DEFAULT_WORKERS = 2


def import_ray():
    """The ``ray`` module with Ray Data, or one sentence saying how to install it.

    Raises:
        SegdeployError: ray (or its data extra) is not installed.
    """
    try:
        import ray
        import ray.data  # the "data" extra: pyarrow, pandas
    except ImportError as err:
        raise SegdeployError(
            f"--engine ray: expected the Ray package, found it is not installed ({err.name}); "
            f"install it with: {INSTALL_HINT}"
        ) from None
    return ray


def start_ray(workers: int):
    """Connect to ``RAY_ADDRESS`` when it is set, else start a local Ray sized for ``workers``.

    Returns:
        ``(ray, started)``: ``started`` is True when this call started Ray (and the caller
        should shut it down).
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    quiet = {"log_to_driver": False, "logging_level": "warning"}
    address = os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(**quiet)
        else:
            # A private instance even where `ray start` runs here; one CPU per actor and one
            # for Ray Data's own tasks (logical CPUs, not a thread cap).
            ray.init("local", num_cpus=workers + 1, include_dashboard=False, **quiet)
    except Exception as err:  # ConnectionError, AuthenticationError, RuntimeError...
        where = f"to join the cluster at RAY_ADDRESS={address}" if address else "to start Ray"
        reason = first_line(err)
        text = f"{err} {err.__cause__ or ''}"
        if "auth" in text.lower() and "token" in text.lower():
            reason += (
                " (the cluster wants its token: set RAY_AUTH_MODE=token, see ray get-auth-token)"
            )
        raise SegdeployError(f"--engine ray: expected {where}, found {reason}") from None
    return ray, True


class _Predictor:
    """One Ray actor: opens the model once and predicts the batches of paths it is given."""

    def __init__(self, model_path, provider, threads, out_dir, overlay, tiling, batch_size):
        self.model = open_model(model_path, provider=provider, threads=threads)
        self.out_dir = Path(out_dir)
        self.overlay = overlay
        self.tiling = tiling
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        """``{index, path, name}`` columns in; ``{index, error, outputs, row, tiled}`` out
        (``outputs`` and ``row`` as JSON text, ``error`` empty when the image was written)."""
        items = [
            (int(i), Path(p), Path(n))
            for i, p, n in zip(batch["index"], batch["path"], batch["name"], strict=True)
        ]
        errors: dict[int, str] = {}
        done: dict[int, list] = {}  # index -> written files (segmentation) or CSV row
        tiled = 0
        for start in range(0, len(items), self.batch_size):
            loaded = []
            for index, path, name in items[start : start + self.batch_size]:
                try:
                    pixels = load_image(path, channels=self.model.card.in_channels)
                except Exception as err:  # that image's problem alone, as in the local engine
                    errors[index] = file_failure(path, err, "read")
                    continue
                loaded.append((index, path, name, pixels))
            if loaded:
                tiled += self._predict(loaded, done, errors)
        segmentation = isinstance(self.model, SegmentationModel)
        return {
            "index": [index for index, _, _ in items],
            "error": [errors.get(index, "") for index, _, _ in items],
            "outputs": [json.dumps(done.get(i, []) if segmentation else []) for i, _, _ in items],
            "row": [json.dumps([] if segmentation else done.get(i, [])) for i, _, _ in items],
            "tiled": [tiled if n == 0 else 0 for n in range(len(items))],
        }

    def _predict(self, loaded: list, done: dict, errors: dict) -> int:
        """Predict one session call's ``(index, path, name, pixels)`` and write its masks with
        the local engine's writer (or make its CSV rows); the number of tiled images. An image
        that fails goes to ``errors``; a full output disk stops the run, as locally."""
        model, images = self.model, [pixels for *_, pixels in loaded]
        tiled = 0
        if isinstance(model, SegmentationModel):
            tiled = sum(model.tile_grid(*i.shape[:2], **self.tiling) is not None for i in images)
        try:
            results = model.predict_batch(images, **self.tiling)
        except Exception as err:
            errors.update({index: file_failure(path, err, "predict") for index, path, *_ in loaded})
            return 0
        for (index, path, name, pixels), result in zip(loaded, results, strict=True):
            if isinstance(model, SegmentationModel):
                try:
                    written = write_masks(
                        self.out_dir / name, pixels, result, model.palette, self.overlay
                    )
                except Exception as err:
                    check_output_disk(err, self.out_dir, f"the masks of {path}", len(done))
                    errors[index] = file_failure(path, err, "predict and write")
                    continue
                done[index] = [str(p) for p in written]
            else:
                label, probabilities = result  # the local engine's CSV row, same formatting
                done[index] = [str(path), label, *(f"{p:.6f}" for p in probabilities)]
        return tiled


def predict_files_ray(
    model_path: str | os.PathLike,
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    workers: int = DEFAULT_WORKERS,
    overlay: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress_callback: ProgressCallback | None = None,
    provider: str = DEFAULT_PROVIDER,
    threads: int = ALL_CORES,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PredictSummary:
    """:func:`~segdeploy.runtime.files.predict_files` on a pool of ``workers`` Ray actors.

    Writes the same files as the local engine (masks and overlays by the workers, a
    classifier's ``predictions.csv`` by the caller, rows in input order). ``threads=0`` gives
    every worker an equal share of this machine's cores. Other arguments as for
    :func:`~segdeploy.runtime.files.predict_files`.

    Returns:
        a :class:`~segdeploy.runtime.files.PredictSummary`; unreadable images are listed in
        ``failed``, not raised. ``seconds`` includes starting Ray and the actors.

    Raises:
        SegdeployError: Ray is not installed, bad options, an output would overwrite an input,
            or a worker failed on something other than an unreadable image.
    """
    if batch_size < 1 or workers < 1:
        raise SegdeployError(
            f"batch size and workers: expected at least 1, found {batch_size} and {workers}"
        )
    paths = [Path(p) for p in paths]
    model = open_model(model_path, provider=provider, threads=1)  # card, checks, plan
    segmentation = isinstance(model, SegmentationModel)
    tiling = {"tile": tile, "overlap": overlap, "max_pixels": max_pixels} if segmentation else {}
    if segmentation:
        model.check_tiling(tile, overlap)
    plan_outputs(model, paths, out_dir, overlay)
    if threads == ALL_CORES:
        threads = max(1, (os.cpu_count() or 1) // workers)
    # Workers on other nodes start in other folders: they get absolute, resolved paths.
    where = _WorkerPaths(Path(out_dir))
    options = (where.model(model_path), provider, threads, str(where.out), overlay, tiling)
    options = (*options, batch_size)
    started = time.perf_counter()
    ray, owned = start_ray(workers)
    try:
        summary, rows = _run(ray, model, paths, options, workers, progress_callback, where)
    finally:
        if owned:
            ray.shutdown()
    if not segmentation and rows:
        target = Path(out_dir) / CSV_NAME
        header = ["path", "label", *(f"p_{name}" for name in model.class_names)]
        atomic_write(target, lambda tmp: write_csv(tmp, header, rows))
        summary.outputs.append(target)
    summary.seconds = time.perf_counter() - started
    return summary


class _WorkerPaths:
    """The absolute, resolved paths workers are given (a worker on another node starts in
    another folder, where a relative path names another file or none), and the way back to the
    output paths as the caller named them (the local engine's summary)."""

    def __init__(self, out_dir: Path) -> None:
        self.given_out = out_dir
        self.out = out_dir.resolve()

    @staticmethod
    def model(path: str | os.PathLike) -> str:
        return str(Path(path).resolve())

    @staticmethod
    def input(path: Path) -> str:
        return str(path.resolve())

    def as_given(self, written: str) -> Path:
        """A file a worker wrote, under the output folder as the caller named it."""
        return self.given_out / Path(written).relative_to(self.out)


def _run(ray, model, paths, options, workers, progress_callback, where: _WorkerPaths):
    """Stream the dataset through the actor pool; the summary (without the CSV) and the
    classifier rows in input order."""
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-run INFO/notice lines
    items = [
        {"index": i, "path": where.input(p), "name": str(n)}
        for i, (p, n) in enumerate(zip(paths, output_names(paths) if paths else [], strict=True))
    ]
    summary = PredictSummary(task=model.card.task, provider=model.provider)
    if not items:
        return summary, []
    dataset = ray.data.from_items(items).map_batches(
        _Predictor,
        fn_constructor_args=options,
        batch_size=options[-1],
        compute=ActorPoolStrategy(size=workers),
        num_cpus=1,
        batch_format="numpy",
    )
    report = progress_callback or (lambda path, error: None)
    records = {}
    try:
        for record in dataset.iter_rows():
            index, error = int(record["index"]), str(record["error"])
            records[index] = record
            if error:
                summary.failed.append((paths[index], error))
            else:
                summary.images += 1
            summary.tiled += int(record["tiled"])
            report(paths[index], error or None)
    except Exception as err:  # Ray wraps what the workers raised
        raise _worker_error(err) from None
    order = sorted(records)
    summary.outputs = [where.as_given(p) for i in order for p in json.loads(records[i]["outputs"])]
    position = {path: i for i, path in enumerate(paths)}
    summary.failed.sort(key=lambda item: position[item[0]])
    rows = [json.loads(records[i]["row"]) for i in order if records[i]["row"] != "[]"]
    for row, index in zip(rows, [i for i in order if records[i]["row"] != "[]"], strict=True):
        row[0] = str(paths[index])  # the input as the caller named it, as the local CSV says
    return summary, rows


def _worker_error(err: BaseException) -> SegdeployError:
    """The :class:`SegdeployError` a worker raised, else one naming Ray's error."""
    seen: BaseException | None = err
    for _ in range(10):  # RayTaskError.cause, UserCodeException.__cause__, ...
        if seen is None or isinstance(seen, SegdeployError):
            break
        cause = getattr(seen, "cause", None)
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    if isinstance(seen, SegdeployError):
        return seen
    return SegdeployError(f"--engine ray: expected the workers to finish, found {first_line(err)}")
