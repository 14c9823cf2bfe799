"""``segdeploy predict``'s whole command against the bare session, on a folder of JPEG photos.

Bare session: ``model.run_batch`` on inputs decoded, normalised and padded beforehand (nothing
but ONNX Runtime). Whole command: :func:`segdeploy.runtime.files.predict_files`, what
``segdeploy predict DIR --out OUT`` runs: decoding, the input contract, the session, argmax and
writing palette PNGs. Both run on the same photos in alternating rounds in one process; the
result is the median images/s of each with its range, and their ratio per round.

    .venv/bin/python benchmarks/predict_throughput.py [--images 120] [--rounds 5]
        [--threads 0] [--variant small]

Writes ``benchmarks/results/predict/<stamp>.json``. The model is the default U-Net (``small``)
trained for seconds on the texture set (:data:`RECIPE`), exported by segdeploy; the photos
are 640x480 crops of scikit-image's photographs saved as JPEG (quality 90).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "predict"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` 640x480 JPEG crops of scikit-image's photographs (each upscaled to cover)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sources = []
    for name in PHOTOS:
        image = Image.fromarray(getattr(data, name)()[..., :3])
        scale = max(700 / image.width, 540 / image.height, 1.0)
        sources.append(image.resize((round(image.width * scale), round(image.height * scale))))
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        left = int(rng.integers(0, source.width - 640 + 1))
        top = int(rng.integers(0, source.height - 480 + 1))
        path = folder / f"photo_{index:03d}.jpg"
        source.crop((left, top, left + 640, top + 480)).save(path, quality=90)
        paths.append(path)
    return paths


#: The default U-Net (``small``) trained briefly on the real-pixel texture set: its masks of the
#: photographs have the structure of real ones. A random-weight model paints nearly one class,
#: and masks like that cost a fraction of a real mask's time to write as PNG.
RECIPE = {"variant": "small", "img_size": 64, "epochs": 4, "batch_size": 4, "lr": 5e-3}


def trained_unet(folder: Path, variant: str = "small") -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from real_pixels import write_texture_segmentation

    from segdeploy.export import export_checkpoint
    from segdeploy.train import TrainConfig, train

    data = write_texture_segmentation(folder / "textures")
    checkpoint = folder / "unet.pt"
    recipe = {**RECIPE, "variant": variant}
    train(TrainConfig(arch="unet", data=str(data), out=checkpoint, seed=0, **recipe))
    export_checkpoint(checkpoint, folder / "unet.onnx", shapes=[(1, 64, 64)], providers=["cpu"])
    return folder / "unet.onnx"


def record_session_calls(model) -> list[float]:
    """Wrap ``model.run_batch`` so that every session call appends its seconds to the list
    returned: where the whole command's time goes (in the session, or between its calls)."""
    calls: list[float] = []
    run = model.run_batch

    def timed(batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        output = run(batch)
        calls.append(time.perf_counter() - started)
        return output

    model.run_batch = timed
    return calls


def bare_session_seconds(model, inputs: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for batch in inputs:
        model.run_batch(batch)
    return time.perf_counter() - started


def whole_command_seconds(model, paths: list[Path], out: Path) -> float:
    from segdeploy.runtime.files import predict_files

    for old in out.glob("*.png"):
        old.unlink()
    started = time.perf_counter()
    summary = predict_files(model, paths, out)
    seconds = time.perf_counter() - started
    assert summary.images == len(paths) and not summary.failed
    return seconds


def prepared_inputs(model, paths: list[Path]) -> list[np.ndarray]:
    from segdeploy.core.preprocess import normalise
    from segdeploy.runtime import load_image

    contract, multiple = model.card.input, model.card.size_multiple
    inputs = []
    for path in paths:
        pixels = contract.to_model_pixels(load_image(path), multiple)
        inputs.append(normalise(pixels[None], model.card.mean, model.card.std))
    return inputs


def _stats(values: list[float]) -> dict:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--variant", default="small", help="U-Net variant; tiny makes a fast session"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime's threads (0: all cores); fewer leave cores to the pipeline threads",
    )
    args = parser.parse_args()
    from segdeploy.runtime import open_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_photos(work / "photos", args.images)
        model = open_model(trained_unet(work, args.variant), provider="cpu", threads=args.threads)
        inputs = prepared_inputs(model, paths)
        model.run_batch(inputs[0])  # warm-up
        calls = record_session_calls(model)
        bare, whole, call_ms, between_ms = [], [], {"bare": [], "whole": []}, []
        for round_index in range(args.rounds):
            # Bare first in even rounds, whole first in odd ones: a machine that speeds up or
            # slows down during the run favours neither.
            for engine in ("bare", "whole")[:: 1 if round_index % 2 == 0 else -1]:
                calls.clear()
                if engine == "bare":
                    bare.append(len(paths) / bare_session_seconds(model, inputs))
                else:
                    seconds = whole_command_seconds(model, paths, work / "masks")
                    whole.append(len(paths) / seconds)
                    between_ms.append(1e3 * (seconds - sum(calls)) / len(paths))
                call_ms[engine].append(1e3 * statistics.median(calls))
        masks = sorted((work / "masks").glob("*.png"))
        mask_bytes = statistics.median(path.stat().st_size for path in masks)
        classes_seen = statistics.median(len(np.unique(np.asarray(Image.open(p)))) for p in masks)
    ratios = [w / b for w, b in zip(whole, bare, strict=True)]
    result = {
        "machine": {"cpus": os.cpu_count()},
        "variant": args.variant,
        "session_threads": args.threads or os.cpu_count(),
        "images": args.images,
        "rounds": args.rounds,
        "bare_session_images_per_s": _stats(bare),
        "whole_command_images_per_s": _stats(whole),
        "whole_over_bare": _stats(ratios),
        # Where the whole command loses: its session calls run slower than the bare ones (the
        # pipeline threads share the cores), and time passes between them (the main thread).
        "session_call_ms": {name: _stats(values) for name, values in call_ms.items()},
        "whole_ms_outside_session_per_image": _stats(between_ms),
        "per_round": {
            "bare_images_per_s": [round(v, 3) for v in bare],
            "whole_images_per_s": [round(v, 3) for v in whole],
            "whole_over_bare": [round(v, 4) for v in ratios],
        },
        "mask_png_bytes_median": mask_bytes,
        "classes_per_mask_median": classes_seen,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
