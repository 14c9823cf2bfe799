"""``export_checkpoint`` and ``verify_export``: artifacts, model card, the gate, and bad input."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading

import pytest

onnx = pytest.importorskip("onnx")

from segdeploy.core import artifacts  # noqa: E402
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard  # noqa: E402
from segdeploy.core.errors import ParityError, SegdeployError  # noqa: E402
from segdeploy.core.fileio import file_sha256  # noqa: E402
from segdeploy.export import (  # noqa: E402
    contract,
    export_checkpoint,
    exporter,
    verify_export,
)


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
    assert "unet.parity.rejected.json" in str(failure.value)
    rejected = json.loads(out.with_name("unet.parity.rejected.json").read_text())
    assert rejected["passed"] is False
    # Nothing under the name that describes a published unet.onnx, and no lock left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.parity.rejected.json"]


def _copy_pair(exported, folder):
    """A private copy of the module's passing export and its report, to be overwritten."""
    out = folder / "unet.onnx"
    shutil.copy(exported.onnx_path, out)
    shutil.copy(exported.report_path, folder / "unet.parity.json")
    return out


def test_a_failed_force_leaves_the_published_pair_as_it_was(
    exported, tiny_checkpoints, tmp_path, impossible_tolerance
):
    out = _copy_pair(exported, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ParityError, match="the export already there is unchanged"):
        export_checkpoint(tiny_checkpoints["unet"], out, force=True)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rejected = after.pop("unet.parity.rejected.json")
    assert after == before  # the old model and the report that describes it, untouched
    assert json.loads(before["unet.parity.json"])["passed"] is True
    assert json.loads(rejected)["passed"] is False


def _pair_is_consistent(out):
    """The report beside ``out`` was written by the export that wrote ``out``."""
    report = json.loads(out.with_name("unet.parity.json").read_text())
    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    return (
        report["passed"] is True
        and report["context"]["onnx"] == str(out)
        and report["context"]["checkpoint_sha256"] == props["segdeploy.checkpoint_sha256"]
    )


def test_a_second_export_to_the_same_path_is_refused_while_one_runs(
    tiny_checkpoints, tmp_path, monkeypatch
):
    out = tmp_path / "unet.onnx"
    inside, release = threading.Event(), threading.Event()
    real_check = exporter.check_parity

    def slow_check(*args, **kwargs):  # the first export waits here, holding the lock
        inside.set()
        release.wait(timeout=60)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(exporter, "check_parity", slow_check)
    results: list[object] = []
    first = threading.Thread(
        target=lambda: results.append(export_checkpoint(tiny_checkpoints["unet"], out))
    )
    first.start()
    try:
        assert inside.wait(timeout=60)
        with pytest.raises(SegdeployError, match=r"another export to .*unet\.onnx is in progress"):
            export_checkpoint(tiny_checkpoints["unet"], out, force=True)
    finally:
        release.set()
        first.join(timeout=120)
    assert len(results) == 1 and _pair_is_consistent(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.parity.json"]


def test_concurrent_exports_end_in_one_pair_or_a_clean_error(tiny_checkpoints, tmp_path):
    out = tmp_path / "unet.onnx"
    outcomes: list[object] = []

    def export() -> None:
        try:
            outcomes.append(export_checkpoint(tiny_checkpoints["unet"], out, force=True))
        except SegdeployError as err:
            outcomes.append(err)

    threads = [threading.Thread(target=export) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    errors = [o for o in outcomes if isinstance(o, SegdeployError)]
    assert len(outcomes) == 2 and len(errors) <= 1  # overlapping or one after the other
    assert all("is in progress" in str(e) for e in errors)
    assert _pair_is_consistent(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.parity.json"]


def test_a_stale_lock_is_taken_over_and_a_pass_clears_the_rejected_report(
    tiny_checkpoints, tmp_path
):
    out = tmp_path / "unet.onnx"
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = {"pid": int(gone.stdout), "host": socket.gethostname(), "started": 0}
    artifacts.lock_path(out).write_text(json.dumps(dead))
    artifacts.rejected_report_path(out).write_text('{"passed": false}')
    result = export_checkpoint(tiny_checkpoints["unet"], out, shapes=[(1, 16, 16)])
    assert result.report.passed and _pair_is_consistent(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.parity.json"]


def test_a_live_lock_is_respected(tiny_checkpoints, tmp_path):
    out = tmp_path / "unet.onnx"
    with exporter.export_lock(out) as lock:
        assert lock.is_file()
        with pytest.raises(SegdeployError, match=r"in progress \(process \d+ on .* holds"):
            export_checkpoint(tiny_checkpoints["unet"], out)
    assert not list(tmp_path.iterdir())


def test_gate_sessions_compute_fp32_and_refuse_only_compute_on_the_cpu(monkeypatch):
    from segdeploy.export import parity_gate
    from segdeploy.runtime.session import session_plan

    cuda = session_plan(parity_gate.gate_session_options("cuda"), "cuda")
    assert cuda.providers[0] == (
        "CUDAExecutionProvider",
        {"device_id": "0", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"},
    )  # no TF32: the gate verifies FP32
    cpu = session_plan(parity_gate.gate_session_options("cpu"), "cpu")
    assert cpu.providers == ["CPUExecutionProvider"]
    # ORT's CUDA provider puts shape arithmetic on the CPU on purpose: allowed; a Conv is not.
    placed = ["Shape", "Concat", "Gather"]
    monkeypatch.setattr(parity_gate, "cpu_placed_nodes", lambda model, options: placed)
    assert parity_gate.cuda_compute_on_cpu(b"") == []
    placed = ["Shape", "Conv", "Conv"]
    assert parity_gate.cuda_compute_on_cpu(b"") == ["Conv"]


def test_an_export_onto_its_checkpoint_is_refused_even_with_force(tiny_checkpoints, tmp_path):
    checkpoint = shutil.copy(tiny_checkpoints["unet"], tmp_path / "unet.onnx")  # a misnamed .pt
    before = checkpoint.read_bytes()
    with pytest.raises(SegdeployError, match="never replaces an input"):
        export_checkpoint(checkpoint, checkpoint, force=True)
    assert checkpoint.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx"]
