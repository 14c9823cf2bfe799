"""``predict_files_ray`` (``segdeploy predict --engine ray``): the same files as the local engine,
byte for byte, and the same per-file failures. Starting Ray takes seconds, so one local Ray
serves the whole module and the tests are marked slow (``pytest -m slow tests/runtime``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
from segdeploy.runtime.files import collect_images, predict_files
from segdeploy.runtime.ray_engine import import_ray, predict_files_ray


@pytest.fixture(scope="module")
def ray():
    pytest.importorskip("ray.data")
    import ray

    return ray


@pytest.fixture(scope="module")
def local_ray(ray):
    """One local Ray for the module (the engine joins it and leaves it running)."""
    ray.init("local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Thirty real photographs of assorted sizes, in two folders, JPEG and PNG, one corrupt."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("ray_photos")
    sources = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()]
    rng = np.random.default_rng(0)
    for i in range(30):
        source = sources[i % len(sources)]
        height, width = int(rng.integers(24, 72)), int(rng.integers(24, 72))
        top = int(rng.integers(0, source.shape[0] - height))
        left = int(rng.integers(0, source.shape[1] - width))
        crop = Image.fromarray(source[top : top + height, left : left + width])
        path = folder / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_workers_write_the_local_engines_files_byte_for_byte(
    local_ray, unet_onnx, photo_folder, tmp_path
):
    paths = collect_images([photo_folder])
    local = predict_files(open_model(unet_onnx, provider="cpu"), paths, tmp_path / "local", True)
    seen = []
    remote = predict_files_ray(
        unet_onnx,
        paths,
        tmp_path / "ray",
        workers=2,
        overlay=True,
        provider="cpu",
        progress_callback=lambda path, error: seen.append((path, error)),
    )
    expected = _files(tmp_path / "local")
    assert len(expected) == 2 * 30  # masks and overlays; nothing for the corrupt file
    assert _files(tmp_path / "ray") == expected
    assert remote.images == local.images == 30
    assert remote.failed == local.failed and [p.name for p, _ in remote.failed] == ["broken.png"]
    assert [p.relative_to(tmp_path / "ray") for p in remote.outputs] == [
        p.relative_to(tmp_path / "local") for p in local.outputs
    ]
    assert sorted(seen, key=str) == sorted(
        [(p, None) for p in paths if p.name != "broken.png"] + list(local.failed), key=str
    )


@pytest.mark.slow
def test_classifier_csv_is_byte_for_byte_the_local_one(
    local_ray, resnet_onnx, photo_folder, tmp_path
):
    paths = collect_images([photo_folder])
    model = open_model(resnet_onnx, provider="cpu")
    predict_files(model, paths, tmp_path / "local", batch_size=2)
    summary = predict_files_ray(
        resnet_onnx, paths, tmp_path / "ray", workers=2, batch_size=2, provider="cpu"
    )
    assert summary.images == 30 and len(summary.failed) == 1
    assert _files(tmp_path / "ray") == _files(tmp_path / "local")
    assert list(_files(tmp_path / "ray")) == ["predictions.csv"]


@pytest.mark.slow
def test_worker_errors_become_one_sentence(local_ray, unet_onnx, photo_folder, tmp_path):
    paths = collect_images([photo_folder])
    with pytest.raises(SegdeployError, match="tile"):  # checked before Ray runs anything
        predict_files_ray(unet_onnx, paths, tmp_path / "out", tile=7, provider="cpu")
    with pytest.raises(SegdeployError, match="would overwrite"):
        predict_files_ray(unet_onnx, paths, photo_folder, provider="cpu")


@pytest.mark.slow
def test_cli_engine_ray_starts_its_own_local_ray(ray, unet_onnx, photo_folder, tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "cli"
    args = ["--out", str(out), "--engine", "ray", "--workers", "2", "--provider", "cpu"]
    result = runner_invoke(["predict", str(unet_onnx), str(photo_folder), *args])
    assert result.exit_code == 1, result.output  # the corrupt file makes it non-zero
    assert "broken.png" in result.output and "ray" in result.output
    assert len(list(out.rglob("*.png"))) == 30
    assert not ray.is_initialized()  # the engine shut down the Ray it started


def runner_invoke(args):
    return CliRunner().invoke(app, args)


def test_without_ray_the_engine_names_the_install_command(monkeypatch, unet_onnx, photos, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SegdeployError, match=r"pip install 'segdeploy\[ray\]'"):
        import_ray()
    args = ["--out", str(tmp_path / "out"), "--engine", "ray"]
    result = runner_invoke(["predict", str(unet_onnx), str(photos), *args])
    assert result.exit_code != 0
    assert "pip install 'segdeploy[ray]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_unknown_engine_is_refused(unet_onnx, photos, tmp_path):
    args = ["--out", str(tmp_path / "out"), "--engine", "spark"]
    result = runner_invoke(["predict", str(unet_onnx), str(photos), *args])
    assert result.exit_code != 0 and "spark" in result.output


class _ElsewhereRay:
    """A stand-in for Ray whose "workers" run in another folder, as on another node of a
    cluster: the actor is built and called in-process after ``chdir(elsewhere)``."""

    def __init__(self, elsewhere: Path):
        self.elsewhere = elsewhere
        self.data = self

    def from_items(self, items):
        self.items = items
        return self

    def map_batches(self, actor, fn_constructor_args, batch_size, **_):
        self.actor, self.args, self.batch_size = actor, fn_constructor_args, batch_size
        return self

    def iter_rows(self):
        import os

        here = os.getcwd()
        os.chdir(self.elsewhere)
        try:
            worker = self.actor(*self.args)
            for start in range(0, len(self.items), self.batch_size):
                chunk = self.items[start : start + self.batch_size]
                batch = {key: np.array([item[key] for item in chunk]) for key in chunk[0]}
                out = worker(batch)
                yield from ({key: out[key][i] for key in out} for i in range(len(chunk)))
        finally:
            os.chdir(here)


@pytest.mark.parametrize("classifier", [False, True])
def test_workers_in_another_folder_get_absolute_paths(
    ray, monkeypatch, unet_onnx, resnet_onnx, photos, tmp_path, classifier
):
    from segdeploy.runtime import ray_engine

    (tmp_path / "elsewhere").mkdir()
    fake = _ElsewhereRay(tmp_path / "elsewhere")
    monkeypatch.setattr(ray_engine, "start_ray", lambda workers: (fake, False))
    model = Path(resnet_onnx if classifier else unet_onnx)
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / model.name).write_bytes(model.read_bytes())
    monkeypatch.chdir(tmp_path / "job")
    (Path("photos")).symlink_to(photos)
    paths = collect_images([Path("photos")])  # relative, as a user types them
    summary = predict_files_ray(model.name, paths, "out", provider="cpu")
    local = predict_files(open_model(model.name, provider="cpu"), paths, "local")
    assert summary.failed == local.failed == [] and summary.images == len(paths) == 3
    assert not list((tmp_path / "elsewhere").rglob("*"))  # nothing written where workers run
    assert summary.outputs == [Path("out") / p.relative_to("local") for p in local.outputs]
    assert _files(Path("out")) == _files(Path("local"))  # the CSV names the inputs as given
    assert all(Path(item["path"]).is_absolute() for item in fake.items)
    assert Path(fake.args[0]).is_absolute() and Path(fake.args[3]).is_absolute()


def test_an_unexpected_error_of_one_file_skips_it_on_ray_too(
    ray, monkeypatch, unet_onnx, photos, tmp_path
):
    from segdeploy.runtime import ray_engine

    fake = _ElsewhereRay(tmp_path)
    monkeypatch.setattr(ray_engine, "start_ray", lambda workers: (fake, False))
    real_load = ray_engine.load_image

    def load(path, channels=3):
        if Path(path).name == "b.jpg":
            raise ValueError("conversion from I;16S to RGB not supported")
        return real_load(path, channels)

    monkeypatch.setattr(ray_engine, "load_image", load)
    paths = collect_images([photos])
    summary = predict_files_ray(unet_onnx, paths, tmp_path / "out", provider="cpu")
    assert summary.images == 2 and [p.name for p, _ in summary.failed] == ["b.jpg"]
    assert summary.failed[0][1].endswith(
        "expected to read it, found ValueError: conversion from I;16S to RGB not supported"
    )
