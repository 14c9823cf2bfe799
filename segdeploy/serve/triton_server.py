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
this module answers an image over ``max_side``, another channel count, an empty input, data that
is no whole image file, files of different sizes in one request (the answer is one mask tensor),
or both inputs at once, with HTTP 400 and one sentence for that request alone (the other requests
of its dynamic batch get their answers), and keeps serving; any other failure on a request is a
500 with one sentence for that request alone (the traceback goes to the server's log, never to a
client). PyTriton 0.7 cannot do that by itself: see :data:`_PROXY_SHIM`. Triton's dynamic
batcher gathers concurrent requests of one shape (``max_batch``); the runtime then runs same-size
images in one session call.

Three facts about ``nvidia-pytriton`` 0.7.0 on this kind of machine (found while building this):
its Python backend stub links whichever ``libpython3.X.so.1.0`` the dynamic loader finds first
(here Debian's 3.11.2 under ``/lib``, while the interpreter is pyenv's 3.11.7, whose
``multiprocessing`` then fails inside the stub), so :func:`_prefer_own_libpython` puts the running
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH``; it pins ``numpy<2``: with numpy 2 the
server answers with empty tensors, so :func:`check_serving_stack` refuses to start under numpy 2;
and an exception raised by an infer function fails its whole dynamic batch with HTTP 500 and a
traceback as the message, which :data:`_PROXY_SHIM` replaces with per-request 400/500 answers.
"""

from __future__ import annotations

import io
import logging
import os
import re
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

LOGGER = logging.getLogger(__name__)

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


#: Reserved response keys: an infer function answers a request it cannot serve with one sentence
#: under ERROR_KEY (the client's fault: HTTP 400) or SERVER_ERROR_KEY (ours: HTTP 500), and the
#: proxy shim (:data:`_PROXY_SHIM`) turns it into that request's own error response.
ERROR_KEY = "segdeploy_error"
SERVER_ERROR_KEY = "segdeploy_server_error"
#: What a client reads when the server failed on its request (the traceback goes to the log).
SERVER_ERROR = (
    "segdeploy serve: internal error ({kind}) while answering this request; the server's log "
    "has the details"
)

# PyTriton 0.7 answers every exception of an infer function with a 500 carrying a traceback, for
# the whole dynamic batch: its proxy (the ``model.py`` that Triton's Python backend loads) has no
# way to return one request's error. This module, installed as ``model.py`` next to PyTriton's own
# (renamed ``pytriton_proxy.py``), wraps the proxy's ``_wrap_response`` so that a response dict
# holding only ERROR_KEY (SERVER_ERROR_KEY) becomes ``InferenceResponse(error=TritonError(...,
# INVALID_ARG (INTERNAL)))``: a 400 (500) for that request alone, with our sentence as the message.
# It also answers a request with a zero-size input itself: PyTriton's shared-memory transfer fails
# on those (``memoryview: cannot cast view with zeros in shape``) with a 500 and a traceback before
# any infer function runs. And it is the last line of defence: when PyTriton fails a whole batch
# anyway (its serialisation, its output checks), each request is tried again alone, so one
# poisoned request gets a 500 sentence and the others their answers; no traceback reaches a client.
_PROXY_SHIM = f'''"""PyTriton's proxy with per-request errors (from segdeploy serve)."""

import triton_python_backend_utils as pb_utils

from . import pytriton_proxy as _proxy

_wrap_data = _proxy._wrap_response
_SERVER_ERROR = {SERVER_ERROR!r}


def _error(message, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _client_error(message):
    return _error(message, pb_utils.TritonError.INVALID_ARG)


def _server_error(kind):
    return _error(_SERVER_ERROR.format(kind=kind), pb_utils.TritonError.INTERNAL)


def _log(text):
    try:
        pb_utils.Logger.log_error("segdeploy serve: " + text)
    except Exception:
        pass


def _message(array):
    message = array.item(0)
    return message.decode() if isinstance(message, bytes) else str(message)


def _wrap_response(response, requested_output_names, model_outputs_dict):
    # Never raise here: PyTriton calls this in its response task, and an exception there leaves
    # the whole batch waiting for ever.
    try:
        data = response.data
        if data is not None and "{ERROR_KEY}" in data:
            return _client_error(_message(data["{ERROR_KEY}"]))
        if data is not None and "{SERVER_ERROR_KEY}" in data:
            return _error(_message(data["{SERVER_ERROR_KEY}"]), pb_utils.TritonError.INTERNAL)
        return _wrap_data(response, requested_output_names, model_outputs_dict)
    except Exception as err:
        _log(f"wrapping a response failed: {{type(err).__name__}}: {{err}}")
        return _server_error(type(err).__name__)


_proxy._wrap_response = _wrap_response


def _empty_input(request):
    for tensor in request.inputs():
        shape = list(tensor.shape())
        if 0 in shape:
            return f"{{tensor.name()}}: expected a non-empty input, found shape {{shape}}"
    return None


class TritonPythonModel(_proxy.TritonPythonModel):
    def _answer(self, requests):
        """One response per request; a batch PyTriton fails as a whole is retried request by
        request, so that only the request that fails alone gets an error (a 500 sentence)."""
        try:
            return super().execute(requests)
        except Exception as err:
            _log(f"a batch of {{len(requests)}} failed: {{str(err)[-2000:]}}")
            if len(requests) == 1:
                return [_server_error(type(err).__name__)]
        return [self._answer([request])[0] for request in requests]

    def execute(self, requests):
        empty = [_empty_input(request) for request in requests]
        rest = [request for request, why in zip(requests, empty) if why is None]
        answers = iter(self._answer(rest) if rest else [])
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
        DataError: data that is no image, truncated pixel data, an image over ``max_side`` (also
            one whose header claims more pixels than Pillow's decompression-bomb limit), or one
            Pillow cannot convert to ``channels``.
    """
    try:
        image = Image.open(io.BytesIO(blob))
    except Image.DecompressionBombError as err:
        declared = re.search(r"\((\d+) pixels\)", str(err))  # "Image size (N pixels) exceeds"
        found = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than Pillow's"
        raise DataError(
            f"encoded_image: the file's header claims {found}, over the server's limit of "
            f"{max_side} pixels a side"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
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
        try:
            return load_image(image, channels=channels)
        except DataError as err:  # load_image names its source "the PIL image"
            raise DataError(f"encoded_image: {str(err).removeprefix('the PIL image: ')}") from None
        except (OSError, ValueError, SyntaxError) as err:  # an exotic mode Pillow cannot convert
            raise DataError(
                f"encoded_image: expected an image Pillow can convert to {channels} channels, "
                f"found a {image.mode} image it cannot ({type(err).__name__})"
            ) from None


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


def _check_one_size(images: list[np.ndarray]) -> None:
    """The masks of one request go back as one ``(batch, height, width)`` tensor: its files must
    have one size (arrays have it by construction)."""
    sizes = sorted({image.shape[:2] for image in images})
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise DataError(
            f"encoded_image: expected the {len(images)} files of one request to have one size "
            f"(the answer is one (batch, height, width) mask), found {found}; send files of "
            "different sizes in separate requests"
        )


Response = dict[str, np.ndarray]


def _one_line(message: str) -> str:
    return " ".join(message.split())


def error_response(message: str) -> Response:
    """The response dict that the proxy shim answers with a 400 carrying ``message``."""
    return {ERROR_KEY: np.array([_one_line(message).encode()], dtype=np.object_)}


def server_error_response(err: BaseException) -> Response:
    """The response dict that the proxy shim answers with a 500 and :data:`SERVER_ERROR`."""
    message = SERVER_ERROR.format(kind=type(err).__name__)
    return {SERVER_ERROR_KEY: np.array([message.encode()], dtype=np.object_)}


def _failure(err: Exception, what: str) -> Response:
    """A request's error response: a DataError is the client's (400, its sentence); anything
    else is ours (500, one sentence; the traceback goes to the server's log, not the client)."""
    if isinstance(err, DataError):
        return error_response(str(err))
    LOGGER.error("segdeploy serve: %s failed", what, exc_info=err)
    return server_error_response(err)


def make_infer(model: SegmentationModel | ClassificationModel, max_side: int) -> Callable:
    """The function Triton calls with a batch of requests: one response dict per request.

    Every request is checked on its own (one input, its shape, its files decodable and within
    ``max_side``, one size per request for masks); a bad one gets its own error response (a 400
    with one sentence, through the proxy shim), and an unexpected failure on one request a 500
    sentence for that request alone. The good requests of the same dynamic batch are answered as
    usual, their images run through ``predict_batch`` together (request by request when that
    fails, to find the one that makes it fail).
    """
    segmentation = isinstance(model, SegmentationModel)
    channels = model.card.in_channels

    def parse(request: Any) -> list[np.ndarray] | Response:
        try:
            images = _request_images(request, max_side, channels)
            if segmentation:
                _check_one_size(images)
            return images
        except Exception as err:
            return _failure(err, "reading a request")

    def run(batches: list[list[np.ndarray]]) -> list[list[Any] | Response]:
        try:
            results = iter(model.predict_batch([image for images in batches for image in images]))
            return [[next(results) for _ in images] for images in batches]
        except Exception as err:
            if len(batches) == 1:
                return [_failure(err, "running the model on a request")]
        answers: list[list[Any] | Response] = []
        for images in batches:
            try:
                answers.append(model.predict_batch(images))
            except Exception as err:
                answers.append(_failure(err, "running the model on a request"))
        return answers

    def respond(answers: list[Any] | Response) -> Response:
        if isinstance(answers, dict):
            return answers
        try:
            return _response(answers, segmentation)
        except Exception as err:
            return _failure(err, "building a response")

    def answer(requests: list[Any]) -> list[Response]:
        parsed = [parse(request) for request in requests]
        good = [index for index, item in enumerate(parsed) if isinstance(item, list)]
        ran = run([parsed[index] for index in good]) if good else []
        for index, answers in zip(good, ran, strict=True):
            parsed[index] = answers
        return [respond(item) for item in parsed]

    def infer(requests: list[Any]) -> list[Response]:
        try:
            return answer(requests)
        except Exception as err:  # a bug above: every request still gets one sentence
            return [_failure(err, "answering a batch") for _ in requests]

    return infer


def _response(answers: list[Any], segmentation: bool) -> Response:
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
