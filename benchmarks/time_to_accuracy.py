"""Time to accuracy: ``segdeploy train unet --data DIR`` with no tuning flags against a plain,
hand-tuned PyTorch loop on the same real-photograph segmentation folder.

The plain loop is what an experienced user writes in 40 lines: the whole set decoded into memory
once, one random crop per image per epoch, the same U-Net widths (segdeploy's ``small`` variant),
plain cross-entropy, AdamW with a one-cycle schedule, no augmentation. Both validate every epoch
on every validation image at its own size (reflect-padded to 16, logits cropped back), so both
curves measure the same thing: best validation mIoU so far against wall seconds since the command
started (imports, data loading and checks included: the time a user waits).

Run from the repository root (about 15 minutes on 2 cores)::

    .venv/bin/python benchmarks/time_to_accuracy.py

It writes ``benchmarks/results/time_to_accuracy/<stamp>.json`` and ``.png``. The data set is
built from scikit-image's photographs and textures (``tests/real_pixels.py``, eight classes,
odd sizes, JPEG and PNG, palette and grey masks) unless ``--data`` names another folder with
``train/`` and ``val/``. Nothing here asserts a speed: it measures and reports.

``--suite [--sets a,b] [--budget SECONDS]`` runs the same comparison on the sets of
``benchmarks/suite_data.py`` under one wall budget per run, the plain loop at each rate of
``--lrs`` (see ``benchmarks/suite_runner.py``), and writes ``suite-<stamp>.json``, ``.md`` and
``.png``. ``--segdeploy-flag`` passes a flag to ``segdeploy train`` (e.g. ``--time=60``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy"


# --------------------------------------------------------------------------------------------
# The plain loop (runs in its own process, like the CLI: imports count for both)
# --------------------------------------------------------------------------------------------


def plain_loop(data: Path, epochs: int, lr: float, batch_size: int, crop: int) -> list[dict]:
    """Train the plain loop; one ``{"epoch", "seconds", "miou"}`` per epoch (seconds since
    the process started)."""
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from segdeploy.models import create_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classes = (data / "classes.txt").read_text().split()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def load(split: str) -> list[tuple[np.ndarray, np.ndarray]]:
        masks = sorted((data / split / "masks").glob("*.png"))
        images = {p.stem: p for p in (data / split / "images").iterdir()}
        return [
            (np.asarray(Image.open(images[m.stem]).convert("RGB")), np.asarray(Image.open(m)))
            for m in masks
        ]

    def to_input(pixels: np.ndarray) -> torch.Tensor:  # (B, H, W, 3) uint8 -> normalised
        return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std

    train, val = load("train"), load("val")
    model = create_model("unet", len(classes), features=[16, 32, 64, 128])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            crops = []
            for i in order[start : start + batch_size]:
                image, mask = train[i]
                top = rng.integers(0, image.shape[0] - crop + 1)
                left = rng.integers(0, image.shape[1] - crop + 1)
                window = (slice(top, top + crop), slice(left, left + crop))
                crops.append((image[window], mask[window]))
            x = to_input(np.stack([c[0] for c in crops]))
            y = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append(
            {"epoch": epoch, "seconds": time.perf_counter(), "miou": _miou(model, val, classes)}
        )
    return history


def _miou(model, val, classes) -> float:
    """mIoU over every validation image at its own size (reflect-padded to 16, then cropped)."""
    import numpy as np
    import torch

    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    k = len(classes)
    confusion = np.zeros((k, k), np.int64)
    model.eval()
    with torch.inference_mode():
        for image, mask in val:
            h, w = mask.shape
            padded = np.pad(image, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="reflect")
            x = torch.from_numpy(((padded / 255 - mean) / std).astype(np.float32))
            logits = model(x.permute(2, 0, 1)[None])[0, :, :h, :w]
            predicted = logits.argmax(0).numpy()
            keep = mask != 255
            confusion += np.bincount(
                mask[keep].astype(np.int64) * k + predicted[keep], minlength=k * k
            ).reshape(k, k)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    present = union > 0
    return float((np.diag(confusion)[present] / union[present]).mean())


# --------------------------------------------------------------------------------------------
# Driving both and drawing the curves
# --------------------------------------------------------------------------------------------


def _timed(command: list[str]) -> tuple[float, str]:
    """Run ``command``; its wall seconds and stdout (a failure stops the benchmark)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - started, done.stdout


def _curve(wall: float, epoch_ends: list[float], metrics: list[float]) -> list[dict]:
    """Best-so-far metric against seconds since the command started.

    Epoch end times are measured inside the process; everything else the command spent
    (interpreter start, imports, reading and checking the data, writing files) is placed before
    the first epoch, which can only make a curve look later, never earlier.
    """
    last = epoch_ends[-1]
    points, best = [], 0.0
    for end, metric in zip(epoch_ends, metrics, strict=True):
        best = max(best, metric)
        points.append({"seconds": round(wall - (last - end), 2), "best_miou": round(best, 4)})
    return points


def run_plain(data: Path, args) -> dict:
    command = [sys.executable, __file__, "--plain-only", "--data", str(data)]
    command += ["--plain-epochs", str(args.plain_epochs), "--plain-lr", str(args.plain_lr)]
    command += ["--plain-batch", str(args.plain_batch), "--plain-crop", str(args.plain_crop)]
    wall, stdout = _timed(command)
    history = json.loads(stdout.splitlines()[-1])
    ends = [h["seconds"] for h in history]
    epoch_seconds = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "wall_seconds": round(wall, 2),
        "curve": _curve(wall, ends, [h["miou"] for h in history]),
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "settings": {
            "epochs": args.plain_epochs,
            "lr": args.plain_lr,
            "batch_size": args.plain_batch,
            "crop": args.plain_crop,
        },
    }


def run_segdeploy(data: Path, work: Path) -> dict:
    import torch

    out = work / "unet.pt"
    segdeploy = Path(sys.executable).with_name("segdeploy")
    wall, _ = _timed([str(segdeploy), "train", "unet", "--data", str(data), "--out", str(out)])
    trainer = torch.load(out.with_suffix(".last.pt"), weights_only=True)["trainer"]
    card = torch.load(out, weights_only=True)["card"]
    card = json.loads(card) if isinstance(card, str) else card
    seconds = [h["seconds"] for h in trainer["history"]]
    ends = [sum(seconds[: i + 1]) for i in range(len(seconds))]
    return {
        "wall_seconds": round(wall, 2),
        "curve": _curve(wall, ends, [h["metric"] for h in trainer["history"]]),
        "epoch_seconds": [round(s, 3) for s in seconds],
        "settings": card["training"].get("plan", {}),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def summarise(plain: dict, ours: dict) -> dict:
    """The issue's two targets: best mIoU within the plain loop's wall time, and epoch cost."""
    plain_best = max(p["best_miou"] for p in plain["curve"])
    within = [p["best_miou"] for p in ours["curve"] if p["seconds"] <= plain["wall_seconds"]]
    ours_best_in_time = max(within, default=0.0)
    return {
        "plain_best_miou": plain_best,
        "segdeploy_best_miou": max(p["best_miou"] for p in ours["curve"]),
        "segdeploy_best_miou_within_plain_wall": ours_best_in_time,
        "share_of_plain_best": round(ours_best_in_time / plain_best, 4),
        "plain_wall_seconds": plain["wall_seconds"],
        "segdeploy_wall_seconds": ours["wall_seconds"],
        # An epoch of the plain loop excludes its first (nothing to subtract from); ours are
        # timed inside the loop. Medians over the run.
        "plain_epoch_median_seconds": round(_median(plain["epoch_seconds"]), 3),
        "segdeploy_epoch_median_seconds": round(_median(ours["epoch_seconds"]), 3),
    }


def draw(plain: dict, ours: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, run in (("plain PyTorch loop (hand-tuned)", plain), ("segdeploy defaults", ours)):
        xs = [p["seconds"] for p in run["curve"]]
        ys = [p["best_miou"] for p in run["curve"]]
        ax.step(xs, ys, where="post", marker=".", label=label)
    ax.set_xlabel("wall seconds since the command started (2 CPU cores)")
    ax.set_ylabel("best validation mIoU so far")
    ax.set_title("Time to accuracy on a real-photograph segmentation folder")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def _build_data(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from real_pixels import EIGHT_TEXTURE_CLASSES, write_texture_segmentation

    return write_texture_segmentation(work / "textures8", 160, 48, classes=EIGHT_TEXTURE_CLASSES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder with train/ and val/ (default: built)")
    parser.add_argument("--plain-epochs", type=int, default=40)
    parser.add_argument("--plain-lr", type=float, default=5e-3)
    parser.add_argument("--plain-batch", type=int, default=8)
    parser.add_argument("--plain-crop", type=int, default=64)
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plain-budget", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="segmentation", help=argparse.SUPPRESS)
    parser.add_argument("--suite", action="store_true", help="run benchmarks/suite_data.py sets")
    parser.add_argument("--sets", default="small_objects,binary_coins,photos22,few_images")
    parser.add_argument("--budget", type=float, default=75.0, help="wall seconds per run")
    parser.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="the plain loop's grid")
    parser.add_argument(
        "--segdeploy-flag",
        action="append",
        default=[],
        help="extra flag for segdeploy train (e.g. --time=60), repeatable",
    )
    args = parser.parse_args()
    if args.plain_budget or args.suite:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import suite_runner
    if args.plain_budget:
        started = time.perf_counter()
        history = suite_runner.plain_budget(
            args.data, args.task, args.plain_lr, args.budget, started
        )
        print(json.dumps(history))
        return
    if args.suite:
        lrs = [float(v) for v in args.lrs.split(",")]
        suite_runner.run_suite(args.sets.split(","), args.budget, lrs, args.segdeploy_flag, RESULTS)
        return
    if args.plain_only:
        started = time.perf_counter()
        history = plain_loop(
            args.data, args.plain_epochs, args.plain_lr, args.plain_batch, args.plain_crop
        )
        for record in history:
            record["seconds"] -= started
        print(json.dumps(history))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or _build_data(work)
        plain = run_plain(data, args)
        ours = run_segdeploy(data, work)
    result = {
        "machine": {"cpus": os.cpu_count()},
        "data": str(args.data or "tests/real_pixels.py: 8 texture classes, 160 train, 48 val"),
        "plain": plain,
        "segdeploy": ours,
        "summary": summarise(plain, ours),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    draw(plain, ours, RESULTS / f"{stamp}.png")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {RESULTS / stamp}.json and .png")


if __name__ == "__main__":
    main()
