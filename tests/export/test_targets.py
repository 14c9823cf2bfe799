"""Targets end to end: the file a target gets, checked on that target's own runtime.

The runtime environments (onnxruntime 1.16.3 in a venv, onnxruntime-web 1.16.3 for Node) are
built once by ``.ci/run`` (``python -m segdeploy.export.target_check build TARGET``); where one is
missing the tests that need it skip, naming that command.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from segdeploy.core import targets  # noqa: E402
from segdeploy.core.artifacts import CONTENT_SHA256_KEY  # noqa: E402
from segdeploy.core.errors import SegdeployError  # noqa: E402
from segdeploy.core.integrity import verify_file  # noqa: E402
from segdeploy.core.onnx_header import read_header  # noqa: E402
from segdeploy.core.targets import TARGET_KEY, Release, Target, parse_target  # noqa: E402
from segdeploy.export import export_checkpoint  # noqa: E402
from segdeploy.export.onnx_file import stamp_parent_format  # noqa: E402
from segdeploy.export.target_check import (  # noqa: E402
    RUNTIMES_ENV,
    require_target_ops,
    runtime_env,
    target_plan,
)
from segdeploy.runtime import open_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _env(spec: str):
    env = runtime_env(parse_target(spec))
    if not env.ready:
        pytest.skip(f"{env.label} is not built here: {env.build_hint}")
    return env


def _in_env(env, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with the target venv's Python and segdeploy on its path."""
    return subprocess.run(
        [str(env.python), "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_default_export_is_for_the_oldest_supported_onnxruntime(unet_onnx):
    header = read_header(unet_onnx)
    assert (header.ir_version, header.opset) == (9, 18)
    record = json.loads(header.metadata[TARGET_KEY])
    assert record["target"] == targets.DEFAULT_TARGET == "ort>=1.16"
    assert record["runtimes"]["onnxruntime"] == ">=1.15"
    assert verify_file(unet_onnx).content_sha256 == header.metadata[CONTENT_SHA256_KEY]


def test_a_file_for_ort_1_16_opens_and_passes_parity_on_1_16_3(tiny_checkpoints, tmp_path):
    env = _env("ort>=1.16")
    out = tmp_path / "unet.onnx"
    result = export_checkpoint(
        tiny_checkpoints["unet"], out, shapes=[(1, 16, 16), (2, 48, 32)], target="ort>=1.16"
    )
    on_target = [c for c in result.report.cases if c.provider == "onnxruntime 1.16.3"]
    assert len(on_target) == 2 and all(c.passed for c in on_target)
    assert all(c.max_abs_error < 1e-4 and c.argmax_agreement == 1.0 for c in on_target)
    assert result.report.context["target"] == {
        "target": "ort>=1.16",
        "checked_on": "onnxruntime 1.16.3",
    }
    done = _in_env(
        env,
        "import sys, numpy as np, onnxruntime, segdeploy.runtime as rt\n"
        f"m = rt.open_model({str(out)!r})\n"
        "print(onnxruntime.__version__, m.predict(np.zeros((37, 53, 3), np.uint8)).shape,"
        " 'torch' in sys.modules)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.16.3", "(37,", "53)", "False"]


def test_an_ir_10_file_on_1_16_3_gets_segdeploys_sentence(tiny_checkpoints, unet_onnx, tmp_path):
    env = _env("ort>=1.16")
    # What `segdeploy export` wrote before targets: --target ort, the installed onnxruntime.
    newest = tmp_path / "newest.onnx"
    export_checkpoint(
        tiny_checkpoints["unet"], newest, shapes=[(1, 16, 16)], providers=["cpu"], target="ort"
    )
    assert read_header(newest).ir_version == 10
    # And an IR 10 file with no target record at all (another tool's export).
    bare = onnx.load(unet_onnx)
    bare.ir_version = 10
    kept = [p for p in bare.metadata_props if p.key != TARGET_KEY]
    del bare.metadata_props[:]
    bare.metadata_props.extend(kept)
    onnx.save(bare, tmp_path / "bare.onnx")
    for path, words in (
        (newest, "was exported for onnxruntime >=1.18 (target ort>=1.31"),
        (tmp_path / "bare.onnx", "is ONNX IR 10, opset 18, and onnxruntime 1.16.3 opens IR 9"),
    ):
        done = _in_env(
            env,
            "import segdeploy.runtime as rt\n"
            "from segdeploy.core.errors import SegdeployError\n"
            f"try:\n    rt.open_model({str(path)!r})\n"
            "except SegdeployError as err:\n    print(err)",
        )
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert words in done.stdout and "--target ort>=1.16" in done.stdout, done.stdout
        assert len(done.stdout.strip().splitlines()) == 1


def test_exports_are_byte_for_byte_the_same(tiny_checkpoints, tmp_path):
    """Two exports of one checkpoint, in two processes with different hash seeds."""
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}" / "unet.onnx"
        out.parent.mkdir()
        code = (
            "import sys; from segdeploy.export import export_checkpoint\n"
            "export_checkpoint(sys.argv[1], sys.argv[2], shapes=[(1, 16, 16)], providers=['cpu'])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(tiny_checkpoints["unet"]), str(out)],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_verify_catches_a_changed_file_and_a_changed_parent(unet_onnx, tmp_path):
    assert "parent" in verify_file(unet_onnx).sentence()
    changed = tmp_path / "unet.onnx"
    data = bytearray(unet_onnx.read_bytes())
    data[data.find(b"pedestrian")] ^= 0x20  # one letter of the card's class names
    changed.write_bytes(bytes(data))
    with pytest.raises(SegdeployError, match="was changed after segdeploy wrote it"):
        verify_file(changed)


def test_a_variant_keeps_its_parents_format(unet_onnx, tmp_path):
    """ORT's quantizer imports domains no node uses (ai.onnx.ml opset 5 with onnxruntime 1.31),
    which onnxruntime 1.16 refuses; the variant keeps the parent's IR and only used domains."""
    variant = onnx.load(unet_onnx)
    variant.ir_version = 11
    variant.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", 5))
    variant.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    stamp_parent_format(variant, unet_onnx)
    assert variant.ir_version == 9
    assert {(o.domain, o.version) for o in variant.opset_import} == {("", 18)}


def test_an_operator_the_target_lacks_is_refused_naming_the_lowest_target(unet_onnx, monkeypatch):
    rows = tuple(
        Release(r.version, r.max_ir, r.max_opset, r.install, {"Resize": "no cubic Resize"})
        if r.version < (1, 18)
        else r
        for r in targets.ORT_RELEASES
    )
    monkeypatch.setitem(targets.RUNTIMES, "ort", ("onnxruntime", rows))
    with pytest.raises(SegdeployError) as err:
        require_target_ops(onnx.load(unet_onnx), Target("ort", (1, 16)))
    assert str(err.value) == (
        "ort>=1.16 cannot run this graph's Resize (no cubic Resize); the lowest target that "
        "runs it is ort>=1.18"
    )


def test_a_missing_runtime_environment_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv(RUNTIMES_ENV, str(tmp_path))
    with pytest.raises(SegdeployError) as err:
        target_plan("ort>=1.16", 18)
    assert "python -m segdeploy.export.target_check build 'ort>=1.16'" in str(err.value)
    # The default target still exports, saying where it was not checked.
    plan = target_plan(None, 18)
    assert plan.env is None and plan.note.startswith("not checked on onnxruntime 1.16.3")
    with pytest.raises(SegdeployError, match="opens opset 19 at most"):
        target_plan("ort>=1.16", 20)


@pytest.mark.slow  # an export, the end-to-end graph, and Node runs (about 40 s)
def test_ort_web_end_to_end_mask_equals_pythons(tiny_checkpoints, tmp_path):
    env = _env("ort-web")
    pytest.importorskip("skimage")
    from real_pixels import _textures, texture_scene

    from segdeploy.export.end_to_end import export_end_to_end

    out = tmp_path / "unet.onnx"
    export_checkpoint(tiny_checkpoints["unet"], out, shapes=[(1, 16, 16)], target="ort-web")
    textures = _textures()
    images = [
        texture_scene(i, h, w, textures, seed=3)[0]
        for i, (h, w) in enumerate(((61, 93), (17, 200)))
    ]
    e2e = export_end_to_end(out, images=images).path
    record = json.loads(read_header(e2e).metadata["segdeploy.end_to_end"])
    assert record["on_target"] == {"runtime": "onnxruntime-web 1.16.3", "images": 2, "identical": 2}
    # And directly: the mask onnxruntime-web returns is predict's, byte for byte.
    reference = open_model(out, provider="cpu")
    found = env.run(e2e, [{"image": image} for image in images])
    for image, outputs in zip(images, found, strict=True):
        assert outputs["mask"].tobytes() == reference.predict(image).tobytes()
    assert len(np.unique(reference.predict(images[0]))) >= 1


def test_a_variant_is_run_on_its_parents_target_before_it_is_written(unet_onnx):
    _env("ort>=1.16")
    from segdeploy.export.onnx_file import read_card
    from segdeploy.export.target_check import variant_on_target

    variant = onnx.load(unet_onnx)
    card = read_card(variant, str(unet_onnx))
    assert variant_on_target(variant, card, "int8") == "onnxruntime 1.16.3"
    # What ORT 1.31's quantizer wrote before variants dropped unused domains.
    variant.opset_import.append(onnx.helper.make_opsetid("ai.onnx.ml", 5))
    with pytest.raises(SegdeployError) as err:
        variant_on_target(variant, card, "int8")
    assert "the INT8 variant does not run on onnxruntime 1.16.3" in str(err.value)
    assert "domain ai.onnx.ml" in str(err.value) and "nothing was written" in str(err.value)
