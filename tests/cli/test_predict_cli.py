"""``segdeploy predict``: outputs, wording, exit codes and the safety of the inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app

runner = CliRunner()


def test_predict_writes_palette_masks_and_overlays(unet_onnx, photos, tmp_path, snapshot):
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


def test_output_folder_inside_the_inputs(unet_onnx, photos, snapshot):
    before = snapshot(photos)
    out = photos / "masks"
    for _ in range(2):  # the second run must not predict the first run's masks
        result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "3 images" in result.output
    assert {p: b for p, b in snapshot(photos).items() if out not in p.parents} == before
    assert sorted(p.name for p in out.rglob("*.png")) == ["a.png", "b.png", "c.png"]


def test_outputs_that_would_overwrite_inputs_are_refused(unet_onnx, photos, snapshot):
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

    if "cuda" in usable_providers():
        pytest.skip("CUDA works here; the rest checks the refusal on machines without it")
    args = ["--out", str(tmp_path / "o"), "--provider", "cuda"]
    result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), *args])
    assert result.exit_code == 1 and "only the CPU one runs" in result.output


def test_an_output_folder_that_links_to_the_inputs_is_refused(
    unet_onnx, photos, tmp_path, snapshot
):
    link = tmp_path / "masks"
    link.symlink_to(photos, target_is_directory=True)
    before = snapshot(photos)
    result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(link)])
    assert result.exit_code == 1 and "would overwrite" in result.output
    assert snapshot(photos) == before


def test_a_rerun_into_its_own_output_replaces_its_masks(unet_onnx, photos, tmp_path):
    out = tmp_path / "masks"
    args = ["predict", str(unet_onnx), str(photos), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    (out / "a.png").write_bytes(b"an older run's mask")
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert Image.open(out / "a.png").size == (53, 37)  # replaced by this run's mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "photos"]  # no lock left
    assert not [p for p in out.rglob(".*")]  # no temporary files


def test_a_second_predict_into_one_folder_is_refused_while_one_runs(unet_onnx, photos, tmp_path):
    from segdeploy.core.publish import lock

    out = tmp_path / "masks"
    with lock(out, "predict"):
        result = runner.invoke(app, ["predict", str(unet_onnx), str(photos), "--out", str(out)])
    assert result.exit_code == 1
    assert "another predict to" in result.output and "is in progress" in result.output
    assert not out.exists()
