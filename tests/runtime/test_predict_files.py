"""``collect_images`` and ``predict_files``: file discovery, outputs and failures (the command is
tested in tests/cli/test_predict_cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
from segdeploy.runtime.files import collect_images, output_names, plan_outputs, predict_files


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


def test_same_stem_with_different_extensions_keeps_both(tmp_path, write_image):
    paths = [write_image(tmp_path / "x.png", 16, 16), write_image(tmp_path / "x.jpg", 16, 16)]
    assert output_names(sorted(paths)) == [Path("x_jpg"), Path("x_png")]


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


def test_outputs_that_would_overwrite_inputs_are_refused_before_predicting(
    unet_onnx, photos, snapshot
):
    model = open_model(unet_onnx, provider="cpu")
    before = snapshot(photos)
    with pytest.raises(SegdeployError, match="would overwrite"):
        plan_outputs(model, collect_images([photos]), photos, overlay=False)
    assert snapshot(photos) == before


def _photo_crops(folder: Path) -> list[Path]:
    """Crops of scikit-image photographs: two fit one 64-pixel window (at different padded
    sizes), one does not; PNG and JPEG; and a file that is not an image."""
    skimage_data = pytest.importorskip("skimage.data")
    folder.mkdir()
    paths = []
    for name, (height, width), suffix in (
        ("astronaut", (48, 60), ".png"),
        ("coffee", (97, 131), ".jpg"),
        ("chelsea", (50, 64), ".jpg"),
    ):
        path = folder / f"{name}{suffix}"
        Image.fromarray(getattr(skimage_data, name)()[:height, 100 : 100 + width]).save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"not a png")
    return [*paths[:2], folder / "broken.png", paths[2]]


def test_batched_pipeline_with_tiled_whole_and_broken_images_matches_predict(unet_onnx, tmp_path):
    """One batch of 4: the reader prepares the images that run whole, the tiled one runs on the
    main thread, the argmax happens on the writer; every mask equals ``predict``'s, and progress
    comes in input order."""
    paths = _photo_crops(tmp_path / "photos")
    model = open_model(unet_onnx, provider="cpu")
    seen = []
    summary = predict_files(
        model,
        paths,
        tmp_path / "out",
        batch_size=4,
        tile=64,
        overlap=16,
        progress_callback=lambda path, error: seen.append(path.name),
    )
    assert summary.images == 3 and summary.tiled == 1 and len(summary.failed) == 1
    assert seen == ["broken.png", "astronaut.png", "coffee.jpg", "chelsea.jpg"]
    for path in (paths[0], paths[1], paths[3]):
        mask = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}.png"))
        assert np.array_equal(mask, model.predict(path, tile=64, overlap=16)), path.name


def test_batched_classifier_rows_match_predict(resnet_onnx, tmp_path):
    paths = _photo_crops(tmp_path / "photos")
    model = open_model(resnet_onnx, provider="cpu")
    summary = predict_files(model, paths, tmp_path / "out", batch_size=4)
    assert summary.images == 3 and len(summary.failed) == 1
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [str(p) for p in (paths[0], paths[1], paths[3])]
    for row, path in zip(rows, (paths[0], paths[1], paths[3]), strict=True):
        label, probabilities = model.predict(path)
        assert row.split(",")[1] == label
        np.testing.assert_allclose([float(v) for v in row.split(",")[2:]], probabilities, atol=1e-6)


def test_an_unexpected_error_of_one_file_skips_that_file_alone(
    unet_onnx, photos, tmp_path, monkeypatch
):
    # An exotic Pillow mode failing to convert while reading b.jpg, and any bug while writing
    # nested/c.png's mask: each is one sentence for its file; a.png is still written.
    from segdeploy.runtime import files, postprocess

    real_load, real_save = files.load_image, postprocess.save_mask_png

    def load(path, channels=3):
        if Path(path).name == "b.jpg":
            raise ValueError("conversion from I;16S to RGB not supported\nmore detail")
        return real_load(path, channels)

    def save(mask, colours, path):
        if Path(path).name.startswith(".c.png"):
            raise KeyError("palette")
        return real_save(mask, colours, path)

    monkeypatch.setattr(files, "load_image", load)
    monkeypatch.setattr(postprocess, "save_mask_png", save)
    paths = collect_images([photos])
    reported = []
    summary = predict_files(
        open_model(unet_onnx, provider="cpu"),
        paths,
        tmp_path / "out",
        batch_size=2,
        progress_callback=lambda path, error: reported.append((path.name, error)),
    )
    assert summary.images == 1 and summary.outputs == [tmp_path / "out" / "a.png"]
    failures = dict((path.name, reason) for path, reason in summary.failed)
    assert failures == {
        "b.jpg": f"image {photos / 'b.jpg'}: expected to read it, found ValueError: "
        "conversion from I;16S to RGB not supported",
        "c.png": f"image {photos / 'nested' / 'c.png'}: expected to predict and write it, "
        "found KeyError: 'palette'",
    }
    assert sorted(name for name, _ in reported) == ["a.png", "b.jpg", "c.png"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a.png", "nested"]


def test_a_cli_run_with_an_unexpected_error_exits_non_zero_without_a_traceback(
    unet_onnx, photos, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from segdeploy.cli import app
    from segdeploy.runtime import files

    real_load = files.load_image
    monkeypatch.setattr(
        files,
        "load_image",
        lambda path, channels=3: (
            (_ for _ in ()).throw(RuntimeError("boom"))
            if Path(path).name == "a.png"
            else real_load(path, channels)
        ),
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "expected to read it, found RuntimeError: boom" in result.output
    assert sorted(p.name for p in out.rglob("*.png")) == ["b.png", "c.png"]


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_an_output_disk_that_takes_no_more_stops_the_run_in_one_sentence(
    unet_onnx, resnet_onnx, photos, tmp_path, task
):
    # RLIMIT_FSIZE makes every write past 64 bytes fail with EFBIG, as a full disk fails with
    # ENOSPC: the run stops at the first file instead of skipping every remaining one.
    import os
    import subprocess
    import sys

    model = unet_onnx if task == "segmentation" else resnet_onnx
    out = tmp_path / "out"
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); "
        "from segdeploy.cli import main; sys.argv[0] = 'segdeploy'; main()"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "250"}
    ran = subprocess.run(
        [sys.executable, "-c", code, "predict", str(model), str(photos), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 1, output
    assert "Traceback" not in output
    what = "predictions.csv" if task == "classification" else f"the masks of {photos / 'a.png'}"
    assert f"output folder {out}: expected room to write {what}, found File too large" in output
    assert "(errno EFBIG); stopped after 0 images" in " ".join(output.split())
    assert not [p for p in out.rglob("*") if p.is_file()]  # no half-written file left
