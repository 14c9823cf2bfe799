"""Outputs: existing ones, outputs equal to inputs, names with ``..``, ``/``, spaces and unicode.

What a user expects (README, issue 20): an output the user names is refused when it exists unless
``--force``; an output that is one of the inputs is refused always (the input byte-identical
after); ``triton-repo --name ..`` / ``.`` / ``a/b`` refused and nothing deleted; a path with a
space and non-ASCII letters works like any other; rerunning ``predict`` into its own output
folder works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faultkit import LOST_FILES, cli, leftovers, snapshot, write_image
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("onnx")

GATE = ["--eval-samples", "2"]
BENCH = ["--no-torch", "--iters", "1", "--warmup", "0", "--batch", "1", "--size", "32x32",
         "--precision", "fp32", "--rounds", "1", "--no-io-binding"]  # fmt: skip
TRAIN_FAST = ["--variant", "tiny", "--epochs", "1", "--batch-size", "4", "--img-size", "32"]


def variant_command(command: str, onnx: Path, data: Path) -> list:
    if command == "quantize":
        return ["quantize", onnx, "--calib", data, "--samples", "4", *GATE]
    return [command, onnx, "--data", data, *GATE]


def photos_in(folder: Path, count: int = 3) -> list[Path]:
    return [write_image(folder / f"p{i}.png", 32 + 8 * i, 48, seed=i) for i in range(count)]


def masks_right(case, out: Path, images: list[Path], onnx: Path) -> None:
    """Every image's mask under ``out`` is what the runtime gives for it."""
    from segdeploy.runtime import open_model

    model = open_model(onnx, provider="cpu")
    for image in images:
        mask = out / f"{image.stem}.png"
        if case.right(mask.is_file(), f"no mask {mask}"):
            found = np.asarray(Image.open(mask))
            case.right(np.array_equal(found, model.predict(image)), f"wrong mask {mask}")


# --- export ------------------------------------------------------------------------------------


def test_export_keeps_an_existing_output_without_force(case, checkpoint_copy, onnx_copy):
    before = snapshot(onnx_copy.parent, checkpoint_copy)
    case.refused(cli("export", checkpoint_copy, "--out", onnx_copy), onnx_copy, words=("--force",))
    case.unchanged(before)


def test_export_onto_its_own_checkpoint_named_pt(case, checkpoint_copy):
    before = snapshot(checkpoint_copy)
    case.refused(
        cli("export", checkpoint_copy, "--out", checkpoint_copy, "--force"), checkpoint_copy
    )
    case.unchanged(before)


@pytest.mark.slow  # on main the export runs (about 15 s) before anything is refused
def test_export_onto_its_own_checkpoint_named_onnx(case, tiny_unet, workdir):
    """A checkpoint saved as model.onnx, exported to model.onnx with --force: refused, kept."""
    source = workdir / "model.onnx"
    source.write_bytes(tiny_unet.read_bytes())
    before = snapshot(source)
    case.refused(cli("export", source, "--out", source, "--force"), source)
    case.unchanged(before)


@pytest.mark.slow  # on main the export runs before the end-to-end graph is overwritten
def test_export_end_to_end_keeps_an_existing_e2e_graph_without_force(
    case, checkpoint_copy, workdir
):
    out = workdir / "fresh.onnx"
    e2e = workdir / "fresh.e2e.onnx"
    e2e.write_bytes(b"an earlier end-to-end graph")
    before = snapshot(e2e)
    ran = cli("export", checkpoint_copy, "--out", out, "--end-to-end", "--shapes", "16x16")
    case.refused(ran, e2e, words=("--force",))
    case.unchanged(before)


@pytest.mark.slow  # two exports (FP32 and end to end) of the tiny U-Net
def test_export_to_a_unicode_path_with_dot_dot_and_spaces(case, checkpoint_copy, workdir):
    """``mes modèles/sous dossier/../unet été.onnx`` works: both graphs land where the path
    resolves to, and the runtime opens them."""
    (workdir / "sous dossier").mkdir()
    out = workdir / "sous dossier" / ".." / "unet été.onnx"
    ran = cli("export", checkpoint_copy, "--out", out, "--end-to-end", "--shapes", "16x16")
    if case.succeeded(ran):
        landed = workdir / "unet été.onnx"
        case.right(landed.is_file(), f"{landed} was not written")
        case.right((workdir / "unet été.e2e.onnx").is_file(), "no end-to-end graph")
        case.succeeded(cli("info", landed))
    case.check(not leftovers(workdir), LOST_FILES, f"left behind: {leftovers(workdir)}")


# --- variants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("command", ["quantize", "convert-fp16", "convert-bf16"])
def test_variant_onto_its_own_fp32_export(case, command, force, onnx_copy, labelled):
    """``--out`` equal to the FP32 input: refused always, the FP32 file byte-identical."""
    before = snapshot(onnx_copy.parent)
    args = [*variant_command(command, onnx_copy, labelled), "--out", onnx_copy]
    case.refused(cli(*args, *(["--force"] if force else [])), onnx_copy)
    case.unchanged(before)


@pytest.mark.parametrize("command,suffix", [("quantize", "int8"), ("convert-fp16", "fp16")])
def test_variant_keeps_an_existing_variant_without_force(
    case, command, suffix, onnx_copy, labelled
):
    existing = onnx_copy.with_name(f"unet.{suffix}.onnx")
    existing.write_bytes(b"an earlier variant")
    before = snapshot(onnx_copy.parent)
    ran = cli(*variant_command(command, onnx_copy, labelled))
    case.refused(ran, existing, words=("--force",))
    case.unchanged(before)


# --- evaluate and bench JSON -------------------------------------------------------------------


def evaluate_args(onnx: Path, data: Path) -> list:
    return ["evaluate", onnx, "--data", data, "--provider", "cpu", "--count", "2"]


def test_evaluate_keeps_an_existing_json_without_force(case, onnx_copy, labelled, workdir):
    report = workdir / "eval.json"
    report.write_text('{"earlier": true}')
    before = snapshot(workdir, onnx_copy)
    case.refused(cli(*evaluate_args(onnx_copy, labelled), "--json", report), report, ("--force",))
    case.unchanged(before)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_evaluate_json_onto_the_model_it_scores(case, force, onnx_copy, labelled):
    before = snapshot(onnx_copy)
    args = [*evaluate_args(onnx_copy, labelled), "--json", onnx_copy]
    case.refused(cli(*args, *(["--force"] if force else [])), onnx_copy)
    case.unchanged(before)


def test_evaluate_json_to_a_unicode_path(case, onnx_copy, labelled, workdir):
    report = workdir / "résultat final.json"
    if case.succeeded(cli(*evaluate_args(onnx_copy, labelled), "--json", report)):
        scores = json.loads(report.read_text())
        case.right(isinstance(scores, dict) and scores, f"{report} holds no report")
    case.check(not leftovers(workdir), LOST_FILES, f"left behind: {leftovers(workdir)}")


def test_bench_keeps_an_existing_json_without_force(case, onnx_copy, workdir):
    report = workdir / "bench.json"
    report.write_text('{"earlier": true}')
    before = snapshot(workdir, onnx_copy)
    args = ["bench", onnx_copy, *BENCH, "--results", workdir / "res", "--json", report]
    case.refused(cli(*args), report, words=("--force",))
    case.unchanged(before)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_bench_json_onto_the_model_it_times(case, force, onnx_copy, workdir):
    before = snapshot(onnx_copy)
    args = ["bench", onnx_copy, *BENCH, "--results", workdir / "res", "--json", onnx_copy]
    case.refused(cli(*args, *(["--force"] if force else [])), onnx_copy)
    case.unchanged(before)


# --- train -------------------------------------------------------------------------------------


def test_train_onto_one_of_its_training_images(case, labelled, workdir):
    """``--out`` naming an image of ``--data``, with --force: refused, the image kept."""
    data = Path(shutil.copytree(labelled, workdir / "data"))
    image = sorted((data / "train" / "images").glob("*.png"))[0]
    before = snapshot(data)
    ran = cli("train", "unet", "--data", data, *TRAIN_FAST, "--out", image, "--force")
    case.refused(ran, image)
    case.unchanged(before)


def test_train_onto_an_existing_folder(case, labelled, workdir):
    folder = workdir / "runs"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("keep me")
    before = snapshot(folder)
    ran = cli("train", "unet", "--data", labelled, *TRAIN_FAST, "--out", folder, "--force")
    case.refused(ran, folder)
    case.unchanged(before)


def test_train_to_a_unicode_path(case, labelled, workdir):
    out = workdir / "mon modèle.pt"
    if case.succeeded(cli("train", "unet", "--data", labelled, *TRAIN_FAST, "--out", out)):
        case.succeeded(cli("info", out))
    case.check(not leftovers(workdir), LOST_FILES, f"left behind: {leftovers(workdir)}")


# --- predict -----------------------------------------------------------------------------------


def test_predict_out_is_the_model_file(case, onnx_copy, workdir):
    photos_in(workdir / "photos")
    before = snapshot(onnx_copy)
    case.refused(cli("predict", onnx_copy, workdir / "photos", "--out", onnx_copy), onnx_copy)
    case.unchanged(before)


def test_predict_out_is_the_input_folder(case, onnx_copy, workdir):
    photos = workdir / "photos"
    photos_in(photos)
    before = snapshot(photos)
    case.refused(cli("predict", onnx_copy, photos, "--out", photos), photos, words=("overwrite",))
    case.unchanged(before)


def test_predict_rerun_into_its_own_output_folder(case, onnx_copy, workdir):
    """The second run replaces the first run's masks with the same masks, and is not refused."""
    photos = workdir / "photos"
    images = photos_in(photos)
    out = workdir / "masks"
    case.succeeded(cli("predict", onnx_copy, photos, "--out", out, "--overlay"))
    first = snapshot(out)
    case.succeeded(cli("predict", onnx_copy, photos, "--out", out, "--overlay"))
    case.right(snapshot(out) == first, "the rerun wrote other files or other masks")
    masks_right(case, out, images, onnx_copy)
    case.no_leftovers(out)


def test_predict_with_unicode_and_spaces_in_every_path(case, onnx_copy, workdir):
    model = workdir / "modèle final.onnx"
    model.write_bytes(onnx_copy.read_bytes())
    photos = workdir / "photos d'été"
    images = photos_in(photos)
    out = workdir / "masques générés"
    if case.succeeded(cli("predict", model, photos, "--out", out)):
        masks_right(case, out, images, model)
    case.no_leftovers(out) if out.exists() else None


# --- triton-repo -------------------------------------------------------------------------------


@pytest.fixture
def project(onnx_copy, tmp_path) -> Path:
    """A project folder (the user's checkout): exports/unet.onnx, a repository ``models/``
    holding another model, and a file of the user's own."""
    root = onnx_copy.parent.parent
    (root / "notes.txt").write_text("the user's own work")
    other = root / "models" / "other" / "1"
    other.mkdir(parents=True)
    (other / "model.onnx").write_bytes(b"another model")
    (root / "models" / "other" / "config.pbtxt").write_text('name: "other"')
    return root


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "modèle"])
def test_triton_repo_refuses_a_name_that_is_not_one_folder(case, name, project):
    """Run from the project root as the issue shows: nothing anywhere is deleted or written."""
    before = snapshot(project)
    ran = cli("triton-repo", "exports/unet.onnx", "models", "--name", name, "--force", cwd=project)
    case.refused(ran, name)
    case.unchanged(before)
    after = {p for p in project.rglob("*") if p.is_file()}
    case.check(after == set(before), LOST_FILES, f"wrote {sorted(after - set(before))}")


def test_triton_repo_keeps_an_existing_model_without_force(case, project):
    target = project / "models" / "unet" / "1"
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"the served model")
    before = snapshot(project)
    ran = cli("triton-repo", "exports/unet.onnx", "models", cwd=project)
    case.refused(ran, "unet", words=("--force",))
    case.unchanged(before)


def test_triton_repo_force_replaces_one_model_and_keeps_the_others(case, project):
    target = project / "models" / "unet" / "1"
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(b"the served model")
    others = snapshot(project / "models" / "other", project / "notes.txt")
    ran = cli("triton-repo", "exports/unet.onnx", "models", "--force", cwd=project)
    if case.succeeded(ran):
        new = (target / "model.onnx").read_bytes()
        case.right(new == (project / "exports" / "unet.onnx").read_bytes(), "model.onnx differs")
        case.right((target.parent / "config.pbtxt").is_file(), "no config.pbtxt")
    case.unchanged(others)
    case.no_leftovers(project / "models")


def test_triton_repo_from_the_model_it_replaces(case, project):
    """The source is ``models/unet/1/model.onnx`` itself, with --force: refused, or rewritten
    from a copy; the model is never lost."""
    source = project / "models" / "unet" / "1" / "model.onnx"
    source.parent.mkdir(parents=True)
    source.write_bytes((project / "exports" / "unet.onnx").read_bytes())
    before = snapshot(source)
    ran = cli("triton-repo", source, "models", "--name", "unet", "--force", cwd=project)
    case.check(not ran.traceback, "traceback", ran.describe())
    case.unchanged(before, "the source model: ")


def test_triton_repo_with_unicode_and_spaces_in_its_paths(case, onnx_copy, workdir):
    model = workdir / "mon modèle.onnx"
    model.write_bytes(onnx_copy.read_bytes())
    repo = workdir / "dépôt triton"
    if case.succeeded(cli("triton-repo", model, repo)):
        folders = [p for p in repo.iterdir() if p.is_dir()]
        case.right(len(folders) == 1, f"expected one model folder, found {folders}")
        for folder in folders:
            written = (folder / "1" / "model.onnx").read_bytes()
            case.right(written == model.read_bytes(), "model.onnx is not the export")
            case.right(folder.name.isascii() and " " not in folder.name, f"name {folder.name!r}")
