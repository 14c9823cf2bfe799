"""``segdeploy serve``: a real Triton Inference Server answering with segdeploy's runtime.

The server is the ``tritonserver`` binary that ``nvidia-pytriton`` ships, with its Python backend;
each request is answered by :meth:`SegmentationModel.predict_batch` (or the classifier's) of the
in-process runtime, so the server's masks are the runtime's masks.

Model signature (KServe v2 names)::

    input   image          UINT8  (batch, height, width, 3)  decoded RGB pixels
    output  mask           UINT8  (batch, height, width)     segmentation: class indices
    output  probabilities  FP32   (batch, K)                 classification
    output  label          BYTES  (batch, 1)                 classification: class name

Triton rejects a request whose dtype or rank does not fit before it reaches the model; this module
rejects images larger than ``max_side`` or with another channel count, with a message, and keeps
serving. Triton's dynamic batcher gathers concurrent requests (``max_batch``); the runtime then
runs same-size images in one session call.

Two facts about ``nvidia-pytriton`` 0.7.0 on this kind of machine (found while building this):
its Python backend stub links whichever ``libpython3.X.so.1.0`` the dynamic loader finds first
(here Debian's 3.11.2 under ``/lib``, while the interpreter is pyenv's 3.11.7, whose
``multiprocessing`` then fails inside the stub), so :func:`_prefer_own_libpython` puts the running
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH``; and it pins ``numpy<2``: with numpy 2 the
server answers with empty tensors, so :func:`check_serving_stack` refuses to start under numpy 2.
"""

from __future__ import annotations

import os
import signal
import socket
import sysconfig
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.core.errors import SegdeployError
from segdeploy.runtime.model import ClassificationModel, SegmentationModel, open_model

#: Longest image side the server takes unless told (larger requests get an error response).
DEFAULT_MAX_SIDE = 4096
DEFAULT_PORT = 8000
INSTALL_HINT = "pip install 'segdeploy[serve]' (nvidia-pytriton, which needs numpy<2)"


@dataclass(frozen=True)
class ServeOptions:
    """How ``segdeploy serve`` runs.

    Attributes:
        port: HTTP port (KServe v2); gRPC listens on ``grpc_port`` (default ``port + 1``).
        host: address to bind; loopback unless told.
        max_batch: the largest batch Triton's dynamic batcher forms.
        instances: model instances (threads answering batches; they share one ONNX session).
        max_queue_delay_us: how long the batcher waits to fill a batch.
        max_side: longest image side accepted.
        name: the model's name on the server; default: the ONNX file's stem.
        provider, threads: as for :func:`segdeploy.runtime.open_model`.
    """

    port: int = DEFAULT_PORT
    grpc_port: int | None = None
    host: str = "127.0.0.1"
    max_batch: int = 8
    instances: int = 1
    max_queue_delay_us: int = 2000
    max_side: int = DEFAULT_MAX_SIDE
    name: str | None = None
    provider: str = "cpu"
    threads: int = 0


def check_serving_stack() -> None:
    """Raise a sentence when nvidia-pytriton is missing or cannot answer correctly here."""
    try:
        import pytriton.triton  # noqa: F401
    except ImportError:
        raise SegdeployError(f"segdeploy serve needs nvidia-pytriton: {INSTALL_HINT}") from None
    if int(np.__version__.split(".")[0]) >= 2:
        raise SegdeployError(
            f"segdeploy serve: nvidia-pytriton 0.7 needs numpy<2 (it pins numpy<2.0.0; with numpy "
            f"{np.__version__} its server answers with empty tensors); use an environment with "
            f"numpy 1.x: {INSTALL_HINT}"
        )


def _prefer_own_libpython() -> None:
    """Put this interpreter's libpython first for the Python backend stub Triton starts."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and any(Path(libdir).glob("libpython3*.so.1.0")):
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if libdir not in current.split(":"):
            os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, current) if p)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for tests and ``--port 0``)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _images_of(request: Any, max_side: int) -> list[np.ndarray]:
    batch = request["image"]  # (B, H, W, 3) uint8: Triton has checked dtype and rank
    height, width, channels = batch.shape[1:]
    if channels != 3:
        raise ValueError(f"image: expected 3 channels (RGB), found {channels}")
    if max(height, width) > max_side:
        raise ValueError(
            f"image: {height}x{width} is over the server's limit of {max_side} pixels a side"
        )
    return list(batch)


def make_infer(model: SegmentationModel | ClassificationModel, max_side: int) -> Callable:
    """The function Triton calls with a batch of requests: one response dict per request."""
    segmentation = isinstance(model, SegmentationModel)

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        per_request = [_images_of(request, max_side) for request in requests]
        flat = [image for images in per_request for image in images]
        results = iter(model.predict_batch(flat))
        responses = []
        for images in per_request:
            answers = [next(results) for _ in images]
            responses.append(_response(answers, segmentation))
        return responses

    return infer


def _response(answers: list[Any], segmentation: bool) -> dict[str, np.ndarray]:
    if segmentation:
        return {"mask": np.stack(answers).astype(np.uint8)}
    labels = np.array([[label.encode()] for label, _ in answers], dtype=np.object_)
    probabilities = np.stack([p for _, p in answers]).astype(np.float32)
    return {"label": labels, "probabilities": probabilities}


def _tensors(model: SegmentationModel | ClassificationModel) -> tuple[list, list]:
    from pytriton.model_config import Tensor

    inputs = [Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1))]
    if isinstance(model, SegmentationModel):
        return inputs, [Tensor(name="mask", dtype=np.uint8, shape=(-1, -1))]
    classes = model.card.num_classes
    outputs = [
        Tensor(name="label", dtype=np.bytes_, shape=(1,)),
        Tensor(name="probabilities", dtype=np.float32, shape=(classes,)),
    ]
    return inputs, outputs


def serve_until_stopped(triton: Any, poll_s: float = 1.0) -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM, or until the server dies; then return so that
    leaving :func:`triton_server` stops it. A flag set by our own handler rather than
    pytriton's ``serve()``: a KeyboardInterrupt raised in the middle of its shutdown left the
    server hanging in one run out of two here."""
    stop = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(poll_s) and triton.is_alive():
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@contextmanager
def triton_server(model_path: str | Path, options: ServeOptions | None = None) -> Iterator[Any]:
    """Start Triton with the model loaded and ready; stop it on leaving the block.

    Yields the ``pytriton.triton.Triton`` object (``.serve()`` blocks until Ctrl-C).

    Raises:
        SegdeployError: nvidia-pytriton missing or unusable here, or a model that cannot open.
    """
    check_serving_stack()
    options = options or ServeOptions()
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    model = open_model(model_path, provider=options.provider, threads=options.threads)
    _prefer_own_libpython()
    config = TritonConfig(
        http_address=options.host,
        http_port=options.port,
        grpc_address=options.host,
        grpc_port=options.grpc_port or options.port + 1,
        allow_metrics=False,
        exit_timeout_secs=5,
    )
    inputs, outputs = _tensors(model)
    infer = make_infer(model, options.max_side)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=options.name or Path(model_path).stem,
            infer_func=[infer] * options.instances,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=options.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.run()  # returns once the server and the model are ready
        yield triton
