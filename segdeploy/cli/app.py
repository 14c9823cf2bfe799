"""The Typer application: every command, in pipeline order, through the one error path.

Torch-side modules are imported inside the commands that need them, so that commands built on the
runtime work with the base install (onnxruntime, numpy, pillow) alone.
"""

from __future__ import annotations

import typer

from segdeploy.cli.bench import bench
from segdeploy.cli.demo import demo
from segdeploy.cli.divergence import inspect_divergence
from segdeploy.cli.errors import one_error_path
from segdeploy.cli.evaluate import evaluate
from segdeploy.cli.export import convert_bf16, convert_fp16, export, quantize, verify
from segdeploy.cli.predict import info, list_architectures, predict
from segdeploy.cli.serve import serve, triton_repo
from segdeploy.cli.sign import sign
from segdeploy.cli.train import train

app = typer.Typer(
    help="Train vision models, export them to ONNX with a parity gate, and run them anywhere.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Registered here, in pipeline order, because Typer lists commands in registration order.
COMMANDS = {
    "demo": demo,
    "train": train,
    "export": export,
    "verify": verify,
    "sign": sign,
    "evaluate": evaluate,
    "predict": predict,
    "bench": bench,
    "quantize": quantize,
    "convert-fp16": convert_fp16,
    "convert-bf16": convert_bf16,
    "inspect-divergence": inspect_divergence,
    "serve": serve,
    "triton-repo": triton_repo,
    "info": info,
    "models": list_architectures,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(one_error_path(_name, _command))


def main() -> None:
    """The ``segdeploy`` console script."""
    app()
