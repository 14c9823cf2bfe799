"""The rich tables the commands print: training summary, parity report, benchmark results.

Shared between the commands that produce them and ``segdeploy demo``, which prints all three.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from segdeploy.cli.console import console, err_console


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_training_summary(result) -> None:
    """Per-epoch table, then per-class IoU of the best epoch (segmentation)."""
    table = Table(title=f"training {result.card.arch}", title_justify="left")
    for column in ("epoch", "train loss", f"val {result.metric_name}", "seconds"):
        table.add_column(column, justify="right")
    for record in result.history:
        star = " *" if record.epoch == result.best_epoch else ""
        table.add_row(
            str(record.epoch),
            _fmt(record.train_loss),
            _fmt(record.metric) + star,
            f"{record.seconds:.1f}",
        )
    console.print(table)
    validation = result.card.training.get("validation", {})
    if "per_class_iou" in validation:
        console.print(_per_class_table(result, validation))
    console.print(
        f"best val {result.metric_name} [bold]{result.best_metric:.4f}[/] at epoch "
        f"{result.best_epoch}/{len(result.history)} in {result.seconds / 60:.1f} min "
        f"-> [bold]{result.checkpoint}[/]"
    )


def _per_class_table(result, validation: dict[str, Any]) -> Table:
    """IoU per class of the best epoch, then mIoU, pixel accuracy and frequency-weighted IoU."""
    per_class = Table(title=f"best epoch {result.best_epoch}: validation", title_justify="left")
    per_class.add_column("class")
    per_class.add_column("IoU", justify="right")
    for name, iou in zip(result.card.class_names, validation["per_class_iou"], strict=True):
        per_class.add_row(name, _fmt(iou))
    per_class.add_section()
    per_class.add_row("[bold]mIoU", f"[bold]{_fmt(validation['miou'])}")
    per_class.add_row("pixel accuracy", _fmt(validation["pixel_accuracy"]))
    per_class.add_row("frequency-weighted IoU", _fmt(validation["fw_iou"]))
    return per_class


def print_parity_table(report) -> None:
    """One row per (provider, shape): errors, the tolerance that would pass, argmax agreement."""
    table = Table(title=f"parity: ONNX Runtime vs PyTorch ({report.model})", title_justify="left")
    for column in ("provider", "input", "output", "max abs", "max rel", "atol needed", "argmax"):
        table.add_column(column, justify="right")
    table.add_column("result")
    for case in report.cases:
        agreement = case.argmax_agreement
        table.add_row(
            case.provider,
            "x".join(map(str, case.input_shape)),
            "x".join(map(str, case.output_shape or ())),
            f"{case.max_abs_error:.2e}" if case.max_abs_error is not None else "-",
            f"{case.max_rel_error:.2e}" if case.max_rel_error is not None else "-",
            f"{case.atol_needed:.2e}" if case.atol_needed is not None else "-",
            f"{agreement:.4%}" if agreement is not None else "-",
            "[green]pass" if case.passed else "[red]FAIL",
        )
    console.print(table)
    tol = report.tolerance
    console.print(
        f"declared tolerance: atol {tol.atol:g}, rtol {tol.rtol:g}, "
        f"argmax agreement >= {tol.min_argmax_agreement:.2%} of decisive positions"
    )
    for failure in report.failures():
        err_console.print(f"[red]- {failure}", highlight=False)


def print_bench_table(cases, env: dict[str, Any]) -> None:
    """The results table, the operator-profile table when profiled, the peaks' notes and, for
    INT8 on an x86 CPU without VNNI, the sentence saying it is mostly a size win there."""
    from segdeploy.tools.bench import int8_without_vnni_note
    from segdeploy.tools.timing import PEAK_KEYS

    fp32_peak = env.get(PEAK_KEYS["fp32"])
    int8_peak = env.get(PEAK_KEYS["int8"])
    console.print(_bench_results_table(cases, env))
    if fp32_peak:
        console.print(f"matrix-multiply peak measured in this run: {fp32_peak:.0f} GFLOP/s (fp32)")
    profiled = [c for c in cases if c.op_profile]
    if profiled:
        console.print(_op_profile_table(profiled))
    if fp32_peak and int8_peak:
        console.print(
            f"8-bit matrix-multiply peak (ONNX Runtime MatMulInteger): {int8_peak:.0f} GOP/s, "
            f"so INT8 can gain at most about {int8_peak / fp32_peak:.1f}x over FP32 on this CPU; "
            "int8 rows' % peak is of this one"
        )
    note = int8_without_vnni_note(cases, env)
    if note:
        console.print(note, soft_wrap=True)  # one line, kept whole for grep


def _bench_results_table(cases, env: dict[str, Any]) -> Table:
    """One row per case; optional columns only when a case uses them."""
    from segdeploy.tools.timing import PEAK_KEYS

    table = Table(
        title=f"segdeploy bench on {env['provider']} ({env['cpu']}, {env['cpu_count']} cores)",
        title_justify="left",
        caption=_cpu_caption(env),
        caption_justify="left",
    )
    # Optional columns only when a case uses them: the table must fit a 140-column terminal.
    bound = any(c.io_binding for c in cases)
    rounds = any(c.round_speedups and len(c.round_speedups) > 1 for c in cases)
    peak = bool(env.get(PEAK_KEYS["fp32"]))
    columns = ["model", "prec", "batch", "size", *(["iob"] if bound else [])]
    engine = "OpenVINO" if env["provider"] == "openvino" else "ORT"
    columns += [f"{engine} p50", "p90", "p99", "img/s", "torch p50", "speedup"]
    columns += ["rounds"] if rounds else []  # the range of the per-round speedups
    columns += ["MB", "GFLOP", "GFLOP/s"]
    columns += ["% peak"] if peak else []
    for column in columns:
        if column == "model":  # long names wrap onto a second line rather than lose their end
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for case in cases:
        table.add_row(*_bench_row(case, env, bound=bound, rounds=rounds, peak=peak))
    return table


def _bench_row(case, env: dict[str, Any], *, bound: bool, rounds: bool, peak: bool) -> list[str]:
    """The cells of one case, matching the columns :func:`_bench_results_table` chose."""
    from segdeploy.tools.bench import share_of_peak

    row = [
        case.model.removesuffix(".onnx"),
        case.precision,
        str(case.batch),
        f"{case.height}x{case.width}",
        *(["yes" if case.io_binding else "no"] if bound else []),
        f"{case.onnx.p50_ms:.2f}",
        f"{case.onnx.p90_ms:.2f}",
        f"{case.onnx.p99_ms:.2f}",
        f"{case.onnx.images_per_s:.1f}",
        f"{case.torch.p50_ms:.2f}" if case.torch else "-",
        f"[bold]{case.speedup:.2f}x" if case.speedup else "-",
        *([_round_range(case)] if rounds else []),
        f"{case.file_mb:.2f}" if case.file_mb is not None else "-",
        f"{case.gflops:.2f}" if case.gflops is not None else "-",
        f"{case.achieved_gflops_per_s:.1f}" if case.achieved_gflops_per_s else "-",
    ]
    if peak:
        share = share_of_peak(case, env)
        row.append(f"{100 * share:.0f}%" if share else "-")
    return row


def _cpu_caption(env: dict[str, Any]) -> str | None:
    """``CPU AMD EPYC; int8: AVX2 (no VNNI), VNNI: no, bf16: no`` from the run's environment."""
    from segdeploy.core.cpu import CpuFeatures

    found = env.get("cpu_features")
    if not found:
        return None
    features = CpuFeatures(found["model"], found["arch"], found["flags"])
    return f"CPU {features.summary()}; MB: the benchmarked file's size"


def _round_range(case) -> str:
    values = case.round_speedups or []
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


def _op_profile_table(profiled) -> Table:
    """Where ONNX Runtime's kernel time goes: the four largest operator types per case."""
    table = Table(title="where ONNX Runtime's kernel time goes", title_justify="left")
    for column in ("model", "prec", "batch", "size", "operators (share of kernel time)"):
        table.add_column(column, justify="left" if column != "batch" else "right")
    for c in profiled:
        top = ", ".join(f"{op.op_type} {op.share:.0%}" for op in c.op_profile[:4])
        rest = sum(op.share for op in c.op_profile[4:])
        top += f", other {rest:.0%}" if rest >= 0.005 else ""
        size = f"{c.height}x{c.width}"
        table.add_row(c.model.removesuffix(".onnx"), c.precision, str(c.batch), size, top)
    return table


def print_evaluate_tables(report) -> None:
    """The models' task metric side by side, then the per-class values, one column per model."""
    console.print(_evaluate_table(report))
    console.print(_evaluate_per_class_table(report))
    console.print(report.description, highlight=False)


def _evaluate_table(report) -> Table:
    """One row per model: format and precision, provider, metric, Δ vs the first, images/s."""
    segmentation = report.task == "segmentation"
    table = Table(title=f"evaluate: {report.metric_name} on {report.split}", title_justify="left")
    table.add_column("model", overflow="fold")
    columns = ["format", "provider", report.metric_name, "Δ vs first (points)"]
    columns += ["pixel acc", "fwIoU"] if segmentation else []
    for column in [*columns, "images/s"]:
        table.add_column(column, justify="right")
    for model in report.models:
        delta = model.delta_points
        row = [
            str(model.path.name),
            f"{model.format} {model.precision}",
            model.provider,
            _fmt(_defined(model.score.metric)),
            "-" if delta is None else f"{delta:+.2f}",
        ]
        if segmentation:
            details = model.score.details
            row += [_fmt(_defined(details["pixel_accuracy"])), _fmt(_defined(details["fw_iou"]))]
        table.add_row(*row, f"{model.images_per_s:.1f}")
    return table


def _evaluate_per_class_table(report) -> Table:
    """IoU (segmentation) or recall (classification) per class, one column per model."""
    value = "IoU" if report.task == "segmentation" else "recall"
    table = Table(title=f"{value} per class", title_justify="left")
    table.add_column("class")
    for model in report.models:
        table.add_column(model.path.name, justify="right", overflow="fold")
    for index, name in enumerate(report.class_names):
        cells = [_fmt(_defined(model.score.per_class[index])) for model in report.models]
        table.add_row(name, *cells)
    return table


def _defined(value: float) -> float | None:
    """``None`` (shown as ``-``) for an undefined value: a class absent from truth and output."""
    return None if value != value else value  # NaN is the one value unequal to itself
