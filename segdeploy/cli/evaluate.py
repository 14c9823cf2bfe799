"""``segdeploy evaluate``: hand the options to :func:`~segdeploy.tools.evaluate.evaluate_models`,
show a progress bar, print the tables and write the JSON report.

Every default is the library's (:mod:`segdeploy.tools.evaluate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segdeploy.cli.console import console
from segdeploy.cli.options import Force
from segdeploy.cli.tables import print_evaluate_tables
from segdeploy.tools.evaluate import DEFAULT_PROVIDER, DEFAULT_SPLIT


def evaluate(
    models: Annotated[
        list[Path],
        typer.Argument(
            metavar="MODEL...", help=".pt checkpoints and .onnx exports (first = reference)."
        ),
    ],
    data: Annotated[str, typer.Option(help="Labelled data folder, or 'synthetic'.")],
    provider: Annotated[str, typer.Option(help="cpu, cuda, auto or openvino.")] = DEFAULT_PROVIDER,
    split: Annotated[
        str, typer.Option(help="val (what training validated on) or train.")
    ] = DEFAULT_SPLIT,
    count: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N images [default: all].")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Data seed that holds out an unsplit folder's val images "
            "[default: the one the model's card records, as training used]."
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON report here.")
    ] = None,
    force: Force = False,
) -> None:
    """The task metric of each MODEL on one labelled set, each run the way it is served."""
    from segdeploy.core.publish import refuse_existing, refuse_overlap
    from segdeploy.tools.evaluate import write_evaluate_report

    inputs = [*models, *([Path(data)] if data != "synthetic" else [])]
    if json_path is not None:  # before the evaluation, not after
        refuse_overlap(json_path, inputs, "evaluate report")
        refuse_existing(json_path, force)
    report = _evaluate_with_progress_bar(
        models, data=data, provider=provider, split=split, count=count, seed=seed
    )
    print_evaluate_tables(report)
    if json_path is not None:
        write_evaluate_report(report, json_path, force, inputs)
        console.print(f"wrote [bold]{json_path}[/]")


def _evaluate_with_progress_bar(models: list[Path], **options):
    """:func:`~segdeploy.tools.evaluate.evaluate_models` under a bar over models x images."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from segdeploy.tools.evaluate import evaluate_models

    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("evaluating", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return evaluate_models(models, progress=advance, **options)
