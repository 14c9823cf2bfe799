"""Checkpoints: round trip, refusal of code-running pickles, and one clear error per bad file."""

from __future__ import annotations

import pickle

import pytest
import torch

from segdeploy.core.errors import SegdeployError
from segdeploy.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint


def test_round_trip_rebuilds_the_model_from_the_card(tiny_checkpoints):
    model, card = load_checkpoint(tiny_checkpoints["unet"])
    assert card.arch == "unet" and card.model_kwargs == {"features": [8, 16, 32, 64]}
    raw = torch.load(tiny_checkpoints["unet"], weights_only=True)  # plain data, no code
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw["state_dict"][key])
    assert not model.training


# torch warns about the plain pickle's protocol before segdeploy refuses the file: expected here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": "segdeploy-checkpoint", "x": Exploit()}, f)
    with pytest.raises(SegdeployError, match=r"evil\.pt .*would execute code"):
        read_checkpoint(path)
    assert not marker.exists()


def test_truncated_file(tiny_checkpoints, tmp_path):
    data = tiny_checkpoints["unet"].read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegdeployError, match=r"cut\.pt is not a readable checkpoint"):
        load_checkpoint(path)


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(SegdeployError, match=r"plain\.pt is a PyTorch file but not a segdeploy"):
        load_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(SegdeployError, match=r"nothere\.pt does not exist"):
        load_checkpoint(tmp_path / "nothere.pt")


def _rewrite(src, dst, edit):
    payload = torch.load(src, weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return dst


def test_unknown_arch_in_the_card(tiny_checkpoints, tmp_path):
    path = _rewrite(
        tiny_checkpoints["unet"], tmp_path / "odd.pt", lambda p: p["card"].update(arch="vit")
    )
    with pytest.raises(SegdeployError, match="unknown architecture 'vit'"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_card(tiny_checkpoints, tmp_path):
    def widen(payload):
        payload["card"]["model_kwargs"] = {"features": [16, 32, 64, 128]}

    path = _rewrite(tiny_checkpoints["unet"], tmp_path / "mismatch.pt", widen)
    with pytest.raises(SegdeployError, match=r"mismatch\.pt: the weights do not fit the 'unet'"):
        load_checkpoint(path)


def test_interrupted_write_leaves_neither_partial_file_nor_temp(
    tiny_checkpoints, tmp_path, monkeypatch
):
    model, card = load_checkpoint(tiny_checkpoints["unet"])
    target = tmp_path / "out.pt"
    target.write_bytes(b"previous")

    def interrupted_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, card, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.pt"]


def test_trainer_state_round_trips_and_old_files_have_none(tiny_checkpoints, tmp_path):
    from segdeploy.train.checkpoint import best_path, read_trainer_state, state_path

    model, card = load_checkpoint(tiny_checkpoints["unet"])
    assert read_trainer_state(tiny_checkpoints["unet"]) is None  # a version 1 file
    trainer = {"epoch": 2, "rng": {"torch": torch.get_rng_state()}, "history": [{"metric": 0.5}]}
    path = save_checkpoint(model, card, state_path(tmp_path / "run.pt"), trainer_state=trainer)
    assert path.name == "run.last.pt" and best_path(path) == tmp_path / "run.pt"
    loaded = read_trainer_state(path)
    assert loaded["epoch"] == 2 and loaded["history"] == [{"metric": 0.5}]
    assert torch.equal(loaded["rng"]["torch"], trainer["rng"]["torch"])
    assert load_checkpoint(path)[1] == card  # still an ordinary checkpoint


def test_a_newer_version_is_refused(tiny_checkpoints, tmp_path):
    path = _rewrite(tiny_checkpoints["unet"], tmp_path / "new.pt", lambda p: p.update(version=3))
    with pytest.raises(SegdeployError, match=r"new\.pt was written by a newer segdeploy"):
        read_checkpoint(path)
