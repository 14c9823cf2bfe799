"""``segdeploy serve``: a real Triton server (nvidia-pytriton) on a free loopback port.

Needs the ``serve`` extra in an environment with numpy 1.x (nvidia-pytriton 0.7 pins numpy<2);
elsewhere these tests skip and say why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
from segdeploy.serve.triton_server import ServeOptions, check_serving_stack, free_port

try:
    check_serving_stack()
except SegdeployError as err:
    pytest.skip(str(err), allow_module_level=True)
http = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.slow  # starting Triton takes a few seconds


@pytest.fixture(scope="module")
def server(unet_onnx):
    from segdeploy.serve.triton_server import triton_server

    options = ServeOptions(port=free_port(), grpc_port=free_port(), max_batch=4, max_side=256)
    with triton_server(unet_onnx, options):
        yield f"127.0.0.1:{options.port}"


def _infer(url: str, image: np.ndarray, datatype: str = "UINT8") -> np.ndarray:
    client = http.InferenceServerClient(url)
    try:
        tensor = http.InferInput("image", list(image.shape), datatype)
        tensor.set_data_from_numpy(image)
        return client.infer("unet", [tensor]).as_numpy("mask")
    finally:
        client.close()


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(37, 53), (64, 64), (20, 33), (64, 64)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(count)]


def test_concurrent_clients_get_the_runtime_masks_bit_for_bit(server, unet_onnx):
    http.InferenceServerClient(server).is_model_ready("unet")
    images = _images(16)
    with ThreadPoolExecutor(max_workers=4) as pool:
        served = list(pool.map(lambda image: _infer(server, image[None]), images))
    local = open_model(unet_onnx, provider="cpu")
    for image, mask in zip(images, served, strict=True):
        assert mask.shape == (1, *image.shape[:2]) and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask[0], local.predict(image))


@pytest.mark.parametrize(
    ("image", "datatype", "answer"),
    [
        (np.zeros((1, 32, 32, 3), np.float32), "FP32", "expects 'UINT8'"),
        (np.zeros((1, 32), np.uint8), "UINT8", "unexpected shape"),
        (np.zeros((1, 300, 32, 3), np.uint8), "UINT8", "over the server's limit of 256"),
        (np.zeros((1, 32, 32, 4), np.uint8), "UINT8", "expected 3 channels"),
    ],
    ids=["dtype", "rank", "too-large", "channels"],
)
def test_bad_requests_get_an_error_and_the_server_keeps_serving(
    server, unet_onnx, image, datatype, answer
):
    with pytest.raises(http.InferenceServerException, match=answer):
        _infer(server, image, datatype)
    good = _images(1)[0]
    np.testing.assert_array_equal(
        _infer(server, good[None])[0], open_model(unet_onnx, provider="cpu").predict(good)
    )


def test_cli_serves_until_ctrl_c_and_stops(unet_onnx):
    port = free_port()
    command = [sys.executable, "-m", "segdeploy", "serve", str(unet_onnx), "--port", str(port)]
    command += ["--grpc-port", str(free_port())]
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
        assert _infer(f"127.0.0.1:{port}", _images(1)[0][None]).shape == (1, 37, 53)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert process.returncode == 0, output
    assert "stopped" in output and "Traceback" not in output
    with pytest.raises(ConnectionError):  # nothing listens on the port any more
        http.InferenceServerClient(f"127.0.0.1:{port}").is_server_live()
