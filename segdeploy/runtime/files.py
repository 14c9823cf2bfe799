"""Predict a set of image files into an output folder: the library side of ``segdeploy predict``.

Segmentation writes one palette PNG of class indices per image (``<out>/<relative path>.png``,
plus ``<stem>_overlay.png`` on request); classification writes one ``<out>/predictions.csv``.
Every file is written to a temporary name and renamed into place, so an interrupted run leaves
complete files or none. An image that cannot be read, predicted or written (a corrupt file, an
exotic mode, any unexpected error of that one file) is reported in one sentence and skipped; the
rest are still written. An output disk that takes no more (full, over quota, over the file-size
limit, read-only) stops the run with one sentence instead: every later file would fail alike.
"""

from __future__ import annotations

import csv
import errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segdeploy.core.errors import SegdeployError, first_line
from segdeploy.core.fileio import atomic_write
from segdeploy.core.images import IMAGE_EXTENSIONS, load_image
from segdeploy.runtime import postprocess
from segdeploy.runtime.model import (
    ClassificationModel,
    ImageOutput,
    PreparedBatch,
    SegmentationModel,
)
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP

CSV_NAME = "predictions.csv"
#: Images per session call unless told otherwise.
DEFAULT_BATCH_SIZE = 1

#: Called once per input image when it is done: ``(path, error or None)``.
ProgressCallback = Callable[[Path, str | None], None]
#: ``errno`` values of an output disk that takes no more files: the run stops (see the module).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def file_failure(path: Path, err: Exception, step: str) -> str:
    """One sentence for an error of one image at ``step`` (``"read"``, ``"predict"``,
    ``"predict and write"``): a :class:`SegdeployError` says its own, anything else is named
    by its type and the first line of its message."""
    if isinstance(err, SegdeployError):
        return str(err)
    return f"image {path}: expected to {step} it, found {type(err).__name__}: {first_line(err)}"


def check_output_disk(err: BaseException, out_dir: Path, what: str, done: int) -> None:
    """Raise one :class:`SegdeployError` sentence when ``err`` says the disk of ``out_dir``
    takes no more files (:data:`DISK_FULL_ERRNOS`); ``what`` was being written, ``done``:
    images already written. The OSError may sit under the sentence the publisher made of it
    (``__context__``: it raises ``from None``, which hides the cause but keeps it)."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        raise SegdeployError(
            f"output folder {out_dir}: expected room to write {what}, found {err.strerror or err} "
            f"(errno {errno.errorcode.get(err.errno, err.errno)}); stopped after {done} images, "
            "whose files are whole: free space (or raise the limit) and run again"
        ) from None


@dataclass
class PredictSummary:
    """What :func:`predict_files` did.

    Attributes:
        task: ``"segmentation"`` or ``"classification"``.
        provider: the provider that ran the model (``cpu`` / ``cuda``).
        images: images predicted and written.
        failed: ``(path, reason)`` of every image that could not be read, predicted or
            written; it was skipped.
        tiled: images that ran as overlapping windows (segmentation, see
            :mod:`segdeploy.runtime.tiling`).
        seconds: wall time of the whole run (reading, inference, writing).
        outputs: files written.
    """

    task: str
    provider: str
    images: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    tiled: int = 0
    seconds: float = 0.0
    outputs: list[Path] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def collect_images(inputs: Iterable[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders searched recursively.

    Folders contribute files with an extension in :data:`IMAGE_EXTENSIONS` (any case); hidden
    files and folders (leading ``.``, e.g. macOS ``._x.jpg`` resource forks) are skipped. The
    result is sorted and free of duplicates (the same file reached twice counts once).

    Args:
        inputs: files and folders.
        exclude: a folder to leave out when it lies inside an input folder, typically the output
            folder, so that a second run does not predict the previous run's masks.

    Raises:
        SegdeployError: an input that does not exist, a named file that is not an image by its
            extension, or no images at all.
    """
    inputs = [Path(item) for item in inputs]
    found: dict[Path, Path] = {}  # resolved -> as given, for de-duplication
    skip = Path(exclude).resolve() if exclude is not None else None
    for item in inputs:
        if item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise SegdeployError(
                    f"input {item}: expected an image file ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                    f", found the extension '{item.suffix}'"
                )
            found.setdefault(item.resolve(), item)
        elif item.is_dir():
            root = item.resolve()
            leave_out = (
                skip if skip is not None and skip != root and skip.is_relative_to(root) else None
            )
            for path in item.rglob("*"):
                relative = path.relative_to(item)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                    continue
                resolved = path.resolve()
                if leave_out is not None and resolved.is_relative_to(leave_out):
                    continue
                found.setdefault(resolved, path)
        else:
            raise SegdeployError(f"input {item}: expected an image file or folder, found nothing")
    if not found:
        raise SegdeployError(
            f"inputs {', '.join(map(str, inputs))}: expected image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), found none"
        )
    return sorted(found.values())


def output_names(paths: Sequence[Path]) -> list[Path]:
    """Relative output stems (no extension) that mirror the inputs' folder structure.

    Paths are taken relative to the deepest folder that holds all inputs, so ``imgs/a.jpg`` and
    ``imgs/sub/b.png`` become ``a`` and ``sub/b``. Files that differ only by extension
    (``a.jpg``, ``a.png``) keep it in the name (``a_jpg``, ``a_png``) instead of overwriting
    each other.
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    root = Path(os.path.commonpath([p.parent for p in absolute]))
    stems = [p.relative_to(root).with_suffix("") for p in absolute]
    counts: dict[Path, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        stem.with_name(f"{stem.name}_{p.suffix.lstrip('.').lower()}") if counts[stem] > 1 else stem
        for stem, p in zip(stems, absolute, strict=True)
    ]


def plan_outputs(
    model: SegmentationModel | ClassificationModel,
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    overlay: bool = False,
) -> list[Path]:
    """The files :func:`predict_files` would write, checked before anything is written.

    Raises:
        SegdeployError: the output folder is a file, an output would overwrite an input image,
            or two inputs would write the same output.
    """
    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    if out_dir.exists() and not out_dir.is_dir():
        raise SegdeployError(f"output folder {out_dir}: expected a folder, found a file")
    if not isinstance(model, SegmentationModel):
        outputs = [out_dir / CSV_NAME]
    else:
        outputs = []
        for name in output_names(paths) if paths else []:
            outputs.append(out_dir / f"{name}.png")
            if overlay:
                outputs.append(out_dir / f"{name}_overlay.png")
    taken = {p.resolve() for p in paths}
    seen: set[Path] = set()
    for output in outputs:
        resolved = output.resolve()
        if resolved in taken:
            raise SegdeployError(
                f"output {output}: expected a path that is not an input image, found it would "
                "overwrite that input; choose an --out folder outside the input folders"
            )
        if resolved in seen:
            raise SegdeployError(
                f"output {output}: expected one output per input, found two inputs that would "
                "both write it; rename one of them"
            )
        seen.add(resolved)
    return outputs


_DONE: Future = Future()
_DONE.set_result([])


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    model: SegmentationModel | ClassificationModel,
    paths: Sequence[Path],
    out_dir: str | os.PathLike,
    overlay: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress_callback: ProgressCallback | None = None,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> PredictSummary:
    """Predict every image in ``paths`` and write the results under ``out_dir``.

    Args:
        model: from :func:`~segdeploy.runtime.open_model`.
        paths: image files, e.g. from :func:`collect_images`.
        out_dir: output folder (created if needed).
        overlay: segmentation only: also write ``<stem>_overlay.png``, the class colours blended
            over the image.
        batch_size: images per session call (images of different padded sizes are still run
            separately, see :meth:`SegmentationModel.predict_batch`).
        progress_callback: called as ``(path, error or None)`` after each image.
        tile, overlap, max_pixels: segmentation only: tiled prediction of large images, as for
            :meth:`SegmentationModel.predict`. A batch's decoded images are in memory at once
            (3 bytes a pixel): keep ``batch_size=1`` for very large images.

    Returns:
        a :class:`PredictSummary`; images that could not be read, predicted or written are
        listed in ``failed``, not raised.

    Raises:
        SegdeployError: an output would overwrite an input, the output folder is not writable,
            its disk takes no more files (:func:`check_output_disk`: the run stops there),
            tiling options the model cannot use.
    """
    if batch_size < 1:
        raise SegdeployError(f"batch size: expected at least 1, found {batch_size}")
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    segmentation = isinstance(model, SegmentationModel)
    tiling = {"tile": tile, "overlap": overlap, "max_pixels": max_pixels} if segmentation else {}
    if segmentation:
        model.check_tiling(tile, overlap)  # one sentence before any image is read
    names = output_names(paths) if paths else []
    plan_outputs(model, paths, out_dir, overlay)

    summary = PredictSummary(task=model.card.task, provider=model.provider)
    report = progress_callback or (lambda path, error: None)
    started = time.perf_counter()
    chunks = list(_batches(list(zip(paths, names, strict=True)), batch_size))
    rows = _run_pipeline(model, chunks, out_dir, overlay, tiling, summary, report)
    if not segmentation and rows:
        summary.outputs.append(_write_predictions(model, out_dir, rows))
    summary.seconds = time.perf_counter() - started
    return summary


def _write_predictions(model: ClassificationModel, out_dir: Path, rows: list[list[str]]) -> Path:
    """A classifier's ``predictions.csv`` under ``out_dir`` (a full disk: one sentence)."""
    target = out_dir / CSV_NAME
    header = ["path", "label", *(f"p_{name}" for name in model.class_names)]
    try:
        return atomic_write(target, lambda tmp: write_csv(tmp, header, rows))
    except (OSError, SegdeployError) as err:
        check_output_disk(err, out_dir, CSV_NAME, 0)
        raise


def _run_pipeline(
    model: SegmentationModel | ClassificationModel,
    chunks: list[Sequence[tuple[Path, Path]]],
    out_dir: Path,
    overlay: bool,
    tiling: dict,
    summary: PredictSummary,
    report: ProgressCallback,
) -> list[list[str]]:
    """Prepare chunk ``i + 1`` and finish chunk ``i - 1`` while chunk ``i`` runs in the session.

    The main thread does little but call the session: a reader thread decodes and normalises
    (:meth:`~SegmentationModel.prepare`), a writer thread takes the argmax and writes the PNGs.
    ONNX Runtime, Pillow and numpy's large loops release the GIL, so that work runs beside
    inference instead of between two session calls (0.4 ms per 640x480 image outside the session,
    against 4.4-6.1 ms when the main thread normalised and took the argmax). It hides completely
    when the session leaves a core free; when the session's threads fill every core, it slows
    the session by about its CPU time instead (benchmarks/README.md). The main thread alone
    touches ``summary`` and calls ``report``, in input order.
    Memory: at most one prepared chunk ahead and two chunks' logits behind.
    """
    rows: list[list[str]] = []
    with (
        ThreadPoolExecutor(1, thread_name_prefix="segdeploy-decode") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="segdeploy-write") as writer,
    ):
        next_chunk = reader.submit(_load_chunk, model, chunks[0], tiling) if chunks else None
        writing: list[tuple[Path, Future]] = []
        for index in range(len(chunks)):
            chunk = next_chunk.result()
            if index + 1 < len(chunks):
                next_chunk = reader.submit(_load_chunk, model, chunks[index + 1], tiling)
            for path, error in chunk.failed:
                summary.failed.append((path, error))
                report(path, error)
            done_before = len(writing)
            rows += _predict_chunk(model, chunk, out_dir, overlay, tiling, summary, writer, writing)
            _finish_writes(writing[:done_before], summary, report, out_dir)
            del writing[:done_before]
        _finish_writes(writing, summary, report, out_dir)
    return rows


@dataclass
class _Chunk:
    """One batch of files after the reader thread: ``(path, output name, pixels)`` of the images
    that loaded, ``(path, error)`` of those that did not, and the session input of the loaded
    images at the positions ``whole`` (the others are tiled, window by window, on the main
    thread)."""

    loaded: list[tuple[Path, Path, np.ndarray]]
    failed: list[tuple[Path, str]]
    whole: list[int]
    prepared: PreparedBatch | None


def _load_chunk(model, chunk: Sequence[tuple[Path, Path]], tiling: dict) -> _Chunk:
    """On the reader thread: decode, and prepare what runs whole. Images that cannot be read
    are reported by the caller, not raised."""
    loaded, failed = [], []
    for path, name in chunk:
        try:
            loaded.append((path, name, load_image(path, channels=model.card.in_channels)))
        except Exception as err:  # one image's problem, whatever it is, is that image's
            failed.append((path, file_failure(path, err, "read")))
    whole = [
        position
        for position, (_, _, image) in enumerate(loaded)
        if not tiling or model.tile_grid(*image.shape[:2], **tiling) is None
    ]
    try:
        prepared = model.prepare([loaded[i][2] for i in whole]) if whole else None
    except Exception as err:  # every image of the session call fails with it
        failed += [(loaded[i][0], file_failure(loaded[i][0], err, "read")) for i in whole]
        loaded = [item for i, item in enumerate(loaded) if i not in whole]
        whole, prepared = [], None
    return _Chunk(loaded, failed, whole, prepared)


def _finish_writes(
    writing: list[tuple[Path, Future]], summary: PredictSummary, report, out_dir: Path
) -> None:
    """Wait for the writes of ``writing`` in order; record and report each image (an image
    that failed is recorded as failed; a full output disk stops the run)."""
    for path, future in writing:
        try:
            written = future.result()
        except Exception as err:
            check_output_disk(err, out_dir, f"the masks of {path}", summary.images)
            summary.failed.append((path, file_failure(path, err, "predict and write")))
            report(path, summary.failed[-1][1])
            continue
        summary.outputs += written
        summary.images += 1
        report(path, None)


def _predict_chunk(
    model: SegmentationModel | ClassificationModel,
    chunk: _Chunk,
    out_dir: Path,
    overlay: bool,
    tiling: dict,
    summary: PredictSummary,
    writer: ThreadPoolExecutor,
    writing: list[tuple[Path, Future]],
) -> list[list[str]]:
    """Run one prepared chunk; masks go to ``writer`` (their futures appended to ``writing``), a
    classifier's predictions come back as CSV rows."""
    try:
        ran = model.run_prepared(chunk.prepared) if chunk.prepared else []
    except Exception as err:  # the session call failed: each of its images is reported
        ran, failure = None, _failed(err)
    if isinstance(model, ClassificationModel):
        if ran is None:
            writing += [(path, failure) for path, _, _ in chunk.loaded]
            return []
        predictions = model.finish(ran)
        writing += [(path, _DONE) for path, _, _ in chunk.loaded]
        return [
            [str(path), label, *(f"{p:.6f}" for p in probabilities)]
            for (path, _, _), (label, probabilities) in zip(chunk.loaded, predictions, strict=True)
        ]
    outputs = dict(zip(chunk.whole, ran, strict=True)) if ran is not None else {}
    summary.tiled += len(chunk.loaded) - len(chunk.whole)
    for position, (path, name, image) in enumerate(chunk.loaded):
        stem = out_dir / name
        if position in outputs:
            write = writer.submit(_mask_and_write, model, stem, image, outputs[position], overlay)
        elif position in chunk.whole:
            write = failure
        else:
            try:
                mask = model.predict_batch([image], **tiling)[0]  # tiled: window by window, here
            except Exception as err:
                write = _failed(err)
            else:
                write = writer.submit(write_masks, stem, image, mask, model.palette, overlay)
        writing.append((path, write))
    return []


def _failed(err: Exception) -> Future:
    """A done future that raises ``err``: an image that failed before its write was queued."""
    future: Future = Future()
    future.set_exception(err)
    return future


def _mask_and_write(
    model: SegmentationModel, stem: Path, image: np.ndarray, output: ImageOutput, overlay: bool
) -> list[Path]:
    """On the writer thread: one image's argmax, then its PNGs."""
    return write_masks(stem, image, model.finish([output])[0], model.palette, overlay)


def write_masks(
    stem: Path, image: np.ndarray, mask: np.ndarray, colours: list, with_overlay: bool
) -> list[Path]:
    """Write ``<stem>.png`` (the palette PNG of ``mask``) and, ``with_overlay``,
    ``<stem>_overlay.png`` (the class colours over ``image``), each atomically; the files
    written. Every engine writes masks through this, so their files are byte for byte alike."""
    written = [stem.with_name(f"{stem.name}.png")]
    atomic_write(written[0], lambda tmp: postprocess.save_mask_png(mask, colours, tmp))
    if with_overlay:
        written.append(stem.with_name(f"{stem.name}_overlay.png"))
        blended = postprocess.overlay(image, mask, colours)
        atomic_write(written[1], lambda tmp: blended.save(tmp, format="PNG"))
    return written


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a classifier's ``predictions.csv`` (``header``, then ``rows``) to ``path``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
