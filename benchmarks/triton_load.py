"""Load test: ``segdeploy serve`` (Triton, dynamic batching) against the in-process runtime.

N client threads each send one 512x512 RGB uint8 image per request, back to back, for a fixed
time, over Triton's KServe v2 HTTP endpoint (one ``tritonclient.http`` client per thread); the
in-process side runs ``model.predict`` from N threads sharing one model. For each N in 1, 4, 16:
requests/s (completed / elapsed) and p50/p99 latency per request.

    python benchmarks/triton_load.py [--model MODEL.onnx] [--seconds 8] [--concurrency 1 4 16]
        [--bad-every N]

``--bad-every N`` makes every Nth request of each Triton client a corrupt image file instead:
it must come back as a 400 for itself alone, while every good request of the same dynamic
batches still gets the runtime's mask (checked on each answer; counted in the report). Its
latencies are not in the percentiles.

Needs the ``serve`` extra in an environment with numpy 1.x (nvidia-pytriton 0.7 pins numpy<2).
Without ``--model`` it exports the default U-Net variant (``small``, random weights, output bias
zeroed) first, which needs the ``train`` extra. Writes ``benchmarks/results/triton/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from segdeploy.runtime import open_model
from segdeploy.serve.triton_server import ServeOptions, free_port, triton_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "triton"


def _small_unet(folder: Path) -> Path:
    """The e2e benchmark's model. Imported here: it needs torch, which the serve environment
    (numpy<2, for PyTriton) usually lacks; pass ``--model`` there."""
    from e2e_latency import export_small_unet  # benchmarks/ is on sys.path

    return export_small_unet(folder)


def load(call: Callable[[], object], clients: int, seconds: float) -> dict[str, float]:
    """Run ``call`` back to back from ``clients`` threads for ``seconds``; rate and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            if call() is not None:  # None: a bad request, not timed
                mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def triton_call(
    url: str, name: str, image: np.ndarray, expected: np.ndarray, bad_every: int = 0
) -> tuple[Callable[[], object], dict[str, int]]:
    """One request per call, its mask checked against ``expected``; each thread gets its own
    client (tritonclient's are not shared). With ``bad_every``, every Nth call of a thread sends
    a corrupt file, which must get a 400, and returns None. Also returns the counts of answers."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    local = threading.local()
    counts = {"good": 0, "bad_400": 0}
    lock = threading.Lock()

    def bad_request() -> None:
        tensor = http.InferInput("encoded_image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"not an image file"]], dtype=np.object_))
        try:
            local.client.infer(name, [tensor])
        except InferenceServerException as err:
            if err.status() != "400" or "Traceback" in err.message():
                raise AssertionError(f"a bad request got {err.status()}: {err.message()}") from None
        else:
            raise AssertionError("a corrupt file was answered with a mask")
        with lock:
            counts["bad_400"] += 1

    def call() -> np.ndarray | None:
        if not hasattr(local, "client"):
            local.client = http.InferenceServerClient(url)
            local.sent = 0
        local.sent += 1
        if bad_every and local.sent % bad_every == 0:
            return bad_request()
        tensor = http.InferInput("image", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        mask = local.client.infer(name, [tensor]).as_numpy("mask")
        if not np.array_equal(mask[0], expected):
            raise AssertionError("served mask differs from the runtime's")
        with lock:
            counts["good"] += 1
        return mask

    return call, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an export; default: the small U-Net")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument(
        "--bad-every", type=int, default=0, help="every Nth Triton request a corrupt file (0: none)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or _small_unet(Path(tmp))
        image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
        model = open_model(model_path, provider="cpu")
        expected = model.predict(image)
        local = [load(lambda: model.predict(image), n, args.seconds) for n in args.concurrency]
        options = ServeOptions(
            port=free_port(),
            grpc_port=free_port(),
            max_batch=args.max_batch,
            instances=args.instances,
        )
        name = Path(model_path).stem
        with triton_server(model_path, options):
            url = f"127.0.0.1:{options.port}"
            call, counts = triton_call(url, name, image, expected, args.bad_every)
            call()  # the first answer, checked before timing
            served = [load(call, n, args.seconds) for n in args.concurrency]
    report = {
        "model": "unet small (features 16-32-64-128), random weights"
        if not args.model
        else str(args.model),
        "image": f"{args.size}x{args.size} RGB uint8",
        "seconds_per_level": args.seconds,
        "triton": {
            "max_batch": args.max_batch,
            "instances": args.instances,
            "bad_every": args.bad_every,
            "answers": counts,  # good: mask checked equal to the runtime's; bad_400: refused
            "levels": served,
        },
        "in_process": {"levels": local},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
