"""The end-to-end graph against the Python runtime's ``predict``: latency and agreement.

    python benchmarks/e2e_latency.py [--rounds 9] [--reps 5] [--out benchmarks/results/e2e]

Exports the default U-Net ('small', features 16..128, random weights) into a temporary folder,
writes its end-to-end graph (behind the parity gate), and times, for one 640x480 photograph
(scikit-image's ``coffee``, resized; a synthetic road scene without scikit-image) that both
already hold decoded:

* ``predict``: ``open_model(x.onnx).predict(pixels)``, the Python runtime (numpy padding and
  normalisation, the session, crop and argmax);
* ``e2e``: ``session.run`` of ``x.e2e.onnx`` on the uint8 pixels, with the same session options;
* ``model_only``: the export's session on the input already padded and normalised (what both
  of the others add their pre- and post-processing to).

The three alternate in rounds (the order flips each round) so that drift of a shared machine hits
both; each round's median per call is kept, and the JSON gives the median and range of those.
It also records pixel agreement of the masks, the largest score difference and the classes in
the mask (random weights: a mask of one class would make agreement say little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

import segdeploy
from segdeploy.core.card import ModelCard
from segdeploy.core.preprocess import normalise
from segdeploy.export import export_checkpoint
from segdeploy.export.end_to_end import export_end_to_end
from segdeploy.models import create_model, get_spec
from segdeploy.runtime import open_model
from segdeploy.runtime.session import SessionOptions, create_session
from segdeploy.train.checkpoint import save_checkpoint

HEIGHT, WIDTH = 480, 640


def photo() -> tuple[np.ndarray, str]:
    """A 640x480 RGB photograph and where it came from."""
    try:
        from skimage import data
    except ImportError:
        from segdeploy.data.synthetic import render_road_scene

        return render_road_scene(0, HEIGHT, WIDTH)[0], "synthetic road scene 0"
    resized = Image.fromarray(data.coffee()).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return np.asarray(resized), "skimage.data.coffee() resized to 640x480 (bilinear)"


def export_small_unet(folder: Path) -> Path:
    """The default U-Net variant with random weights (seed 0), exported behind the gate.

    The output layer's bias is zeroed: with random weights it otherwise decides every pixel
    (one class everywhere), and agreement of two one-class masks says nothing. Latency is the
    same either way.
    """
    spec = get_spec("unet")
    kwargs = spec.variant_kwargs(spec.default_variant)
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, **kwargs).eval()
    with torch.no_grad():
        model.outc.bias.zero_()
    card = ModelCard(
        arch="unet",
        task="segmentation",
        class_names=("background", "road", "vehicle", "pedestrian"),
        model_kwargs=kwargs,
    )
    checkpoint = save_checkpoint(model, card, folder / "unet_small.pt")
    return export_checkpoint(checkpoint, out=folder / "unet_small.onnx").onnx_path


def time_alternating(calls: dict, rounds: int, reps: int) -> dict[str, list[float]]:
    """Per-round median ms of each call, the calls taking turns (order flipped each round)."""
    for call in calls.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(3):
            call()
    medians: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            samples = []
            for _ in range(reps):
                started = time.perf_counter()
                calls[name]()
                samples.append(1000 * (time.perf_counter() - started))
            medians[name].append(statistics.median(samples))
    return medians


def summary(medians: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(medians), 2),
        "min_ms": round(min(medians), 2),
        "max_ms": round(max(medians), 2),
    }


def measure(onnx_path: Path, e2e_path: Path, pixels: np.ndarray, rounds: int, reps: int) -> dict:
    model = open_model(onnx_path, provider="cpu")
    session = create_session(e2e_path, SessionOptions(provider="cpu"))
    feed = {"image": pixels}
    # The model alone on input already padded and normalised: what both add to it.
    contract, multiple = model.card.input, model.card.size_multiple
    batch = normalise(
        contract.to_model_pixels(pixels, multiple)[None], model.card.mean, model.card.std
    )
    medians = time_alternating(
        {
            "predict": lambda: model.predict(pixels),
            "e2e": lambda: session.run(None, feed),
            "model_only": lambda: model.run_batch(batch),
        },
        rounds,
        reps,
    )
    expected, scores = model.predict(pixels), model.logits(pixels)
    mask = session.run(None, feed)[0]
    return {
        "predict": summary(medians["predict"]),
        "e2e": summary(medians["e2e"]),
        "model_only": summary(medians["model_only"]),
        "e2e_over_predict": round(
            statistics.median(medians["e2e"]) / statistics.median(medians["predict"]), 3
        ),
        "round_medians_ms": {k: [round(v, 2) for v in vs] for k, vs in medians.items()},
        "pixel_agreement": float(np.mean(mask == expected)),
        "pixels": int(expected.size),
        "mask_class_counts": np.bincount(expected.ravel(), minlength=4).tolist(),
        "max_abs_score_of_predict": float(np.max(np.abs(scores))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e"))
    args = parser.parse_args()
    pixels, source = photo()
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = export_small_unet(Path(folder))
        started = time.perf_counter()
        e2e = export_end_to_end(onnx_path)
        export_seconds = time.perf_counter() - started
        result = measure(onnx_path, e2e.path, pixels, args.rounds, args.reps)
    result |= {
        "model": "unet 'small' (features 16, 32, 64, 128), random weights (torch seed 0) with "
        "the output bias zeroed, FP32",
        "load_average_after": os.getloadavg(),
        "image": f"{WIDTH}x{HEIGHT} RGB uint8, decoded beforehand: {source}",
        "rounds": args.rounds,
        "reps_per_round": args.reps,
        "gate": e2e.report.to_dict()
        | {"seconds_to_build_gate_and_write": round(export_seconds, 2)},
        "provider": "cpu",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "onnxruntime": ort.__version__,
            "segdeploy": segdeploy.__version__,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-e2e-latency.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("predict", "e2e", "model_only", "e2e_over_predict")}))
    print(f"pixel agreement {result['pixel_agreement']:.6f}; wrote {path}")


if __name__ == "__main__":
    main()
