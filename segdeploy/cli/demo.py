"""``segdeploy demo``: the whole pipeline on synthetic data, with :class:`DemoConfig`'s defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segdeploy.cli.console import console
from segdeploy.cli.tables import print_bench_table, print_parity_table, print_training_summary
from segdeploy.tools.demo import DemoConfig


def demo(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = DemoConfig.epochs,
    workdir: Annotated[
        Path, typer.Option(help="Checkpoint, samples, predictions.")
    ] = DemoConfig.workdir,
) -> None:
    """The whole pipeline on synthetic data: train, export + parity, predict, bench."""
    from segdeploy.tools.demo import run_demo

    done = run_demo(DemoConfig(workdir=workdir, epochs=epochs), console)
    print_training_summary(done["trained"])
    exported = done["exported"]
    print_parity_table(exported.report)
    console.print(f"nodes {exported.nodes_before} -> {exported.nodes_after}; {exported.onnx_path}")
    predicted = done["predicted"]
    console.print(
        f"predicted {predicted.images} images on {predicted.provider} in "
        f"{predicted.seconds:.2f}s -> {workdir / 'predictions'} (masks and overlays)"
    )
    cases, env, results = done["bench"]
    print_bench_table(cases, env)
    console.print(f"benchmark: {results} and {results.with_suffix('.png')}")
