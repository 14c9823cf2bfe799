"""``segdeploy serve``: a real Triton Inference Server answering with segdeploy's runtime.

The server is the ``tritonserver`` binary that ``nvidia-pytriton`` ships, with its Python backend;
each request is answered by :meth:`SegmentationModel.predict_batch` (or the classifier's) of the
in-process runtime, so the server's masks are the runtime's masks.

Model signature (KServe v2 names); a request sends one of the two inputs::

    input   image          UINT8  (batch, height, width, 3)  decoded RGB pixels
    input   encoded_image  BYTES  (batch, 1)                 image files (PNG, JPEG, ...)
    output  mask           UINT8  (batch, height, width)     segmentation: class indices
    output  probabilities  FP32   (batch, K)                 classification
    output  label          BYTES  (batch, 1)                 classification: class name

Files are decoded by the same Pillow path as ``predict`` on a file, so the masks are equal bit for
bit. Triton itself rejects a wrong dtype, rank or input name before the model sees the request;
this module answers an image over ``max_side``, another channel count, data that is no image
file, or both inputs at once, with HTTP 400 and one sentence for that request alone (the other
requests of its dynamic batch get their answers), and keeps serving. PyTriton 0.7 cannot do that
by itself: see :data:`_PROXY_SHIM`. Triton's dynamic batcher gathers concurrent requests of one
shape (``max_batch``); the runtime then runs same-size images in one session call.

Three facts about ``nvidia-pytriton`` 0.7.0 on this kind of machine (found while building this):
its Python backend stub links whichever ``libpython3.X.so.1.0`` the dynamic loader finds first
(here Debian's 3.11.2 under ``/lib``, while the interpreter is pyenv's 3.11.7, whose
``multiprocessing`` then fails inside the stub), so :func:`_prefer_own_libpython` puts the running
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH``; it pins ``numpy<2``: with numpy 2 the
server answers with empty tensors, so :func:`check_serving_stack` refuses to start under numpy 2;
and an exception raised by an infer function fails its whole dynamic batch with HTTP 500 and a
traceback as the message, which :data:`_PROXY_SHIM` replaces with per-request 400 answers.
"""

from __future__ import annotations

import io
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
from PIL import Image, UnidentifiedImageError

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.images import load_image
from segdeploy.runtime.model import ClassificationModel, SegmentationModel, open_model

#: Longest image side the server takes unless told (larger requests get an error response).
DEFAULT_MAX_SIDE = 4096
DEFAULT_PORT = 8000
INSTALL_HINT = "pip install 'segdeploy[serve]' (nvidia-pytriton, which needs numpy<2)"
#: The two ways to send images: decoded pixels, or the bytes of an image file.
INPUTS = ("image", "encoded_image")


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


#: Reserved response key: an infer function answers a bad request with its sentence under this
#: key, and the proxy shim (:data:`_PROXY_SHIM`) turns it into that request's own 400 response.
ERROR_KEY = "segdeploy_error"

# PyTriton 0.7 answers every exception of an infer function with a 500 carrying a traceback, for
# the whole dynamic batch: its proxy (the ``model.py`` that Triton's Python backend loads) has no
# way to return one request's error. This module, installed as ``model.py`` next to PyTriton's own
# (renamed ``pytriton_proxy.py``), wraps the proxy's ``_wrap_response`` so that a response dict
# holding only ERROR_KEY becomes ``InferenceResponse(error=TritonError(..., INVALID_ARG))``: a 400
# for that request alone, with our sentence as the message. It also answers a request with a
# zero-size input itself: PyTriton's shared-memory transfer fails on those (``memoryview: cannot
# cast view with zeros in shape``) with a 500 and a traceback before any infer function runs.
_PROXY_SHIM = f'''"""PyTriton's proxy with per-request client errors (from segdeploy serve)."""

import triton_python_backend_utils as pb_utils

from . import pytriton_proxy as _proxy

_wrap_data = _proxy._wrap_response


def _client_error(message):
    error = pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    return pb_utils.InferenceResponse(error=error)


def _wrap_response(response, requested_output_names, model_outputs_dict):
    if response.data is not None and "{ERROR_KEY}" in response.data:
        message = response.data["{ERROR_KEY}"].item(0)
        return _client_error(message.decode() if isinstance(message, bytes) else str(message))
    return _wrap_data(response, requested_output_names, model_outputs_dict)


_proxy._wrap_response = _wrap_response


def _empty_input(request):
    for tensor in request.inputs():
        shape = list(tensor.shape())
        if 0 in shape:
            return f"{{tensor.name()}}: expected a non-empty input, found shape {{shape}}"
    return None


class TritonPythonModel(_proxy.TritonPythonModel):
    def execute(self, requests):
        empty = [_empty_input(request) for request in requests]
        if not any(empty):
            return super().execute(requests)
        rest = [request for request, why in zip(requests, empty) if why is None]
        answers = iter(super().execute(rest) if rest else [])
        return [_client_error(why) if why else next(answers) for why in empty]
'''


def _install_client_errors(model: Any) -> None:
    """Make the proxy files PyTriton sends for ``model`` (a ``pytriton.models.model.Model``)
    include :data:`_PROXY_SHIM` as ``model.py``; refuse to start when PyTriton's proxy no longer
    has the function the shim wraps."""
    original = model.get_proxy_model_files

    def files() -> dict[str, bytes]:
        found = dict(original())
        key = f"file:{model.model_version}/model.py"
        proxy = found.get(key, b"")
        if b"def _wrap_response(" not in proxy or b"class TritonPythonModel" not in proxy:
            raise SegdeployError(
                "segdeploy serve: this nvidia-pytriton's proxy model.py has no _wrap_response "
                f"to answer bad requests with a 400; install nvidia-pytriton 0.7: {INSTALL_HINT}"
            )
        found[f"file:{model.model_version}/pytriton_proxy.py"] = proxy
        found[key] = _PROXY_SHIM.encode()
        return found

    model.get_proxy_model_files = files


def _check_side(height: int, width: int, max_side: int, name: str) -> None:
    if max(height, width) > max_side:
        raise DataError(
            f"{name}: {height}x{width} (height x width) is over the server's limit of "
            f"{max_side} pixels a side"
        )


def _arrays(batch: np.ndarray, max_side: int) -> list[np.ndarray]:
    """``image`` of one request, ``(B, H, W, C)`` uint8 (Triton has checked dtype and rank)."""
    height, width, channels = batch.shape[1:]
    if channels != 3:
        raise DataError(
            f"image: expected 3 channels (RGB) in (batch, height, width, 3), found {channels}"
        )
    _check_side(height, width, max_side, "image")
    if height == 0 or width == 0:
        raise DataError(f"image: expected a non-empty image, found {height}x{width}")
    return list(batch)


def decode_image(blob: bytes, max_side: int = DEFAULT_MAX_SIDE, channels: int = 3) -> np.ndarray:
    """The pixels of an encoded image file (PNG, JPEG, any format Pillow reads), decoded the way
    :func:`segdeploy.core.images.load_image` decodes a file, so a served mask equals the in-process
    ``predict`` of the same file; the size is checked from the header before anything is decoded.

    Raises:
        DataError: data that is no image, truncated pixel data, or an image over ``max_side``.
    """
    try:
        image = Image.open(io.BytesIO(blob))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise DataError(
            f"encoded_image: expected the bytes of an image file (PNG, JPEG, ...), found "
            f"{len(blob)} bytes that Pillow cannot identify as an image"
        ) from None
    with image:
        _check_side(image.height, image.width, max_side, "encoded_image")
        try:
            image.load()
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error...
            raise DataError(
                f"encoded_image: expected a complete image file, found truncated or corrupt "
                f"pixel data ({type(err).__name__}: {err})"
            ) from None
        return load_image(image, channels=channels)


def _request_images(request: Any, max_side: int, channels: int) -> list[np.ndarray]:
    """The images of one request: the ``image`` array or the ``encoded_image`` files."""
    given = [name for name in INPUTS if name in request]
    if len(given) != 1:
        raise DataError(
            "send one input: 'image' (uint8, (batch, height, width, 3)) or 'encoded_image' "
            f"(bytes of a PNG or JPEG file, (batch, 1)); found {' and '.join(given) or 'neither'}"
        )
    if given[0] == "image":
        return _arrays(request["image"], max_side)
    return [decode_image(blob, max_side, channels) for blob in request["encoded_image"].reshape(-1)]


def _images_or_error(request: Any, max_side: int, channels: int) -> list[np.ndarray] | DataError:
    try:
        return _request_images(request, max_side, channels)
    except DataError as err:
        return err


def make_infer(model: SegmentationModel | ClassificationModel, max_side: int) -> Callable:
    """The function Triton calls with a batch of requests: one response dict per request.

    A bad request gets its own error response (a 400 with one sentence, through the proxy shim);
    the good requests of the same dynamic batch are answered as usual, their images run through
    ``predict_batch`` together.
    """
    segmentation = isinstance(model, SegmentationModel)
    channels = model.card.in_channels

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        parsed = [_images_or_error(request, max_side, channels) for request in requests]
        flat = [image for item in parsed if isinstance(item, list) for image in item]
        results = iter(model.predict_batch(flat) if flat else [])
        responses = []
        for item in parsed:
            if isinstance(item, DataError):
                responses.append(error_response(str(item)))
            else:
                responses.append(_response([next(results) for _ in item], segmentation))
        return responses

    return infer


def error_response(message: str) -> dict[str, np.ndarray]:
    """The response dict that the proxy shim answers with a 400 carrying ``message``."""
    return {ERROR_KEY: np.array([message.encode()], dtype=np.object_)}


def _response(answers: list[Any], segmentation: bool) -> dict[str, np.ndarray]:
    if segmentation:
        return {"mask": np.stack(answers).astype(np.uint8)}
    labels = np.array([[label.encode()] for label, _ in answers], dtype=np.object_)
    probabilities = np.stack([p for _, p in answers]).astype(np.float32)
    return {"label": labels, "probabilities": probabilities}


def _tensors(model: SegmentationModel | ClassificationModel) -> tuple[list, list]:
    from pytriton.model_config import Tensor

    # Both optional: a request sends one of them (checked per request, answered with a 400).
    inputs = [
        Tensor(name="image", dtype=np.uint8, shape=(-1, -1, -1), optional=True),
        Tensor(name="encoded_image", dtype=np.bytes_, shape=(1,), optional=True),
    ]
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
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

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
    # Start Triton in run(), not on entering: bind() then only records the model, and the proxy
    # files are read when run() loads it, after _install_client_errors has wrapped them.
    later = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=False)
    with Triton(config=config, triton_lifecycle_policy=later) as triton:
        triton.bind(
            model_name=options.name or Path(model_path).stem,
            infer_func=[infer] * options.instances,
            inputs=inputs,
            outputs=outputs,
            config=ModelConfig(
                max_batch_size=options.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=options.max_queue_delay_us),
            ),
            # Not strict: a bad request's response holds ERROR_KEY, which is no declared output.
            strict=False,
        )
        for bound in triton._model_manager.models:  # PyTriton 0.7 has no public accessor
            _install_client_errors(bound)
        triton.run()  # returns once the server and the model are ready
        yield triton
