"""``segdeploy export`` / ``verify`` through the CLI: artifacts, model card, and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

onnx = pytest.importorskip("onnx")

from segdeploy.cli import app  # noqa: E402
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from segdeploy.train.checkpoint import file_sha256  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "unet.onnx"
    result = runner.invoke(app, ["export", str(tiny_checkpoints["unet"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_export_writes_a_self_describing_graph(exported, tiny_checkpoints):
    out, output = exported
    model = onnx.load(out)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "16*h", "16*w"]
    props = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(props[ONNX_METADATA_KEY])
    assert card.arch == "unet" and card.num_classes == 4
    assert props["segdeploy.checkpoint_sha256"] == file_sha256(tiny_checkpoints["unet"])
    assert json.loads(props["segdeploy.export_shape"]) == [2, 3, 64, 64]
    assert "nodes 53 -> " in output and "pass" in output


def test_export_writes_the_parity_report(exported):
    out, _ = exported
    report = json.loads(out.with_name("unet.parity.json").read_text())
    assert report["passed"] is True
    assert len(report["cases"]) >= 3
    shapes = {tuple(c["input_shape"]) for c in report["cases"]}
    assert (2, 3, 64, 64) not in shapes  # never only the traced shape
    assert any(s[0] > 1 for s in shapes) and any(s[2] != s[3] for s in shapes)


def test_existing_output_needs_force(exported, tiny_checkpoints):
    out, _ = exported
    before = out.read_bytes()
    result = runner.invoke(app, ["export", str(tiny_checkpoints["unet"]), "--out", str(out)])
    assert result.exit_code == 1
    assert "already exists; pass --force" in result.output
    assert out.read_bytes() == before


def test_verify_passes_and_catches_a_different_checkpoint(exported, tiny_checkpoints, tmp_path):
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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "is not a readable checkpoint"),
        (lambda p: p.write_bytes(b"hi\n"), "is not a readable checkpoint"),  # torch: KeyError
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_checkpoints_give_one_sentence(tmp_path, make, message):
    source = tmp_path / "model.pt"
    make(source)
    out = tmp_path / "out" / "model.onnx"
    result = runner.invoke(app, ["export", str(source), "--out", str(out)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_unwritable_output_folder(tiny_checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    result = runner.invoke(
        app, ["export", str(tiny_checkpoints["unet"]), "--out", str(blocker / "m.onnx")]
    )
    assert result.exit_code == 1 and "cannot write to folder" in result.output


def test_shapes_the_model_cannot_take_are_refused_before_exporting(
    exported, tiny_checkpoints, tmp_path
):
    out = tmp_path / "m.onnx"
    args = ["export", str(tiny_checkpoints["unet"]), "--out", str(out), "--shapes", "7x7"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "size 7x7: 'unet' takes heights and widths that are multiples of 16" in result.output
    assert not list(tmp_path.iterdir())  # neither the export nor a parity report
    args = ["verify", str(exported[0]), str(tiny_checkpoints["unet"]), "--shapes", "2x100x100"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "e.g. 96x96" in result.output


def test_an_opset_the_exporter_cannot_produce_is_refused(tiny_checkpoints, tmp_path):
    out = tmp_path / "old.onnx"
    args = ["export", str(tiny_checkpoints["unet"]), "--out", str(out), "--opset", "11"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "opset 11 was asked for, but the exporter produced opset 18" in result.output
    assert not out.exists()


def test_failed_parity_leaves_no_onnx_file(tiny_checkpoints, tmp_path, monkeypatch):
    import segdeploy.export as export_module
    from segdeploy.core.parity import Tolerance

    strict = dict(export_module.CONTRACTS)
    contract = strict["segmentation"]
    impossible = {"fp32": Tolerance(atol=-1.0, rtol=0.0, min_argmax_agreement=1.0)}
    monkeypatch.setitem(
        export_module.CONTRACTS,
        "segmentation",
        type(contract)(**{**contract.__dict__, "tolerances": impossible}),
    )
    out = tmp_path / "unet.onnx"
    result = runner.invoke(app, ["export", str(tiny_checkpoints["unet"]), "--out", str(out)])
    assert result.exit_code == 1
    assert "disagrees with PyTorch, so" in result.output
    assert not out.exists()
    assert json.loads(out.with_name("unet.parity.json").read_text())["passed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.parity.json"]


def test_info_shows_the_card_of_both_artifacts(exported, tiny_checkpoints):
    out, _ = exported
    onnx_info = runner.invoke(app, ["info", str(out)])
    assert onnx_info.exit_code == 0, onnx_info.output
    assert "checkpoint_sha256" in onnx_info.output and "pedestrian" in onnx_info.output
    pt_info = runner.invoke(app, ["info", str(tiny_checkpoints["unet"])])
    assert pt_info.exit_code == 0 and "features" in pt_info.output
    missing = runner.invoke(app, ["info", "nothing.onnx"])
    assert missing.exit_code == 1 and "nothing.onnx" in missing.output
