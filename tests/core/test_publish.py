"""``segdeploy.core.publish``: build beside, rename into place, refuse what would lose data."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest

from segdeploy.core import publish
from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import atomic_write


def _write(text: str):
    return lambda tmp: tmp.write_text(text)


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------------
# Files: force, inputs, names
# ------------------------------------------------------------------------------------------------


def test_an_existing_file_is_refused_without_force_and_replaced_with_it(tmp_path):
    out = tmp_path / "report.json"
    publish.publish_file(out, _write("old"))
    with pytest.raises(SegdeployError, match=r"report\.json already exists; pass --force"):
        publish.publish_file(out, _write("new"))
    assert out.read_text() == "old"
    publish.publish_file(out, _write("new"), force=True)
    assert out.read_text() == "new"
    assert _names(tmp_path) == ["report.json"]  # no temporary file, no lock left


@pytest.mark.parametrize("how", ["same path", "symlink", "relative path"])
def test_an_output_that_is_an_input_is_refused_even_with_force(tmp_path, monkeypatch, how):
    source = tmp_path / "model.onnx"
    source.write_bytes(b"the only copy")
    out = {
        "same path": source,
        "symlink": tmp_path / "link.onnx",
        "relative path": tmp_path / "sub" / ".." / "model.onnx",
    }[how]
    if how == "symlink":
        out.symlink_to(source)
    (tmp_path / "sub").mkdir()
    with pytest.raises(SegdeployError, match="never replaces an input"):
        publish.publish_file(out, _write("variant"), force=True, inputs=[source])
    assert source.read_bytes() == b"the only copy"


def test_an_output_folder_that_holds_an_input_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    image = data / "images" / "a.png"
    image.write_bytes(b"pixels")
    with pytest.raises(SegdeployError, match="does not hold the input"):
        publish.publish_folder(data, lambda f: None, force=True, inputs=[image])
    assert image.read_bytes() == b"pixels"


def test_an_output_that_is_a_folder_is_refused_for_a_file(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(SegdeployError, match="expected a file name, found a folder"):
        publish.publish_file(tmp_path / "results", _write("x"), force=True)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "a\\b", "../x", " x"])
def test_names_that_are_not_one_plain_component_are_refused(name):
    with pytest.raises(SegdeployError, match="expected one plain file or folder name"):
        publish.check_name(name, "model name")


def test_plain_names_pass():
    for name in ("unet", "unet.int8", "my model", "modèle_1"):
        assert publish.check_name(name) == name


# ------------------------------------------------------------------------------------------------
# Interrupted and failed builds, pairs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure", [RuntimeError("a writer's bug"), OSError(27, "File too large"), KeyboardInterrupt()]
)
def test_a_failed_or_interrupted_build_leaves_the_old_file_and_nothing_else(tmp_path, failure):
    out = tmp_path / "unet.onnx"
    out.write_bytes(b"old model")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half a mod")
        raise failure

    expected = SegdeployError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected) as caught:
        publish.publish_file(out, half_then_fail, force=True)
    if expected is SegdeployError:  # one sentence naming the file
        assert str(caught.value) == f"cannot write {out}: File too large; nothing was replaced"
    assert out.read_bytes() == b"old model"
    assert _names(tmp_path) == ["unet.onnx"]


def test_a_pair_is_staged_whole_and_a_refused_gate_changes_nothing(tmp_path):
    out, report = tmp_path / "v.onnx", tmp_path / "v.gate.json"
    out.write_text("old model")
    report.write_text("old report")
    refused = pytest.raises(SegdeployError, match="gate")
    with refused, publish.publishing(out, "variant", force=True) as staging:
        staging.stage(out, _write("new model"))
        staging.stage(report, _write("new report"))
        raise SegdeployError("the gate refused it")
    assert (out.read_text(), report.read_text()) == ("old model", "old report")
    with publish.publishing(out, "variant", force=True) as staging:
        staged = staging.stage(out, _write("new model"))
        assert staged.parent == tmp_path and staged.name.startswith(".v.onnx.")
        staging.stage(report, _write("new report"))
        assert out.read_text() == "old model"  # nothing in place before the block ends
    assert (out.read_text(), report.read_text()) == ("new model", "new report")
    assert _names(tmp_path) == ["v.gate.json", "v.onnx"]


# ------------------------------------------------------------------------------------------------
# The umask
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w") as handle:
            handle.write("x")
        atomic_write(tmp_path / "atomic", _write("x"))
        publish.publish_file(tmp_path / "published", _write("x"))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(("plain", "atomic", "published"), 0o666 & ~umask)


def test_writing_never_changes_the_process_umask(tmp_path, monkeypatch):
    """Another thread (predict's writer) creating a file while a write flipped the umask to 0
    would get a world-writable file: the writes must not touch it at all."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))
    atomic_write(tmp_path / "a", _write("x"))
    with publish.publishing(tmp_path / "b") as staging:
        staging.stage(tmp_path / "b", _write("x"))
    publish.publish_folder(tmp_path / "c", lambda folder: (folder / "f").write_text("x"))
    assert calls == []


# ------------------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------------------


def test_a_second_publisher_to_one_path_is_refused_at_once(tmp_path):
    out = tmp_path / "unet.onnx"
    inside, release = threading.Event(), threading.Event()

    def slow(tmp):
        inside.set()
        release.wait(timeout=30)
        tmp.write_text("first")

    first = threading.Thread(target=publish.publish_file, args=(out, slow, "export"))
    first.start()
    try:
        assert inside.wait(timeout=30)
        with pytest.raises(SegdeployError, match=r"another export to .*unet\.onnx is in progress"):
            publish.publish_file(out, _write("second"), "export", force=True)
    finally:
        release.set()
        first.join(timeout=30)
    assert out.read_text() == "first"
    assert _names(tmp_path) == ["unet.onnx"]


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "unet.onnx"
    holder = {"pid": _dead_pid(), "host": socket.gethostname(), "started": 0}
    publish.lock_path(out).write_text(json.dumps(holder))
    publish.publish_file(out, _write("new"))
    assert out.read_text() == "new" and _names(tmp_path) == ["unet.onnx"]


def test_a_live_lock_is_respected_and_names_its_holder(tmp_path):
    out = tmp_path / "masks"
    with publish.lock(out, "predict") as held:
        assert held == tmp_path / ".masks.lock"
        message = rf"another predict .* \(process {os.getpid()}"
        refused = pytest.raises(SegdeployError, match=message)
        with refused, publish.lock(out, "predict"):
            pass
    assert _names(tmp_path) == []


def test_the_lock_of_the_current_folder_is_named_by_the_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert publish.lock_path(".") == tmp_path.parent / f".{tmp_path.name}.lock"


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------


def _model_folder(folder, text):
    (folder / "1").mkdir()
    (folder / "1" / "model.onnx").write_text(text)
    (folder / "config.pbtxt").write_text(text)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_folder_build_keeps_the_old_folder_whole(tmp_path, failure):
    out = tmp_path / "repo" / "unet"
    publish.publish_folder(out, lambda f: _model_folder(f, "old"))

    def half_then_fail(folder):
        (folder / "config.pbtxt").write_text("new")
        raise failure

    expected = SegdeployError if isinstance(failure, OSError) else type(failure)
    with pytest.raises(expected):
        publish.publish_folder(out, half_then_fail, force=True)
    assert (out / "1" / "model.onnx").read_text() == "old"
    assert (out / "config.pbtxt").read_text() == "old"
    assert _names(out.parent) == ["unet"]
    publish.publish_folder(out, lambda f: _model_folder(f, "new"), force=True)
    assert (out / "1" / "model.onnx").read_text() == "new"
    assert _names(out.parent) == ["unet"]


def test_a_swap_killed_between_its_renames_is_undone_on_the_next_run(tmp_path):
    out = tmp_path / "unet"
    # What a SIGKILL after "rename the old aside" leaves: the old folder aside, the new beside.
    old, new = tmp_path / ".unet.old", tmp_path / ".unet.new"
    _model_folder(old.mkdir() or old, "old")
    _model_folder(new.mkdir() or new, "half")
    with pytest.raises(SegdeployError, match="already exists"):
        publish.publish_folder(out, lambda f: _model_folder(f, "other"))  # no --force
    assert (out / "1" / "model.onnx").read_text() == "old"  # recovered, not replaced
    assert _names(tmp_path) == ["unet"]


def test_a_swap_killed_after_its_renames_is_finished_on_the_next_run(tmp_path):
    out = tmp_path / "unet"
    _model_folder(out.mkdir() or out, "new")
    trash = tmp_path / ".unet.trash"
    _model_folder(trash.mkdir() or trash, "old")  # killed while deleting the old folder
    old = tmp_path / ".unet.old"
    _model_folder(old.mkdir() or old, "old")
    publish.recover_folder(out)
    assert (out / "1" / "model.onnx").read_text() == "new"
    assert _names(tmp_path) == ["unet"]


def test_replacing_a_folder_never_shows_neither(tmp_path, monkeypatch):
    """At each rename of a replacement, the old or the new model folder is whole somewhere the
    next run finds it."""
    out = tmp_path / "unet"
    publish.publish_folder(out, lambda f: _model_folder(f, "old"))
    seen = []
    real = os.replace

    def watching(src, dst):
        whole = [
            p.name
            for p in (out, tmp_path / ".unet.old")
            if (p / "1" / "model.onnx").is_file() and (p / "config.pbtxt").is_file()
        ]
        seen.append(whole)
        return real(src, dst)

    monkeypatch.setattr(publish.os, "replace", watching)
    publish.publish_folder(out, lambda f: _model_folder(f, "new"), force=True)
    assert seen and all(seen)
    assert (out / "1" / "model.onnx").read_text() == "new"


def test_an_output_inside_an_input_folder_is_refused_when_it_is_one_of_its_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"pixels")
    with pytest.raises(SegdeployError, match="the files of the input folder"):
        publish.publish_file(data / "a.png", _write("x"), force=True, inputs=[data])
    assert (data / "a.png").read_bytes() == b"pixels"
    publish.publish_file(data / "report.json", _write("x"), inputs=[data])  # a new file is fine


def test_a_disk_error_wrapped_by_the_writer_is_one_sentence_and_keeps_the_old_file(tmp_path):
    """torch.save raises RuntimeError while handling the EFBIG of the write underneath."""
    import errno

    from segdeploy.core.errors import SegdeployError
    from segdeploy.core.publish import write_file

    out = tmp_path / "model.pt"
    out.write_bytes(b"old")

    def zip_writer(tmp):
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from None

    with pytest.raises(SegdeployError, match=r"cannot write .*model\.pt: File too large"):
        write_file(out, zip_writer)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_ctrl_c_during_the_swap_lands_after_the_old_folder_is_deleted(tmp_path, monkeypatch):
    """A SIGINT that arrives while the old folder is being deleted is delivered once the
    replacement is finished: KeyboardInterrupt, the new folder in place, no ``.unet.trash``."""
    out = tmp_path / "unet"
    publish.publish_folder(out, lambda f: _model_folder(f, "old"))
    real_rmtree = publish.shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C in the middle of the deletion
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(publish.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        publish.publish_folder(out, lambda f: _model_folder(f, "new"), force=True)
    assert (out / "1" / "model.onnx").read_text() == "new"
    assert _names(tmp_path) == ["unet"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
