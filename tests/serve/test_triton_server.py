"""``segdeploy serve``: a real Triton server (nvidia-pytriton) on a free loopback port.

The server tests need the ``serve`` extra in an environment with numpy 1.x (nvidia-pytriton 0.7
pins numpy<2); elsewhere they skip and say why. The request handling (``make_infer``,
``decode_image``) is tested without a server in every environment.

Exports: where torch is installed, the shared tiny exports of ``conftest.py``; in the serving
environment (no torch), a subprocess exports them with the Python of ``SEGDEPLOY_TORCH_PYTHON``,
default ``.venv/bin/python`` of this checkout (CI creates it first).
"""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.core.images import load_image
from segdeploy.runtime import open_model
from segdeploy.serve.triton_server import (
    ERROR_KEY,
    SERVER_ERROR_KEY,
    ServeOptions,
    check_serving_stack,
    decode_image,
    free_port,
    make_infer,
)

REPO = Path(__file__).resolve().parents[2]

_EXPORT = """
import sys
from pathlib import Path
import torch
from segdeploy.core.card import ModelCard
from segdeploy.export import export_checkpoint
from segdeploy.models import create_model, get_spec
from segdeploy.train.checkpoint import save_checkpoint

out = Path(sys.argv[1])
for arch in sys.argv[2:]:
    spec = get_spec(arch)
    kwargs = spec.variant_kwargs(spec.smallest_variant)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, **kwargs).eval()
    card = ModelCard(arch=arch, task=spec.task, model_kwargs=kwargs,
                     class_names=("background", "road", "vehicle", "pedestrian"),
                     size_multiple=spec.size_multiple)
    save_checkpoint(model, card, out / f"{arch}.pt")
    export_checkpoint(out / f"{arch}.pt", out=out / f"{arch}.onnx", shapes=[(1, 16, 16)],
                      providers=["cpu"])
"""


def _serving_skip_reason() -> str | None:
    try:
        check_serving_stack()
    except SegdeployError as err:
        return str(err)
    if importlib.util.find_spec("tritonclient.http") is None:
        return "tritonclient[http] is not installed"
    return None


SKIP_SERVER = _serving_skip_reason()
needs_server = pytest.mark.skipif(SKIP_SERVER is not None, reason=SKIP_SERVER or "")


@pytest.fixture(scope="session")
def exported_elsewhere(tmp_path_factory) -> dict[str, Path]:
    """Tiny U-Net and ResNet-18 exports made by a Python that has torch."""
    python = os.environ.get("SEGDEPLOY_TORCH_PYTHON") or str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        pytest.skip(f"no torch here and no {python} to export the test models with")
    out = tmp_path_factory.mktemp("exports")
    # This checkout's segdeploy exports, whatever that Python has installed (another worktree's).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [python, "-c", _EXPORT, str(out), "unet", "resnet18"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"exporting the test models failed:\n{done.stderr[-3000:]}"
    return {"unet": out / "unet.onnx", "resnet18": out / "resnet18.onnx"}


def _export(request, arch: str, conftest_fixture: str) -> Path:
    if importlib.util.find_spec("torch") is not None:
        return Path(request.getfixturevalue(conftest_fixture))
    return request.getfixturevalue("exported_elsewhere")[arch]


@pytest.fixture(scope="session")
def unet_export(request) -> Path:
    return _export(request, "unet", "unet_onnx")


@pytest.fixture(scope="session")
def resnet_export(request) -> Path:
    return _export(request, "resnet18", "resnet_onnx")


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photograph (scikit-image's astronaut), cropped to 97x133: not a multiple of 16."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut()[120:217, 160:293])


def _encoded(image: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (CRCs right) that claims ``width`` x ``height`` RGB pixels, with a few
    bytes of pixel data: what a decompression bomb sends."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _files(*blobs: bytes) -> np.ndarray:
    """An ``encoded_image`` tensor: ``(len(blobs), 1)`` bytes."""
    return np.array([[blob] for blob in blobs], dtype=np.object_)


def _one_sentence(message: str) -> bool:
    """No traceback, no second line, no second sentence."""
    text = message.rstrip(".")
    return not any(bad in text for bad in ("Traceback", 'File "', "\n", ". "))


def _random_images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(37, 53), (64, 64), (20, 33), (64, 64)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(count)]


# --- request handling, no server ----------------------------------------------------------------


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_decode_image_gives_the_pixels_load_image_reads_from_the_file(photo, tmp_path, format):
    path = tmp_path / f"photo.{format.lower()}"
    Image.fromarray(photo).save(path, format=format)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), load_image(path))


def test_decode_image_refuses_what_is_no_whole_image_with_one_sentence(photo):
    png = _encoded(photo, "PNG")
    cases = [
        (b"GIF89 but not really", "cannot identify as an image"),
        (png[: len(png) // 2], "truncated or corrupt pixel data"),
    ]
    for blob, answer in cases:
        with pytest.raises(DataError, match=answer):
            decode_image(blob)
    with pytest.raises(DataError, match=r"97x133 \(height x width\) is over .* limit of 64"):
        decode_image(png, max_side=64)
    with pytest.raises(DataError) as caught:  # a model that reads another channel count
        decode_image(png, channels=2)
    assert str(caught.value).startswith("encoded_image: the model reads 2 channels, found a RGB")


def test_a_bad_request_gets_its_own_error_and_the_rest_of_the_batch_its_masks(unet_export, photo):
    model = open_model(unet_export, provider="cpu")
    infer = make_infer(model, max_side=256)
    good = _random_images(2)
    requests = [
        {"image": good[0][None]},
        {"encoded_image": np.array([[b"not an image"]], dtype=np.object_)},
        {"encoded_image": np.array([[_encoded(photo, "PNG")]], dtype=np.object_)},
        {"image": np.zeros((1, 300, 20, 3), np.uint8)},
        {"image": good[1][None], "encoded_image": np.array([[b"x"]], dtype=np.object_)},
        {"image": np.zeros((2, 16, 16, 4), np.uint8)},
        {"image": np.stack([good[1], good[1]])},
    ]
    responses = infer(requests)
    assert len(responses) == len(requests)
    np.testing.assert_array_equal(responses[0]["mask"], model.predict(good[0])[None])
    np.testing.assert_array_equal(responses[2]["mask"], model.predict(photo)[None])
    np.testing.assert_array_equal(responses[6]["mask"], np.stack([model.predict(good[1])] * 2))
    errors = {i: responses[i][ERROR_KEY].item(0).decode() for i in (1, 3, 4, 5)}
    assert all(set(responses[i]) == {ERROR_KEY} for i in errors)
    assert "encoded_image: expected the bytes of an image file" in errors[1]
    assert (
        errors[3]
        == "image: 300x20 (height x width) is over the server's limit of 256 pixels a side"
    )
    assert "found image and encoded_image" in errors[4]
    assert "expected 3 channels (RGB)" in errors[5] and "found 4" in errors[5]


def test_decode_image_refuses_a_header_claiming_100000_squared_pixels_in_one_sentence():
    with pytest.raises(DataError) as caught:
        decode_image(_png_claiming(100_000, 100_000), max_side=4096)
    assert str(caught.value) == (
        "encoded_image: the file's header claims 10,000,000,000 pixels, over the server's limit "
        "of 4096 pixels a side"
    )


def test_files_of_two_sizes_in_one_request_get_a_400_and_the_batch_its_masks(unet_export, photo):
    model = open_model(unet_export, provider="cpu")
    infer = make_infer(model, max_side=256)
    small = photo[:64, :80]
    requests = [
        {"encoded_image": _files(_encoded(photo, "PNG"))},
        {"encoded_image": _files(_encoded(photo, "PNG"), _encoded(small, "PNG"))},
        {"encoded_image": _files(_encoded(small, "PNG"), _encoded(small, "JPEG"))},
    ]
    responses = infer(requests)
    np.testing.assert_array_equal(responses[0]["mask"], model.predict(photo)[None])
    assert set(responses[1]) == {ERROR_KEY}
    assert responses[1][ERROR_KEY].item(0).decode() == (
        "encoded_image: expected the 2 files of one request to have one size (the answer is one "
        "(batch, height, width) mask), found 64x80, 97x133; send files of different sizes in "
        "separate requests"
    )
    jpeg = decode_image(_encoded(small, "JPEG"))
    expected = np.stack([model.predict(small), model.predict(jpeg)])
    np.testing.assert_array_equal(responses[2]["mask"], expected)


def test_a_classifier_takes_files_of_different_sizes_in_one_request(resnet_export, photo):
    model = open_model(resnet_export, provider="cpu")
    infer = make_infer(model, max_side=256)
    small = photo[:40, :50]
    [response] = infer([{"encoded_image": _files(_encoded(photo, "PNG"), _encoded(small, "PNG"))}])
    expected = model.predict_batch([photo, small])
    assert response["label"].tolist() == [[label.encode()] for label, _ in expected]
    np.testing.assert_array_equal(response["probabilities"], np.stack([p for _, p in expected]))


def test_an_unexpected_failure_is_a_500_sentence_for_that_request_alone(unet_export, caplog):
    model = open_model(unet_export, provider="cpu")
    real = model.predict_batch
    poison = (20, 33)  # the model "crashes" on images of this size

    def predict_batch(images):
        if any(image.shape[:2] == poison for image in images):
            raise RuntimeError("simulated failure inside the runtime\nwith a second line")
        return real(images)

    model.predict_batch = predict_batch  # type: ignore[method-assign]
    infer = make_infer(model, max_side=256)
    images = _random_images(4)  # sizes 37x53, 64x64, 20x33, 64x64
    responses = infer([{"image": image[None]} for image in images])
    message = responses[2][SERVER_ERROR_KEY].item(0).decode()
    assert set(responses[2]) == {SERVER_ERROR_KEY}
    assert message == (
        "segdeploy serve: internal error (RuntimeError) while answering this request; the "
        "server's log has the details"
    )
    for index in (0, 1, 3):
        np.testing.assert_array_equal(responses[index]["mask"], real([images[index]])[0][None])
    # The operator gets the traceback; the client only the sentence.
    assert "simulated failure inside the runtime" in caplog.text
    assert any(record.exc_info for record in caplog.records)


def test_a_bug_building_responses_still_gives_each_request_a_sentence(unet_export, monkeypatch):
    from segdeploy.serve import triton_server

    def broken(answers, segmentation):
        raise KeyError("a bug")

    monkeypatch.setattr(triton_server, "_response", broken)
    infer = make_infer(open_model(unet_export, provider="cpu"), max_side=256)
    responses = infer([{"image": image[None]} for image in _random_images(2)])
    assert [set(response) for response in responses] == [{SERVER_ERROR_KEY}] * 2
    assert "internal error (KeyError)" in responses[0][SERVER_ERROR_KEY].item(0).decode()


# --- a real Triton server -----------------------------------------------------------------------


def _serve(model_path: Path, **kwargs):
    from segdeploy.serve.triton_server import triton_server

    options = ServeOptions(port=free_port(), grpc_port=free_port(), **kwargs)
    return options, triton_server(model_path, options)


@pytest.fixture(scope="module")
def server(unet_export):
    """``(url, triton)``: the U-Net served with batches of up to 4 gathered for 50 ms."""
    if SKIP_SERVER:
        pytest.skip(SKIP_SERVER)
    options, context = _serve(unet_export, max_batch=4, max_side=256, max_queue_delay_us=50_000)
    with context as triton:
        yield f"127.0.0.1:{options.port}", triton


@pytest.fixture(scope="module")
def local_unet(unet_export):
    """The in-process runtime on the served file: the answers the server must give."""
    return open_model(unet_export, provider="cpu")


def _client(url: str):
    import tritonclient.http as http

    return http.InferenceServerClient(url)


def _inputs(name: str, array: np.ndarray, datatype: str) -> list:
    import tritonclient.http as http

    tensor = http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return [tensor]


def _array(image: np.ndarray, datatype: str = "UINT8") -> list:
    return _inputs("image", image, datatype)


def _file(blob: bytes) -> list:
    return _inputs("encoded_image", np.array([[blob]], dtype=np.object_), "BYTES")


def _ask(url: str, inputs: list, model: str = "unet"):
    client = _client(url)
    try:
        return client.infer(model, inputs)
    finally:
        client.close()


def _status(url: str, inputs: list) -> tuple[str, str]:
    """``(HTTP status, message)`` of a request that must fail."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        _ask(url, inputs)
    return caught.value.status(), caught.value.message()


@needs_server
@pytest.mark.slow
def test_concurrent_clients_get_the_runtime_masks_bit_for_bit(server, unet_export):
    url, _ = server
    images = _random_images(16)
    with ThreadPoolExecutor(max_workers=4) as pool:
        served = list(pool.map(lambda image: _ask(url, _array(image[None])), images))
    local = open_model(unet_export, provider="cpu")
    for image, result in zip(images, served, strict=True):
        mask = result.as_numpy("mask")
        assert mask.shape == (1, *image.shape[:2]) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask[0], local.predict(image))


@needs_server
@pytest.mark.slow
@pytest.mark.parametrize("format", ["PNG", "JPEG", "BMP"])
def test_an_encoded_file_gets_the_mask_predict_gives_for_that_file(
    server, unet_export, photo, tmp_path, format
):
    url, _ = server
    image = photo.copy()
    image[:4] = 0  # a BMP file stores the top row last: its bytes then end in zeros
    path = tmp_path / f"photo.{format.lower()}"
    Image.fromarray(image).save(path, format=format)
    mask = _ask(url, _file(path.read_bytes())).as_numpy("mask")
    np.testing.assert_array_equal(mask[0], open_model(unet_export, provider="cpu").predict(path))


#: Bad requests and the exact answers the server gives (HTTP status, message).
BAD_REQUESTS = {
    "dtype": (
        lambda: _array(np.zeros((1, 32, 32, 3), np.float32), "FP32"),
        "inference input 'image' data-type is 'FP32', but model 'unet' expects 'UINT8'",
    ),
    "rank": (
        lambda: _array(np.zeros((1, 32), np.uint8)),
        "unexpected shape for input 'image' for model 'unet'. Expected [-1,-1,-1,-1], got [1,32]",
    ),
    "too-large": (
        lambda: _array(np.zeros((1, 300, 32, 3), np.uint8)),
        "image: 300x32 (height x width) is over the server's limit of 256 pixels a side",
    ),
    "channels": (
        lambda: _array(np.zeros((1, 32, 32, 4), np.uint8)),
        "image: expected 3 channels (RGB) in (batch, height, width, 3), found 4",
    ),
    "empty": (
        lambda: _array(np.zeros((1, 16, 0, 3), np.uint8)),
        "image: expected a non-empty input, found shape [1, 16, 0, 3]",
    ),
    "corrupt-file": (
        lambda: _file(b"not an image"),
        "encoded_image: expected the bytes of an image file (PNG, JPEG, ...), found 12 bytes "
        "that Pillow cannot identify as an image",
    ),
    "truncated-file": (
        lambda: _file(_encoded(_random_images(1)[0], "PNG")[:100]),
        "encoded_image: expected a complete image file, found truncated or corrupt pixel data",
    ),
    "too-large-file": (
        lambda: _file(_encoded(np.zeros((20, 300, 3), np.uint8), "PNG")),
        "encoded_image: 20x300 (height x width) is over the server's limit of 256 pixels a side",
    ),
    "both-inputs": (
        lambda: _array(_random_images(1)[0][None]) + _file(b"x"),
        "send one input: 'image' (uint8, (batch, height, width, 3)) or 'encoded_image' "
        "(bytes of a PNG or JPEG file, (batch, 1)); found image and encoded_image",
    ),
    "no-input": (lambda: [], "request has 0 inputs"),
}


@needs_server
@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_400_sentence_and_the_server_keeps_serving(server, unet_export, case):
    url, _ = server
    make_inputs, answer = BAD_REQUESTS[case]
    status, message = _status(url, make_inputs())
    assert status == "400", message
    assert answer in message and "Traceback" not in message and "\n" not in message
    good = _random_images(1)[0]
    mask = _ask(url, _array(good[None])).as_numpy("mask")[0]
    np.testing.assert_array_equal(mask, open_model(unet_export, provider="cpu").predict(good))


def _batch_sizes(url: str, triton) -> dict[int, int]:
    """Triton's count of executions per batch size for "unet"."""
    # PyTriton protects the statistics endpoint with a token it generates and keeps here.
    headers = {"triton-access-token": triton._security_config.access_token}
    stats = _client(url).get_inference_statistics("unet", headers=headers)
    batches = stats["model_stats"][0]["batch_stats"]
    return {entry["batch_size"]: entry["compute_infer"]["count"] for entry in batches}


def _send_together(url: str, requests: list[Callable[[], list]]) -> list:
    """Send each request from its own thread at the same moment; a mask or the error, each."""
    start = threading.Barrier(len(requests))

    def send(make_inputs: Callable[[], list]):
        inputs = make_inputs()
        start.wait()
        try:
            return _ask(url, inputs).as_numpy("mask")
        except Exception as err:  # the bad ones: checked by the caller
            return err

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        return list(pool.map(send, requests))


def _in_one_batch(url: str, triton, requests: list[Callable[[], list]], size: int) -> list:
    """``_send_together`` until Triton's dynamic batcher put them in one batch of ``size``."""
    for _attempt in range(3):  # they must reach the batcher within its 50 ms window
        before = _batch_sizes(url, triton).get(size, 0)
        answers = _send_together(url, requests)
        if _batch_sizes(url, triton).get(size, 0) > before:
            return answers
    pytest.fail(f"Triton never put the {len(requests)} requests in one batch of {size}")


@needs_server
@pytest.mark.slow
def test_a_corrupt_file_fails_alone_in_its_dynamic_batch(server, unet_export, photo):
    url, triton = server
    local = open_model(unet_export, provider="cpu")
    blobs = [_encoded(photo, "PNG"), b"corrupt", _encoded(photo[:64], "PNG")]
    blobs.append(_encoded(photo, "JPEG"))
    answers = _in_one_batch(url, triton, [lambda blob=blob: _file(blob) for blob in blobs], 4)
    assert answers[1].status() == "400" and "cannot identify as an image" in answers[1].message()
    for index in (0, 2, 3):
        expected = local.predict(decode_image(blobs[index]))
        np.testing.assert_array_equal(answers[index][0], expected)


@needs_server
@pytest.mark.slow
def test_files_of_two_sizes_fail_alone_in_their_dynamic_batch(server, unet_export, photo, tmp_path):
    """The finding: one request with two files of different sizes made the handler's np.stack
    raise, and every request of its dynamic batch, other clients' included, got a 500 with a
    traceback. Now it gets its own 400 sentence and the others their masks."""
    url, triton = server
    small = photo[:64, :80]
    paths = []
    for name, image, format in [("big.png", photo, "PNG"), ("small.png", small, "PNG")]:
        paths.append(tmp_path / name)
        Image.fromarray(image).save(paths[-1], format=format)
    paths.append(tmp_path / "photo.jpg")
    Image.fromarray(photo).save(paths[-1], format="JPEG")
    two_sizes = _files(paths[0].read_bytes(), paths[1].read_bytes())
    requests = [
        lambda: _inputs("encoded_image", two_sizes, "BYTES"),  # batch 2: the bad one
        lambda: _file(paths[1].read_bytes()),
        lambda: _file(paths[2].read_bytes()),
    ]
    answers = _in_one_batch(url, triton, requests, 4)
    local = open_model(unet_export, provider="cpu")
    for answer, path in zip(answers[1:], paths[1:], strict=True):  # the other clients
        assert isinstance(answer, np.ndarray), f"{path.name}: {answer}"
        np.testing.assert_array_equal(answer, local.predict(path)[None])
    bad = answers[0]
    assert not isinstance(bad, np.ndarray), "files of two sizes were answered with one tensor"
    assert bad.status() == "400", bad.message()
    assert bad.message() == (
        "encoded_image: expected the 2 files of one request to have one size (the answer is one "
        "(batch, height, width) mask), found 64x80, 97x133; send files of different sizes in "
        "separate requests"
    )


POISON = (20, 33)  # the size of _random_images(3)[2]


@needs_server
@pytest.mark.slow
def test_a_failure_inside_the_runtime_is_a_500_for_that_request_alone(
    server, local_unet, monkeypatch
):
    from segdeploy.runtime.model import SegmentationModel

    url, triton = server
    images = _random_images(4)
    expected = [local_unet.predict(image) for image in images]
    real = SegmentationModel.predict_batch

    def predict_batch(self, batch, **kwargs):
        if any(np.asarray(image).shape[:2] == POISON for image in batch):
            raise RuntimeError("simulated failure inside the runtime")
        return real(self, batch, **kwargs)

    # The inference callable runs in this process (PyTriton's handler), so this reaches it.
    monkeypatch.setattr(SegmentationModel, "predict_batch", predict_batch)
    # Files: Triton batches only requests of one shape, and a file's tensor is (1, 1) at any size.
    requests = [lambda image=image: _file(_encoded(image, "PNG")) for image in images]
    answers = _in_one_batch(url, triton, requests, 4)
    _assert_poisoned_alone(answers, expected, "RuntimeError")


@needs_server
@pytest.mark.slow
def test_a_batch_pytriton_fails_whole_is_answered_request_by_request(
    server, local_unet, monkeypatch
):
    """Defence in depth: when PyTriton itself fails a whole batch (here its output check, made
    to fail on one response), the proxy shim answers each request alone: the others get their
    masks, the one that fails alone a 500 sentence, nobody a traceback."""
    from pytriton.proxy import validators

    url, triton = server
    images = _random_images(4)
    expected = [local_unet.predict(image) for image in images]
    real = validators._validate_outputs

    def validate(model_config, model_outputs, outputs, strict, requests_number):
        if any(o.get("mask", np.zeros((1, 0, 0))).shape[1:] == POISON for o in outputs):
            raise ValueError("simulated failure inside PyTriton")
        return real(model_config, model_outputs, outputs, strict, requests_number)

    monkeypatch.setattr(validators, "_validate_outputs", validate)
    # Files: Triton batches only requests of one shape, and a file's tensor is (1, 1) at any size.
    requests = [lambda image=image: _file(_encoded(image, "PNG")) for image in images]
    answers = _in_one_batch(url, triton, requests, 4)
    _assert_poisoned_alone(answers, expected, "TritonModelException")


def _assert_poisoned_alone(answers: list, expected: list[np.ndarray], kind: str) -> None:
    poisoned = answers[2]
    assert not isinstance(poisoned, np.ndarray)
    assert poisoned.status() == "500", poisoned.message()
    assert poisoned.message() == (
        f"segdeploy serve: internal error ({kind}) while answering this request; the server's "
        "log has the details"
    )
    for index in (0, 1, 3):
        assert isinstance(answers[index], np.ndarray), answers[index]
        np.testing.assert_array_equal(answers[index][0], expected[index])


def _load_cases(photo: np.ndarray) -> tuple[dict, dict]:
    """The load test's requests: ``good[name] = (make inputs, images whose masks come back)``,
    ``bad[name] = (make inputs, part of the 400 message, the message is segdeploy's)``."""
    arrays = _random_images(4)
    png, jpeg = _encoded(photo, "PNG"), _encoded(photo, "JPEG")
    small = photo[:64, :80]
    small_png, small_jpeg = _encoded(small, "PNG"), _encoded(small, "JPEG")
    good = {
        "array 37x53": (lambda: _array(arrays[0][None]), [arrays[0]]),
        "array, batch of 2": (lambda: _array(np.stack(arrays[1::2])), arrays[1::2]),
        "array 1x1": (lambda: _array(arrays[2][None, :1, :1]), [arrays[2][:1, :1]]),
        "PNG file": (lambda: _file(png), [decode_image(png)]),
        "JPEG file": (lambda: _file(jpeg), [decode_image(jpeg)]),
        "2 files, one size": (
            lambda: _inputs("encoded_image", _files(small_png, small_jpeg), "BYTES"),
            [decode_image(small_png), decode_image(small_jpeg)],
        ),
    }
    garbage = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = {
        "wrong dtype (FP32)": (
            lambda: _array(np.zeros((1, 32, 32, 3), np.float32), "FP32"),
            "inference input 'image' data-type is 'FP32', but model 'unet' expects 'UINT8'",
            False,
        ),
        "wrong rank": (
            lambda: _array(np.zeros((1, 32), np.uint8)),
            "unexpected shape for input 'image' for model 'unet'",
            False,
        ),
        "wrong input name": (
            lambda: _inputs("picture", arrays[0][None], "UINT8"),
            "unexpected inference input 'picture' for model 'unet'",
            False,
        ),
        "empty tensor": (
            lambda: _array(np.zeros((1, 16, 0, 3), np.uint8)),
            "image: expected a non-empty input, found shape [1, 16, 0, 3]",
            True,
        ),
        "garbage bytes": (lambda: _file(garbage), "3000 bytes that Pillow cannot identify", True),
        "empty file": (lambda: _file(b""), "found 0 bytes that Pillow cannot identify", True),
        "truncated PNG": (
            lambda: _file(png[: len(png) // 2]),
            "encoded_image: expected a complete image file, found truncated or corrupt",
            True,
        ),
        "PNG header 100000x100000": (
            lambda: _file(_png_claiming(100_000, 100_000)),
            "encoded_image: the file's header claims 10,000,000,000 pixels, over the server's "
            "limit of 256 pixels a side",
            True,
        ),
        "2 files, two sizes": (
            lambda: _inputs("encoded_image", _files(png, small_png), "BYTES"),
            "expected the 2 files of one request to have one size",
            True,
        ),
        "4 channels": (
            lambda: _array(np.zeros((1, 32, 32, 4), np.uint8)),
            "image: expected 3 channels (RGB) in (batch, height, width, 3), found 4",
            True,
        ),
        "over max side": (
            lambda: _array(np.zeros((1, 300, 32, 3), np.uint8)),
            "image: 300x32 (height x width) is over the server's limit of 256 pixels a side",
            True,
        ),
        "both inputs": (
            lambda: _array(arrays[0][None]) + _file(png),
            "found image and encoded_image",
            True,
        ),
    }
    return good, bad


@needs_server
@pytest.mark.slow
def test_a_bounded_load_of_good_and_bad_requests_from_six_clients(server, local_unet, photo):
    """6 clients x 20 requests at once, every third one bad in one of 12 ways: every good
    request gets the runtime's masks, every bad one a 400 with its sentence (segdeploy's are one
    sentence; Triton's own checks answer in Triton's words), no traceback anywhere, and the
    server answers afterwards."""
    from tritonclient.utils import InferenceServerException

    url, triton = server
    good, bad = _load_cases(photo)
    expected = {
        name: np.stack(local_unet.predict_batch(images)) for name, (_, images) in good.items()
    }
    clients, per_client = 6, 20
    # Every third request bad, the cases of each kind in turn, dealt out to the clients.
    cycle = [iter(list(names) * clients * per_client) for names in (good, bad)]
    flat = [next(cycle[k % 3 == 2]) for k in range(clients * per_client)]
    plan = [flat[c * per_client : (c + 1) * per_client] for c in range(clients)]
    stats_before = _model_stats(url, triton)
    start = threading.Barrier(clients)

    def client(cases: list[str]) -> list[tuple[str, str]]:
        outcomes = []
        connection = _client(url)
        start.wait()
        try:
            for case in cases:
                make_inputs = good[case][0] if case in good else bad[case][0]
                try:
                    mask = connection.infer("unet", make_inputs()).as_numpy("mask")
                except InferenceServerException as err:
                    outcomes.append((case, _bad_outcome(case, bad, err)))
                    continue
                right = case in good and np.array_equal(mask, expected[case])
                wrong = "WRONG MASK" if case in good else "BAD REQUEST GOT A MASK"
                outcomes.append((case, "mask = predict" if right else wrong))
        finally:
            connection.close()
        return outcomes

    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = [outcome for one in pool.map(client, plan) for outcome in one]
    stats = _model_stats(url, triton)
    table: dict[tuple[str, str], int] = {}
    for outcome in outcomes:
        table[outcome] = table.get(outcome, 0) + 1
    print(f"\n{'case':28} {'outcome':36} count")
    for (case, outcome), count in sorted(table.items(), key=lambda item: item[0][0] in bad):
        print(f"{case:28} {outcome:36} {count}")
    executions = stats["execution_count"] - stats_before["execution_count"]
    inferences = stats["inference_count"] - stats_before["inference_count"]
    print(
        f"{len(outcomes)} requests ({sum(case in bad for case, _ in outcomes)} bad); "
        f"{inferences} images answered in {executions} model executions"
    )
    assert len(outcomes) == clients * per_client
    wrong = [
        (case, outcome) for case, outcome in outcomes if not outcome.startswith(("mask", "400"))
    ]
    assert not wrong, wrong
    assert {case for case, _ in outcomes} == set(good) | set(bad)
    assert triton.is_alive() and _client(url).is_server_live()
    after = _ask(url, good["PNG file"][0]()).as_numpy("mask")
    np.testing.assert_array_equal(after, expected["PNG file"])


def _bad_outcome(case: str, bad: dict, err) -> str:
    """``400 one sentence`` when the error is the one ``bad[case]`` expects, else what it was."""
    message = err.message()
    if case not in bad:
        return f"GOOD REQUEST FAILED {err.status()}: {message[:200]}"
    _, expected, ours = bad[case]
    if "Traceback" in message or 'File "' in message or "\n" in message:
        return f"TRACEBACK {err.status()}: {message[:200]}"
    if err.status() != "400" or expected not in message:
        return f"UNEXPECTED {err.status()}: {message[:200]}"
    if ours and not _one_sentence(message):
        return f"NOT ONE SENTENCE: {message[:200]}"
    return "400 one sentence" if ours else "400 Triton's message"


def _model_stats(url: str, triton) -> dict:
    headers = {"triton-access-token": triton._security_config.access_token}
    stats = _client(url).get_inference_statistics("unet", headers=headers)
    return stats["model_stats"][0]


@needs_server
@pytest.mark.slow
def test_a_classifier_answers_label_and_probabilities_as_predict_does(resnet_export, face_set):
    files = (
        sorted((face_set / "face").glob("*.png"))[:2]
        + sorted((face_set / "non_face").glob("*.png"))[:2]
    )
    local = open_model(resnet_export, provider="cpu")
    options, context = _serve(resnet_export, max_batch=4, name="faces")
    with context:
        url = f"127.0.0.1:{options.port}"
        for path in files:
            label, probabilities = local.predict(path)
            as_file = _ask(url, _file(path.read_bytes()), model="faces")
            pixels = load_image(path)[None]
            as_array = _ask(url, _array(pixels), model="faces")
            for result in (as_file, as_array):
                assert result.as_numpy("label").tolist() == [[label.encode()]]
                np.testing.assert_array_equal(result.as_numpy("probabilities")[0], probabilities)


@needs_server
@pytest.mark.slow
def test_cli_serves_until_ctrl_c_and_stops(unet_export):
    port = free_port()
    command = [sys.executable, "-m", "segdeploy", "serve", str(unet_export), "--port", str(port)]
    command += ["--grpc-port", str(free_port()), "--name", "roads"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        # The CLI says "ready" once Triton has loaded the model and its Ctrl-C handler is set.
        while not any(line.startswith("serving") for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        url = f"127.0.0.1:{port}"
        mask = _ask(url, _array(_random_images(1)[0][None]), model="roads").as_numpy("mask")
        assert mask.shape == (1, 37, 53)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "serving roads on" in output and "stopped" in output and "Traceback" not in output
    with pytest.raises(ConnectionError):  # nothing listens on the port any more
        _client(url).is_server_live()
