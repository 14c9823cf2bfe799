"""Where ``model.predict(path)`` spends its time: decode, normalise/pad, session run, crop/argmax.

    python benchmarks/sweeps/runtime_stages.py exports/unet.onnx [RUNS]

Renders one 512x512 synthetic road scene to a PNG in a temporary folder and prints the median of
each stage over RUNS (default 20) and the share of pre- and post-processing. The figures are in
benchmarks/README.md ("Runtime").
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from segdeploy.data.synthetic import render_road_scene
from segdeploy.runtime import load_image, open_model


def timed(call):
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1e3, result


def main(model_path: str, runs: int) -> None:
    model = open_model(model_path, provider="cpu")
    with tempfile.TemporaryDirectory() as folder:
        scene = Path(folder) / "scene512.png"
        Image.fromarray(render_road_scene(7, 512, 512, seed=42)[0]).save(scene)
        model.predict(scene)  # warm-up
        stages: dict[str, list[float]] = {k: [] for k in ("decode", "pre", "run", "post", "all")}
        for _ in range(runs):
            ms, image = timed(lambda: load_image(scene))
            stages["decode"].append(ms)
            ms, prepared = timed(lambda i=image: model.prepare([i]))  # the input contract
            stages["pre"].append(ms)
            ms, outputs = timed(lambda p=prepared: model.run_prepared(p))
            stages["run"].append(ms)
            ms, _ = timed(lambda out=outputs: model.finish(out))
            stages["post"].append(ms)
            stages["all"].append(timed(lambda: model.predict(scene))[0])
    m = {k: statistics.median(v) for k, v in stages.items()}
    around = m["decode"] + m["pre"] + m["post"]
    print(
        f"{model_path}: decode PNG {m['decode']:.2f} ms, normalise/pad {m['pre']:.2f} ms, "
        f"session run {m['run']:.1f} ms, crop/argmax {m['post']:.2f} ms; "
        f"pre+post share {around / (around + m['run']):.2%}; predict(path) {m['all']:.1f} ms"
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
