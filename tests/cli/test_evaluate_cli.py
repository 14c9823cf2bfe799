"""``segdeploy evaluate``: the tables, the JSON report and one sentence for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app

runner = CliRunner()


def test_evaluate_prints_both_tables_and_writes_the_report(tiny_checkpoints, unet_onnx, tmp_path):
    report = tmp_path / "evaluate.json"
    args = [str(tiny_checkpoints["unet"]), str(unet_onnx), "--data", "synthetic", "--count", "3"]
    result = runner.invoke(app, ["evaluate", *args, "--json", str(report)])
    assert result.exit_code == 0, result.output
    for heading in ("evaluate: mIoU on val", "IoU per class", "pixel acc", "fwIoU", "images/s"):
        assert heading in result.output
    assert "pt fp32" in result.output and "onnx fp32" in result.output
    for name in ("background", "road", "vehicle", "pedestrian"):
        assert name in result.output
    data = json.loads(report.read_text())
    assert data["data"]["source"] == "synthetic" and data["data"]["images"] == 3
    assert [m["format"] for m in data["models"]] == ["pt", "onnx"]
    assert abs(data["models"][1]["delta_points"]) < 0.1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--provider", "tpu"], "unknown provider 'tpu'"),
        (["--split", "test"], "unknown split 'test'"),
    ],
)
def test_bad_options_exit_1_with_one_sentence(unet_onnx, extra, message):
    result = runner.invoke(app, ["evaluate", str(unet_onnx), "--data", "synthetic", *extra])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_model_and_mixed_tasks_exit_1(unet_onnx, resnet_onnx, tmp_path):
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "x.onnx"), "--data", "synthetic"])
    assert missing.exit_code == 1 and "expected an existing file" in missing.output
    both = [str(unet_onnx), str(resnet_onnx)]
    mixed = runner.invoke(app, ["evaluate", *both, "--data", "synthetic"])
    assert mixed.exit_code == 1
    assert "models disagree" in mixed.output and "segmentation" in mixed.output


def test_data_classes_that_differ_from_the_card_exit_1(unet_onnx, texture_set):
    result = runner.invoke(app, ["evaluate", str(unet_onnx), "--data", str(texture_set)])
    assert result.exit_code == 1
    assert "differ from the model's" in result.output


def test_a_classifier_shows_accuracy_and_recall(resnet_onnx):
    args = ["evaluate", str(resnet_onnx), "--data", "synthetic", "--count", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "evaluate: accuracy on val" in result.output and "recall per class" in result.output
    assert "pixel acc" not in result.output


def test_an_existing_json_report_is_replaced_only_with_force(unet_onnx, tmp_path):
    report = tmp_path / "evaluate.json"
    report.write_text("an earlier report")
    args = [
        "evaluate",
        str(unet_onnx),
        "--data",
        "synthetic",
        "--count",
        "2",
        "--json",
        str(report),
    ]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1
    assert "evaluate.json already exists; pass --force" in refused.output
    assert "evaluate: mIoU" not in refused.output  # refused before evaluating
    assert report.read_text() == "an earlier report"
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(report.read_text())["data"]["images"] == 2


def test_a_json_report_onto_the_model_is_refused_even_with_force(unet_onnx, tmp_path):
    model = tmp_path / "unet.onnx"
    model.write_bytes(unet_onnx.read_bytes())
    args = ["evaluate", str(model), "--data", "synthetic", "--json", str(model), "--force"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "never replaces an input" in result.output
    assert model.read_bytes() == unet_onnx.read_bytes()
