"""The whole pipeline on built-in synthetic data, as ``segdeploy demo`` runs it.

train a small U-Net -> export to ONNX behind the parity gate -> predict masks with the torch-free
runtime -> (when available) benchmark against PyTorch. Every step is the same library call the
individual commands make; the demo only chooses the arguments and the folder layout:

    <workdir>/unet.pt            checkpoint with its model card
    exports/unet.onnx            the export (+ unet.parity.json)
    <workdir>/samples/*.png      synthetic images the model has never seen
    <workdir>/predictions/*.png  palette masks and overlays
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from segdeploy.core.artifacts import EXPORTS_FOLDER
from segdeploy.data.synthetic import render_road_scene


@dataclass
class DemoConfig:
    """What ``segdeploy demo`` runs: the one home of its defaults (the command reads them)."""

    workdir: Path = Path("runs/demo")
    exports: Path = EXPORTS_FOLDER
    # 10 epochs: what the README's timing of the demo measured.
    epochs: int = 10
    img_size: int = 128
    samples: int = 4
    seed: int = 0
    #: Time budget per engine and case of the benchmark step (shorter than bench's own).
    bench_seconds: float = 2.0


def write_samples(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Render ``count`` held-out synthetic scenes (odd sizes included) as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        # Odd sizes show that the runtime pads to multiples of 16 and crops back.
        height, width = (size, size) if index % 2 == 0 else (size + 16 * 3, size + 16 * 5)
        image, _ = render_road_scene(index, height, width, seed=seed + 99_000)
        if index % 2:
            image = image[: height - 5, : width - 3]
        path = folder / f"scene_{index:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def run_demo(config: DemoConfig, console) -> dict:
    """Run train -> export (parity gate) -> predict -> bench; returns what each step produced."""
    from segdeploy.export import export_checkpoint
    from segdeploy.runtime import open_model
    from segdeploy.runtime.files import predict_files
    from segdeploy.tools.bench import run_bench, write_results
    from segdeploy.tools.bench_chart import draw_chart
    from segdeploy.tools.bench_config import BenchConfig
    from segdeploy.train import TrainConfig, train
    from segdeploy.train.progress import RichTrainProgress

    workdir = config.workdir
    console.rule("1/4 train a small U-Net on synthetic road scenes")
    trained = train(
        TrainConfig(
            arch="unet",
            epochs=config.epochs,
            img_size=config.img_size,
            seed=config.seed,
            out=workdir / "unet.pt",
            # The demo owns its folder: each run replaces the last one's checkpoint.
            force=True,
        ),
        progress=RichTrainProgress(console),
    )
    console.rule("2/4 export to ONNX behind the parity gate")
    exported = export_checkpoint(trained.checkpoint, out=config.exports / "unet.onnx", force=True)
    console.rule("3/4 predict held-out images with the torch-free runtime")
    samples = write_samples(workdir / "samples", config.samples, config.img_size, config.seed)
    model = open_model(exported.onnx_path, provider="auto")
    predicted = predict_files(model, samples, workdir / "predictions", overlay=True)
    console.rule("4/4 benchmark ONNX Runtime against PyTorch eager")
    cases, env = run_bench(
        BenchConfig(
            models=[exported.onnx_path], provider=model.provider, seconds=config.bench_seconds
        )
    )
    results = write_results(cases, env, workdir / "bench")
    draw_chart(cases, results.with_suffix(".png"))
    return {
        "trained": trained,
        "exported": exported,
        "predicted": predicted,
        "bench": (cases, env, results),
    }
