"""``segdeploy bench``: parse the options, let the bench library check and measure,
print the table and write the results.

Every default is :class:`~segdeploy.tools.bench_config.BenchConfig`'s; the comma-separated
options show it the way they are typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segdeploy.cli.console import console
from segdeploy.cli.options import Force
from segdeploy.cli.tables import print_bench_table
from segdeploy.core.publish import publish_file, refuse_existing, refuse_overlap
from segdeploy.tools.bench_config import RESULTS_FOLDER, BenchConfig

# BenchConfig's defaults as the comma-separated options are typed.
BATCHES = ",".join(map(str, BenchConfig.batches))
PRECISIONS = ",".join(BenchConfig.precisions)


def bench(
    models: Annotated[
        list[Path] | None, typer.Argument(help="ONNX exports \\[default: every exports/*.onnx].")
    ] = None,
    provider: Annotated[
        str, typer.Option(help="cpu, cuda or openvino (the second CPU engine).")
    ] = BenchConfig.provider,
    batch: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8.")] = BATCHES,
    size: Annotated[
        str | None, typer.Option(help="HxW list, e.g. 256x256,512x512 \\[default: per task].")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, fp16, int8, bf16 (comma-separated; bf16 on openvino).")
    ] = PRECISIONS,
    warmup: Annotated[int, typer.Option(min=0)] = BenchConfig.warmup,
    iters: Annotated[
        int | None, typer.Option(min=1, help="Timed runs (else --seconds).")
    ] = BenchConfig.iters,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="Time budget per engine and case.")
    ] = BenchConfig.seconds,
    rounds: Annotated[
        int,
        typer.Option(
            min=1, help="ORT and eager take turns this many times; speedup = median of rounds."
        ),
    ] = BenchConfig.rounds,
    torch: Annotated[
        bool, typer.Option("--torch/--no-torch", help="Compare PyTorch.")
    ] = BenchConfig.compare_torch,
    threads: Annotated[
        int, typer.Option(min=0, help="CPU threads, 0 = all cores.")
    ] = BenchConfig.threads,
    io_binding: Annotated[
        bool, typer.Option(help="Also measure with input and output bound on the device.")
    ] = True in BenchConfig.io_binding,
    profile: Annotated[
        bool, typer.Option(help="Also profile ONNX Runtime: kernel time per operator type.")
    ] = BenchConfig.profile,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON here.")
    ] = None,
    results: Annotated[
        Path, typer.Option(help="Results folder: each run adds a JSON and a chart.")
    ] = RESULTS_FOLDER,
    force: Force = False,
) -> None:
    """Latency percentiles and throughput of ONNX Runtime beside PyTorch eager, same run.\f

    Longer than 60 lines because its signature declares the command's fifteen parameters; the
    body only hands them to the library. (Click shows no help text after the form feed.)
    """
    from segdeploy.tools.bench import plan_cases
    from segdeploy.tools.bench_config import config_from_options

    config = config_from_options(
        models,
        provider=provider,
        batch=batch,
        size=size,
        precision=precision,
        io_binding=io_binding,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        compare_torch=torch,
        threads=threads,
        profile=profile,
        rounds=rounds,
    )
    planned = plan_cases(config)  # refuses bad sizes and missing variants before any timing
    if json_path:  # before minutes of timing, not after
        refuse_overlap(json_path, config.models, "bench report")
        refuse_existing(json_path, force)
    cases, env = _run_with_progress_bar(config, planned)
    print_bench_table(cases, env)
    _write_outputs(cases, env, results, json_path, force, config.models)


def _run_with_progress_bar(config: BenchConfig, planned):
    """:func:`~segdeploy.tools.bench.run_bench` under a progress bar naming the current case."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segdeploy.tools.bench import run_bench

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("measuring the matrix-multiply peak", total=len(planned))
        started = 0

        def starting(case) -> None:  # called before each case: the ones before it are done
            nonlocal started
            bar.update(task, completed=started, description=case.describe())
            started += 1

        return run_bench(config, progress=starting, planned=planned)


def _write_outputs(
    cases, env, results: Path, json_path: Path | None, force: bool, models: list[Path]
) -> None:
    """The JSON and chart under ``results`` (new names: no run replaces another's), the JSON's
    copy at ``json_path`` if asked for (replaced only with ``force``)."""
    from segdeploy.tools.bench import write_results
    from segdeploy.tools.bench_chart import draw_chart

    out = write_results(cases, env, results)
    chart = draw_chart(cases, out.with_suffix(".png"))
    if json_path:
        text = out.read_text()
        publish_file(json_path, lambda tmp: tmp.write_text(text), "bench report", force, models)
    console.print(f"wrote {out} and {chart}")
