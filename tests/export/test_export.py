"""``export_checkpoint`` and ``verify_export``: artifacts, model card, the gate, and bad input."""

from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")

from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from segdeploy.core.errors import ParityError, SegdeployError  # noqa: E402
from segdeploy.export import contract, export_checkpoint, verify_export  # noqa: E402
from segdeploy.train.checkpoint import file_sha256  # noqa: E402


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "unet.onnx"
    return export_checkpoint(tiny_checkpoints["unet"], out)


def test_export_writes_a_self_describing_graph(exported, tiny_checkpoints):
    model = onnx.load(exported.onnx_path)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "16*h", "16*w"]
    props = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(props[ONNX_METADATA_KEY])
    assert card.arch == "unet" and card.num_classes == 4
    assert props["segdeploy.checkpoint_sha256"] == file_sha256(tiny_checkpoints["unet"])
    assert json.loads(props["segdeploy.export_shape"]) == [2, 3, 64, 64]
    assert exported.nodes_before == 53 and exported.report.passed


def test_export_writes_the_parity_report(exported):
    report = json.loads(exported.onnx_path.with_name("unet.parity.json").read_text())
    assert report["passed"] is True
    assert len(report["cases"]) >= 3
    shapes = {tuple(c["input_shape"]) for c in report["cases"]}
    assert (2, 3, 64, 64) not in shapes  # never only the traced shape
    assert any(s[0] > 1 for s in shapes) and any(s[2] != s[3] for s in shapes)


def test_existing_output_needs_force(exported, tiny_checkpoints):
    out = exported.onnx_path
    before = out.read_bytes()
    with pytest.raises(SegdeployError, match="already exists; pass --force"):
        export_checkpoint(tiny_checkpoints["unet"], out)
    assert out.read_bytes() == before


def test_verify_passes_and_catches_a_different_checkpoint(exported, tiny_checkpoints):
    out = exported.onnx_path
    assert verify_export(out, tiny_checkpoints["unet"], [(1, 32, 48)]).passed
    with pytest.raises(SegdeployError, match=r"holds a 'unet'.*'resnet18'"):
        verify_export(out, tiny_checkpoints["resnet18"])


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
    with pytest.raises(SegdeployError, match=message):
        export_checkpoint(source, out)
    assert not out.exists()


def test_unwritable_output_folder(tiny_checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(SegdeployError, match="cannot write to folder"):
        export_checkpoint(tiny_checkpoints["unet"], blocker / "m.onnx")


def test_shapes_the_model_cannot_take_are_refused_before_exporting(
    exported, tiny_checkpoints, tmp_path
):
    message = "size 7x7: 'unet' takes heights and widths that are multiples of 16"
    with pytest.raises(SegdeployError, match=message):
        export_checkpoint(tiny_checkpoints["unet"], tmp_path / "m.onnx", shapes=[(1, 7, 7)])
    assert not list(tmp_path.iterdir())  # neither the export nor a parity report
    with pytest.raises(SegdeployError, match=r"e\.g\. 96x96"):
        verify_export(exported.onnx_path, tiny_checkpoints["unet"], [(2, 100, 100)])


def test_an_opset_the_exporter_cannot_produce_is_refused(tiny_checkpoints, tmp_path):
    out = tmp_path / "old.onnx"
    with pytest.raises(SegdeployError, match="opset 11 was asked for, but the exporter produced"):
        export_checkpoint(tiny_checkpoints["unet"], out, opset=11)
    assert not out.exists()


@pytest.fixture
def impossible_tolerance(monkeypatch):
    """Make the FP32 segmentation tolerance impossible to meet, so the gate must refuse."""
    from segdeploy.core.parity import Tolerance

    segmentation = contract.CONTRACTS["segmentation"]
    impossible = {"fp32": Tolerance(atol=-1.0, rtol=0.0, min_argmax_agreement=1.0)}
    strict = type(segmentation)(**{**segmentation.__dict__, "tolerances": impossible})
    monkeypatch.setitem(contract.CONTRACTS, "segmentation", strict)


def test_failed_parity_leaves_no_onnx_file(tiny_checkpoints, tmp_path, impossible_tolerance):
    out = tmp_path / "unet.onnx"
    with pytest.raises(ParityError, match="disagrees with PyTorch, so") as failure:
        export_checkpoint(tiny_checkpoints["unet"], out)
    assert not out.exists()
    assert failure.value.report.passed is False  # the caller gets the layered report
    assert json.loads(out.with_name("unet.parity.json").read_text())["passed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.parity.json"]
