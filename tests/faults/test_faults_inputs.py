"""Bad input files across every command: empty, truncated and garbage checkpoints and exports,
pickles that would run code, broken and header-bomb images and masks, a one-line classes.txt.

Each case: non-zero exit, one sentence on stderr naming the file, no traceback, the inputs
byte-identical afterwards, nothing written.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    cli,
    snapshot,
    write_garbage,
    write_header_bomb,
    write_image,
    write_truncated,
)

pytest.importorskip("torch")
pytest.importorskip("onnx")

BAD_KINDS = ("empty", "truncated", "garbage")


def bad_copy(source: Path, target: Path, kind: str) -> Path:
    """``target``: an empty file, the first half of ``source``, or random bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        write_truncated(source, target)
    else:
        write_garbage(target)
    return target


def break_file(path: Path, kind: str) -> Path:
    """Break ``path`` in place: empty, truncated to half, random bytes, or a header bomb."""
    if kind == "bomb":
        return write_header_bomb(path)
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        write_garbage(path)
    return path


def data_copy(labelled: Path, folder: Path) -> Path:
    """A private copy of the labelled folder, to break one file of it."""
    return Path(shutil.copytree(labelled, folder / "data"))


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint_commands(bad: Path, onnx: Path, data: Path, out: Path) -> dict[str, list]:
    """Every command that reads a checkpoint, given the bad one."""
    return {
        "export": ["export", bad, "--out", out / "x.onnx"],
        "export-e2e": ["export", bad, "--out", out / "x.onnx", "--end-to-end"],
        "info": ["info", bad],
        "verify": ["verify", onnx, bad, "--provider", "cpu"],
        "evaluate": ["evaluate", bad, "--data", data, "--provider", "cpu"],
        "train-resume": ["train", "unet", "--resume", bad, "--out", out / "x.pt"],
    }


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize(
    "command", ["export", "export-e2e", "info", "verify", "evaluate", "train-resume"]
)
def test_bad_checkpoint(case, command, kind, tiny_unet, onnx_copy, labelled, workdir):
    bad = bad_copy(tiny_unet, workdir / "model.pt", kind)
    out = workdir / "out"
    before = snapshot(workdir, onnx_copy)
    ran = cli(*checkpoint_commands(bad, onnx_copy, labelled, out)[command])
    case.refused(ran, bad)
    case.unchanged(before)
    case.check(not out.exists() or not any(out.iterdir()), "lost or half-written files", "wrote")


class RunsCode:
    """Unpickling this calls ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def code_pickles(folder: Path) -> dict[str, Path]:
    """A torch.save zip and a plain pickle, each running code when unpickled; and the marker
    file that code would create."""
    import torch

    from segdeploy.train.checkpoint import CHECKPOINT_FORMAT

    marker = folder / "pwned"
    zipped = folder / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "card": RunsCode(marker), "state_dict": {}}, zipped)
    plain = folder / "evil_plain.pt"
    plain.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "card": RunsCode(marker)}))
    return {"zip": zipped, "plain": plain, "marker": marker}


@pytest.mark.parametrize("pickled", ["zip", "plain"])
@pytest.mark.parametrize(
    "command",
    [
        "export",
        "info",
        "verify",
        "evaluate",
        "train-resume",
        pytest.param("train-pretrained", marks=pytest.mark.slow),  # builds a ResNet-18 first
    ],
)
def test_pickle_that_runs_code_is_refused_unrun(
    case, command, pickled, onnx_copy, labelled, workdir
):
    made = code_pickles(workdir)
    evil, marker = made[pickled], made["marker"]
    out = workdir / "out"
    commands = checkpoint_commands(evil, onnx_copy, labelled, out)
    commands["train-pretrained"] = [
        "train", "resnet18", "--pretrained", evil, "--data", "synthetic", "--out", out / "r.pt",
    ]  # fmt: skip
    ran = cli(*commands[command])
    case.refused(ran, evil)
    case.right(not marker.exists(), f"unpickling {evil.name} ran its code: {marker} was created")


# --- ONNX exports ------------------------------------------------------------------------------


def onnx_commands(bad: Path, checkpoint: Path, data: Path, out: Path) -> dict[str, list]:
    """Every command that reads an .onnx, given the bad one (gates on a tiny data folder)."""
    gate = ["--eval-samples", "2"]
    return {
        "info": ["info", bad],
        "predict": ["predict", bad, data / "val" / "images", "--out", out / "masks"],
        "verify": ["verify", bad, checkpoint, "--provider", "cpu"],
        "evaluate": ["evaluate", bad, "--data", data, "--provider", "cpu"],
        "bench": ["bench", bad, "--no-torch", "--iters", "1", "--warmup", "0", "--batch", "1",
                  "--size", "32x32", "--precision", "fp32", "--results", out / "bench"],
        "quantize": ["quantize", bad, "--calib", data, "--samples", "2", *gate],
        "convert-fp16": ["convert-fp16", bad, "--data", data, *gate],
        "convert-bf16": ["convert-bf16", bad, "--data", data, *gate],
        "triton-repo": ["triton-repo", bad, out / "repo"],
    }  # fmt: skip


ONNX_COMMANDS = (
    "info",
    "predict",
    "verify",
    "evaluate",
    "bench",
    "quantize",
    "convert-fp16",
    "convert-bf16",
    "triton-repo",
)


@pytest.mark.parametrize("kind", BAD_KINDS)
@pytest.mark.parametrize("command", ONNX_COMMANDS)
def test_bad_onnx(case, command, kind, tiny_onnx, tiny_unet, labelled, workdir):
    bad = bad_copy(tiny_onnx, workdir / "unet.onnx", kind)
    out = workdir / "out"
    before = snapshot(workdir)
    case.refused(cli(*onnx_commands(bad, tiny_unet, labelled, out)[command]), bad)
    case.unchanged(before)
    written = [p for p in workdir.rglob("*") if p.is_file() and p not in before]
    case.check(not written, "lost or half-written files", f"wrote {written}")


def test_onnx_without_a_model_card(case, workdir):
    """A valid ONNX graph that segdeploy did not write: every reader says it has no card."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    plain = workdir / "plain.onnx"
    onnx.save(helper.make_model(graph), plain)
    write_image(workdir / "in" / "a.png")
    for args in (["info", plain], ["predict", plain, workdir / "in", "--out", workdir / "m"]):
        case.refused(cli(*args), plain)
    case.check(not (workdir / "m").exists(), "lost or half-written files", "predict wrote masks")


def test_swapped_arguments_of_verify(case, onnx_copy, checkpoint_copy):
    before = snapshot(onnx_copy, checkpoint_copy)
    case.refused(cli("verify", checkpoint_copy, onnx_copy), [checkpoint_copy, onnx_copy])
    case.unchanged(before)


@pytest.mark.parametrize("target", ["missing", "folder"])
def test_info_of_a_missing_file_or_a_folder(case, workdir, target):
    path = workdir / "model.onnx"
    if target == "folder":
        path.mkdir()
    case.refused(cli("info", path), path)


def test_models_lists_every_architecture_and_rejects_extra_arguments(case):
    from segdeploy.models import list_models

    ran = cli("models")
    if case.succeeded(ran):
        missing = [a for a in list_models() if a not in ran.stdout]
        case.right(not missing, f"`segdeploy models` does not list {missing}")
    bad = cli("models", "--no-such-option")
    case.check(bad.exit_code != 0 and not bad.traceback, "traceback", bad.describe())


# --- images and masks --------------------------------------------------------------------------


def write_bad_image(folder: Path, kind: str, reference: Path) -> Path:
    """One broken image file in ``folder``: empty, truncated, garbage or a header bomb."""
    if kind == "bomb":
        return write_header_bomb(folder / "bomb.png")
    return bad_copy(reference, folder / f"{kind}.png", kind)


@pytest.mark.parametrize("kind", [*BAD_KINDS, "bomb"])
def test_predict_skips_a_bad_image_and_gets_the_others_right(case, kind, onnx_copy, workdir):
    """One broken image among good ones: one sentence naming it, exit 1, the good images'
    masks exactly what the runtime gives for them."""
    from segdeploy.runtime import open_model

    photos = workdir / "photos"
    good = [write_image(photos / f"good_{i}.png", 40 + 8 * i, 56, seed=i) for i in range(2)]
    bad = write_bad_image(photos, kind, good[0])
    before = snapshot(photos)
    out = workdir / "masks"
    ran = cli("predict", onnx_copy, photos, "--out", out, "--provider", "cpu")
    case.refused(ran, bad)
    case.unchanged(before)
    model = open_model(onnx_copy, provider="cpu")
    for image in good:
        mask = out / f"{image.stem}.png"
        if case.right(mask.is_file(), f"no mask for the good image {image.name}"):
            from PIL import Image

            found = np.asarray(Image.open(mask))
            case.right(np.array_equal(found, model.predict(image)), f"wrong mask {mask}")
    case.right(not (out / f"{bad.stem}.png").exists(), "a mask was written for the bad image")
    case.no_leftovers(out)


def test_predict_a_lone_header_bomb(case, onnx_copy, workdir):
    bomb = write_header_bomb(workdir / "huge.png")
    case.refused(cli("predict", onnx_copy, bomb, "--out", workdir / "m"), bomb)


TRAIN_FAST = ["--variant", "tiny", "--epochs", "1", "--batch-size", "4", "--img-size", "32"]


@pytest.mark.parametrize(
    "broken", ["mask-truncated", "mask-empty", "mask-bomb", "image-garbage", "image-bomb"]
)
def test_train_on_a_folder_with_one_broken_file(case, broken, labelled, workdir):
    data = data_copy(labelled, workdir)
    part, kind = broken.split("-")
    folder = data / "train" / ("masks" if part == "mask" else "images")
    victim = sorted(folder.iterdir())[1]
    break_file(victim, kind)
    out = workdir / "unet.pt"
    ran = cli("train", "unet", "--data", data, *TRAIN_FAST, "--out", out)
    case.refused(ran, victim)
    case.right(not out.exists(), f"trained and wrote {out} despite the broken {victim.name}")


def test_classes_txt_on_one_line(case, labelled, workdir):
    """Names separated by spaces on one line: one sentence saying one name per line, not a
    single class called 'brick grass gravel coffee' and 'expected labels in 0..0'."""
    data = data_copy(labelled, workdir)
    classes = data / "classes.txt"
    classes.write_text("brick grass gravel coffee\n")
    out = workdir / "unet.pt"
    ran = cli("train", "unet", "--data", data, *TRAIN_FAST, "--out", out)
    case.refused(ran, classes, words=("line",))
    case.right(not out.exists(), f"trained and wrote {out}")


def test_empty_classes_txt(case, labelled, workdir):
    data = data_copy(labelled, workdir)
    (data / "classes.txt").write_text("")
    out = workdir / "unet.pt"
    case.refused(cli("train", "unet", "--data", data, *TRAIN_FAST, "--out", out), "classes.txt")
    case.right(not out.exists(), f"trained and wrote {out}")


@pytest.mark.parametrize("kind", ["truncated", "bomb"])
def test_evaluate_on_a_folder_with_a_broken_mask(case, kind, onnx_copy, labelled, workdir):
    data = data_copy(labelled, workdir)
    victim = sorted((data / "val" / "masks").iterdir())[0]
    break_file(victim, kind)
    report = workdir / "eval.json"
    ran = cli("evaluate", onnx_copy, "--data", data, "--provider", "cpu", "--json", report)
    case.refused(ran, victim)
    case.right(not report.exists(), "wrote a report despite the broken mask")


def test_quantize_with_a_broken_calibration_image(case, onnx_copy, labelled, workdir):
    data = data_copy(labelled, workdir)
    victim = sorted((data / "train" / "images").iterdir())[0]
    break_file(victim, "garbage")
    before = snapshot(onnx_copy)
    ran = cli("quantize", onnx_copy, "--calib", data, "--samples", "8", "--eval-samples", "2")
    case.refused(ran, victim)
    case.unchanged(before)
    case.right(not onnx_copy.with_name("unet.int8.onnx").exists(), "wrote the INT8 variant")


def test_predict_survives_an_unexpected_error_in_one_file(case, onnx_copy, workdir, monkeypatch):
    """A decoder error segdeploy does not know (an exotic Pillow mode, a codec bug): one
    sentence naming that file, the run goes on and the other masks are right."""
    import segdeploy.runtime.files as files
    from segdeploy.runtime import open_model

    photos = workdir / "photos"
    good = [write_image(photos / f"good_{i}.png", 40, 56 + 8 * i, seed=i) for i in range(2)]
    odd = write_image(photos / "odd_mode.png", 24, 24, seed=9)
    real_load = files.load_image

    def load(path, *args, **kwargs):
        if Path(path).name == odd.name:
            raise ValueError("conversion from I;16S to RGB not supported")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(files, "load_image", load)
    out = workdir / "masks"
    ran = cli("predict", onnx_copy, photos, "--out", out, "--provider", "cpu")
    case.refused(ran, odd)
    model = open_model(onnx_copy, provider="cpu")
    for image in good:
        mask = out / f"{image.stem}.png"
        if case.right(mask.is_file(), f"no mask for the good image {image.name}"):
            from PIL import Image

            found = np.asarray(Image.open(mask))
            case.right(np.array_equal(found, model.predict(image)), f"wrong mask {mask}")
    case.no_leftovers(out) if out.exists() else None
