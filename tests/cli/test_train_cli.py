"""``segdeploy train`` through the CLI: every task trains end to end; bad input is one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.train.checkpoint import load_checkpoint, read_checkpoint

runner = CliRunner()
FAST = ["--epochs", "1", "--train-samples", "16", "--val-samples", "8", "--batch-size", "8"]


def train(tmp_path, *args):
    out = tmp_path / "model.pt"
    result = runner.invoke(app, ["train", *args, "--out", str(out)])
    return result, out


def test_unet_trains_and_writes_a_self_describing_checkpoint(tmp_path):
    result, out = train(tmp_path, "unet", "--variant", "tiny", "--img-size", "64", *FAST)
    assert result.exit_code == 0, result.output
    _, card = load_checkpoint(out)
    assert card.arch == "unet" and card.class_names[3] == "pedestrian"
    assert card.training["metric"] == "mIoU" and card.training["img_size"] == 64
    assert 0.0 <= card.training["best_metric"] <= 1.0
    assert len(card.training["validation"]["per_class_iou"]) == 4
    assert "pixel accuracy" in result.output and "frequency-weighted IoU" in result.output


def test_same_seed_gives_bit_identical_weights(tmp_path):
    args = ("unet", "--variant", "tiny", "--img-size", "32", *FAST)
    first, a = train(tmp_path / "a", *args)
    second, b = train(tmp_path / "b", *args)
    assert first.exit_code == second.exit_code == 0
    state_a, state_b = read_checkpoint(a)[1], read_checkpoint(b)[1]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_deeplab_trains_with_its_aux_head(tmp_path):
    result, out = train(
        tmp_path, "deeplabv3_mobilenet_v3_large", "--variant", "tiny", "--img-size", "64", *FAST
    )
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out)[0].model_kwargs == {"width_mult": 0.25}


def test_resnet18_fine_tunes_from_a_local_pretrained_file(tmp_path):
    from torchvision.models import resnet18

    imagenet = resnet18(weights=None)
    pretrained = tmp_path / "resnet18_imagenet.pth"
    torch.save(imagenet.state_dict(), pretrained)
    result, out = train(
        tmp_path, "resnet18", "--pretrained", str(pretrained), "--img-size", "64", *FAST
    )
    assert result.exit_code == 0, result.output
    card, state = read_checkpoint(out)
    assert card.task == "classification" and card.training["finetune"] == "fc"
    assert card.training["pretrained"] == "resnet18_imagenet.pth"
    # Everything but fc was frozen: the backbone is the pretrained file, bit for bit.
    assert torch.equal(
        state["layer1.0.conv1.weight"], imagenet.state_dict()["layer1.0.conv1.weight"]
    )
    assert torch.equal(state["bn1.running_mean"], imagenet.state_dict()["bn1.running_mean"])


def _mask_folder(root, count=6, size=32):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        mask = rng.integers(0, 3, (size, size)).astype(np.uint8)
        image = (mask[..., None] * 100 + rng.integers(0, 20, (size, size, 3))).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
    (root / "classes.txt").write_text("sky\nroad\ncar\n")


def test_trains_on_a_folder_of_images_and_masks(tmp_path):
    _mask_folder(tmp_path / "data")
    result, out = train(
        tmp_path,
        "unet",
        "--data",
        str(tmp_path / "data"),
        "--variant",
        "tiny",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--class-weights",
        "auto",
    )
    assert result.exit_code == 0, result.output
    assert read_checkpoint(out)[0].class_names == ("sky", "road", "car")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["vit"], "unknown architecture 'vit'"),
        (["unet", "--img-size", "100"], "multiple of 16"),
        (["unet", "--data", "/no/such/folder"], "does not exist"),
        (["unet", "--pretrained", "x.pth"], "does not take --pretrained"),
        (["resnet18", "--pretrained", "/no/file.pth"], "file.pth does not exist"),
        (["unet", "--variant", "huge"], "no variant 'huge'"),
        (["unet", "--device", "cuda"], "cuda"),
        (["unet", "--loss", "focal"], "focal"),
    ],
)
def test_bad_input_is_one_sentence_and_a_non_zero_exit(tmp_path, args, message):
    result, out = train(tmp_path, *args, "--epochs", "1", "--train-samples", "4")
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_an_existing_checkpoint_is_replaced_only_with_force_and_resume_continues(tmp_path):
    args = ("unet", "--variant", "tiny", "--img-size", "32", *FAST)
    first, out = train(tmp_path, *args)
    assert first.exit_code == 0, first.output
    before = out.read_bytes()
    again, _ = train(tmp_path, *args)
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert "model.pt already exists; pass --force to replace it, or --resume it" in again.output
    assert out.read_bytes() == before
    forced, _ = train(tmp_path, *args, "--force")
    assert forced.exit_code == 0, forced.output
    longer = [a if a != "1" else "2" for a in args]  # --epochs 2
    resumed, _ = train(tmp_path, *longer, "--resume", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert read_checkpoint(out)[0].training["epochs"] == 2


# --nproc: the launch itself is tested in tests/train/test_distributed.py; here, what the
# command hands to it and what it refuses.


def test_nproc_relaunches_the_same_command_without_nproc_and_exits_with_its_code(
    tmp_path, monkeypatch
):
    import segdeploy.train
    import segdeploy.train.distributed as distributed

    launched, configs = [], []
    monkeypatch.setattr(
        distributed, "launch", lambda n, module, args, device: launched.append(args) or 3
    )
    monkeypatch.setattr(segdeploy.train, "train", lambda config, progress: configs.append(config))
    monkeypatch.setattr("segdeploy.cli.train.print_training_summary", lambda result: None)
    monkeypatch.chdir(tmp_path)
    given = ["unet", "--variant", "tiny", "--classes", "a,b", "--lr", "0.01", "--no-force"]
    given += ["--out", "-odd name.pt"]  # a value that starts with '-'
    result = runner.invoke(app, ["train", *given[:3], "--nproc", "2", *given[3:]])
    assert result.exit_code == 3, result.output  # the launched run's exit code
    (args,) = launched
    assert args[0] == "train" and "--nproc" not in " ".join(args)
    assert args[-2:] == ["--", "unet"]
    # Parsed again, the relaunched arguments are the very configuration given.
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["train", *given]).exit_code == 0
    assert configs[0] == configs[1]
    assert configs[0].classes == ("a", "b") and configs[0].lr == 0.01


@pytest.mark.parametrize(
    ("nproc", "message"),
    [("0", "--nproc must be at least 1, found 0"), ("100000", "--nproc 100000 needs a CPU core")],
)
def test_nproc_out_of_bounds_is_one_sentence(tmp_path, nproc, message):
    result, out = train(tmp_path, "unet", "--epochs", "1", "--nproc", nproc)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_nproc_inside_a_torchrun_launch_is_refused(tmp_path, monkeypatch):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    result, _ = train(tmp_path, "unet", "--nproc", "2")
    assert result.exit_code == 1
    assert "started by torchrun: leave --nproc out" in result.output


def test_bad_input_with_nproc_is_one_sentence_before_any_process_starts(tmp_path, monkeypatch):
    import segdeploy.train.distributed as distributed

    monkeypatch.setattr(distributed, "launch", lambda *args: pytest.fail("launched"))
    result, _ = train(tmp_path, "vit", "--nproc", "2")
    assert result.exit_code == 1 and result.output.count("unknown architecture 'vit'") == 1
    missing = tmp_path / "no_such_folder"
    result, _ = train(tmp_path, "unet", "--data", str(missing), "--nproc", "2")
    assert result.exit_code == 1 and result.output.count(f"data folder {missing}") == 1
