"""``segdeploy serve`` (a Triton server answering with the runtime) and ``segdeploy triton-repo``
(a model repository for Triton's native onnxruntime backend).

Torch-free, like ``predict``: both read the export through ONNX Runtime only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from segdeploy.cli.console import console
from segdeploy.serve.triton_repo import INSTANCE_KINDS, TritonRepoOptions
from segdeploy.serve.triton_server import ServeOptions

_DEFAULTS = TritonRepoOptions()
_SERVE = ServeOptions()


def serve(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="An exported model.")],
    port: Annotated[int, typer.Option(min=1, help="HTTP port (KServe v2).")] = _SERVE.port,
    grpc_port: Annotated[
        int | None, typer.Option(min=1, help="gRPC port; default: --port + 1.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _SERVE.host,
    name: Annotated[
        str | None, typer.Option(help="Model name on the server; default: the file's stem.")
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Largest batch Triton's dynamic batcher forms.")
    ] = _SERVE.max_batch,
    instances: Annotated[
        int, typer.Option(min=1, help="Model instances answering batches.")
    ] = _SERVE.instances,
    max_side: Annotated[
        int, typer.Option(min=1, help="Longest image side accepted.")
    ] = _SERVE.max_side,
    provider: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = _SERVE.provider,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads; 0 = all cores.")] = 0,
) -> None:
    """Serve MODEL.onnx on Triton Inference Server (nvidia-pytriton) until Ctrl-C.

    Clients send either an RGB uint8 array "image" (batch, height, width, 3) or the bytes of
    image files (PNG, JPEG, ...) as "encoded_image" (batch, 1), and get "mask" (batch, height,
    width) uint8, or "label" and "probabilities" from a classifier. A bad request gets HTTP 400
    with one sentence; the other requests of its batch are answered as usual.
    """
    from segdeploy.serve.triton_server import serve_until_stopped, triton_server

    options = ServeOptions(
        port=port,
        grpc_port=grpc_port,
        host=host,
        name=name,
        max_batch=max_batch,
        instances=instances,
        max_side=max_side,
        provider=provider,
        threads=threads,
    )
    with triton_server(model_path, options) as triton:
        console.print(
            f"serving [bold]{escape(name or model_path.stem)}[/] on http://{host}:{port} "
            f"(gRPC {options.grpc_port or port + 1}); ready; Ctrl-C stops",
            highlight=False,
        )
        serve_until_stopped(triton)
        console.print("stopping")
    console.print("stopped")


def triton_repo(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL.onnx", help="An exported model.")],
    repo_dir: Annotated[
        Path, typer.Argument(metavar="DIR", help="The model repository (created when missing).")
    ],
    name: Annotated[
        str | None, typer.Option(help="Model name on the server; default: the file's stem.")
    ] = None,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Largest batch dynamic batching forms.")
    ] = _DEFAULTS.max_batch_size,
    instances: Annotated[
        int, typer.Option(min=1, help="Model instances per device.")
    ] = _DEFAULTS.instances,
    kind: Annotated[
        str, typer.Option(help=f"Instance kind: {', '.join(INSTANCE_KINDS)}.")
    ] = _DEFAULTS.kind,
    queue_delay_us: Annotated[
        int, typer.Option(min=0, help="Microseconds the batcher waits to fill a batch.")
    ] = _DEFAULTS.max_queue_delay_us,
    warmup: Annotated[
        int, typer.Option(min=1, help="Side of the square zero image each instance warms up on.")
    ] = _DEFAULTS.warmup_size[0],
    force: Annotated[bool, typer.Option(help="Replace DIR/<name> when it exists.")] = False,
) -> None:
    """Write DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx for Triton's onnxruntime backend.

    The config comes from the model card and the graph: -1 for height and width, dynamic
    batching, instance group, warmup and cuDNN HEURISTIC search; it is checked against
    tritonclient's ModelConfig protobuf when tritonclient is installed.
    """
    from segdeploy.serve.triton_repo import write_triton_repo

    options = TritonRepoOptions(
        name=name,
        max_batch_size=max_batch,
        instances=instances,
        kind=kind,
        max_queue_delay_us=queue_delay_us,
        warmup_size=(warmup, warmup),
    )
    validate = _tritonclient_installed()
    repo = write_triton_repo(model_path, repo_dir, options, overwrite=force, validate=validate)
    checked = (
        "checked with tritonclient's ModelConfig" if validate else "not checked (no tritonclient)"
    )
    console.print(f"wrote [bold]{escape(str(repo.model_dir))}[/] ({checked})")
    console.print(
        f"serve it with: tritonserver --model-repository {escape(str(Path(repo_dir).resolve()))}"
    )


def _tritonclient_installed() -> bool:
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True
