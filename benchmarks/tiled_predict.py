"""Tiled prediction of large images: peak RSS and seconds for 2000², 4000² and 8000² images.

    python benchmarks/tiled_predict.py                     # small U-Net, random weights
    python benchmarks/tiled_predict.py --model exports/unet.onnx --sizes 2000 4000

Each image is a PNG made of a real photograph (scikit-image's astronaut, mirrored to the size)
and runs in a fresh process, so that its peak memory is its own: that process opens the model,
decodes the file with segdeploy's loader (``load_image``) and predicts it with
``SegmentationModel.predict``, tiled at the default tile and overlap (``max_pixels=0``). Sizes
listed in ``--whole`` also run whole (``max_pixels=None``), for the memory tiling saves. Peaks
are Linux ``VmHWM``, reset between opening, decoding and predicting, so each step has its own.
Weights change neither speed nor memory, so the timed model has random weights; agreement of
tiled and whole-image masks needs a trained model: ``--agreement-model`` (an export), or
``--train-agreement-model`` (trains the tiny texture U-Net of ``tests/runtime/test_tiling.py``).

Results: ``benchmarks/results/tiling/<timestamp>.json``; ``peak_rss_mib`` is the process's peak
from start to end, ``predict_extra_mib`` what predicting added to the decoded image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).parent / "results" / "tiling"


def _status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start a new ``VmHWM`` peak from the current RSS (Linux >= 4.0, ``clear_refs`` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(model_path: str, image_path: str, whole: bool) -> dict:
    """Open, decode, predict, in this (fresh) process; figures as a dict (memory in MiB)."""
    from segdeploy.runtime import open_model
    from segdeploy.runtime.preprocess import load_image

    model = open_model(model_path, provider="cpu")
    # VmHWM so far covers this process since exec (``ru_maxrss`` would also count the parent
    # process that forked it, a torch process here).
    open_peak, opened = _status_mib("VmHWM"), _status_mib("VmRSS")
    _reset_peak()
    started = time.perf_counter()
    pixels = load_image(image_path, channels=model.card.in_channels)
    decoded = time.perf_counter()
    decode_peak, after_decode = _status_mib("VmHWM"), _status_mib("VmRSS")
    # "tiled" forces tiling at the default tile and overlap, whatever the size.
    options = {"max_pixels": None} if whole else {"max_pixels": 0}
    grid = model.tile_grid(*pixels.shape[:2], **options)
    _reset_peak()
    mask = model.predict(pixels, **options)
    finished = time.perf_counter()
    predict_peak = _status_mib("VmHWM")
    return {
        "height": int(mask.shape[0]),
        "width": int(mask.shape[1]),
        "mode": "whole" if whole else "tiled",
        "tile": grid.tile if grid else None,
        "overlap": grid.overlap if grid else None,
        "windows": grid.windows if grid else 1,
        "rss_after_open_mib": round(opened, 1),
        "decode_peak_rss_mib": round(decode_peak, 1),
        "rss_after_decode_mib": round(after_decode, 1),
        "predict_peak_rss_mib": round(predict_peak, 1),
        "predict_extra_mib": round(predict_peak - after_decode, 1),
        "peak_rss_mib": round(max(open_peak, decode_peak, predict_peak), 1),
        "decode_seconds": round(decoded - started, 3),
        "predict_seconds": round(finished - decoded, 3),
        "megapixels_per_second": round(mask.size / 1e6 / (finished - decoded), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def write_photo(path: Path, size: int) -> Path:
    """A ``size`` x ``size`` PNG of the astronaut photograph, mirrored (real pixels)."""
    from skimage import data

    photo = data.astronaut()  # (512, 512, 3)
    tile = np.concatenate([photo, photo[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[::-1]], axis=0)  # (1024, 1024, 3), seamless
    reps = -(-size // tile.shape[0])
    pixels = np.tile(tile, (reps, reps, 1))[:size, :size]
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def random_unet(folder: Path, variant: str) -> Path:
    """Export a random-weight U-Net of ``variant`` (needs the training extras: torch)."""
    import torch

    from segdeploy.core.card import ModelCard
    from segdeploy.export import export_checkpoint
    from segdeploy.models import create_model, get_spec
    from segdeploy.train.checkpoint import save_checkpoint

    kwargs = get_spec("unet").variant_kwargs(variant)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, **kwargs).eval()
    card = ModelCard(
        arch="unet",
        task="segmentation",
        class_names=("background", "road", "vehicle", "pedestrian"),
        model_kwargs=kwargs,
    )
    checkpoint = save_checkpoint(model, card, folder / f"unet_{variant}.pt")
    out = folder / f"unet_{variant}.onnx"
    export_checkpoint(checkpoint, out=out, shapes=[(1, 64, 64)], providers=["cpu"])
    return out


def run_child(model: Path, image: Path, whole: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(model), str(image)]
    result = subprocess.run(
        [*command, *(["--child-whole"] if whole else [])], capture_output=True, text=True
    )
    if result.returncode != 0:
        return {"mode": "whole" if whole else "tiled", "error": result.stderr.strip()[-500:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


#: The tiny texture U-Net that tests/runtime/test_tiling.py trains (real pixels, 4 classes).
AGREEMENT_RECIPE = {"variant": "tiny", "img_size": 64, "epochs": 10, "batch_size": 4, "lr": 5e-3}


def train_texture_unet(folder: Path) -> Path:
    """Train and export :data:`AGREEMENT_RECIPE` on the texture set (needs torch)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from real_pixels import write_texture_segmentation

    from segdeploy.export import export_checkpoint
    from segdeploy.train import TrainConfig, train

    data = write_texture_segmentation(folder / "textures")
    checkpoint, onnx_path = folder / "texture_unet.pt", folder / "texture_unet.onnx"
    train(TrainConfig(arch="unet", data=str(data), out=checkpoint, **AGREEMENT_RECIPE))
    export_checkpoint(checkpoint, out=onnx_path, shapes=[(1, 64, 64)], providers=["cpu"])
    return onnx_path


def agreement(model_path: Path, size: int) -> dict:
    """Tiled vs whole-image masks of a real-pixel texture scene at ``size``² (fits whole)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from real_pixels import _textures, texture_scene

    from segdeploy.runtime import open_model

    model = open_model(model_path, provider="cpu")
    textures = [np.pad(t, ((0, size), (0, size), (0, 0)), mode="reflect") for t in _textures()]
    image, truth = texture_scene(0, size, size, textures, seed=7)
    whole = model.predict(image, max_pixels=None)
    tiled = model.predict(image, max_pixels=0)  # tiled at the default tile and overlap
    return {
        "model": str(model_path),
        "size": size,
        "agreement": float((tiled == whole).mean()),
        "whole_pixel_accuracy": float((whole == truth).mean()),
        "tiled_pixel_accuracy": float((tiled == truth).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 4000, 8000])
    parser.add_argument("--whole", type=int, nargs="*", default=[2000], help="also run whole")
    parser.add_argument("--variant", default="small", help="U-Net variant when no --model")
    parser.add_argument("--model", type=Path, help="an export to time instead")
    parser.add_argument("--agreement-model", type=Path, help="a trained export")
    parser.add_argument("--train-agreement-model", action="store_true")
    parser.add_argument("--agreement-size", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, whole=args.child_whole)))
        return
    from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE

    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.sizes:
            model = args.model or random_unet(Path(tmp), args.variant)
        for size in args.sizes:
            image = write_photo(Path(tmp) / f"photo_{size}.png", size)
            for whole in (False, True) if size in args.whole else (False,):
                runs.append({"size": size, **run_child(model, image, whole)})
                print(json.dumps(runs[-1]), flush=True)
            image.unlink()
        report = {
            "model": str(args.model) if args.model else f"unet {args.variant}, random weights",
            "defaults": {
                "tile": DEFAULT_TILE,
                "overlap": DEFAULT_OVERLAP,
                "max_pixels": DEFAULT_MAX_PIXELS,
            },
            "machine": {"cpu_count": _cpu_count(), "python": platform.python_version()},
            "command": " ".join(["python", *sys.argv]),
            "runs": runs,
        }
        agreement_model = args.agreement_model
        if args.train_agreement_model:
            agreement_model = train_texture_unet(Path(tmp))
        if agreement_model:
            report["agreement"] = agreement(agreement_model, args.agreement_size)
            if args.train_agreement_model:
                report["agreement"]["model"] = f"texture U-Net trained here: {AGREEMENT_RECIPE}"
            print(json.dumps(report["agreement"]))
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
