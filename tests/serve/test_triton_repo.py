"""``segdeploy triton-repo``: the repository layout and a config Triton's own protobuf accepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.card import ONNX_METADATA_KEY
from segdeploy.core.errors import SegdeployError
from segdeploy.runtime.engine import ort
from segdeploy.serve.triton_repo import TritonRepoOptions, parse_model_config, write_triton_repo

pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
runner = CliRunner()


def test_repository_for_the_unet_parses_as_triton_model_config(unet_onnx, tmp_path):
    options = TritonRepoOptions(max_batch_size=4, instances=2, kind="gpu", warmup_size=(64, 96))
    repo = write_triton_repo(unet_onnx, tmp_path / "repo", options)
    assert repo.model_dir == tmp_path / "repo" / "unet"
    assert repo.model_path.read_bytes() == unet_onnx.read_bytes()  # copied unchanged
    assert (repo.model_dir / "labels.txt").read_text().split() == [
        "background", "road", "vehicle", "pedestrian"
    ]  # fmt: skip
    config = parse_model_config(repo.config_path.read_text())
    session = ort.InferenceSession(str(unet_onnx), providers=["CPUExecutionProvider"])
    image, logits = session.get_inputs()[0], session.get_outputs()[0]
    assert config.name == "unet" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4
    assert [i.name for i in config.input] == [image.name]
    assert list(config.input[0].dims) == [3, -1, -1]  # batch axis left to max_batch_size
    assert config.input[0].data_type == pb2.TYPE_FP32
    assert [o.name for o in config.output] == [logits.name]
    assert list(config.output[0].dims) == [4, -1, -1]
    assert config.output[0].label_filename == "labels.txt"
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    group = config.instance_group[0]
    assert group.count == 2 and group.kind == pb2.ModelInstanceGroup.KIND_GPU
    warm = config.model_warmup[0]
    assert warm.batch_size == 1
    assert list(warm.inputs[image.name].dims) == [3, 64, 96] and warm.inputs[image.name].zero_data
    assert config.parameters["cudnn_conv_algo_search"].string_value == "1"  # HEURISTIC


def test_classifier_output_has_no_spatial_axes(resnet_onnx, tmp_path):
    options = TritonRepoOptions(name="cls", kind="cpu", warmup_size=(32, 32))
    config = parse_model_config(write_triton_repo(resnet_onnx, tmp_path, options).config_text)
    assert list(config.output[0].dims) == [4]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU


def test_warmup_size_must_fit_the_size_multiple(unet_onnx, tmp_path):
    with pytest.raises(SegdeployError, match="multiples of 16"):
        write_triton_repo(unet_onnx, tmp_path, TritonRepoOptions(warmup_size=(500, 512)))
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_existing_model_folder_is_kept_unless_overwritten(unet_onnx, tmp_path):
    write_triton_repo(unet_onnx, tmp_path)
    with pytest.raises(SegdeployError, match="exists already"):
        write_triton_repo(unet_onnx, tmp_path, TritonRepoOptions(max_batch_size=2))
    again = write_triton_repo(
        unet_onnx, tmp_path, TritonRepoOptions(max_batch_size=2), overwrite=True
    )
    assert parse_model_config(again.config_path.read_text()).max_batch_size == 2


def test_file_without_a_card_is_refused(unet_onnx, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(unet_onnx))
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with pytest.raises(SegdeployError, match="model card"):
        write_triton_repo(bare, tmp_path / "repo")


def test_parse_rejects_a_config_triton_would_reject():
    with pytest.raises(SegdeployError, match="not a valid Triton ModelConfig"):
        parse_model_config('name: "x"\nmax_batch: 4\n')


def test_written_model_still_answers_like_the_export(unet_onnx, tmp_path):
    repo = write_triton_repo(unet_onnx, tmp_path)
    image = np.random.default_rng(0).normal(size=(2, 3, 32, 48)).astype(np.float32)
    outputs = []
    for path in (unet_onnx, repo.model_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: image})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    card = json.loads(
        ort.InferenceSession(str(repo.model_path), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map[ONNX_METADATA_KEY]
    )
    assert card["arch"] == "unet"


def test_cli_writes_the_repository_and_reports_errors_in_one_sentence(unet_onnx, tmp_path):
    args = ["triton-repo", str(unet_onnx), str(tmp_path / "repo"), "--max-batch", "2"]
    result = runner.invoke(app, [*args, "--warmup", "32", "--kind", "cpu"])
    assert result.exit_code == 0, result.output
    assert "checked with tritonclient" in result.output
    config = parse_model_config((tmp_path / "repo" / "unet" / "config.pbtxt").read_text())
    assert config.max_batch_size == 2
    again = runner.invoke(app, [*args, "--warmup", "32"])
    assert again.exit_code == 1 and "exists already" in again.output
    assert "Traceback" not in again.output
    bad_kind = runner.invoke(app, [*args, "--kind", "tpu", "--force"])
    assert bad_kind.exit_code == 1 and "instance kind" in bad_kind.output


# ------------------------------------------------------------------------------------------------
# Nothing lost: names that escape the repository, replacement that fails or is interrupted
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def checkout(unet_onnx, tmp_path):
    """A project folder with a sentinel file, the export and a repository holding another model."""
    project = tmp_path / "project"
    (project / "exports").mkdir(parents=True)
    (project / "sentinel.txt").write_text("the user's only copy")
    export = project / "exports" / "unet.onnx"
    export.write_bytes(unet_onnx.read_bytes())
    write_triton_repo(export, project / "models", TritonRepoOptions(name="other"))
    return project


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../exports", ""])
def test_a_name_that_is_not_one_folder_is_refused_and_nothing_is_deleted(
    checkout, snapshot, monkeypatch, name
):
    monkeypatch.chdir(checkout)
    before = snapshot(checkout)
    args = ["triton-repo", "exports/unet.onnx", "models", "--name", name, "--force"]
    result = runner.invoke(app, [*args, "--warmup", "32"])
    assert result.exit_code == 1, result.output
    assert "model name" in result.output and "Traceback" not in result.output
    assert snapshot(checkout) == before  # the checkout, the export and the other model


def test_a_model_folder_that_holds_the_export_is_refused(checkout, snapshot):
    inside = checkout / "models" / "other" / "1" / "model.onnx"
    before = snapshot(checkout)
    with pytest.raises(SegdeployError, match="does not hold the input"):
        write_triton_repo(inside, checkout / "models", TritonRepoOptions(name="other"), True)
    assert snapshot(checkout) == before


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt])
def test_a_replacement_that_fails_midway_keeps_the_old_model(
    checkout, snapshot, monkeypatch, failure
):
    from segdeploy.serve import triton_repo

    export, repo = checkout / "exports" / "unet.onnx", checkout / "models"
    before = snapshot(repo)
    real_copy = triton_repo.shutil.copyfile

    def copy_half_then_fail(source, target):
        real_copy(source, target)
        raise failure

    monkeypatch.setattr(triton_repo.shutil, "copyfile", copy_half_then_fail)
    options = TritonRepoOptions(name="other", max_batch_size=2, warmup_size=(32, 32))
    with pytest.raises(SegdeployError if isinstance(failure, OSError) else failure):
        write_triton_repo(export, repo, options, overwrite=True)
    assert snapshot(repo) == before  # every file of the old model, and nothing beside it
    assert sorted(p.name for p in repo.iterdir()) == ["other"]
    monkeypatch.undo()
    again = write_triton_repo(export, repo, options, overwrite=True)  # a rerun succeeds
    assert parse_model_config(again.config_path.read_text()).max_batch_size == 2
    assert sorted(p.name for p in repo.iterdir()) == ["other"]
