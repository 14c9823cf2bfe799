"""A variant belongs to the FP32 file it was made from: require_parent checks its sha256."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segdeploy.core.artifacts import PARENT_SHA256_KEY, PRECISION_KEY
from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import file_sha256
from segdeploy.runtime.variants import read_metadata, recorded_parent, require_parent


def write_onnx(path: Path, metadata: dict[str, str], name: str = "identity") -> Path:
    """A one-node ONNX file with ``metadata`` in its ``metadata_props``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.save(model, path)
    return path


@pytest.fixture
def family(tmp_path):
    """``(parent, variant)``: ``x.onnx`` and an ``x.int8.onnx`` that records it."""
    parent = write_onnx(tmp_path / "x.onnx", {}, name="parent")
    variant = write_onnx(
        tmp_path / "x.int8.onnx",
        {PRECISION_KEY: "int8", PARENT_SHA256_KEY: file_sha256(parent)},
    )
    return parent, variant


def test_a_variant_beside_its_parent_is_accepted(family):
    parent, variant = family
    require_parent(variant, parent)
    assert recorded_parent(variant) == file_sha256(parent)
    assert read_metadata(variant)[PRECISION_KEY] == "int8"


def test_a_variant_with_a_foreign_parent_is_refused_in_one_sentence(family, tmp_path):
    parent, variant = family
    write_onnx(parent, {"re-exported": "yes"}, name="another checkpoint")  # x.onnx replaced
    with pytest.raises(SegdeployError) as refused:
        require_parent(variant, parent)
    message = str(refused.value)
    assert "made from another FP32 export" in message and str(parent) in message
    assert "segdeploy quantize" in message and "\n" not in message


def test_a_copy_of_the_variant_next_to_another_export_is_refused(family, tmp_path):
    _, variant = family
    (tmp_path / "other").mkdir()
    other = write_onnx(tmp_path / "other" / "x.onnx", {}, name="other")
    moved = Path(shutil.copy(variant, tmp_path / "other" / "x.int8.onnx"))
    with pytest.raises(SegdeployError, match="another FP32 export"):
        require_parent(moved, other)


def test_a_variant_that_records_no_parent_is_refused(tmp_path):
    parent = write_onnx(tmp_path / "y.onnx", {})
    variant = write_onnx(tmp_path / "y.fp16.onnx", {PRECISION_KEY: "fp16"})
    with pytest.raises(SegdeployError, match="records no FP32 parent") as refused:
        require_parent(variant, parent)
    assert "segdeploy convert-fp16" in str(refused.value)


def test_a_missing_parent_or_variant_is_one_sentence(family, tmp_path):
    parent, variant = family
    with pytest.raises(SegdeployError, match="found nothing"):
        require_parent(variant, tmp_path / "gone.onnx")
    with pytest.raises(SegdeployError, match="does not exist"):
        require_parent(tmp_path / "gone.int8.onnx", parent)
    garbage = tmp_path / "garbage.int8.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(SegdeployError, match="not a readable ONNX model"):
        require_parent(garbage, parent)
