"""``segdeploy inspect-divergence``: where a variant departs from its FP32 export, node by node
(:mod:`segdeploy.export.divergence`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from segdeploy.cli.console import console


def print_divergence_table(found, top: int) -> None:
    """The ``top`` most damaging nodes: where, which torch module, SQNR and what it adds."""
    table = Table(
        title=f"{Path(found.candidate).name} against {Path(found.reference).name} "
        f"({len(found.images)} images), worst first",
        title_justify="left",
    )
    for column in ("#", "node", "op", "torch module", "depth", "SQNR dB", "lost dB", "rel err"):
        table.add_column(column, justify="right" if column not in ("node", "op") else "left")
    for rank, node in enumerate(found.worst(top), 1):
        table.add_row(
            str(rank),
            node.node,
            node.op_type,
            node.module or "-",
            str(node.depth),
            f"{node.sqnr_db:.1f}",
            f"{node.damage_db:.1f}",
            f"{node.relative_error:.2e}",
        )
    console.print(table)


def inspect_divergence(
    reference: Annotated[Path, typer.Argument(metavar="FP32.onnx")],
    candidate: Annotated[Path, typer.Argument(metavar="CANDIDATE.onnx")],
    data: Annotated[
        str | None,
        typer.Option(
            help="'synthetic' or a data folder \\[default: the data the card says the model "
            "was trained on]."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="train or val.")] = "val",
    images: Annotated[int, typer.Option(min=1, help="Images to run, each at its own size.")] = 8,
    top: Annotated[int, typer.Option(min=1, help="Rows of the table.")] = 15,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every node's figures here.")
    ] = None,
    chart: Annotated[
        Path | None, typer.Option(help="Write SQNR along the network's depth here (PNG).")
    ] = None,
) -> None:
    """Per-node SQNR of CANDIDATE against FP32 and the torch module of each node, worst first."""
    from segdeploy.core.errors import SegdeployError
    from segdeploy.export.divergence import inspect_divergence as run

    if split not in ("train", "val"):
        raise SegdeployError(f"--split must be train or val, found {split!r}")
    with console.status(f"running both graphs with every shared tensor exposed on {images} images"):
        found = run(reference, candidate, data, images, split)
    print_divergence_table(found, top)
    first = found.first_diverging()
    console.print(
        f"first node below 40 dB: {first.node} ({first.module or 'module unknown'}, "
        f"{first.sqnr_db:.1f} dB)"
        if first
        else "no node falls below 40 dB"
    )
    if json_out:
        console.print(f"wrote {found.write_json(json_out)}")
    if chart:
        console.print(f"wrote {found.chart(chart)}")


def print_fallback(result) -> None:
    """What the accuracy-aware loop kept in FP32 and what each step cost (nothing if no loop)."""
    record = getattr(result, "fallback", None)
    if record is None:
        return
    table = Table(title=f"accuracy-aware INT8 ({record.calibration})", title_justify="left")
    for column in ("step", "calibration", "nodes in FP32", "metric", "drop", "ms", "passed"):
        table.add_column(column, justify="right")
    for index, step in enumerate(record.steps, 1):
        table.add_row(
            str(index),
            step.calibration,
            str(len(step.excluded)),
            f"{step.metric:.4f}",
            f"{100 * step.drop:.2f}",
            f"{step.latency_ms:.1f}",
            "yes" if step.passed else "no",
        )
    console.print(table)
    kept = ", ".join(f"{n['node']} ({n['module'] or '?'})" for n in record.excluded) or "none"
    console.print(
        f"kept in FP32: {kept}; FP32 {record.fp32_latency_ms:.1f} ms; loop {record.seconds:.0f} s"
    )
