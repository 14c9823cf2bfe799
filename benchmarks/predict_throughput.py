"""``segdeploy predict``'s whole command against the bare session, on a folder of JPEG photos.

Bare session: ``model.run_batch`` on inputs decoded, normalised and padded beforehand (nothing
but ONNX Runtime). Whole command: :func:`segdeploy.runtime.files.predict_files`, what
``segdeploy predict DIR --out OUT`` runs: decoding, the input contract, the session, argmax and
writing palette PNGs. Both run on the same photos in alternating rounds in one process; the
result is the median images/s of each with its range, and their ratio per round.

    .venv/bin/python benchmarks/predict_throughput.py [--images 120] [--rounds 5]

Writes ``benchmarks/results/predict/<stamp>.json``. The model is the default U-Net (``small``)
with random weights (speed does not depend on them), exported by segdeploy; the photos are
640x480 crops of scikit-image's photographs saved as JPEG (quality 90).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def export_small_unet(folder: Path) -> Path:
    import torch

    from segdeploy.core.card import ModelCard
    from segdeploy.export import export_checkpoint
    from segdeploy.models import create_model, get_spec
    from segdeploy.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    kwargs = get_spec("unet").variant_kwargs("small")
    card = ModelCard("unet", "segmentation", ("a", "b", "c", "d"), model_kwargs=kwargs)
    save_checkpoint(create_model("unet", 4, **kwargs), card, folder / "unet.pt")
    export_checkpoint(folder / "unet.pt", folder / "unet.onnx")
    return folder / "unet.onnx"


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
    args = parser.parse_args()
    from segdeploy.runtime import open_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = write_photos(work / "photos", args.images)
        model = open_model(export_small_unet(work), provider="cpu")
        inputs = prepared_inputs(model, paths)
        model.run_batch(inputs[0])  # warm-up
        bare, whole = [], []
        for _ in range(args.rounds):
            bare.append(len(paths) / bare_session_seconds(model, inputs))
            whole.append(len(paths) / whole_command_seconds(model, paths, work / "masks"))
    ratios = [w / b for w, b in zip(whole, bare, strict=True)]
    result = {
        "machine": {"cpus": os.cpu_count()},
        "images": args.images,
        "rounds": args.rounds,
        "bare_session_images_per_s": _stats(bare),
        "whole_command_images_per_s": _stats(whole),
        "whole_over_bare": _stats(ratios),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
