"""Does writing for the oldest supported onnxruntime cost speed? Same model, same run.

    python -m segdeploy.export.target_check build 'ort>=1.16'   # once
    python benchmarks/target_latency.py [--arch unet --variant small] [--size 256] [--rounds 7]
                                        [--seconds 2] [--threads 1] [--out DIR]

One untrained checkpoint (torch seed 0) is exported twice: with the default target ``ort>=1.16``
(IR 9, opset 18) and with ``--target ort --opset 23`` (the installed onnxruntime: IR 10, the
newest opset both the exporter and this onnxruntime write and read). Three engines then take
turns on the same float32 input (batch 1, ``--size`` square), ``--threads`` intra-op threads:

* ``default_on_current``: the default file on the installed onnxruntime;
* ``newest_on_current``: the opset-23 file on the installed onnxruntime;
* ``default_on_1.16.3``: the default file on onnxruntime 1.16.3 (its venv, a subprocess that
  times the same way).

Each round runs every engine for ``--seconds`` after 3 warm-up calls and keeps the median call;
the starting engine rotates from round to round so that drift on a shared machine hits all of
them. Reported: the median of the round medians and their range. JSON to ``--out/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segdeploy.core.card import ModelCard
from segdeploy.core.onnx_header import read_header
from segdeploy.core.targets import parse_target
from segdeploy.export import export_checkpoint
from segdeploy.export.target_check import installed_runtimes, runtime_env
from segdeploy.models import create_model, get_spec
from segdeploy.runtime.session import SessionOptions, create_session
from segdeploy.train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
#: Times one file in any environment with onnxruntime and numpy: prints the median ms.
TIMER = """
import sys, time, statistics, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2]); name = s.get_inputs()[0].name
for _ in range(3): s.run(None, {name: x})
times, end = [], time.perf_counter() + float(sys.argv[4])
while time.perf_counter() < end or len(times) < 5:
    t = time.perf_counter(); s.run(None, {name: x}); times.append(time.perf_counter() - t)
print(1000 * statistics.median(times))
"""


def time_here(path: Path, x: np.ndarray, threads: int, seconds: float) -> float:
    session = create_session(path, SessionOptions(provider="cpu", intra_op_threads=threads))
    name = session.get_inputs()[0].name
    for _ in range(3):
        session.run(None, {name: x})
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        started = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def time_in(python: Path, path: Path, x_path: Path, threads: int, seconds: float) -> float:
    done = subprocess.run(
        [str(python), "-c", TIMER, str(path), str(x_path), str(threads), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="unet")
    parser.add_argument("--variant", default="small")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--newest-opset", type=int, default=23)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compat"))
    args = parser.parse_args()
    env = runtime_env(parse_target("ort>=1.16"))
    if not env.ready:
        raise SystemExit(f"build the onnxruntime 1.16.3 venv first: {env.build_hint}")
    with tempfile.TemporaryDirectory(prefix="segdeploy-latency-") as tmp:
        folder = Path(tmp)
        spec = get_spec(args.arch)
        kwargs = spec.variant_kwargs(args.variant)
        torch.manual_seed(0)
        model = create_model(args.arch, num_classes=4, **kwargs).eval()
        card = ModelCard(
            arch=args.arch,
            task=spec.task,
            class_names=("background", "road", "vehicle", "pedestrian"),
            model_kwargs=kwargs,
            size_multiple=spec.size_multiple,
        )
        checkpoint = save_checkpoint(model, card, folder / "model.pt")
        default, newest = folder / "default.onnx", folder / "newest.onnx"
        shapes = [(1, 64, 64)]
        export_checkpoint(checkpoint, default, shapes=shapes, providers=["cpu"])
        export_checkpoint(
            checkpoint,
            newest,
            shapes=shapes,
            providers=["cpu"],
            target="ort",
            opset=args.newest_opset,
        )
        x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), np.float32)
        np.save(folder / "x.npy", x)
        engines = {
            "default_on_current": lambda: time_here(default, x, args.threads, args.seconds),
            "newest_on_current": lambda: time_here(newest, x, args.threads, args.seconds),
            f"default_on_{env.release}": lambda: time_in(
                env.python, default, folder / "x.npy", args.threads, args.seconds
            ),
        }
        names = list(engines)
        rounds: dict[str, list[float]] = {name: [] for name in names}
        for index in range(args.rounds):
            order = names[index % len(names) :] + names[: index % len(names)]
            for name in order:
                rounds[name].append(engines[name]())
            print(index, {n: round(rounds[n][-1], 2) for n in names}, flush=True)
        formats = {
            "default": _format(default),
            "newest": _format(newest),
        }
    result = {
        "model": f"{args.arch} {args.variant}",
        "input": [1, 3, args.size, args.size],
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds_per_engine_round": args.seconds,
        "machine": platform.processor() or platform.machine(),
        "onnxruntime": installed_runtimes().get("ort"),
        "files": formats,
        "ms": {
            name: {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "rounds": values,
            }
            for name, values in rounds.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"latency-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, value in result["ms"].items():
        print(f"{name}: {value['median']:.2f} ms (rounds {value['min']:.2f}-{value['max']:.2f})")


def _format(path: Path) -> dict:
    header = read_header(path)
    return {"ir_version": header.ir_version, "opset": header.opset}


if __name__ == "__main__":
    main()
