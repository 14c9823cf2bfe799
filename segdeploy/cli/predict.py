"""``segdeploy predict``, ``info`` and ``models``: run an export, read a model card, list what
can be trained.

``predict`` imports runtime modules only: it must work with the base install (no torch, no onnx).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from segdeploy.cli.console import console, err_console
from segdeploy.cli.errors import EXIT_ERROR
from segdeploy.runtime.files import DEFAULT_BATCH_SIZE
from segdeploy.runtime.model import DEFAULT_PROVIDER
from segdeploy.runtime.session import ALL_CORES
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE


class Engine(str, Enum):
    """Where ``predict`` runs: this process, or a pool of Ray actors."""

    LOCAL = "local"
    RAY = "ray"


EngineOption = Annotated[
    Engine,
    typer.Option(
        help="local, or ray: a pool of Ray actors (pip install 'segdeploy\\[ray]'); "
        "RAY_ADDRESS joins an existing cluster."
    ),
]
WorkersOption = Annotated[
    int, typer.Option(min=1, help="--engine ray: actors, each with the model open once.")
]


def _ray_options(engine: Engine, workers: int, threads: int) -> dict | None:
    """None for the local engine; for Ray (checked to be installed) its keyword arguments."""
    if engine is not Engine.RAY:
        return None
    from segdeploy.runtime.ray_engine import import_ray

    import_ray()  # one sentence with the install command
    return {"workers": workers, "threads": threads}


def predict(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="An exported model.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(metavar="INPUTS", help="Image files or folders (searched recursively)."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder for masks or predictions.csv.")],
    overlay: Annotated[
        bool, typer.Option(help="Also write <name>_overlay.png (segmentation).")
    ] = False,
    provider: Annotated[str, typer.Option(help="cpu, cuda, auto or openvino.")] = DEFAULT_PROVIDER,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per session call.")
    ] = DEFAULT_BATCH_SIZE,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads; 0 = all cores.")] = ALL_CORES,
    tile: Annotated[
        int,
        typer.Option(
            min=0,
            help="Run every image as overlapping N x N windows with blended logits (a multiple "
            f"of the model's size multiple); 0 = only images over --max-pixels, {DEFAULT_TILE} px.",
        ),
    ] = 0,
    overlap: Annotated[
        int, typer.Option(min=0, help="Pixels neighbouring windows share and blend.")
    ] = DEFAULT_OVERLAP,
    max_pixels: Annotated[
        int, typer.Option(min=0, help="Tile images with more pixels than this; 0 = never.")
    ] = DEFAULT_MAX_PIXELS,
    engine: EngineOption = Engine.LOCAL,
    workers: WorkersOption = 2,
) -> None:
    """Run MODEL.onnx on images: class-index PNG masks, or predictions.csv for classifiers.

    Segmentation images over --max-pixels run as overlapping windows (memory bounded by the
    window, not the image); classifiers always see the whole image.
    """
    from segdeploy.runtime import open_model
    from segdeploy.runtime.files import collect_images, plan_outputs

    ray = _ray_options(engine, workers, threads)  # Ray missing: one sentence, nothing run
    model = open_model(model_path, provider=provider, threads=threads)
    if overlay and model.card.task == "classification":
        err_console.print("--overlay draws segmentation masks; a classifier writes only its CSV")
        overlay = False
    tiling = {"tile": tile or None, "overlap": overlap, "max_pixels": max_pixels or None}
    if model.card.task == "segmentation":
        model.check_tiling(tiling["tile"], overlap)  # before the progress bar starts
    elif tile:
        err_console.print("--tile splits segmentation inputs; a classifier sees the whole image")
    paths = collect_images(inputs, exclude=out)
    plan_outputs(model, paths, out, overlay)  # refuse to overwrite inputs before the bar starts
    console.print(
        f"{model.card.arch} ({model.card.task}, {model.card.num_classes} classes) on "
        f"[bold]{model.provider}[/], {len(paths)} images -> {out}"
    )
    summary = _predict_with_progress_bar(model, paths, out, overlay, batch_size, tiling, ray)
    _print_summary(summary, out)
    if summary.failed:
        raise typer.Exit(EXIT_ERROR)


def _print_summary(summary, out: Path) -> None:
    """The run's figures, what was written, and one line per skipped image."""
    table = Table(title=f"predict on {summary.provider}", title_justify="left")
    for column in ("images", "failed", "seconds", "images/s"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.images),
        str(len(summary.failed)),
        f"{summary.seconds:.2f}",
        f"{summary.images_per_second:.2f}",
    )
    console.print(table)
    if summary.tiled:
        console.print(f"{summary.tiled} of {summary.images} images ran as overlapping tiles")
    written = "predictions.csv" if summary.task == "classification" else "masks"
    console.print(f"wrote {written} under [bold]{out}[/]")
    for _, reason in summary.failed:
        err_console.print(f"[red]- skipped: {reason}", highlight=False, soft_wrap=True)


def _predict_with_progress_bar(
    model,
    paths: list[Path],
    out: Path,
    overlay: bool,
    batch_size: int,
    tiling: dict,
    ray_options: dict | None = None,
):
    """:func:`~segdeploy.runtime.files.predict_files` under a progress bar; its summary.
    With ``ray_options`` (``workers``, ``threads``): on Ray, see
    :func:`~segdeploy.runtime.ray_engine.predict_files_ray`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from segdeploy.runtime.files import predict_files

    if ray_options is not None:
        from functools import partial

        from segdeploy.runtime.ray_engine import predict_files_ray

        predict_files = partial(  # the same call on a pool of Ray actors
            predict_files_ray, provider=model.provider, **ray_options
        )
        model = model.path
    from segdeploy.core.publish import lock

    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # One run per output folder at a time: the masks of two runs never mix.
    with lock(out, "predict"), Progress(*columns, console=console) as progress:
        task = progress.add_task("predicting", total=len(paths))
        return predict_files(
            model,
            paths,
            out,
            overlay=overlay,
            batch_size=batch_size,
            progress_callback=lambda path, error: progress.advance(task),
            **tiling,
        )


def info(
    path: Annotated[Path, typer.Argument(metavar="MODEL.pt|MODEL.onnx")],
) -> None:
    """Show the model card a checkpoint or an ONNX export carries."""
    if path.suffix == ".onnx":
        from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard
        from segdeploy.core.errors import SegdeployError
        from segdeploy.runtime.variants import read_metadata

        # Read, not opened: a bf16 variant is OpenVINO's to run, but anyone may read its card.
        metadata = read_metadata(path)
        if ONNX_METADATA_KEY not in metadata:
            raise SegdeployError(
                f"ONNX file {path}: expected a segdeploy model card in its metadata "
                f"('{ONNX_METADATA_KEY}'), found none"
            )
        card = ModelCard.from_json(metadata[ONNX_METADATA_KEY], source=str(path))
        extra = {
            k.removeprefix("segdeploy."): v
            for k, v in metadata.items()
            if k.startswith("segdeploy.") and k != ONNX_METADATA_KEY
        }
    else:
        from segdeploy.train.checkpoint import read_checkpoint

        card, extra = read_checkpoint(path)[0], {}
    table = Table(title=str(path), title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in card.to_dict().items():
        if key != "training":
            table.add_row(key, str(value))
    for key, value in card.training.items():
        if key != "validation":
            table.add_row(f"training.{key}", str(value))
    for key, value in extra.items():
        table.add_row(key, value)
    console.print(table)


def list_architectures() -> None:
    """List the registered architectures and their variants."""
    from segdeploy.models import get_spec, list_models

    table = Table()
    for column in ("arch", "task", "variants", "description"):
        table.add_column(column)
    for name in list_models():
        spec = get_spec(name)
        default = spec.default_variant
        variants = [f"{v} (default)" if v == default else v for v in spec.variants]
        table.add_row(name, spec.task, ", ".join(variants), escape(spec.description))
    console.print(table)
