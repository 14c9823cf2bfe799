"""Distributed training: 2 gloo processes started by the real torchrun on this CPU.

``segdeploy train --nproc 2`` runs as a user runs it (a subprocess), prints once, writes one
checkpoint and stops every rank on Ctrl-C; :func:`launch` returns the launched run's exit code.
One torchrun launch (module fixture) runs this file as its worker script (:func:`worker`): each
rank records its sampler's indices, trains k steps on synthetic scenes, validates both ways,
then runs :func:`~segdeploy.train.train` straight and resumed on the texture folder (random
crops and flips, so each rank's random streams matter to the resume), counting the files it
writes. The tests read what the ranks recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from segdeploy.core.errors import SegdeployError
from segdeploy.core.metrics import confusion_of_pairs, score_confusion, score_predictions
from segdeploy.train import TrainConfig, TrainProgress, loop, train
from segdeploy.train.checkpoint import read_checkpoint, read_trainer_state, state_path
from segdeploy.train.distributed import (
    SINGLE_PROCESS,
    DistributedContext,
    init_distributed,
    launch,
)
from segdeploy.train.inference import TorchPredictor

BASE = TrainConfig(
    arch="unet",
    variant="tiny",
    img_size=32,
    epochs=3,
    batch_size=2,
    train_samples=8,
    val_samples=4,
    seed=0,
)
STEP_EPOCHS = 2  # k = STEP_EPOCHS * (8 / 2 ranks / batch 2) = 4 optimiser steps per rank


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    done = subprocess.run(
        [*command, "2", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, texture_set) -> tuple[Path, list[dict]]:
    """(run folder, what each rank recorded) of one 2-process torchrun of :func:`worker`."""
    folder = tmp_path_factory.mktemp("ddp")
    _torchrun(str(Path(__file__).resolve()), str(folder), str(texture_set), cwd=folder)
    return folder, [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def test_parameters_are_bit_identical_across_ranks_after_k_steps(ranks):
    folder, _ = ranks
    first, second = (torch.load(folder / f"params{r}.pt") for r in range(2))
    initial = torch.load(folder / "initial0.pt")
    assert first.keys() == second.keys() == initial.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    # ... and they trained: every rank moved from the initial weights.
    assert sum(not torch.equal(first[name], initial[name]) for name in first) > len(first) // 2


def test_samplers_are_disjoint_cover_the_data_and_reshuffle_every_epoch(ranks):
    _, (zero, one) = ranks
    for epoch in ("1", "2"):
        a, b = zero["indices"][epoch], one["indices"][epoch]
        assert len(a) == len(b) == BASE.train_samples // 2
        assert not set(a) & set(b)
        assert sorted(a + b) == list(range(BASE.train_samples))
    assert zero["indices"]["1"] != zero["indices"]["2"]


def test_distributed_metric_equals_the_single_process_metric(ranks):
    _, (zero, one) = ranks
    assert zero["distributed"] == zero["single"] == one["distributed"]
    assert zero["distributed"]["images"] == BASE.val_samples
    # Each rank scored 2 of the 4 images: the shard alone is a different, partial score.
    assert zero["shard"]["images"] == one["shard"]["images"] == BASE.val_samples // 2


def test_only_rank_0_writes_and_only_one_checkpoint(ranks):
    folder, (zero, one) = ranks
    assert one["writes"] == []
    improved = zero["straight"]["improved_epochs"]
    # Per epoch: the best file when it improved, then the state file; nothing else.
    assert len(zero["writes"]) == BASE.epochs + len(improved)
    assert {Path(p).name for p in zero["writes"]} == {"straight.pt", "straight.last.pt"}
    assert sorted(p.name for p in folder.glob("*.pt") if p.name.startswith("straight")) == [
        "straight.last.pt",
        "straight.pt",
    ]


def test_card_says_how_it_was_trained(ranks):
    folder, _ = ranks
    card = read_checkpoint(folder / "straight.pt")[0]
    record = card.training["distributed"]
    assert record["backend"] == "gloo" and record["processes"] == 2
    assert record["batch_size_per_process"] == 2 and record["global_batch_size"] == 4
    assert record["sync_batchnorm"] is False  # gloo has no SyncBatchNorm
    trainer = read_trainer_state(folder / "straight.last.pt")
    assert trainer["world_size"] == 2 and len(trainer["rank_rng"]) == 2
    # Each rank drew its own augmentation stream (seed + rank).
    assert not torch.equal(trainer["rank_rng"][0]["torch"], trainer["rank_rng"][1]["torch"])


def test_resumed_distributed_run_ends_where_the_straight_one_does(ranks):
    folder, (zero, one) = ranks
    straight, resumed = folder / "straight.pt", folder / "snapshot" / "straight.pt"
    for a, b in ((straight, resumed), (state_path(straight), state_path(resumed))):
        weights_a, weights_b = read_checkpoint(a)[1], read_checkpoint(b)[1]
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), b
    assert zero["resumed"]["history"] == zero["straight"]["history"] == one["straight"]["history"]
    assert read_checkpoint(straight)[0].training == read_checkpoint(resumed)[0].training


@pytest.mark.slow
def test_torchrun_cli_prints_once_and_writes_one_checkpoint(tmp_path):
    args = "unet --variant tiny --img-size 32 --train-samples 8 --val-samples 4 --epochs 1"
    done = _torchrun("-m", "segdeploy", "train", *args.split(), "--out", "m.pt", cwd=tmp_path)
    assert done.stdout.count("best val mIoU") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.last.pt", "m.pt"]


TINY = ["unet", "--variant", "tiny", "--img-size", "32", "--train-samples", "8"]


def _segdeploy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "segdeploy", "train", *TINY, "--val-samples", "4", *args]


def test_nproc_2_prints_once_and_writes_one_checkpoint(tmp_path):
    command = _segdeploy_command("--epochs", "1", "--out", "m.pt", "--nproc", "2")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The plan, the progress line and the summary: rank 0's alone.
    for once in ("train: 8 images", "epoch 1/1: loss", "training unet", "best val mIoU"):
        assert done.stdout.count(once) == 1, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.last.pt", "m.pt"]
    assert read_checkpoint(tmp_path / "m.pt")[0].training["distributed"]["processes"] == 2


def test_launch_returns_the_exit_code_of_the_launched_run(capfd):
    before = signal.getsignal(signal.SIGINT), os.environ.get("OMP_NUM_THREADS")
    # Each process runs `python -m segdeploy no-such-command`: a usage error, exit code 2.
    assert launch(2, "segdeploy", ["no-such-command"]) == 2
    assert capfd.readouterr().err.count("No such command") == 2  # both ranks ran it
    # The launcher's signal handlers and environment are this process's own again.
    assert (signal.getsignal(signal.SIGINT), os.environ.get("OMP_NUM_THREADS")) == before


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="finds the ranks in /proc")
def test_ctrl_c_stops_every_rank_with_exit_code_130(tmp_path):
    command = _segdeploy_command("--epochs", "200", "--out", "c.pt", "--nproc", "2")
    parent = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in parent.stdout:
            if line.startswith("epoch 1/200"):
                break
        assert len(_running_in(tmp_path)) == 3  # the command and its two ranks
        parent.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command's process group
        assert parent.wait(timeout=120) == 130
    finally:
        parent.kill()
    assert parent.stderr.read().count("interrupted") == 2  # each rank got it
    assert _running_in(tmp_path) == []


def _running_in(folder: Path) -> list[Path]:
    """The processes whose working directory is ``folder`` (Linux's /proc)."""
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if (process / "cwd").resolve(strict=True) == folder.resolve():
                found.append(process)
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


# In-process checks of the single-process defaults and the refusals (no process group).


def test_without_torchrun_training_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_distributed("cpu") == (SINGLE_PROCESS, "cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: the same
    assert init_distributed("cpu") == (SINGLE_PROCESS, "cpu")


def test_world_size_without_rendezvous_or_gpus_is_one_sentence(monkeypatch):
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SegdeployError, match=r"MASTER_ADDR.*torchrun"):
        init_distributed("cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(SegdeployError, match="LOCAL_RANK=1 needs a GPU"):
            init_distributed("cuda")


def test_resume_with_another_number_of_processes_is_refused():
    two = DistributedContext(rank=0, world_size=2, backend="gloo")
    with pytest.raises(SegdeployError, match=r"trained by 1 process.*without torchrun"):
        two.check_resume({"rng": {}}, Path("run.pt"))
    with pytest.raises(SegdeployError, match=r"trained by 2 process.*with 2 processes"):
        SINGLE_PROCESS.check_resume({"world_size": 2}, Path("run.pt"))


def test_summed_shard_confusions_score_as_the_whole_set():
    rng = np.random.default_rng(0)
    labels = [
        rng.choice([0, 1, 2, 255], size=(8 + i, 12), p=[0.6, 0.3, 0.05, 0.05]) for i in range(5)
    ]
    pairs = [(rng.integers(0, 3, size=label.shape), label) for label in labels]
    whole = score_predictions(pairs, "segmentation", 3)
    shards = [confusion_of_pairs(pairs[r::2], 3, task="segmentation") for r in range(2)]
    summed = score_confusion(shards[0][0] + shards[1][0], "segmentation", len(pairs))
    assert summed == whole and summed.images == len(pairs)
    per_shard = [score_confusion(m, "segmentation", n).metric for m, n in shards]
    assert whole.metric != pytest.approx(np.mean(per_shard), abs=1e-9)


# The worker torchrun runs in each process.


class _Snapshot(TrainProgress):
    """Copies the run's files as they stand after ``epoch - 1`` when ``epoch`` starts."""

    def __init__(self, out: Path, epoch: int) -> None:
        self.out, self.epoch = out, epoch

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        if epoch == self.epoch:
            folder = self.out.parent / "snapshot"
            folder.mkdir()
            for path in (self.out, state_path(self.out)):
                shutil.copy2(path, folder / path.name)


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _mechanics(folder: Path, dist: DistributedContext) -> dict:
    """Sampler shards, k training steps and validation, recorded by this rank."""
    setup = loop.prepare_training(replace(BASE, epochs=STEP_EPOCHS), dist)
    sampler, found = setup.train_loader.sampler, {"indices": {}}
    if dist.is_main:
        torch.save(_parameters(setup.model), folder / "initial0.pt")
    for epoch in range(1, STEP_EPOCHS + 1):
        dist.set_epoch(sampler, epoch)
        found["indices"][str(epoch)] = list(sampler)
        loop.train_one_epoch(setup, TrainProgress())
    torch.save(_parameters(setup.model), folder / f"params{dist.rank}.pt")
    found["distributed"] = loop.validate(setup)[1]
    predictor = TorchPredictor(setup.model, setup.card)
    found["single"] = loop.validation_details(loop.score_items(predictor, setup.val_items))
    shard = loop.score_items(predictor, dist.shard(setup.val_items))
    found["shard"] = loop.validation_details(shard)
    return found


def _summary(result) -> dict:
    history = [[r.epoch, r.train_loss, r.metric, r.details] for r in result.history]
    improved, best = [], -1.0
    for record in result.history:
        if record.metric > best:
            improved.append(record.epoch)
            best = record.metric
    return {"history": history, "improved_epochs": improved}


def worker(folder: Path, textures: str) -> None:
    """One rank: :func:`_mechanics`, then a straight and a resumed :func:`train` on
    ``textures``."""
    dist, _ = init_distributed("cpu")
    found = _mechanics(folder, dist)
    writes: list[str] = []
    real = loop.save_checkpoint, loop.save_weights

    def counted(save):
        def wrapper(what, card, path, *rest):
            writes.append(str(path))
            return save(what, card, path, *rest)

        return wrapper

    loop.save_checkpoint, loop.save_weights = counted(real[0]), counted(real[1])
    config, out = replace(BASE, data=textures), folder / "straight.pt"
    found["straight"] = _summary(train(replace(config, out=out), _Snapshot(out, config.epochs)))
    found["writes"] = list(writes)
    again = folder / "snapshot" / "straight.pt"
    found["resumed"] = _summary(train(replace(config, out=again, resume=again)))
    (folder / f"rank{dist.rank}.json").write_text(json.dumps(found))
    dist.finish()


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
