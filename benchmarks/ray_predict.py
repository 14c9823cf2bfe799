"""``segdeploy predict --engine ray`` against the local engine, on a folder of JPEG photos.

Runs :func:`segdeploy.runtime.files.predict_files` (the local engine, all cores) and
:func:`segdeploy.runtime.ray_engine.predict_files_ray` with 1 and 2 workers (each worker gets an
equal share of the cores) on the same photos, in alternating rounds, and checks that every Ray
output is byte for byte the local one. Ray is started once (its start-up is reported on its own);
each Ray run still includes starting its actors, which open the model.

    .venv/bin/python benchmarks/ray_predict.py [--images 60] [--rounds 3]

Writes ``benchmarks/results/ray/<stamp>.json``. The model is the default U-Net (``small``) with
random weights (speed does not depend on them); the photos are 640x480 crops of scikit-image's
photographs saved as JPEG (quality 90), as in ``benchmarks/predict_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# The same photos and model as predict_throughput.py (this folder is on sys.path when run).
from predict_throughput import _stats, export_small_unet, write_photos

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ray"


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def one_run(engine: str, onnx: Path, paths: list[Path], out: Path) -> float:
    """Images/s of one run of ``engine`` (``local``, ``ray1``, ``ray2``) into a fresh ``out``."""
    from segdeploy.runtime import open_model
    from segdeploy.runtime.files import predict_files
    from segdeploy.runtime.ray_engine import predict_files_ray

    for old in out.glob("*.png"):
        old.unlink()
    started = time.perf_counter()
    if engine == "local":
        summary = predict_files(open_model(onnx, provider="cpu"), paths, out)
    else:
        summary = predict_files_ray(onnx, paths, out, workers=int(engine[3:]), provider="cpu")
    seconds = time.perf_counter() - started
    assert summary.images == len(paths) and not summary.failed
    return len(paths) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    engines = ("local", "ray1", "ray2")
    rates: dict[str, list[float]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_photos(work / "photos", args.images)
        onnx = export_small_unet(work)
        started = time.perf_counter()
        ray.init("local", num_cpus=3, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        for _ in range(args.rounds):
            for engine in engines:
                rates[engine].append(one_run(engine, onnx, paths, work / engine))
        local = _files(work / "local")
        identical = {e: _files(work / e) == local for e in engines[1:]}
        ray.shutdown()
    result = {
        "machine": {"cpus": os.cpu_count()},
        "images": args.images,
        "image_size": [640, 480],
        "rounds": args.rounds,
        "ray_version": ray.__version__,
        "ray_init_seconds": round(ray_start, 2),
        "images_per_s": {engine: _stats(values) for engine, values in rates.items()},
        "byte_identical_to_local": identical,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
