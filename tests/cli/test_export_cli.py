"""``segdeploy export`` / ``verify`` / ``info``: exit codes and wording (the library is tested in
tests/export/test_export.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

pytest.importorskip("onnx")

from segdeploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "unet.onnx"
    result = runner.invoke(app, ["export", str(tiny_checkpoints["unet"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_export_prints_the_parity_table_and_node_counts(exported):
    _, output = exported
    assert "nodes 53 -> " in output and "pass" in output


def test_existing_output_is_one_sentence_and_exit_1(exported, tiny_checkpoints):
    out, _ = exported
    result = runner.invoke(app, ["export", str(tiny_checkpoints["unet"]), "--out", str(out)])
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.output


def test_verify_exit_codes(exported, tiny_checkpoints):
    out, _ = exported
    ok = runner.invoke(
        app, ["verify", str(out), str(tiny_checkpoints["unet"]), "--shapes", "32x48"]
    )
    assert ok.exit_code == 0, ok.output
    wrong = runner.invoke(app, ["verify", str(out), str(tiny_checkpoints["resnet18"])])
    assert wrong.exit_code == 1
    assert "holds a 'unet'" in wrong.output and "'resnet18'" in wrong.output
    bad_shape = runner.invoke(
        app, ["verify", str(out), str(tiny_checkpoints["unet"]), "--shapes", "big"]
    )
    assert bad_shape.exit_code == 1 and "cannot read shape 'big'" in bad_shape.output


def test_bad_input_is_one_sentence_without_traceback(tiny_checkpoints, tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["export", str(source), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert "is not a readable checkpoint" in result.output and "Traceback" not in result.output
    args = ["export", str(tiny_checkpoints["unet"]), "--out", str(tmp_path / "m.onnx")]
    result = runner.invoke(app, [*args, "--shapes", "7x7"])
    assert result.exit_code == 1
    assert "size 7x7: 'unet' takes heights and widths that are multiples of 16" in result.output


def test_info_shows_the_card_of_both_artifacts(exported, tiny_checkpoints):
    out, _ = exported
    onnx_info = runner.invoke(app, ["info", str(out)])
    assert onnx_info.exit_code == 0, onnx_info.output
    assert "checkpoint_sha256" in onnx_info.output and "pedestrian" in onnx_info.output
    pt_info = runner.invoke(app, ["info", str(tiny_checkpoints["unet"])])
    assert pt_info.exit_code == 0 and "features" in pt_info.output
    missing = runner.invoke(app, ["info", "nothing.onnx"])
    assert missing.exit_code == 1 and "nothing.onnx" in missing.output


def test_verify_file_alone_checks_its_hashes(exported, tmp_path):
    out, _ = exported
    ok = runner.invoke(app, ["verify", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "content sha256" in ok.output and "matches" in ok.output
    changed = tmp_path / "unet.onnx"
    data = bytearray(out.read_bytes())
    data[data.find(b"pedestrian")] ^= 0x20
    changed.write_bytes(bytes(data))
    bad = runner.invoke(app, ["verify", str(changed)])
    assert bad.exit_code == 1 and "was changed after segdeploy wrote it" in bad.output
    assert "Traceback" not in bad.output


def test_export_target_is_shown_and_checked(exported, tiny_checkpoints, tmp_path):
    out, output = exported
    assert "target ort>=1.16: checked on" in output
    info = runner.invoke(app, ["info", str(out)])
    assert '"onnxruntime": ">=1.15"' in info.output.replace("\n", "")
    args = ["export", str(tiny_checkpoints["unet"]), "--out", str(tmp_path / "m.onnx")]
    old = runner.invoke(app, [*args, "--target", "ort>=1.12"])
    assert old.exit_code == 1 and "the lowest target is ort>=1.15" in old.output
