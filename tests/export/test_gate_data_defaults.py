"""Calibration and gate data default to what the card says the model was trained on: a U-Net
trained on a folder of real pixels is quantised on that folder (with the card's seed), a model
trained on synthetic scenes on synthetic scenes, and a folder that has gone is one sentence."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.core.errors import SegdeployError
from segdeploy.data.samples import labelled_images
from segdeploy.export.onnx_file import attach_metadata, load_onnx, read_card

runner = CliRunner()
#: Not the default seed: the gate must take the card's, which picks the folder's hold-out share.
SEED = 3
ANY_RESULT = {"max_drop": 1.0, "min_agreement": 0.0}


def card_trained_on(source: str, seed: int = SEED):
    from segdeploy.core.card import ModelCard

    summary = {"source": source, "train": {}, "val": {}}
    return ModelCard(
        arch="unet",
        task="segmentation",
        class_names=("a", "b"),
        training={"seed": seed, "data_summary": summary},
    )


def test_the_default_is_the_card_s_folder_and_seed(tmp_path):
    from segdeploy.export.training_data import choose_data

    chosen = choose_data(card_trained_on(str(tmp_path)), None, "m.onnx")
    assert (chosen.source, chosen.seed) == (str(tmp_path), SEED)
    synthetic = choose_data(card_trained_on("synthetic", 5), None, "m.onnx")
    assert (synthetic.source, synthetic.seed) == ("synthetic", 5)
    # Data the user names wins, with the card's seed still.
    assert choose_data(card_trained_on("synthetic"), str(tmp_path), "m.onnx").seed == SEED


def test_a_gone_folder_is_one_sentence_naming_it(tmp_path):
    from segdeploy.export.training_data import choose_data

    gone = tmp_path / "gone"
    with pytest.raises(SegdeployError) as err:
        choose_data(card_trained_on(str(gone)), None, "m.onnx", option="--data")
    assert str(err.value) == (
        f"the card of m.onnx says it was trained on {gone}, which is not there; pass --data DIR"
    )


@pytest.fixture(scope="module")
def folder_unet(tmp_path_factory):
    """A tiny U-Net trained 2 epochs, seed 3, on an unsplit real-pixel folder; exported."""
    pytest.importorskip("skimage")
    from real_pixels import write_texture_segmentation

    from segdeploy.export import export_checkpoint
    from segdeploy.train import TrainConfig, train

    root = tmp_path_factory.mktemp("unsplit")
    data = write_texture_segmentation(root / "data", train=16, val=8, split=False)
    checkpoint = root / "unet.pt"
    config = TrainConfig(
        arch="unet",
        data=str(data),
        variant="tiny",
        img_size=64,
        epochs=2,
        batch_size=4,
        seed=SEED,
        out=checkpoint,
    )
    train(config)
    onnx_path = root / "unet.onnx"
    export_checkpoint(checkpoint, out=onnx_path, shapes=[(1, 64, 64)], providers=["cpu"])
    return onnx_path, data


@pytest.mark.slow
def test_quantize_without_calib_uses_the_folder_and_seed_the_card_records(folder_unet, tmp_path):
    from segdeploy.export.quantize import quantize_int8

    onnx_path, data = folder_unet
    out = tmp_path / "unet.int8.onnx"
    result = quantize_int8(onnx_path, out, samples=6, eval_samples=4, **ANY_RESULT)
    card = read_card(load_onnx(onnx_path), "unet.onnx")
    assert card.training["seed"] == SEED
    expected_gate = [i.name for i in labelled_images(card, str(data), "val", 4, SEED)]
    expected_calib = [i.name for i in labelled_images(card, str(data), "train", 6, SEED)]
    assert result.images == expected_gate and result.calibration_images == expected_calib
    # Another seed holds out other images: the seed really came from the card.
    assert expected_gate != [i.name for i in labelled_images(card, str(data), "val", 4, 0)]
    assert f"data folder {data.resolve()}" in result.data and f"seed {SEED}" in result.data
    report = json.loads(out.with_name("unet.int8.gate.json").read_text())
    assert report["calibration_data"].startswith(f"data folder {data.resolve()}, train split")


@pytest.mark.slow
def test_convert_fp16_without_data_grades_on_the_training_folder(folder_unet, tmp_path):
    from segdeploy.export.fp16 import convert_fp16

    onnx_path, data = folder_unet
    result = convert_fp16(onnx_path, tmp_path / "unet.fp16.onnx", eval_samples=3, **ANY_RESULT)
    assert all(name.startswith(str(data.resolve())) for name in result.images)


@pytest.mark.slow
def test_a_training_folder_that_is_gone_is_one_sentence(folder_unet, tmp_path):
    onnx_path, data = folder_unet
    model = load_onnx(onnx_path)
    card = read_card(model, "unet.onnx")
    gone = tmp_path / "moved-away"
    summary = {**card.training["data_summary"], "source": str(gone)}
    moved = card.replace(training={**card.training, "data_summary": summary})
    attach_metadata(model, {"segdeploy.model_card": moved.to_json()})
    copy = tmp_path / "unet.onnx"
    import onnx

    onnx.save(model, copy)
    from segdeploy.export.quantize import quantize_int8

    with pytest.raises(SegdeployError, match="which is not there; pass --calib DIR") as err:
        quantize_int8(copy)
    assert f"says it was trained on {gone}" in str(err.value)
    result = runner.invoke(app, ["convert-fp16", str(copy)])
    assert result.exit_code == 1 and "which is not there; pass --data DIR" in result.output
    # Naming the data still works.
    result = runner.invoke(
        app,
        [
            "quantize",
            str(copy),
            "--calib",
            str(data),
            "--samples",
            "4",
            "--eval-samples",
            "2",
            "--max-drop",
            "100",
        ],
    )
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "which is not there" not in result.output


@pytest.mark.slow
def test_a_synthetic_model_still_uses_synthetic_scenes(tmp_path):
    from segdeploy.export import export_checkpoint
    from segdeploy.export.quantize import quantize_int8
    from segdeploy.train import TrainConfig, train

    checkpoint = tmp_path / "unet.pt"
    config = TrainConfig(
        arch="unet",
        variant="tiny",
        img_size=32,
        epochs=1,
        batch_size=4,
        train_samples=8,
        val_samples=4,
        out=checkpoint,
    )
    train(config)
    onnx_path = tmp_path / "unet.onnx"
    export_checkpoint(checkpoint, out=onnx_path, shapes=[(1, 32, 32)], providers=["cpu"])
    result = quantize_int8(onnx_path, samples=4, eval_samples=2, **ANY_RESULT)
    assert result.data.startswith("synthetic road scenes")
    assert all(name.startswith("synthetic:") for name in result.calibration_images)


def test_a_card_without_training_record_falls_back_to_synthetic(tmp_path):
    from segdeploy.export.training_data import choose_data

    card = card_trained_on("unused").replace(training={})
    chosen = choose_data(card, None, "m.onnx")
    assert chosen.source == "synthetic" and "records no training data" in chosen.reason
    assert choose_data(card, str(tmp_path), "m.onnx").source == str(tmp_path)
