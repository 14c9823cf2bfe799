"""``segdeploy demo``: the whole pipeline once, for real (one epoch)."""

from __future__ import annotations

import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--epochs", "1", "--workdir", "runs/demo"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs/demo/unet.pt").is_file()
    assert (tmp_path / "exports/unet.onnx").is_file()
    assert (tmp_path / "exports/unet.parity.json").is_file()
    masks = sorted((tmp_path / "runs/demo/predictions").glob("scene_*[0-9].png"))
    samples = sorted((tmp_path / "runs/demo/samples").glob("*.png"))
    assert len(masks) == len(samples) == 4
    for mask, sample in zip(masks, samples, strict=True):
        assert Image.open(mask).mode == "P"
        assert Image.open(mask).size == Image.open(sample).size
    assert list((tmp_path / "runs/demo/bench").glob("*.json"))
    assert "speedup" in result.output and "mIoU" in result.output
