"""``segdeploy predict`` and the library behind it: file discovery, outputs, failures, safety."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
from segdeploy.runtime.files import collect_images, output_names, predict_files

runner = CliRunner()


def write_image(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with images at two levels, a non-image file, a hidden file and a corrupt PNG."""
    folder = tmp_path / "photos"
    write_image(folder / "a.png", 37, 53)
    write_image(folder / "b.jpg", 20, 33, mode="L", seed=1)
    write_image(folder / "nested" / "c.png", 48, 16, mode="RGBA", seed=2)
    (folder / "notes.txt").write_text("not an image")
    write_image(folder / ".hidden.png", 16, 16)
    return folder


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_collect_images_walks_folders_and_ignores_non_images(photos):
    found = collect_images([photos, photos / "a.png"])
    assert found == [photos / "a.png", photos / "b.jpg", photos / "nested" / "c.png"]
    assert output_names(found) == [Path("a"), Path("b"), Path("nested/c")]
    with pytest.raises(SegdeployError, match=r"notes\.txt"):
        collect_images([photos / "notes.txt"])
    with pytest.raises(SegdeployError, match="found nothing"):
        collect_images([photos / "missing"])
    (photos / "empty").mkdir()
    with pytest.raises(SegdeployError, match="found none"):
        collect_images([photos / "empty"])


def test_same_stem_with_different_extensions_keeps_both(tmp_path):
    paths = [write_image(tmp_path / "x.png", 16, 16), write_image(tmp_path / "x.jpg", 16, 16)]
    assert output_names(sorted(paths)) == [Path("x_jpg"), Path("x_png")]


def test_predict_writes_palette_masks_and_overlays(unet_onnx, photos, tmp_path):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = snapshot(photos)
    out = tmp_path / "masks"
    args = ["--out", str(out), "--overlay", "--provider", "cpu", "--batch-size", "2"]
    result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), *args])
    assert result.exit_code == 1, result.output
    assert "on cpu" in result.output
    assert "broken.png" in result.output  # the failure is listed
    sizes = {"a": (53, 37), "b": (33, 20), "nested/c": (16, 48)}
    for name, size in sizes.items():
        mask = Image.open(out / f"{name}.png")
        assert mask.mode == "P" and mask.size == size
        assert np.asarray(mask).max() < 4
        shown = Image.open(out / f"{name}_overlay.png")
        assert shown.mode == "RGB" and shown.size == size
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted([f"{n}.png" for n in sizes] + [f"{n}_overlay.png" for n in sizes])
    assert snapshot(photos) == before  # inputs untouched


def test_predict_library_reports_failures_and_rates(unet_onnx, photos, tmp_path):
    (photos / "zero.png").write_bytes(b"")
    model = open_model(unet_onnx, provider="cpu")
    seen = []
    summary = predict_files(
        model,
        collect_images([photos]),
        tmp_path / "out",
        progress_callback=lambda path, error: seen.append((path.name, error is None)),
    )
    assert summary.images == 3 and summary.provider == "cpu"
    assert [(p.name, "zero.png" in reason) for p, reason in summary.failed] == [("zero.png", True)]
    assert summary.seconds > 0 and summary.images_per_second > 0
    assert sorted(seen) == [("a.png", True), ("b.jpg", True), ("c.png", True), ("zero.png", False)]
    mask = np.asarray(Image.open(tmp_path / "out" / "a.png"))
    assert np.array_equal(mask, model.predict(photos / "a.png"))


def test_predict_classification_writes_one_csv(resnet_onnx, photos, tmp_path):
    out = tmp_path / "labels"
    args = ["predict", str(resnet_onnx), str(photos), "--out", str(out), "--overlay"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--overlay draws segmentation masks" in result.output
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    names = ("background", "road", "vehicle", "pedestrian")
    for row in rows:
        assert row["label"] in names
        assert sum(float(row[f"p_{n}"]) for n in names) == pytest.approx(1.0, abs=1e-4)
    assert [p.name for p in out.iterdir()] == ["predictions.csv"]  # no temporary files left


def test_output_folder_that_is_a_file(unet_onnx, photos, tmp_path):
    blocker = tmp_path / "masks"
    blocker.write_text("a file")
    result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(blocker)])
    assert result.exit_code == 1
    assert "expected a folder, found a file" in result.output
    assert "predicting" not in result.output  # refused before any image was run
    assert blocker.read_text() == "a file"


def test_output_folder_inside_the_inputs(unet_onnx, photos):
    before = snapshot(photos)
    out = photos / "masks"
    for _ in range(2):  # the second run must not predict the first run's masks
        result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "3 images" in result.output
    assert {p: b for p, b in snapshot(photos).items() if out not in p.parents} == before
    assert sorted(p.name for p in out.rglob("*.png")) == ["a.png", "b.png", "c.png"]


def test_outputs_that_would_overwrite_inputs_are_refused(unet_onnx, photos):
    before = snapshot(photos)
    result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(photos)])
    assert result.exit_code == 1
    assert "would overwrite" in result.output and "a.png" in result.output
    assert "Traceback" not in result.output
    assert snapshot(photos) == before


def test_predict_refuses_a_missing_model_or_cuda_here(unet_onnx, photos, tmp_path):
    result = runner.invoke(app, ["predict", str(tmp_path / "x.onnx"), str(photos), "--out", "o"])
    assert result.exit_code == 1 and "x.onnx" in result.output
    from segdeploy.runtime import usable_providers

    if "cuda" not in usable_providers():
        args = ["--out", str(tmp_path / "o"), "--provider", "cuda"]
        result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), *args])
        assert result.exit_code == 1 and "only the CPU one runs" in result.output
