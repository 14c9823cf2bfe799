"""Faults from outside the input: Ctrl-C (SIGINT) and SIGKILL in the middle of a command, a full
disk (RLIMIT_FSIZE in the child), two processes writing one output, 8 threads on one model.

Each command runs as ``python -m segdeploy`` in a subprocess. After an interruption: the old file
is intact or the new file is whole, nothing half-written is left under the output's name,
Ctrl-C leaves no temporary file, and a rerun of the same command succeeds.
"""

from __future__ import annotations

import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    LOST_FILES,
    MESSAGE,
    cli_process,
    finish,
    full_disk,
    interrupt_when,
    leftovers,
    snapshot,
    start_cli,
    write_image,
)
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("onnx")

SIGNALS = [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGKILL, id="SIGKILL")]
TRAIN = ["--variant", "tiny", "--batch-size", "4", "--img-size", "32"]


def whole_checkpoint(path: Path) -> bool:
    from segdeploy.core.errors import SegdeployError
    from segdeploy.train.checkpoint import read_checkpoint

    try:
        read_checkpoint(path)
    except SegdeployError:
        return False
    return True


def whole_onnx(path: Path) -> bool:
    from segdeploy.core.errors import SegdeployError
    from segdeploy.runtime import open_model

    try:
        open_model(path, provider="cpu")
    except SegdeployError:
        return False
    return True


def whole_png(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
    except Exception:
        return False
    return True


def temp_appeared(folder: Path, since: set[Path]):
    """``ready()``: a temporary or staging file segdeploy writes appeared under ``folder``
    (the moment a file is being written: the riskiest one to be interrupted)."""

    def ready() -> bool:
        found = {p for p in leftovers(folder) if not p.name.endswith(".probe")}
        return bool(found - since)

    return ready


def after_interrupt(case, ran, sig) -> None:
    """Ctrl-C: exit 130, no traceback, no temporary file. SIGKILL: whatever the process left
    must not break the rerun (checked by the caller)."""
    if sig == signal.SIGINT:
        case.check(not ran.traceback, "traceback", ran.describe())
        # 130 from the CLI's handler; -2 (killed by SIGINT) when it came after the command
        # returned, while the interpreter was exiting.
        ok = ran.exit_code in (130, 1, -signal.SIGINT)
        case.check(ok, MESSAGE, f"Ctrl-C gave {ran.describe()}")


def sibling_photos(folder: Path, count: int, size: int = 160) -> list[Path]:
    return [write_image(folder / f"img_{i:02d}.png", size, size + 16, seed=i) for i in range(count)]


def expected_masks(onnx: Path, images: list[Path]) -> dict[str, np.ndarray]:
    from segdeploy.runtime import open_model

    model = open_model(onnx, provider="cpu")
    return {image.stem: model.predict(image) for image in images}


# --- SIGINT / SIGKILL in the middle of a command -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_train(case, sig, tiny_unet, labelled, workdir):
    out = workdir / "unet.pt"
    out.write_bytes(tiny_unet.read_bytes())  # the previous run's checkpoint
    old = snapshot(out)
    args = ["train", "unet", "--data", labelled, *TRAIN, "--epochs", "3", "--out", out, "--force"]
    process = start_cli(*args)
    hit = interrupt_when(process, temp_appeared(workdir, set()), sig, deadline=90)
    ran = finish(process)
    case.check(hit, "command failed", f"train ended before the signal: {ran.describe()}")
    after_interrupt(case, ran, sig)
    case.check(snapshot(out) == old or whole_checkpoint(out), LOST_FILES, f"{out} half-written")
    for state in workdir.glob("*.last.pt"):
        case.check(whole_checkpoint(state), LOST_FILES, f"{state} half-written")
    if sig == signal.SIGINT:
        case.no_leftovers(workdir)
    if case.succeeded(cli_process(*args)):
        case.right(whole_checkpoint(out), f"the rerun left no readable {out}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_export(case, sig, tiny_unet, tiny_onnx, workdir):
    out = workdir / "unet.onnx"
    out.write_bytes(tiny_onnx.read_bytes())
    old = snapshot(out)
    args = ["export", tiny_unet, "--out", out, "--force", "--shapes", "16x16"]
    process = start_cli(*args)
    # During torch.export and the parity run if no temporary file shows by then.
    hit = interrupt_when(process, temp_appeared(workdir, set()), sig, deadline=20)
    ran = finish(process)
    case.check(hit, "command failed", f"export ended before the signal: {ran.describe()}")
    after_interrupt(case, ran, sig)
    case.check(snapshot(out) == old or whole_onnx(out), LOST_FILES, f"{out} half-written")
    if sig == signal.SIGINT:
        case.no_leftovers(workdir)
    if case.succeeded(cli_process(*args)):
        case.right(whole_onnx(out), f"the rerun left no readable {out}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_quantize(case, sig, trained_onnx, labelled, workdir):
    fp32 = workdir / "unet.onnx"
    fp32.write_bytes(trained_onnx.read_bytes())
    parent = snapshot(fp32)
    variant = workdir / "unet.int8.onnx"
    args = ["quantize", fp32, "--calib", labelled, "--samples", "8"]
    # Quantizing the tiny model takes about a second after the imports: time one whole run,
    # then interrupt the next one at 85 % of that, past the imports (or as soon as it writes
    # a temporary file).
    timed = time.monotonic()
    case.succeeded(cli_process(*args))
    seconds = time.monotonic() - timed
    for made in (variant, variant.with_name("unet.int8.gate.json")):
        made.unlink(missing_ok=True)
    process = start_cli(*args)
    hit = interrupt_when(process, temp_appeared(workdir, set()), sig, deadline=0.85 * seconds)
    ran = finish(process)
    case.check(hit, "command failed", f"quantize ended before the signal: {ran.describe()}")
    after_interrupt(case, ran, sig)
    case.unchanged(parent, "the FP32 parent: ")
    if variant.exists():
        case.check(whole_onnx(variant), LOST_FILES, f"{variant} half-written")
        variant.unlink()  # whole: the user would rerun with --force; start the rerun clean
        variant.with_name("unet.int8.gate.json").unlink(missing_ok=True)
    if sig == signal.SIGINT:
        case.no_leftovers(workdir)
    if case.succeeded(cli_process(*args)):
        case.right(whole_onnx(variant), f"the rerun left no readable {variant}")
    case.unchanged(parent, "the FP32 parent: ")


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_predict(case, sig, tiny_onnx, workdir):
    photos = workdir / "photos"
    images = sibling_photos(photos, 40)
    expected = expected_masks(tiny_onnx, images)
    out = workdir / "masks"
    args = ["predict", tiny_onnx, photos, "--out", out, "--overlay", "--provider", "cpu"]
    first = cli_process(*args)  # the previous run's masks
    case.succeeded(first)
    started = time.time()

    def rewriting() -> bool:  # some mask rewritten, or being written
        written = any(p.stat().st_mtime > started for p in out.glob("*.png"))
        return written or temp_appeared(out, set())()

    process = start_cli(*args)
    hit = interrupt_when(process, rewriting, sig, deadline=30, poll=0.002)
    ran = finish(process)
    case.check(hit, "command failed", f"predict ended before the signal: {ran.describe()}")
    after_interrupt(case, ran, sig)
    for stem, mask in expected.items():
        path = out / f"{stem}.png"
        if case.check(path.is_file() and whole_png(path), LOST_FILES, f"{path} lost or broken"):
            case.right(np.array_equal(np.asarray(Image.open(path)), mask), f"wrong {path}")
    if sig == signal.SIGINT:
        case.no_leftovers(out)
    if case.succeeded(cli_process(*args)):
        for stem, mask in expected.items():
            found = np.asarray(Image.open(out / f"{stem}.png"))
            case.right(np.array_equal(found, mask), f"the rerun wrote a wrong {stem}.png")


def repository(workdir: Path, old_model: Path) -> Path:
    """``repo/unet`` written by triton-repo from ``old_model``, beside ``repo/other``."""
    repo = workdir / "repo"
    other = repo / "other" / "1"
    other.mkdir(parents=True)
    (other / "model.onnx").write_bytes(b"another model")
    ran = cli_process("triton-repo", old_model, repo, "--name", "unet")
    assert ran.exit_code == 0, ran.describe()
    return repo


def model_folder_whole(repo: Path, *sources: Path) -> bool:
    """``repo/unet`` holds a config and labels and a model.onnx equal to one of ``sources``."""
    folder = repo / "unet"
    model = folder / "1" / "model.onnx"
    if not (model.is_file() and (folder / "config.pbtxt").is_file()):
        return False
    return any(model.read_bytes() == s.read_bytes() for s in sources)


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS)
def test_interrupted_triton_repo(case, sig, tiny_onnx, trained_onnx, workdir):
    repo = repository(workdir, tiny_onnx)
    other = snapshot(repo / "other")
    args = ["triton-repo", trained_onnx, repo, "--name", "unet", "--force"]
    model = repo / "unet" / "1" / "model.onnx"
    old_bytes = model.read_bytes()

    def replacing() -> bool:  # the old model moved, removed or being rewritten
        try:
            return model.read_bytes() != old_bytes or temp_appeared(repo, set())()
        except OSError:
            return True

    process = start_cli(*args)
    hit = interrupt_when(process, replacing, sig, deadline=30, poll=0.0005)
    ran = finish(process)
    after_interrupt(case, ran, sig)
    whole = model_folder_whole(repo, tiny_onnx, trained_onnx)
    case.check(whole, LOST_FILES, f"after {sig.name} (hit={hit}) repo/unet is neither old nor new")
    case.unchanged(other, "the other model: ")
    if sig == signal.SIGINT:
        case.no_leftovers(repo)
    if case.succeeded(cli_process(*args)):
        case.right(model_folder_whole(repo, trained_onnx), "the rerun did not write the new model")


# --- a full disk -------------------------------------------------------------------------------


def test_full_disk_in_predict(case, tiny_onnx, workdir):
    """Overlays of noise photographs are far larger than 64 KiB: the run stops with one sentence,
    no traceback, no temporary file left."""
    photos = workdir / "photos"
    sibling_photos(photos, 3, size=320)
    out = workdir / "masks"
    ran = cli_process(
        "predict", tiny_onnx, photos, "--out", out, "--overlay", preexec_fn=full_disk()
    )
    case.refused(ran, [out, "img_00", "img_01", "img_02"])
    if out.exists():
        case.no_leftovers(out)
        for png in out.glob("*.png"):
            case.check(whole_png(png), LOST_FILES, f"{png} half-written")


def test_full_disk_in_triton_repo(case, tiny_onnx, workdir):
    """Replacing repo/unet on a full disk: refused in one sentence, the old model still there."""
    repo = repository(workdir, tiny_onnx)
    before = snapshot(repo)
    args = ["triton-repo", tiny_onnx, repo, "--name", "unet", "--force"]
    ran = cli_process(*args, preexec_fn=full_disk())
    case.refused(ran, [repo, "unet", "model.onnx"])
    case.unchanged(before)
    case.no_leftovers(repo)


def test_full_disk_in_evaluate_json(case, tiny_onnx, labelled, workdir):
    report = workdir / "eval.json"
    args = ["evaluate", tiny_onnx, "--data", labelled, "--provider", "cpu", "--json", report]
    ran = cli_process(*args, preexec_fn=full_disk(256))
    case.refused(ran, report)
    case.check(not report.exists(), LOST_FILES, f"{report} half-written")
    case.no_leftovers(workdir)


@pytest.mark.slow
def test_full_disk_in_train(case, tiny_unet, labelled, workdir):
    out = workdir / "unet.pt"
    out.write_bytes(tiny_unet.read_bytes())
    before = snapshot(out)
    args = ["train", "unet", "--data", labelled, *TRAIN, "--epochs", "1", "--out", out, "--force"]
    # 1 MiB: more than the data's small files, less than the 1.1 MB checkpoint
    ran = cli_process(*args, preexec_fn=full_disk(1 << 20))
    case.refused(ran, out)
    case.unchanged(before)
    case.no_leftovers(workdir)


@pytest.mark.slow
def test_full_disk_in_export(case, tiny_unet, tiny_onnx, workdir):
    out = workdir / "unet.onnx"
    out.write_bytes(tiny_onnx.read_bytes())
    before = snapshot(out)
    args = ["export", tiny_unet, "--out", out, "--force", "--shapes", "16x16"]
    ran = cli_process(*args, preexec_fn=full_disk())
    case.refused(ran, out)
    case.unchanged(before)
    case.no_leftovers(workdir)


# --- two writers, eight threads ----------------------------------------------------------------


def concurrent_outcome(case, runs, what: str) -> None:
    """Two writers of one output: each succeeded, or was refused at once with one sentence
    saying another one is in progress; never a traceback; at least one succeeded."""
    for ran in runs:
        if ran.traceback:
            case.problem("traceback", ran.describe())
        elif ran.exit_code != 0:
            case.refused(ran, (), words=("in progress",))
    case.check(any(r.exit_code == 0 for r in runs), "command failed", f"no {what} succeeded")


def test_two_triton_repos_into_one_model_folder(case, tiny_onnx, workdir):
    repo = repository(workdir, tiny_onnx)
    other = snapshot(repo / "other")
    args = ["triton-repo", tiny_onnx, repo, "--name", "unet", "--force"]
    processes = [start_cli(*args), start_cli(*args)]
    concurrent_outcome(case, [finish(p) for p in processes], "triton-repo")
    case.check(model_folder_whole(repo, tiny_onnx), LOST_FILES, "repo/unet is not whole")
    case.unchanged(other, "the other model: ")
    case.no_leftovers(repo)


def test_two_predicts_into_one_folder(case, tiny_onnx, workdir):
    photos = workdir / "photos"
    images = sibling_photos(photos, 12)
    expected = expected_masks(tiny_onnx, images)
    out = workdir / "masks"
    args = ["predict", tiny_onnx, photos, "--out", out, "--provider", "cpu"]
    processes = [start_cli(*args), start_cli(*args)]
    concurrent_outcome(case, [finish(p) for p in processes], "predict")
    for stem, mask in expected.items():
        path = out / f"{stem}.png"
        if case.check(path.is_file() and whole_png(path), LOST_FILES, f"{path} lost or broken"):
            case.right(np.array_equal(np.asarray(Image.open(path)), mask), f"wrong {path}")
    case.no_leftovers(out)


@pytest.mark.slow
def test_two_exports_to_one_file(case, tiny_unet, workdir):
    """The second export starts while the first holds the lock: refused at once, the first
    writes a whole file."""
    out = workdir / "unet.onnx"
    args = ["export", tiny_unet, "--out", out, "--shapes", "16x16"]
    first = start_cli(*args)
    lock = workdir / ".unet.onnx.lock"
    started = time.monotonic()
    while not lock.exists() and first.poll() is None and time.monotonic() - started < 120:
        time.sleep(0.01)
    second = cli_process(*args, "--force", timeout=120)
    concurrent_outcome(case, [finish(first), second], "export")
    case.check(second.exit_code != 0, "silent wrong result", "both exports ran at once")
    case.check(whole_onnx(out), LOST_FILES, f"{out} is not a whole export")
    case.no_leftovers(workdir)


@pytest.mark.slow
def test_two_trainings_to_one_checkpoint(case, labelled, workdir):
    out = workdir / "unet.pt"
    args = ["train", "unet", "--data", labelled, *TRAIN, "--epochs", "2", "--out", out, "--force"]
    processes = [start_cli(*args), start_cli(*args)]
    concurrent_outcome(case, [finish(p) for p in processes], "train")
    case.check(whole_checkpoint(out), LOST_FILES, f"{out} is not a whole checkpoint")
    case.no_leftovers(workdir)


def test_eight_threads_share_one_model(case, tiny_onnx, workdir):
    """Model.predict from 8 threads at once gives each image the mask one thread gives it."""
    from segdeploy.runtime import open_model

    images = sibling_photos(workdir / "photos", 16, size=48)
    images += [
        write_image(workdir / "odd" / f"o{i}.png", 37 + i, 53, seed=50 + i) for i in range(8)
    ]
    model = open_model(tiny_onnx, provider="cpu")
    alone = [model.predict(image) for image in images]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            together = list(pool.map(model.predict, images))
            for image, one, many in zip(images, alone, together, strict=True):
                case.right(np.array_equal(one, many), f"{image.name}: 8 threads gave another mask")


def test_rerun_after_a_killed_writer_left_its_temporary_file(case, tiny_onnx, workdir):
    """A SIGKILLed predict leaves ``.x.png.*.tmp`` files; the next run must neither predict them
    nor trip over them."""
    photos = workdir / "photos"
    images = sibling_photos(photos, 3, size=48)
    out = workdir / "masks"
    out.mkdir()
    (out / ".img_00.png.abcd.tmp").write_bytes(b"\x89PNG half")
    shutil.copy(images[0], out / "stray.png")
    ran = cli_process("predict", tiny_onnx, photos, "--out", out, "--provider", "cpu")
    if case.succeeded(ran):
        expected = expected_masks(tiny_onnx, images)
        for stem, mask in expected.items():
            found = np.asarray(Image.open(out / f"{stem}.png"))
            case.right(np.array_equal(found, mask), f"wrong {stem}.png")
