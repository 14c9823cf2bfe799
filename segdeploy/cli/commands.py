"""The ``segdeploy`` command line: thin Typer commands that parse, call the library, and print.

Torch-side modules are imported inside the commands that need them, so that commands built on the
runtime work with the base install (onnxruntime, numpy, pillow) alone.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import atomic_write

app = typer.Typer(
    help="Train vision models, export them to ONNX with a parity gate, and run them anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Rich assumes 80 columns when output is piped or captured; tables of numbers need more.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


def user_errors(command):
    """Turn a :class:`SegdeployError` into one red sentence and exit code 1 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            return command(*args, **kwargs)
        except SegdeployError as err:
            err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]: nothing half-written was left behind")
            raise typer.Exit(130) from None

    return wrapper


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
        per_class = Table(title=f"best epoch {result.best_epoch}: validation", title_justify="left")
        per_class.add_column("class")
        per_class.add_column("IoU", justify="right")
        for name, iou in zip(result.card.class_names, validation["per_class_iou"], strict=True):
            per_class.add_row(name, _fmt(iou))
        per_class.add_section()
        per_class.add_row("[bold]mIoU", f"[bold]{_fmt(validation['miou'])}")
        per_class.add_row("pixel accuracy", _fmt(validation["pixel_accuracy"]))
        per_class.add_row("frequency-weighted IoU", _fmt(validation["fw_iou"]))
        console.print(per_class)
    console.print(
        f"best val {result.metric_name} [bold]{result.best_metric:.4f}[/] at epoch "
        f"{result.best_epoch}/{len(result.history)} in {result.seconds / 60:.1f} min "
        f"-> [bold]{result.checkpoint}[/]"
    )


@user_errors
def train(
    arch: Annotated[str, typer.Argument(help="Registered architecture (see `segdeploy models`).")],
    data: Annotated[str, typer.Option(help="'synthetic' or a data folder.")] = "synthetic",
    variant: Annotated[str, typer.Option(help="Model size: tiny, small or full.")] = "small",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    img_size: Annotated[
        int | None, typer.Option(help="Square training size, a multiple of 16.")
    ] = None,
    lr: float = 2e-3,
    loss: Annotated[str, typer.Option(help="ce, dice or ce+dice (segmentation).")] = "ce+dice",
    class_weights: Annotated[
        str | None, typer.Option(help="'auto' = inverse pixel frequency.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Checkpoint path [default: ARCH.pt].")] = None,
    device: str = "cpu",
    seed: int = 0,
    pretrained: Annotated[
        Path | None, typer.Option(help="Local torchvision-format ImageNet state dict (resnet18).")
    ] = None,
    finetune: Annotated[str, typer.Option(help="Trainable part: fc, layer4 or all.")] = "fc",
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names for a mask folder.")
    ] = None,
    train_samples: Annotated[int, typer.Option(help="Synthetic training images.")] = 512,
    val_samples: Annotated[int, typer.Option(help="Synthetic validation images.")] = 128,
) -> None:
    """Train ARCH and write a self-describing checkpoint (weights + model card)."""
    from segdeploy.train import TrainConfig
    from segdeploy.train import train as run_training

    config = TrainConfig(
        arch=arch,
        data=data,
        variant=variant,
        epochs=epochs,
        batch_size=batch_size,
        img_size=img_size,
        lr=lr,
        loss=loss,
        class_weights=class_weights,
        out=out,
        device=device,
        seed=seed,
        pretrained=pretrained,
        finetune=finetune,
        classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
        train_samples=train_samples,
        val_samples=val_samples,
    )
    print_training_summary(run_training(config, console=console))


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


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise SegdeployError(f"--{what} expects positive integers like 1,8; found '{text}'")
    return values


def _round_range(case) -> str:
    values = case.round_speedups or []
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


def print_bench_table(cases, env) -> None:
    from segdeploy.tools.bench import PEAK_KEYS, share_of_peak

    fp32_peak = env.get(PEAK_KEYS["fp32"])
    int8_peak = env.get(PEAK_KEYS["int8"])
    table = Table(
        title=f"segdeploy bench on {env['provider']} ({env['cpu']}, {env['cpu_count']} cores)",
        title_justify="left",
    )
    # Optional columns only when a case uses them: the table must fit a 140-column terminal.
    bound = any(c.io_binding for c in cases)
    columns = ["model", "prec", "batch", "size", *(["iob"] if bound else [])]
    columns += ["ORT p50", "p90", "p99", "img/s", "torch p50", "speedup"]
    rounds = any(c.round_speedups and len(c.round_speedups) > 1 for c in cases)
    columns += ["rounds"] if rounds else []  # the range of the per-round speedups
    columns += ["GFLOP", "GFLOP/s"]
    columns += ["% peak"] if fp32_peak else []
    for column in columns:
        if column == "model":  # long names wrap onto a second line rather than lose their end
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for c in cases:
        row = [
            c.model.removesuffix(".onnx"),
            c.precision,
            str(c.batch),
            f"{c.height}x{c.width}",
            *(["yes" if c.io_binding else "no"] if bound else []),
            f"{c.onnx.p50_ms:.2f}",
            f"{c.onnx.p90_ms:.2f}",
            f"{c.onnx.p99_ms:.2f}",
            f"{c.onnx.images_per_s:.1f}",
            f"{c.torch.p50_ms:.2f}" if c.torch else "-",
            f"[bold]{c.speedup:.2f}x" if c.speedup else "-",
            *([_round_range(c)] if rounds else []),
            f"{c.gflops:.2f}" if c.gflops is not None else "-",
            f"{c.achieved_gflops_per_s:.1f}" if c.achieved_gflops_per_s else "-",
        ]
        if fp32_peak:
            share = share_of_peak(c, env)
            row.append(f"{100 * share:.0f}%" if share else "-")
        table.add_row(*row)
    console.print(table)
    if fp32_peak:
        console.print(f"matrix-multiply peak measured in this run: {fp32_peak:.0f} GFLOP/s (fp32)")
    profiled = [c for c in cases if c.op_profile]
    if profiled:
        table = Table(title="where ONNX Runtime's kernel time goes", title_justify="left")
        for column in ("model", "prec", "batch", "size", "operators (share of kernel time)"):
            table.add_column(column, justify="left" if column != "batch" else "right")
        for c in profiled:
            top = ", ".join(f"{op.op_type} {op.share:.0%}" for op in c.op_profile[:4])
            rest = sum(op.share for op in c.op_profile[4:])
            top += f", other {rest:.0%}" if rest >= 0.005 else ""
            size = f"{c.height}x{c.width}"
            table.add_row(c.model.removesuffix(".onnx"), c.precision, str(c.batch), size, top)
        console.print(table)
    if fp32_peak and int8_peak:
        console.print(
            f"8-bit matrix-multiply peak (ONNX Runtime MatMulInteger): {int8_peak:.0f} GOP/s, "
            f"so INT8 can gain at most about {int8_peak / fp32_peak:.1f}x over FP32 on this CPU; "
            "int8 rows' % peak is of this one"
        )


@user_errors
def bench(
    models: Annotated[
        list[Path] | None, typer.Argument(help="ONNX exports [default: every exports/*.onnx].")
    ] = None,
    provider: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    batch: Annotated[str, typer.Option(help="Batch sizes, e.g. 1,8.")] = "1",
    size: Annotated[
        str | None, typer.Option(help="HxW list, e.g. 256x256,512x512 [default: per task].")
    ] = None,
    precision: Annotated[str, typer.Option(help="fp32, fp16, int8 (comma-separated).")] = "fp32",
    warmup: Annotated[int, typer.Option(min=0)] = 5,
    iters: Annotated[int | None, typer.Option(min=1, help="Timed runs (else --seconds).")] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Time budget per engine and case.")] = 3.0,
    rounds: Annotated[
        int,
        typer.Option(
            min=1, help="ORT and eager take turns this many times; speedup = median of rounds."
        ),
    ] = 1,
    torch: Annotated[bool, typer.Option("--torch/--no-torch", help="Compare PyTorch.")] = True,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads, 0 = all cores.")] = 0,
    io_binding: Annotated[
        bool, typer.Option(help="Also measure with input and output bound on the device.")
    ] = False,
    profile: Annotated[
        bool, typer.Option(help="Also profile ONNX Runtime: kernel time per operator type.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the JSON here.")
    ] = None,
    results: Annotated[Path, typer.Option(help="Results folder.")] = Path("benchmarks/results"),
) -> None:
    """Latency percentiles and throughput of ONNX Runtime beside PyTorch eager, same run."""
    from segdeploy.runtime.session import usable_providers

    if provider not in ("cpu", "cuda"):
        raise SegdeployError(f"--provider must be cpu or cuda, found '{provider}'")
    if provider not in usable_providers():
        # Exit 2, never a CPU figure labelled CUDA.
        err_console.print(
            f"[bold red]error:[/] --provider {provider} asked for, but ONNX Runtime cannot use "
            f"it on this machine (usable: {', '.join(usable_providers())})"
        )
        raise typer.Exit(2)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from segdeploy.core.artifacts import PRECISIONS, is_variant, parse_shapes
    from segdeploy.tools.bench import (
        BenchConfig,
        draw_chart,
        plan_cases,
        run_bench,
        write_results,
    )

    precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise SegdeployError(f"unknown precision {sorted(unknown)}; choose fp32, fp16, int8")
    paths = list(models or sorted(Path("exports").glob("*.onnx")))
    # x.int8.onnx and x.fp16.onnx are variants that --precision picks, not models of their own.
    paths = [p for p in paths if not is_variant(p)]
    if not paths:
        raise SegdeployError("no models to benchmark: pass ONNX files or export into exports/")
    for path in paths:
        if not path.is_file():
            raise SegdeployError(f"ONNX file {path} does not exist")
    config = BenchConfig(
        models=paths,
        provider=provider,
        batches=_int_list(batch, "batch"),
        sizes=tuple((h, w) for _, h, w in parse_shapes(size)) if size else None,
        precisions=precisions,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        compare_torch=torch,
        threads=threads,
        io_binding=(False, True) if io_binding else (False,),
        profile=profile,
        rounds=rounds,
    )
    planned = plan_cases(config)  # refuses bad sizes and missing variants before any timing
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("measuring the matrix-multiply peak", total=len(planned))
        started = 0

        def starting(case) -> None:  # called before each case: the ones before it are done
            nonlocal started
            bar.update(task, completed=started, description=case.describe())
            started += 1

        cases, env = run_bench(config, progress=starting, planned=planned)
    print_bench_table(cases, env)
    out = write_results(cases, env, results)
    chart = draw_chart(cases, out.with_suffix(".png"))
    if json_path:
        atomic_write(json_path, lambda tmp: tmp.write_text(out.read_text()))
    console.print(f"wrote {out} and {chart}")


@user_errors
def quantize(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    calib: Annotated[str, typer.Option(help="'synthetic' or a data folder.")] = "synthetic",
    samples: Annotated[int, typer.Option(min=1, help="Calibration images.")] = 64,
    eval_samples: Annotated[int, typer.Option(min=1, help="Held-out images for the gate.")] = 64,
    max_drop: Annotated[
        float, typer.Option(help="Largest tolerated mIoU/accuracy drop, in points.")
    ] = 1.0,
    out: Annotated[Path | None, typer.Option(help="[default: MODEL.int8.onnx]")] = None,
) -> None:
    """Static INT8 (QDQ, per-channel) for CPU, kept only if accuracy drops <= --max-drop."""
    from segdeploy.export.quantize import quantize_int8

    with console.status(f"calibrating and quantising {onnx_path}"):
        result = quantize_int8(
            onnx_path, out, calib, samples, eval_samples, max_drop=max_drop / 100
        )
    console.print(
        f"{result.metric}: fp32 {result.fp32:.4f} -> int8 {result.int8:.4f} "
        f"(drop {result.drop_points:.2f} points, allowed {max_drop:.2f}); wrote [bold]{result.path}"
    )


@user_errors
def convert_fp16(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    out: Annotated[Path | None, typer.Option(help="[default: MODEL.fp16.onnx]")] = None,
) -> None:
    """FP16 variant for CUDA (FP32 inputs/outputs kept, fragile ops left in FP32)."""
    from segdeploy.export.fp16 import convert_fp16 as to_fp16

    console.print(f"wrote [bold]{to_fp16(onnx_path, out)}")


@user_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A .pt written by `segdeploy train`.")],
    out: Annotated[
        Path | None, typer.Option(help="Output .onnx [default: exports/<name>.onnx].")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset, 18 or later (dynamo exporter).")] = 18,
    simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = True,
    force: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    shapes: Annotated[
        str | None, typer.Option(help="Parity shapes, e.g. 16x16,48x80,3x64x32.")
    ] = None,
) -> None:
    """Export a checkpoint to ONNX; refuse to finish if ONNX Runtime disagrees with PyTorch."""
    from segdeploy.core.artifacts import parse_shapes
    from segdeploy.export import export_checkpoint

    with console.status(f"exporting {checkpoint} (torch.export + onnxsim + parity)"):
        result = export_checkpoint(
            checkpoint,
            out=out,
            opset=opset,
            do_simplify=simplify,
            force=force,
            shapes=parse_shapes(shapes) if shapes else None,
        )
    print_parity_table(result.report)
    seconds = result.seconds
    console.print(
        f"nodes {result.nodes_before} -> {result.nodes_after} ({result.simplify_note}); "
        f"export {seconds['export']:.1f}s, simplify {seconds['simplify']:.1f}s, "
        f"parity {seconds['parity']:.1f}s"
    )
    console.print(f"wrote [bold]{result.onnx_path}[/] and {result.report_path}")


@user_errors
def verify(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    checkpoint: Annotated[Path, typer.Argument(metavar="MODEL.pt")],
    shapes: Annotated[
        str, typer.Option(help="[B x] H x W, comma-separated.")
    ] = "16x16,48x80,3x64x32",
    provider: Annotated[
        str | None, typer.Option(help="cpu or cuda [default: every usable provider].")
    ] = None,
) -> None:
    """Check an existing export against its checkpoint; exit 1 when they disagree."""
    from segdeploy.core.artifacts import parse_shapes
    from segdeploy.export import verify_export

    report = verify_export(
        onnx_path, checkpoint, parse_shapes(shapes), [provider] if provider else None
    )
    print_parity_table(report)
    if not report.passed:
        raise SegdeployError(f"{onnx_path} does not match {checkpoint} (see the table above)")
    console.print("[green]parity holds")


@user_errors
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
    provider: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per session call.")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads; 0 = all cores.")] = 0,
) -> None:
    """Run MODEL.onnx on images: class-index PNG masks, or predictions.csv for classifiers."""
    # Runtime modules only: predict must work with the base install (no torch, no onnx).
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from segdeploy.runtime import open_model
    from segdeploy.runtime.files import collect_images, plan_outputs, predict_files

    model = open_model(model_path, provider=provider, threads=threads)
    if overlay and model.card.task == "classification":
        err_console.print("--overlay draws segmentation masks; a classifier writes only its CSV")
        overlay = False
    paths = collect_images(inputs, exclude=out)
    plan_outputs(model, paths, out, overlay)  # refuse to overwrite inputs before the bar starts
    console.print(
        f"{model.card.arch} ({model.card.task}, {model.card.num_classes} classes) on "
        f"[bold]{model.provider}[/], {len(paths)} images -> {out}"
    )
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("predicting", total=len(paths))
        summary = predict_files(
            model,
            paths,
            out,
            overlay=overlay,
            batch_size=batch_size,
            progress_callback=lambda path, error: progress.advance(task),
        )
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
    written = "predictions.csv" if summary.task == "classification" else "masks"
    console.print(f"wrote {written} under [bold]{out}[/]")
    for _, reason in summary.failed:
        err_console.print(f"[red]- skipped: {reason}", highlight=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


@user_errors
def demo(
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 10,
    workdir: Annotated[Path, typer.Option(help="Checkpoint, samples, predictions.")] = Path(
        "runs/demo"
    ),
) -> None:
    """The whole pipeline on synthetic data: train, export + parity, predict, bench."""
    from segdeploy.tools.demo import DemoConfig, run_demo

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


@user_errors
def info(
    path: Annotated[Path, typer.Argument(metavar="MODEL.pt|MODEL.onnx")],
) -> None:
    """Show the model card a checkpoint or an ONNX export carries."""
    if path.suffix == ".onnx":
        from segdeploy.runtime import open_model

        model = open_model(path, provider="cpu")
        card, extra = (
            model.card,
            {
                k.removeprefix("segdeploy."): v
                for k, v in model.metadata.items()
                if k.startswith("segdeploy.") and not k.endswith("model_card")
            },
        )
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
        table.add_row(name, spec.task, ", ".join(spec.variants), spec.description)
    console.print(table)


# Registered here, in pipeline order, because Typer lists commands in registration order.
for _name, _command in (
    ("demo", demo),
    ("train", train),
    ("export", export),
    ("verify", verify),
    ("predict", predict),
    ("bench", bench),
    ("quantize", quantize),
    ("convert-fp16", convert_fp16),
    ("info", info),
    ("models", list_architectures),
):
    app.command(_name)(_command)


def main() -> None:
    app()
