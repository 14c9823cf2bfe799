"""``evaluate_models``: a checkpoint and its export scored on real pixels, through their serving
paths, agree; the set holds the awkward sizes; bad input is one sentence."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.tools.evaluate import evaluate_models, precision_from_name, write_evaluate_report

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def texture_models(texture_set, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny U-Net trained 2 epochs on the texture set at 32 px, its export and INT8 variant."""
    from segdeploy.export import export_checkpoint
    from segdeploy.export.quantize import quantize_int8
    from segdeploy.train import train
    from segdeploy.train.config import TrainConfig

    folder = tmp_path_factory.mktemp("evaluate")
    config = TrainConfig(
        arch="unet",
        variant="tiny",
        data=str(texture_set),
        epochs=2,
        img_size=32,
        batch_size=8,
        out=folder / "textures.pt",
    )
    checkpoint = train(config).checkpoint
    onnx = folder / "textures.onnx"
    export_checkpoint(checkpoint, out=onnx, shapes=[(1, 32, 32)], providers=["cpu"])
    # The gate's threshold is not under test here: let any real INT8 model through.
    gate = quantize_int8(
        onnx, calib=str(texture_set), samples=8, eval_samples=GATE_IMAGES, max_drop=1.0
    )
    return checkpoint, onnx, gate.path


#: Validation images the INT8 gate grades on (the first of the split, as evaluate's --count).
GATE_IMAGES = 8


@pytest.fixture(scope="module")
def texture_report(texture_models, texture_set):
    return evaluate_models(list(texture_models), str(texture_set))


def test_checkpoint_and_export_agree_on_real_pixels(texture_report):
    pt, onnx, _ = texture_report.models
    assert (pt.format, onnx.format) == ("pt", "onnx")
    assert (pt.precision, onnx.precision) == ("fp32", "fp32")
    assert pt.provider == onnx.provider == "cpu"
    assert pt.score.metric_name == "mIoU" and not math.isnan(pt.score.metric)
    assert pt.delta_points == 0.0
    assert abs(onnx.delta_points) < 0.1  # points of mIoU
    assert onnx.delta_points == pytest.approx((onnx.score.metric - pt.score.metric) * 100)
    for model in texture_report.models:
        assert model.score.images == len(texture_report.image_names)
        assert set(model.score.details) == {"pixel_accuracy", "fw_iou"}
        assert len(model.score.per_class) == 4
        assert model.images_per_s > 0


def test_training_reported_the_validation_miou_evaluate_measures(texture_report):
    """Training validates through the input contract on the same split: the same number."""
    fp32 = [model for model in texture_report.models if model.precision == "fp32"]
    assert len(fp32) == 2
    for model in fp32:
        assert model.training_metric == pytest.approx(model.score.metric, abs=1e-6)


def test_scores_the_validation_split_at_the_images_own_sizes(texture_report, texture_set):
    names = [Path(name) for name in texture_report.image_names]
    assert names == sorted((texture_set / "val" / "images").iterdir())
    sizes = texture_report.image_sizes
    assert any(h % 16 or w % 16 for h, w in sizes), sizes  # not a multiple of 16
    assert any(h != w for h, w in sizes), sizes  # not square
    assert texture_report.class_names == ("brick", "grass", "gravel", "coffee")
    assert f"val split: {len(names)} images" in texture_report.description


def test_int8_variant_is_scored_against_its_parent(texture_report, texture_models):
    _, onnx, int8 = texture_report.models
    assert (int8.precision, int8.parent, onnx.parent) == ("int8", texture_models[1], None)
    assert int8.delta_points == pytest.approx((int8.score.metric - onnx.score.metric) * 100)


def test_evaluate_measures_what_the_int8_gate_measured(texture_models, texture_set):
    """The gate and evaluate score the same first validation images the same way."""
    from segdeploy.core.artifacts import gate_report_path

    _, onnx, int8 = texture_models
    gate = json.loads(gate_report_path(int8).read_text())
    report = evaluate_models([onnx, int8], str(texture_set), count=GATE_IMAGES)
    assert report.image_names == gate["images"]
    # The gate runs same-size images as one batch; a kernel may round a pixel differently.
    assert report.models[0].score.metric == pytest.approx(gate["fp32"], abs=1e-4)
    assert report.models[1].score.metric == pytest.approx(gate["variant"], abs=1e-4)


def test_count_and_train_split_pick_other_items(texture_models, texture_set):
    onnx = texture_models[1]
    report = evaluate_models([onnx], str(texture_set), split="train", count=3)
    assert len(report.image_names) == 3 == report.models[0].score.images
    assert all("/train/" in name for name in report.image_names)


def test_json_report_records_models_data_and_versions(texture_report, tmp_path):
    path = write_evaluate_report(texture_report, tmp_path / "report.json")
    data = json.loads(path.read_text())
    assert data["metric"] == "mIoU" and data["task"] == "segmentation"
    assert data["data"]["split"] == "val"
    assert data["data"]["images"] == len(data["data"]["image_names"]) > 0
    assert [m["format"] for m in data["models"]] == ["pt", "onnx", "onnx"]
    assert data["models"][2]["precision"] == "int8"
    assert data["models"][1]["score"]["metric"] == texture_report.models[1].score.metric
    assert {"segdeploy", "onnxruntime", "torch"} <= set(data["versions"])
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_precision_comes_from_the_variant_name():
    assert precision_from_name("exports/x.int8.onnx") == "int8"
    assert precision_from_name("x.fp16.onnx") == "fp16"
    assert precision_from_name("x.onnx") == "fp32"
    assert precision_from_name("x.pt") == "fp32"


def test_models_of_other_classes_are_refused(texture_models, texture_set, unet_onnx):
    with pytest.raises(SegdeployError, match="models disagree") as caught:
        evaluate_models([texture_models[1], unet_onnx], str(texture_set))
    assert "\n" not in str(caught.value)


def test_data_with_other_classes_is_refused(unet_onnx, texture_set):
    with pytest.raises(DataError, match="differ from the model's"):
        evaluate_models([unet_onnx], str(texture_set))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"provider": "tpu"}, "unknown provider 'tpu'"),
        ({"split": "test"}, "unknown split 'test'"),
        ({"count": 0}, "count must be at least 1"),
    ],
)
def test_bad_options_are_one_sentence(unet_onnx, change, message):
    with pytest.raises(SegdeployError, match=message) as caught:
        evaluate_models([unet_onnx], "synthetic", **change)
    assert "\n" not in str(caught.value)


def test_missing_and_unsupported_files_are_refused(tmp_path, unet_onnx):
    with pytest.raises(SegdeployError, match="expected an existing file"):
        evaluate_models([unet_onnx, tmp_path / "gone.onnx"], "synthetic")
    text = tmp_path / "model.txt"
    text.write_text("not a model")
    with pytest.raises(SegdeployError, match=r"expected a \.pt checkpoint or an \.onnx export"):
        evaluate_models([text], "synthetic")
    with pytest.raises(SegdeployError, match="no model given"):
        evaluate_models([], "synthetic")


def test_a_variant_is_checked_against_its_parent(texture_models, texture_set, tmp_path):
    """A file named like a variant of an unrelated export beside it is refused."""
    parent = shutil.copy(texture_models[1], tmp_path / "m.onnx")
    impostor = shutil.copy(texture_models[1], tmp_path / "m.int8.onnx")
    with pytest.raises(SegdeployError, match="parent") as caught:
        evaluate_models([Path(parent), Path(impostor)], str(texture_set), count=2)
    assert "\n" not in str(caught.value)


def test_a_classifier_is_scored_by_accuracy_and_recall(tiny_checkpoints, resnet_onnx):
    checkpoint = tiny_checkpoints["resnet18"]
    report = evaluate_models([checkpoint, resnet_onnx], "synthetic", count=4)
    assert report.task == "classification" and report.metric_name == "accuracy"
    pt, onnx = report.models
    assert pt.score.images == onnx.score.images == 4
    assert len(pt.score.per_class) == 4 and pt.score.details == {}
    assert onnx.score.metric == pt.score.metric  # same labels from both engines


@pytest.mark.parametrize(
    ("provider", "device"),
    [("cpu", "cpu"), ("openvino", "cpu"), ("cuda", "cuda"), ("auto", "cuda")],
)
def test_a_checkpoint_runs_on_the_device_of_the_provider(
    monkeypatch, tiny_checkpoints, provider, device
):
    # On a CUDA machine `--provider openvino` compares CPU engines: the .pt runs on the CPU too.
    import torch

    from segdeploy.tools import evaluate
    from segdeploy.train.inference import TorchPredictor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []
    build = TorchPredictor.from_checkpoint.__func__

    def record(cls, path, device="cpu"):
        asked.append(device)
        return build(cls, path, "cpu")  # this machine may have no CUDA: build it on the CPU

    monkeypatch.setattr(TorchPredictor, "from_checkpoint", classmethod(record))
    opened = evaluate._open_checkpoint(Path(tiny_checkpoints["unet"]), provider)
    assert asked == [device] and opened.provider == device


def test_a_checkpoint_is_measured_with_tf32_off_and_the_switches_put_back(tiny_checkpoints):
    import numpy as np
    import torch

    from segdeploy.train.inference import TorchPredictor

    predictor = TorchPredictor.from_checkpoint(tiny_checkpoints["unet"])
    seen = []
    switches = torch.backends.cudnn, torch.backends.cuda.matmul
    predictor.model.register_forward_pre_hook(
        lambda module, args: seen.append(tuple(s.allow_tf32 for s in switches))
    )
    saved = tuple(s.allow_tf32 for s in switches)
    try:
        for switch in switches:
            switch.allow_tf32 = True  # PyTorch's cuDNN default
        predictor.predict(np.zeros((16, 16, 3), np.uint8))
        assert seen == [(False, False)]
        assert all(s.allow_tf32 for s in switches)  # training's own setting is left alone
    finally:
        for switch, value in zip(switches, saved, strict=True):
            switch.allow_tf32 = value


@pytest.fixture(scope="module")
def seed3_model(tmp_path_factory):
    """A tiny U-Net trained with --seed 3 on a texture folder without train/ + val/."""
    from real_pixels import write_texture_segmentation

    from segdeploy.train import train
    from segdeploy.train.config import TrainConfig

    folder = tmp_path_factory.mktemp("seed3")
    data = write_texture_segmentation(folder / "data", train=15, val=0, split=False)
    config = TrainConfig(
        arch="unet",
        variant="tiny",
        data=str(data),
        epochs=1,
        img_size=32,
        batch_size=8,
        seed=3,
        out=folder / "seed3.pt",
    )
    return train(config), data


def test_an_unsplit_folder_is_scored_on_the_images_the_cards_seed_held_out(seed3_model, tmp_path):
    # Seed 0's split of 15 images would put most of seed 3's held-out images in training.
    from segdeploy.data.folders import split_indices
    from segdeploy.data.samples import labelled_images

    result, data = seed3_model
    report = evaluate_models([result.checkpoint], str(data))
    assert report.seed == 3 and report.seed_from == "card"
    held_out = labelled_images(result.card, str(data), "val", None, 3)
    assert report.image_names == [item.name for item in held_out]
    trained_on = {item.name for item in labelled_images(result.card, str(data), "train", None, 3)}
    assert not trained_on & set(report.image_names)
    assert split_indices(15, 0.2, 0)[1] != split_indices(15, 0.2, 3)[1]
    # The .pt is scored exactly as training validation scored it.
    validation = result.card.training["validation"]
    assert report.models[0].score.metric == pytest.approx(validation["miou"], abs=1e-9)
    data_json = json.loads(write_evaluate_report(report, tmp_path / "r.json").read_text())["data"]
    assert (data_json["seed"], data_json["seed_from"]) == (3, "card")
    assert "(seed 3, from the card)" in report.description
    given = evaluate_models([result.checkpoint], str(data), seed=0)
    assert (given.seed, given.seed_from) == (
        0,
        "option",
    ) and given.image_names != report.image_names


def test_models_trained_with_other_seeds_need_one_seed(tiny_checkpoints, tmp_path):
    from segdeploy.train.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(tiny_checkpoints["unet"])
    other = save_checkpoint(model, card.replace(training={"seed": 3}), tmp_path / "seed3.pt")
    with pytest.raises(SegdeployError, match=r"unet\.pt seed 0, seed3\.pt seed 3") as caught:
        evaluate_models([tiny_checkpoints["unet"], other], "synthetic", count=2)
    assert "pass --seed" in str(caught.value) and "\n" not in str(caught.value)
    report = evaluate_models([tiny_checkpoints["unet"], other], "synthetic", count=2, seed=3)
    assert report.seed == 3 and report.image_names == ["synthetic:10003:0", "synthetic:10003:1"]
