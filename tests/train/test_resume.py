"""Resume and no lost work: a resumed run ends bit for bit where an uninterrupted one does,
Ctrl-C leaves whole files, and an existing output is replaced only with ``force``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from segdeploy.core.errors import SegdeployError
from segdeploy.train import TrainConfig, TrainProgress, train
from segdeploy.train.checkpoint import read_checkpoint, read_trainer_state, state_path

BASE = TrainConfig(
    arch="unet",
    variant="tiny",
    img_size=32,
    epochs=3,
    batch_size=4,
    train_samples=8,
    val_samples=4,
    seed=0,
)


class StopAt(TrainProgress):
    """Raises KeyboardInterrupt (as Ctrl-C would) at ``step`` of ``epoch``; records calls."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.epoch, self.started = (epoch, step), 0, False

    def run_started(self, epochs: int, steps_per_epoch: int) -> None:
        self.started = True

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self.epoch = epoch

    def step_done(self, step: int, mean_loss: float) -> None:
        if (self.epoch, step) == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 3-epoch run: (result, best checkpoint)."""
    out = tmp_path_factory.mktemp("straight") / "run.pt"
    return train(replace(BASE, out=out)), out


def assert_same_run(a, b, result_a, result_b):
    for path_a, path_b in ((a, b), (state_path(a), state_path(b))):
        weights_a, weights_b = read_checkpoint(path_a)[1], read_checkpoint(path_b)[1]
        assert weights_a.keys() == weights_b.keys()
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), path_b
    metrics = [(r.epoch, r.train_loss, r.metric, r.details) for r in result_a.history]
    assert metrics == [(r.epoch, r.train_loss, r.metric, r.details) for r in result_b.history]
    assert result_a.best_epoch == result_b.best_epoch
    assert result_a.best_metric == result_b.best_metric
    assert result_a.card.training == result_b.card.training


@pytest.mark.parametrize(("epoch", "step"), [(3, 1), (2, 2)])
def test_ctrl_c_then_resume_ends_where_an_uninterrupted_run_does(straight, tmp_path, epoch, step):
    out = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(replace(BASE, out=out), progress=StopAt(epoch, step))
    # The last finished epoch's files are whole, and nothing half-written is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.last.pt", "run.pt"]
    assert read_checkpoint(out)[0].training["best_epoch"] <= epoch - 1
    assert read_trainer_state(state_path(out))["epoch"] == epoch - 1
    resumed = train(replace(BASE, out=out, resume=out))
    assert_same_run(straight[1], out, straight[0], resumed)


def test_resume_into_another_file_starts_from_the_runs_best(straight, tmp_path):
    first = tmp_path / "first.pt"
    with pytest.raises(KeyboardInterrupt):
        train(replace(BASE, out=first), progress=StopAt(3, 1))
    second = tmp_path / "second.pt"
    resumed = train(replace(BASE, out=second, resume=state_path(first)))
    assert_same_run(straight[1], second, straight[0], resumed)


def test_trainer_state_is_plain_data(straight):
    state_file = state_path(straight[1])
    payload = torch.load(state_file, weights_only=True)
    assert payload["version"] == 2 and payload["trainer"]["epoch"] == 3
    assert payload["trainer"]["rng"]["torch"].dtype == torch.uint8
    assert [r["epoch"] for r in payload["trainer"]["history"]] == [1, 2, 3]
    # The best checkpoint keeps the version 1 layout that older readers open.
    assert torch.load(straight[1], weights_only=True)["version"] == 1
    assert read_trainer_state(straight[1]) is None


def test_an_existing_output_is_refused_before_training(tmp_path):
    out = tmp_path / "run.pt"
    out.write_bytes(b"an earlier run")
    progress = StopAt(0, 0)
    with pytest.raises(SegdeployError) as err:
        train(replace(BASE, out=out, epochs=1), progress=progress)
    assert str(err.value) == (
        f"{out} already exists; pass --force to replace it, or --resume it to continue"
    )
    assert out.read_bytes() == b"an earlier run" and not progress.started
    train(replace(BASE, out=out, epochs=1, force=True))
    assert read_checkpoint(out)[0].training["epochs"] == 1


def test_an_output_onto_the_pretrained_weights_is_refused_even_with_force(tmp_path):
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"the only copy of the pretrained weights")
    progress = StopAt(0, 0)
    config = replace(BASE, out=weights, pretrained=weights, epochs=1, force=True)
    with pytest.raises(SegdeployError, match="never replaces an input"):
        train(config, progress=progress)
    assert weights.read_bytes() == b"the only copy of the pretrained weights"
    assert not progress.started


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variant": "small"}, r"was trained with variant 'tiny', not 'small'; resume it with"),
        ({"img_size": 64}, r"was trained with img_size 32, not 64"),
        ({"epochs": 3}, r"already trained 3 of --epochs 3; pass a larger --epochs"),
        # Another seed would draw other validation scenes (an unsplit folder: other held-out
        # images), so later epochs would validate on what earlier ones trained on.
        ({"seed": 3, "epochs": 4}, r"was trained with seed 0, not 3; .* \(--seed 0\)$"),
    ],
)
def test_resume_of_another_run_is_one_sentence(straight, tmp_path, change, message):
    config = replace(BASE, out=tmp_path / "new.pt", resume=straight[1], **change)
    with pytest.raises(SegdeployError, match=message):
        train(config)
    assert not (tmp_path / "new.pt").exists()


def test_resume_needs_a_trainer_state(tiny_checkpoints, tmp_path):
    config = replace(BASE, out=tmp_path / "new.pt", resume=tiny_checkpoints["unet"])
    with pytest.raises(SegdeployError, match=r"unet\.pt has no trainer state to resume from"):
        train(config)


def test_out_may_not_take_a_state_file_name(tmp_path):
    with pytest.raises(SegdeployError, match=r"--out must not end in \.last\.pt"):
        train(replace(BASE, out=tmp_path / "run.last.pt"))


def test_a_state_file_from_before_the_seed_was_recorded_still_resumes(straight, tmp_path):
    old = tmp_path / "old.last.pt"
    payload = torch.load(state_path(straight[1]), weights_only=True)
    del payload["trainer"]["run"]["seed"]  # what an older segdeploy wrote
    torch.save(payload, old)
    (tmp_path / "old.pt").write_bytes(straight[1].read_bytes())
    resumed = train(replace(BASE, out=tmp_path / "more.pt", resume=old, epochs=4))
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
