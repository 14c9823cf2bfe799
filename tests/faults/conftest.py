"""The bad-input and fault suite: shared fixtures, the checks every case makes, and the table.

Every case drives the real ``segdeploy`` command line, in this process through
``typer.testing.CliRunner`` (:func:`cli`) or as ``python -m segdeploy`` in a subprocess
(:func:`cli_process`, for signals, resource limits and concurrent processes), and checks what a
user who trusts segdeploy with their only copy of a model expects:

* bad input: a non-zero exit, ONE sentence on stderr that names the file, no traceback;
* nothing lost: the files that were there before are byte-identical after (sha256 of every file),
  and no half-written or temporary file is left that would break a rerun;
* where a result is produced, it is the right one.

A case records every problem it finds through the ``case`` fixture (it does not stop at the first
one) and fails at its end. At the end of the session the terminal summary prints one row per case,
``case -> outcome``, and the totals the issue asks for: tracebacks, silent wrong results, lost
files. With ``FAULTS_TABLE=path`` the table is also written to that file.

Run: ``pytest tests/faults`` (all), ``pytest tests/faults -m "not slow"`` (about 2 minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faultkit import CLASSES, FAILED, KINDS, LOST_FILES, MESSAGE, TRACEBACK, WRONG_RESULT, Case


@pytest.fixture
def case(request) -> Case:
    """The recorder of this case's problems; the case fails at its end if it found any."""
    return Case(request.node)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    recorder = item.funcargs.get("case") if hasattr(item, "funcargs") else None
    if isinstance(recorder, Case) and recorder.problems:
        lines = [f"[{kind}] {message}" for kind, message in recorder.problems]
        pytest.fail("\n".join(lines), pytrace=False)
    return result


# ---------------------------------------------------------------------------------------------
# The session-end table


_ROWS: dict[str, tuple[str, list[str], str]] = {}


def pytest_runtest_logreport(report):
    if "tests/faults/" not in report.nodeid.replace(os.sep, "/"):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        kinds = [p[1] for p in report.user_properties if p and p[0] == "fault"]
        first = [p[2] for p in report.user_properties if p and p[0] == "fault"][:1]
        if report.passed:
            outcome = "pass"
        elif report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            outcome = f"skipped ({reason})"
        elif kinds:
            outcome = "FAILS"
        else:
            outcome = "FAILS (error in setup)" if report.when == "setup" else "FAILS"
            crash = getattr(report.longrepr, "reprcrash", None)
            first = [crash.message if crash else str(report.longrepr)[-300:]]
        _ROWS[report.nodeid] = (outcome, sorted(set(kinds)), (first or [""])[0])


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    lines = _table()
    terminalreporter.section("fault suite: case -> outcome")
    for line in lines:
        terminalreporter.write_line(line)
    if os.environ.get("FAULTS_TABLE"):  # a copy of the table for a report
        Path(os.environ["FAULTS_TABLE"]).write_text("\n".join(lines) + "\n")


def _table() -> list[str]:
    """One line per case, then the totals."""
    lines = []
    write = lines.append
    width = max(len(_short(n)) for n in _ROWS)
    for nodeid, (outcome, kinds, first) in _ROWS.items():
        detail = f" [{'; '.join(kinds)}] {first.splitlines()[0][:160]}" if kinds else ""
        if not kinds and outcome.startswith("FAILS") and first:
            detail = f" {first.splitlines()[0][:160]}"
        write(f"{_short(nodeid):<{width}}  {outcome}{detail}")
    counts = {kind: sum(kind in row[1] for row in _ROWS.values()) for kind in KINDS}
    passed = sum(row[0] == "pass" for row in _ROWS.values())
    write(
        f"{len(_ROWS)} cases, {passed} pass; tracebacks {counts[TRACEBACK]}, silent wrong results "
        f"{counts[WRONG_RESULT]}, lost files {counts[LOST_FILES]}; wording {counts[MESSAGE]}, "
        f"other failures {counts[FAILED]}"
    )
    return lines


def _short(nodeid: str) -> str:
    return nodeid.replace(os.sep, "/").split("tests/faults/", 1)[-1]


# ---------------------------------------------------------------------------------------------
# Shared artifacts, built once per session


@pytest.fixture(scope="session")
def tiny_unet(tmp_path_factory) -> Path:
    """An untrained tiny U-Net checkpoint (4 classes)."""
    torch = pytest.importorskip("torch")
    from segdeploy.core.card import ModelCard
    from segdeploy.models import create_model, get_spec
    from segdeploy.train.checkpoint import save_checkpoint

    spec = get_spec("unet")
    kwargs = spec.variant_kwargs("tiny")
    torch.manual_seed(0)
    model = create_model("unet", num_classes=len(CLASSES), **kwargs).eval()
    card = ModelCard(
        arch="unet",
        task=spec.task,
        class_names=CLASSES,
        model_kwargs=kwargs,
        size_multiple=spec.size_multiple,
    )
    return save_checkpoint(model, card, tmp_path_factory.mktemp("faults_model") / "unet.pt")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_unet) -> Path:
    """The tiny U-Net's export (parity at 16x16 on the CPU), beside its checkpoint."""
    from segdeploy.export import export_checkpoint

    out = tiny_unet.with_suffix(".onnx")
    export_checkpoint(tiny_unet, out=out, shapes=[(1, 16, 16)], providers=["cpu"])
    return out


@pytest.fixture(scope="session")
def labelled(tmp_path_factory) -> Path:
    """A small real-pixel segmentation folder (train/ + val/, classes.txt; 8 + 4 images)."""
    pytest.importorskip("skimage")
    from real_pixels import write_texture_segmentation

    return write_texture_segmentation(tmp_path_factory.mktemp("faults_data"), train=8, val=4)


@pytest.fixture(scope="session")
def trained_onnx(labelled, tmp_path_factory) -> Path:
    """A tiny U-Net trained 5 epochs on :func:`labelled` and exported: its INT8 / FP16 variants
    pass their gates, so a rerun of ``quantize`` can succeed."""
    from real_pixels import train_texture_unet

    return train_texture_unet(labelled, tmp_path_factory.mktemp("faults_trained"), epochs=5)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A fresh folder whose name has a space and non-ASCII letters, as users' folders do."""
    folder = tmp_path / "mes modèles"
    folder.mkdir()
    return folder


@pytest.fixture
def onnx_copy(tiny_onnx, tmp_path) -> Path:
    """A private copy of the tiny export (a case may try to destroy it)."""
    folder = tmp_path / "exports"
    folder.mkdir(exist_ok=True)
    target = folder / "unet.onnx"
    target.write_bytes(tiny_onnx.read_bytes())
    return target


@pytest.fixture
def checkpoint_copy(tiny_unet, tmp_path) -> Path:
    target = tmp_path / "ckpt" / "unet.pt"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(tiny_unet.read_bytes())
    return target
