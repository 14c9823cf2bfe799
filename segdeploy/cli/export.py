"""``segdeploy export``, ``verify``, ``quantize``, ``convert-fp16`` and ``convert-bf16``: the FP32
export behind the
parity gate, and the reduced-precision variants made from it.

Defaults come from :mod:`segdeploy.export.contract` (opset, parity shapes, calibration and the
accuracy gate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from segdeploy.cli.console import console
from segdeploy.cli.options import Force
from segdeploy.cli.tables import print_parity_table
from segdeploy.core.artifacts import (
    default_export_path,
    end_to_end_path,
    format_shapes,
    parse_shapes,
)
from segdeploy.core.errors import SegdeployError
from segdeploy.core.publish import refuse_existing
from segdeploy.core.targets import DEFAULT_TARGET
from segdeploy.export.contract import (
    DEFAULT_CALIBRATION,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_EVAL_SAMPLES,
    DEFAULT_GATE_PROVIDER,
    DEFAULT_MAX_FALLBACK,
    DEFAULT_MAX_SECONDS,
    DEFAULT_MIN_SPEEDUP,
    DEFAULT_OPSET,
    DEFAULT_PARITY_SHAPES,
    MAX_METRIC_DROP,
)

# Parity shapes are size multiples of the model (1, 3x5 and 4x2); shown for a multiple of 16.
PARITY_SHAPES = format_shapes(DEFAULT_PARITY_SHAPES) + " for a size multiple of 16"


# The accuracy gate's options, shared by quantize, convert-fp16 and convert-bf16.
EvalSamples = Annotated[
    int, typer.Option(min=1, help="Held-out images for the gate (validation split).")
]
GradingData = Annotated[
    str | None,
    typer.Option(
        help="'synthetic' or a data folder; its validation split grades \\[default: the data "
        "the card says the model was trained on]."
    ),
]
MaxDropPoints = Annotated[
    float, typer.Option(help="Largest tolerated mIoU/accuracy drop, in points.")
]


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A .pt written by `segdeploy train`.")],
    out: Annotated[
        Path | None, typer.Option(help="Output .onnx \\[default: exports/<name>.onnx].")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="The runtime the file must open in: ort>=1.16, ort-web, openvino>=2025.0, "
            "ort (the installed onnxruntime), or ort-mobile (also writes the .ort file of "
            "mobile and minimal builds); the file is checked there "
            f"\\[default: {DEFAULT_TARGET}, the oldest supported onnxruntime].",
        ),
    ] = None,
    opset: Annotated[
        int, typer.Option(help="ONNX opset, 18 or later (dynamo exporter).")
    ] = DEFAULT_OPSET,
    simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = True,
    force: Force = False,
    shapes: Annotated[
        str | None, typer.Option(help=f"Parity shapes, [B x] H x W \\[default: {PARITY_SHAPES}].")
    ] = None,
    end_to_end: Annotated[
        bool,
        typer.Option(
            "--end-to-end",
            help="Also write <name>.e2e.onnx: uint8 image in, class mask out, pre- and "
            "post-processing inside the graph (checked against predict).",
        ),
    ] = False,
    batch_input: Annotated[
        bool,
        typer.Option(
            "--batch-input",
            help="With --end-to-end: the graph takes (N, H, W, C), N images of one size, "
            "instead of one (H, W, C) image.",
        ),
    ] = False,
) -> None:
    """Export a checkpoint to ONNX; refuse to finish if ONNX Runtime disagrees with PyTorch."""
    from segdeploy.export import export_checkpoint

    if batch_input and not end_to_end:
        raise SegdeployError("--batch-input shapes the end-to-end graph: add --end-to-end")
    if end_to_end:  # before a minute of exporting, not after
        refuse_existing(end_to_end_path(out or default_export_path(checkpoint)), force)

    with console.status(f"exporting {checkpoint} (torch.export + onnxsim + parity)"):
        result = export_checkpoint(
            checkpoint,
            out=out,
            opset=opset,
            do_simplify=simplify,
            force=force,
            shapes=parse_shapes(shapes) if shapes else None,
            target=target,
        )
    _print_export(result)
    if end_to_end:
        _export_end_to_end(result.onnx_path, batch_input)


def _print_export(result) -> None:
    """The parity table, where the target was checked, node counts and timings, the files."""
    print_parity_table(result.report)
    target = result.report.context["target"]
    console.print(f"target {target['target']}: checked on {target['checked_on']}")
    seconds = result.seconds
    console.print(
        f"nodes {result.nodes_before} -> {result.nodes_after} ({result.simplify_note}); "
        f"export {seconds['export']:.1f}s, simplify {seconds['simplify']:.1f}s, "
        f"parity {seconds['parity']:.1f}s"
    )
    console.print(f"wrote [bold]{result.onnx_path}[/] and {result.report_path}")
    mobile = result.report.context.get("mobile")
    if mobile:
        parity = mobile["parity_ort_vs_onnx"]
        console.print(
            f"wrote {', '.join(mobile['files'])} beside it (.ort vs .onnx: max abs "
            f"{parity['max_abs']:.3g} on {len(parity['shapes'])} shapes)"
        )


def _export_end_to_end(onnx_path: Path, batch: bool) -> None:
    """The end-to-end graph beside a fresh export, and one line of its parity gate."""
    from segdeploy.export.end_to_end import export_end_to_end

    with console.status(f"building and checking the end-to-end graph of {onnx_path}"):
        # Checked before exporting: an x.e2e.onnx still there was made from the x.onnx that
        # this export (with --force) just replaced.
        result = export_end_to_end(onnx_path, force=True, batch=batch)
    report = result.report
    console.print(
        f"end-to-end graph: {report.agreement:.4%} of {report.task} results equal predict's on "
        f"{len(report.images)} images (score error {report.score_error:.1g}); "
        f"wrote [bold]{result.path}[/]"
    )


def verify(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="[MODEL.pt]",
            help="Also run the parity gate against this checkpoint; without it, check the "
            "file's recorded hashes (its own, its parent's).",
        ),
    ] = None,
    shapes: Annotated[
        str | None, typer.Option(help=f"[B x] H x W, comma-separated \\[default: {PARITY_SHAPES}].")
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            help="cpu, cuda or openvino \\[default: every usable one, OpenVINO if installed]."
        ),
    ] = None,
    signature: Annotated[
        bool,
        typer.Option(
            "--signature",
            help="Also check the signature MODEL.onnx.sig (segdeploy sign) with --public-key.",
        ),
    ] = False,
    public_key: Annotated[
        Path | None, typer.Option(metavar="KEY", help="PEM public key for --signature.")
    ] = None,
) -> None:
    """Check a file's recorded hashes (and with --signature its signature), or (with MODEL.pt)
    an export against its checkpoint."""
    if signature:
        _verify_signature(onnx_path, public_key)
    if checkpoint is None:
        from segdeploy.core.integrity import verify_file

        console.print(verify_file(onnx_path).sentence(), highlight=False)
        return
    from segdeploy.export import verify_export

    report = verify_export(
        onnx_path,
        checkpoint,
        parse_shapes(shapes) if shapes else None,
        [provider] if provider else None,
    )
    print_parity_table(report)
    if not report.passed:
        raise SegdeployError(f"{onnx_path} does not match {checkpoint} (see the table above)")
    console.print("[green]parity holds")


def _verify_signature(onnx_path: Path, public_key: Path | None) -> None:
    if public_key is None:
        raise SegdeployError(
            f"verify --signature {onnx_path}: expected --public-key KEY (the PEM public key to "
            "trust), found none"
        )
    from segdeploy.core.signing import verify_signature

    console.print(verify_signature(onnx_path, public_key), highlight=False, soft_wrap=True)


def quantize(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    calib: Annotated[
        str | None,
        typer.Option(
            help="'synthetic' or a data folder: its training split calibrates, its validation "
            "split grades \\[default: the data the card says the model was trained on]."
        ),
    ] = DEFAULT_CALIBRATION,
    samples: Annotated[
        int, typer.Option(min=1, help="Calibration images (training split).")
    ] = DEFAULT_CALIBRATION_SAMPLES,
    eval_samples: EvalSamples = DEFAULT_EVAL_SAMPLES,
    max_drop: MaxDropPoints = 100 * MAX_METRIC_DROP["int8"],
    out: Annotated[Path | None, typer.Option(help="\\[default: MODEL.int8.onnx]")] = None,
    calibration: Annotated[
        str, typer.Option(help="minmax, entropy, percentile, or auto (each until one passes).")
    ] = DEFAULT_CALIBRATION_METHOD,
    max_fallback: Annotated[
        int,
        typer.Option(
            min=0,
            help="When full INT8 fails: keep up to N of its worst nodes (ranked on training "
            "images) in FP32, re-gating after each.",
        ),
    ] = DEFAULT_MAX_FALLBACK,
    max_seconds: Annotated[
        float, typer.Option(help="Wall-time bound of the fallback loop.")
    ] = DEFAULT_MAX_SECONDS,
    min_speedup: Annotated[
        float,
        typer.Option(
            help="Stop the loop when a file is less than this many times faster than FP32."
        ),
    ] = DEFAULT_MIN_SPEEDUP,
    force: Force = False,
) -> None:
    """Static INT8 (QDQ, per-channel) for CPU, kept only if it passes the accuracy gate."""
    from segdeploy.cli.divergence import print_fallback
    from segdeploy.export.quantize import quantize_int8

    with console.status(f"calibrating, quantising and gating {onnx_path}"):
        result = quantize_int8(
            onnx_path,
            out,
            calib,
            samples,
            eval_samples,
            max_drop=max_drop / 100,
            method=calibration,
            max_fallback=max_fallback,
            max_seconds=max_seconds,
            min_speedup=min_speedup,
            force=force,
        )
    _print_gate(result)
    print_fallback(result)


def convert_fp16(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    data: GradingData = DEFAULT_CALIBRATION,
    eval_samples: EvalSamples = DEFAULT_EVAL_SAMPLES,
    max_drop: MaxDropPoints = 100 * MAX_METRIC_DROP["fp16"],
    provider: Annotated[
        str, typer.Option(help="Where the gate runs: cpu (FP16 mostly computed in FP32) or cuda.")
    ] = DEFAULT_GATE_PROVIDER,
    out: Annotated[Path | None, typer.Option(help="\\[default: MODEL.fp16.onnx]")] = None,
    force: Force = False,
) -> None:
    """FP16 variant for CUDA (FP32 inputs/outputs kept, fragile ops left in FP32), gated."""
    from segdeploy.export.fp16 import convert_fp16 as to_fp16

    with console.status(f"converting and gating {onnx_path}"):
        result = to_fp16(
            onnx_path,
            out,
            data,
            eval_samples,
            max_drop=max_drop / 100,
            provider=provider,
            force=force,
        )
    _print_gate(result)


def convert_bf16(
    onnx_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx")],
    data: GradingData = DEFAULT_CALIBRATION,
    eval_samples: EvalSamples = DEFAULT_EVAL_SAMPLES,
    max_drop: MaxDropPoints = 100 * MAX_METRIC_DROP["bf16"],
    out: Annotated[Path | None, typer.Option(help="\\[default: MODEL.bf16.onnx]")] = None,
    force: Force = False,
) -> None:
    """bf16 variant for OpenVINO on CPUs with AVX512-BF16/AMX (about 2x FP32), gated there."""
    from segdeploy.export.bf16 import convert_bf16 as to_bf16

    with console.status(f"gating {onnx_path} in bf16 on OpenVINO"):
        result = to_bf16(onnx_path, out, data, eval_samples, max_drop=max_drop / 100, force=force)
    _print_gate(result)


def _print_gate(result) -> None:
    """One line of the gate's numbers, then where the variant and its report went."""
    from segdeploy.core.artifacts import gate_report_path

    stderr = f" ± {100 * result.drop_stderr:.2f}" if result.drop_stderr is not None else ""
    agreement = result.argmax_agreement
    console.print(
        f"{result.metric} on {len(result.images)} held-out images ({result.provider}): "
        f"fp32 {result.fp32:.4f} -> {result.precision} {result.variant:.4f} "
        f"(drop {result.drop_points:.2f}{stderr} points, allowed {100 * result.max_drop:.2f}); "
        f"argmax agreement {agreement:.2%}"
    )
    console.print(f"graded on {result.data}")
    if result.calibration_data:
        console.print(f"calibrated on {result.calibration_data}")
    console.print(f"wrote [bold]{result.path}[/] and {gate_report_path(result.path)}")
