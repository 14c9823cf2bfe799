"""ONNX Runtime-vs-eager speedups per model and precision across saved bench runs.

    python benchmarks/sweeps/speedups.py benchmarks/results/bench/*-cpu.json

One bench run on a shared 2-core machine moves by several percent (PyTorch eager more than ONNX
Runtime), so benchmarks/README.md states the median and range over every run instead of one.
Only batch 1, CPU, no IO binding; models are grouped by architecture and variant (the card), so
``resnet18.onnx`` and ``resnet18_trained.onnx`` count as the same model.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(paths: list[str]) -> None:
    speedups: dict[tuple[str, str, str], list[tuple[float, str]]] = defaultdict(list)
    for path in paths:
        for case in json.loads(Path(path).read_text())["cases"]:
            # The earliest runs predate the io_binding field: they had none.
            if case["speedup"] and case["batch"] == 1 and not case.get("io_binding"):
                size = f"{case['height']}x{case['width']}"
                model = case["model"].removesuffix(".onnx").removesuffix("_trained")
                key = (model, case["precision"], size)
                speedups[key].append((case["speedup"], path.rsplit("/", 1)[-1]))
    print("| model | precision | input | runs | median speedup | range |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (model, precision, size), values in sorted(speedups.items()):
        ratios = [v for v, _ in values]
        print(
            f"| {model} | {precision} | {size} | {len(ratios)} | "
            f"{statistics.median(ratios):.2f}x | {min(ratios):.2f}-{max(ratios):.2f}x |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
