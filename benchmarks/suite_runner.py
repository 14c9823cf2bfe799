"""``time_to_accuracy.py --suite``: segdeploy's defaults against a plain loop on every suite set.

Per set (``benchmarks/suite_data.py``), in alternating order, under one wall budget each:

* ``segdeploy train <arch> --data DIR`` with no tuning flags (unet for segmentation, resnet18 from
  scratch for classification; ``--mask-values`` only where the set's masks are 0/255, which is a
  description of the data) and ``--time`` set to the budget: the same wall time the plain loop
  gets, said the way a user says it, so segdeploy's schedule ends when the budget does (a run
  given ``--time`` or ``--epochs`` in ``extra`` keeps that). Its run is stopped at the budget
  if it has not finished; its curve
  comes from the ``.last.pt`` trainer history (epoch seconds) anchored at the moment the file was
  last written, which the runner watches.
* the plain loop (:func:`plain_budget`) at each learning rate of a small grid; the best of them is
  "the plain loop". It trains until the budget is spent, cosine-decaying the rate over the budget.

Reads: the plain loop's best metric (mIoU or accuracy), segdeploy's best metric within the plain
loop's wall time, their ratio, and segdeploy's time to reach the plain loop's best (``None``
when it never does within its run).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
LR_GRID = (1e-3, 3e-3, 1e-2)


# --------------------------------------------------------------------------------------------
# The plain loops (one process each, like the CLI: imports count for both)
# --------------------------------------------------------------------------------------------


def plain_budget(data: Path, task: str, lr: float, budget: float, started: float) -> list[dict]:
    """Train the plain loop for ``budget`` seconds; one ``{"seconds", "metric"}`` per epoch."""
    import numpy as np
    import torch
    from torch import nn

    from segdeploy.models import create_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train, val, classes, _ = _load(data, task)
    if task == "segmentation":
        model = create_model("unet", len(classes), features=[16, 32, 64, 128])
        crop, batch = 64, 8
    else:
        model = create_model("resnet18", len(classes))
        crop, batch = None, 32
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss(ignore_index=255)
    history = []
    while time.perf_counter() - started < budget:
        model.train()
        order = rng.permutation(len(train))
        for first in range(0, max(1, len(order) - batch + 1), batch):
            spent = (time.perf_counter() - started) / budget
            for group in optimizer.param_groups:  # cosine over the wall budget
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, spent)))
            x, y = _batch([train[i] for i in order[first : first + batch]], crop, rng)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        metric = _evaluate(model, val, task, len(classes))
        history.append({"seconds": time.perf_counter() - started, "metric": metric})
    return history


def _load(data: Path, task: str):
    from segdeploy.data.folders import ClassificationFiles, SegmentationFiles

    card = json.loads((data / "suite.json").read_text())
    if task == "segmentation":
        names = (data / "classes.txt").read_text().split()

        def files(split):
            return SegmentationFiles(
                data / split, len(names), class_names=names, mask_values=card["mask_values"]
            )
    else:
        names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())

        def files(split):
            return ClassificationFiles(data / split, size=(64, 64))

    train, val = files("train"), files("val")
    read = [[f.read(i) for i in range(len(f))] for f in (train, val)]
    return (*read, names, card.get("mask_values"))


MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _to_input(pixels):
    import torch

    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std


def _batch(items, crop, rng):
    import numpy as np
    import torch

    if crop is None:  # classification: (image, label), already 64x64
        x = np.stack([image for image, _ in items])
        flips = rng.random(len(items)) < 0.5
        x[flips] = x[flips, :, ::-1]
        return _to_input(x), torch.tensor([label for _, label in items])
    crops = []
    for image, mask in items:
        size = min(crop, image.shape[0], image.shape[1])
        top = rng.integers(0, image.shape[0] - size + 1)
        left = rng.integers(0, image.shape[1] - size + 1)
        window = (slice(top, top + size), slice(left, left + size))
        crops.append((image[window], mask[window]))
    size = min(c[1].shape[0] for c in crops)
    x = np.stack([c[0][:size, :size] for c in crops])
    y = torch.from_numpy(np.stack([c[1][:size, :size] for c in crops]).astype(np.int64))
    return _to_input(x), y


def _evaluate(model, val, task, k) -> float:
    import torch

    if task == "segmentation":
        from time_to_accuracy import _miou

        return _miou(model, val, list(range(k)))
    import numpy as np

    model.eval()
    with torch.inference_mode():
        x = _to_input(np.stack([image for image, _ in val]))
        predicted = torch.cat([model(part).argmax(1) for part in x.split(64)])
    labels = torch.tensor([label for _, label in val])
    return float((predicted == labels).float().mean())


# --------------------------------------------------------------------------------------------
# Driving the runs
# --------------------------------------------------------------------------------------------


def run_plain(data: Path, task: str, lr: float, budget: float) -> dict:
    command = [sys.executable, str(ROOT / "benchmarks" / "time_to_accuracy.py"), "--plain-budget"]
    command += ["--data", str(data), "--task", task, "--plain-lr", str(lr), "--budget", str(budget)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    history = json.loads(done.stdout.splitlines()[-1])
    ends = [h["seconds"] for h in history]
    # Offsets inside the process start after the interpreter: shift so the last epoch ends at
    # the process's end (can only make the curve look later).
    curve = _curve([wall - (ends[-1] - e) for e in ends], [h["metric"] for h in history])
    return {"lr": lr, "wall_seconds": round(wall, 2), "curve": curve}


def run_segdeploy(data: Path, card: dict, budget: float, work: Path, extra: list[str]) -> dict:
    import torch

    out = work / f"{card['arch']}.pt"
    last = out.with_suffix(".last.pt")
    segdeploy = Path(sys.executable).with_name("segdeploy")
    command = [str(segdeploy), "train", card["arch"], "--data", str(data), "--out", str(out)]
    if card.get("mask_values"):
        command += ["--mask-values", ",".join(map(str, card["mask_values"]))]
    if not {"--time", "--epochs"} & {flag.split("=")[0] for flag in extra}:
        command += ["--time", f"{budget:g}s"]
    command += ["--force", *extra]
    log = (work / "train.log").open("w")  # a file, not a pipe nobody reads until the end
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
        # A shell's background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: restore the default so the stop below reaches segdeploy.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    written, seen = None, None
    stopped = False
    while process.poll() is None:
        if last.exists() and last.stat().st_mtime_ns != seen:
            seen, written = last.stat().st_mtime_ns, time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if elapsed > budget and not stopped:
            os.killpg(process.pid, signal.SIGINT)  # segdeploy finishes its atomic writes
            stopped = True
        if elapsed > budget + 30:  # the files are written atomically: a kill leaves them whole
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(0.1)
    log.close()
    output = (work / "train.log").read_text()
    wall = time.perf_counter() - started
    if last.exists() and last.stat().st_mtime_ns != seen:
        written = wall
    if not last.exists():
        if not stopped:
            sys.exit(f"{' '.join(command)} failed:\n{output}")
        return {"wall_seconds": round(wall, 2), "curve": [], "stopped": True, "settings": {}}
    trainer = torch.load(last, weights_only=True)["trainer"]
    seconds = [h["seconds"] for h in trainer["history"]]
    ends = [written - sum(seconds[i + 1 :]) for i in range(len(seconds))]
    plan = {}
    for line in output.splitlines():
        if "epochs" in line and ("batch" in line or "crop" in line or "img" in line):
            plan["printed"] = line.strip()
            break
    return {
        "wall_seconds": round(wall, 2),
        "curve": _curve(ends, [h["metric"] for h in trainer["history"]]),
        "stopped": stopped,
        "settings": plan,
    }


def _curve(ends: list[float], metrics: list[float]) -> list[dict]:
    points, best = [], 0.0
    for end, metric in zip(ends, metrics, strict=True):
        best = max(best, metric)
        points.append({"seconds": round(end, 2), "best": round(best, 4)})
    return points


def summarise(task: str, plains: list[dict], ours: dict) -> dict:
    """Best plain run (over the learning-rate grid) against segdeploy within its wall time."""
    best_plain = max(plains, key=lambda p: max((c["best"] for c in p["curve"]), default=0))
    plain_best = max((c["best"] for c in best_plain["curve"]), default=0.0)
    limit = best_plain["wall_seconds"]
    within = max((c["best"] for c in ours["curve"] if c["seconds"] <= limit), default=0.0)
    reach = [c["seconds"] for c in ours["curve"] if c["best"] >= plain_best]
    return {
        "metric": "miou" if task == "segmentation" else "accuracy",
        "plain_best": plain_best,
        "plain_best_lr": best_plain["lr"],
        "plain_by_lr": {
            str(p["lr"]): max((c["best"] for c in p["curve"]), default=0.0) for p in plains
        },
        "plain_wall_seconds": limit,
        "segdeploy_best_within_plain_wall": within,
        "share_of_plain_best": round(within / plain_best, 4) if plain_best else None,
        "segdeploy_seconds_to_plain_best": reach[0] if reach else None,
        "segdeploy_epochs": len(ours["curve"]),
        "segdeploy_stopped_at_budget": ours["stopped"],
    }


def run_set(name: str, data: Path, budget: float, lrs, work: Path, extra: list[str]) -> dict:
    card = json.loads((data / "suite.json").read_text())
    plains, ours = [], None
    # Alternate: segdeploy between the plain runs, so load drifts touch both sides.
    order = [("plain", lr) for lr in lrs]
    order.insert(len(order) // 2, ("segdeploy", None))
    for kind, lr in order:
        print(f"  {name}: {kind} {lr or ''}", flush=True)
        if kind == "plain":
            plains.append(run_plain(data, card["task"], lr, budget))
        else:
            ours = run_segdeploy(data, card, budget, work / name, extra)
    return {
        "task": card["task"],
        "arch": card["arch"],
        "plain": plains,
        "segdeploy": ours,
        "summary": summarise(card["task"], plains, ours),
    }


def table(results: dict) -> str:
    rows = [
        "| set | status | metric | plain best (lr) | segdeploy within plain wall | share "
        "| segdeploy s to plain best | plain wall s |",
        "|---" * 8 + "|",
    ]
    from suite_data import SETS

    for name, r in results.items():
        s = r["summary"]
        reach = (
            "never"
            if s["segdeploy_seconds_to_plain_best"] is None
            else f"{s['segdeploy_seconds_to_plain_best']:.0f}"
        )
        rows.append(
            f"| {name} | {SETS[name].status} | {s['metric']} "
            f"| {s['plain_best']:.3f} ({s['plain_best_lr']:g}) "
            f"| {s['segdeploy_best_within_plain_wall']:.3f} | {s['share_of_plain_best']} | {reach} "
            f"| {s['plain_wall_seconds']:.0f} |"
        )
    return "\n".join(rows)


def draw(results: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        best_lr = r["summary"]["plain_best_lr"]
        for p in r["plain"]:
            style = "-" if p["lr"] == best_lr else ":"
            ax.step(
                [c["seconds"] for c in p["curve"]],
                [c["best"] for c in p["curve"]],
                style,
                where="post",
                label=f"plain lr {p['lr']:g}",
            )
        ax.step(
            [c["seconds"] for c in r["segdeploy"]["curve"]],
            [c["best"] for c in r["segdeploy"]["curve"]],
            where="post",
            marker=".",
            color="black",
            label="segdeploy defaults",
        )
        ax.set_title(name)
        ax.set_xlabel("wall s (2 shared CPU cores)")
        ax.set_ylabel(f"best val {r['summary']['metric']}")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def run_suite(names: list[str], budget: float, lrs, extra: list[str], results_dir: Path) -> dict:
    import tempfile

    from suite_data import build

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folders = build(names, work / "data")
        results = {}
        for name, data in folders.items():
            (work / name).mkdir()
            results[name] = run_set(name, data, budget, lrs, work, extra)
            print(table({name: results[name]}).splitlines()[-1], flush=True)
    record = {
        "machine": {"cpus": os.cpu_count()},
        "budget_seconds": budget,
        "lr_grid": list(lrs),
        "segdeploy_extra_flags": extra,
        "sets": results,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("suite-%Y%m%d-%H%M%S")
    (results_dir / f"{stamp}.json").write_text(json.dumps(record, indent=2) + "\n")
    (results_dir / f"{stamp}.md").write_text(table(results) + "\n")
    draw(results, results_dir / f"{stamp}.png")
    print(table(results))
    print(f"wrote {results_dir / stamp}.json, .md and .png")
    return record
