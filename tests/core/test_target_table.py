"""Targets as data (segdeploy.core.targets) and the onnx-free header reader, torch-free."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from segdeploy.core import targets
from segdeploy.core.errors import SegdeployError
from segdeploy.core.onnx_header import graph_sha256, identity_model, read_header
from segdeploy.core.targets import Target, parse_target, refusal


def _model(ir: int, opset: int, metadata: dict[str, str] | None = None) -> bytes:
    return identity_model(ir, opset, metadata)


def test_parse_target_names_the_release():
    assert parse_target("ort>=1.16") == Target("ort", (1, 16))
    assert parse_target("ort >= 1.18.1").min_version == (1, 18)
    assert parse_target("ort", {"ort": "1.31.1"}).spec == "ort>=1.31"
    assert parse_target("ort-web").spec == targets.DEFAULT_TARGET.replace("ort", "ort-web")
    assert parse_target("openvino>=2025.0").runtime == "openvino"


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("trt>=8", "expected one of ort, ort-web, openvino"),
        (
            "ort>=1.14",
            "older than the oldest release segdeploy supports and checks files on (1.15)",
        ),
        ("ort", "means the installed onnxruntime, and none is installed"),
    ],
)
def test_a_bad_target_is_one_sentence(spec, words):
    with pytest.raises(SegdeployError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_target(spec, {})


def test_the_table_rises_with_the_release():
    rows = targets.ORT_RELEASES
    assert [r.version for r in rows] == sorted(r.version for r in rows)
    assert all(
        a.max_ir <= b.max_ir and a.max_opset <= b.max_opset for a, b in itertools.pairwise(rows)
    )
    # What the issue is about: 1.16 opens IR 9, not the IR 10 torch writes.
    assert targets.release_of("ort", (1, 16)).max_ir == 9
    assert parse_target("ort>=1.16").max_ir == 9
    assert parse_target("ort>=1.20").max_ir == 10


def test_the_record_names_the_runtimes_that_open_the_file():
    record = json.loads(parse_target("ort>=1.16").record(9, 18))
    assert record["target"] == "ort>=1.16"
    assert record["runtimes"]["onnxruntime"] == ">=1.15"  # IR 9 / opset 18: 1.15 opens it too
    record = json.loads(parse_target("ort>=1.20").record(10, 18))
    assert record["runtimes"]["onnxruntime"] == ">=1.18"


def test_refusal_by_format_and_by_record():
    # An IR 10 file without a record, on 1.16.3: judged by the table.
    found = refusal("m.onnx", 10, 18, "onnxruntime", "1.16.3", None)
    assert found == (
        "m.onnx is ONNX IR 10, opset 18, and onnxruntime 1.16.3 opens IR 9 and opset 19 at "
        "most; export it again with --target ort>=1.16"
    )
    assert refusal("m.onnx", 9, 18, "onnxruntime", "1.16.3", None) is None
    assert refusal("m.onnx", 10, 18, "onnxruntime", "1.31.1", None) is None
    # A file whose record needs a newer runtime than the one here.
    record = {"target": "ort>=1.20", "runtimes": {"onnxruntime": ">=1.18"}}
    found = refusal("m.onnx", 10, 18, "onnxruntime", "1.17.3", record)
    assert "exported for onnxruntime >=1.18" in found and "--target ort>=1.17" in found
    # Older than the table: ORT's own error is what there is.
    assert refusal("m.onnx", 10, 18, "onnxruntime", "1.14.1", None) is None


def test_header_reader_reads_what_was_written(tmp_path):
    data = _model(9, 18, {"segdeploy.target": '{"target": "ort>=1.16"}', "a": "b"})
    header = read_header(data)
    (tmp_path / "m.onnx").write_bytes(data)
    assert read_header(tmp_path / "m.onnx") == header  # read from the file, seeking past the graph
    assert (header.ir_version, header.opset) == (9, 18)
    assert header.metadata == {"segdeploy.target": '{"target": "ort>=1.16"}', "a": "b"}
    assert graph_sha256(data) == hashlib.sha256(data).hexdigest()
    # Leaving one metadata entry out hashes the model serialized without it.
    assert (
        graph_sha256(data, without=("a",))
        == hashlib.sha256(
            _model(9, 18, {"segdeploy.target": '{"target": "ort>=1.16"}'})
        ).hexdigest()
    )


def test_header_reader_refuses_garbage(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(SegdeployError, match=r"bad\.onnx is not a readable ONNX model"):
        read_header(path)
    with pytest.raises(SegdeployError, match="does not exist"):
        read_header(tmp_path / "none.onnx")


def test_the_probe_model_opens_in_onnxruntime_at_the_ir_and_opset_asked():
    import onnxruntime as ort

    from segdeploy.core.onnx_header import identity_model, read_header

    data = identity_model(9, 17)
    header = read_header(data)
    assert (header.ir_version, header.opsets[""]) == (9, 17)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
