"""segdeploy's training step and validation against a plain PyTorch loop, same model and batch.

Plain loop: the same architecture built by ``create_model`` (same seed), batches of the same
size and crop drawn beforehand from segdeploy's own training set into memory, cross-entropy,
AdamW and a LambdaLR step: nothing but the arithmetic. segdeploy: :func:`train_one_epoch` over
``--steps`` batches of the run's own loader (data pipeline, loss, clipping, scheduler,
progress to a non-terminal console, as ``segdeploy train`` prints in a pipe), and
:func:`validate` over the whole validation split. Both sides alternate in rounds within one
process; the result is the median seconds per step of each, its range and the ratio per round.

    .venv/bin/python benchmarks/train_step.py [--task cls|seg|both] [--rounds 3] [--steps 20]
        [--threads 0] [--profile]

Tasks: ``cls`` resnet18 on 1120 32x32 crops of ten scikit-image photographs (10 classes, 896
train / 224 held out: the shape of issue 21's classification set); ``seg`` the default U-Net
on the eight-texture set of ``tests/real_pixels.py`` (48 train, 24 val images). ``--profile``
prints cProfile's top entries of one segdeploy epoch slice + validation. Writes
``benchmarks/results/train_step/<stamp>.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "train_step"
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "chelsea",
    "coffee",
    "grass",
    "gravel",
    "hubble_deep_field",
    "rocket",
)


def write_photo_classes(root: Path, per_class: int = 112) -> Path:
    """``root/<photo>/NNN.png``: random 40-120 px windows of each photograph at 32x32."""
    from skimage import data

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        pixels = getattr(data, name)()
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        pixels = pixels[..., :3]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(40, 120))
            y = int(rng.integers(0, pixels.shape[0] - side))
            x = int(rng.integers(0, pixels.shape[1] - side))
            window = Image.fromarray(pixels[y : y + side, x : x + side]).resize((32, 32))
            window.save(root / name / f"{i:03d}.png")
    return root


class _FirstSteps:
    """The first ``steps`` batches of a loader, with the loader's ``sampler`` and length."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps, self.sampler = loader, steps, loader.sampler

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == self.steps:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.steps, len(self.loader))


def _setup(task: str, folder: Path, steps: int):
    from segdeploy.train import TrainConfig
    from segdeploy.train.loop import prepare_training

    if task == "cls":
        data, arch = write_photo_classes(folder / "cls"), "resnet18"
    else:
        from tests.real_pixels import EIGHT_TEXTURE_CLASSES, write_texture_segmentation

        data = write_texture_segmentation(
            folder / "seg", train=48, val=24, classes=EIGHT_TEXTURE_CLASSES
        )
        arch = "unet"
    config = TrainConfig(arch=arch, data=str(data), out=folder / f"{task}.pt", force=True)
    setup = prepare_training(config)
    setup.train_loader = _FirstSteps(setup.train_loader, steps)
    return setup


def _plain(setup, steps: int, seed: int = 0):
    """The plain loop's model, optimiser and ``steps`` in-memory batches of the same shape."""
    import torch
    from torch import nn

    from segdeploy.models import create_model

    torch.manual_seed(seed)
    model = create_model(
        setup.config.arch, num_classes=setup.card.num_classes, **setup.card.model_kwargs
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = [batch for batch in setup.train_loader]
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    return model, optimizer, scheduler, criterion, batches[:steps]


def plain_epoch(plain) -> float:
    """Seconds of the plain loop over its batches."""
    model, optimizer, scheduler, criterion, batches = plain
    model.train()
    started = time.perf_counter()
    for images, targets in batches:
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - started


def segdeploy_epoch(setup, progress) -> float:
    from segdeploy.train.loop import train_one_epoch

    started = time.perf_counter()
    train_one_epoch(setup, progress)
    return time.perf_counter() - started


def segdeploy_validation(setup) -> float:
    from segdeploy.train.loop import validate

    started = time.perf_counter()
    validate(setup)
    return time.perf_counter() - started


def per_image_validation(setup) -> float:
    """Seconds of the validation path before batching: one ``predict`` per image."""
    from segdeploy.train.inference import TorchPredictor
    from segdeploy.train.loop import predicted_label

    predictor = TorchPredictor(setup.model, setup.card, setup.config.device)
    started = time.perf_counter()
    for item in setup.val_items:
        predicted_label(predictor, item.pixels)
    return time.perf_counter() - started


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def profile_top(setup, progress, entries: int = 15) -> str:
    """cProfile's top ``entries`` by own time of one segdeploy epoch slice and validation."""
    profiler = cProfile.Profile()
    profiler.enable()
    segdeploy_epoch(setup, progress)
    segdeploy_validation(setup)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(entries)
    return out.getvalue()


def run_task(task: str, rounds: int, steps: int, profile: bool) -> dict:
    from rich.console import Console

    from segdeploy.train.progress import RichTrainProgress

    with tempfile.TemporaryDirectory() as tmp:
        setup = _setup(task, Path(tmp), steps)
        steps = len(setup.train_loader)
        plain = _plain(setup, steps)
        progress = RichTrainProgress(Console(file=io.StringIO()))
        progress.run_started(1, steps)
        progress.epoch_started(1, 1, steps)
        segdeploy_epoch(setup, progress), plain_epoch(plain)  # warm-up, not timed
        times: dict[str, list[float]] = {
            "segdeploy": [],
            "plain": [],
            "validation": [],
            "validation_per_image": [],
        }
        for _ in range(rounds):
            times["segdeploy"].append(segdeploy_epoch(setup, progress) / steps)
            times["plain"].append(plain_epoch(plain) / steps)
            times["validation"].append(segdeploy_validation(setup))
            if task == "cls":  # the same-run "before" of batched classification validation
                times["validation_per_image"].append(per_image_validation(setup))
        ratios = [s / p for s, p in zip(times["segdeploy"], times["plain"], strict=True)]
        result = {
            "task": task,
            "arch": setup.config.arch,
            "batch_size": setup.config.batch_size,
            "img_size": setup.size,
            "steps_per_round": steps,
            "steps_per_epoch": len(setup.train_loader.loader),
            "val_images": len(setup.val_items),
            "step_s": {k: _summary(times[k]) for k in ("segdeploy", "plain")},
            "ratio": _summary(ratios),
            "validation_s": _summary(times["validation"]),
            **(
                {"validation_per_image_s": _summary(times["validation_per_image"])}
                if task == "cls"
                else {}
            ),
        }
        if profile:
            result["profile"] = profile_top(setup, progress)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("cls", "seg", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks = ("cls", "seg") if args.task == "both" else (args.task,)
    results = [run_task(t, args.rounds, args.steps, args.profile) for t in tasks]
    for r in results:
        s, p, v = r["step_s"]["segdeploy"], r["step_s"]["plain"], r["validation_s"]
        print(
            f"{r['task']} {r['arch']} batch {r['batch_size']} at {r['img_size']}: step "
            f"segdeploy {s['median'] * 1e3:.0f} ms ({s['min'] * 1e3:.0f}-{s['max'] * 1e3:.0f}), "
            f"plain {p['median'] * 1e3:.0f} ms ({p['min'] * 1e3:.0f}-{p['max'] * 1e3:.0f}), "
            f"ratio {r['ratio']['median']:.2f} ({r['ratio']['min']:.2f}-{r['ratio']['max']:.2f}); "
            f"validation of {r['val_images']} images {v['median']:.2f} s "
            f"({v['min']:.2f}-{v['max']:.2f}); epoch of {r['steps_per_epoch']} steps"
        )
        if "validation_per_image_s" in r:
            o = r["validation_per_image_s"]
            print(f"  one image per forward: {o['median']:.2f} s ({o['min']:.2f}-{o['max']:.2f})")
        if "profile" in r:
            print(r["profile"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    record = {"torch_threads": torch.get_num_threads(), "argv": sys.argv[1:], "results": results}
    (RESULTS / f"{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
