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
