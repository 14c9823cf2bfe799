"""Resume: what a run saves between epochs and how ``--resume`` continues it.

After every epoch the loop writes the run's state file
(:func:`~segdeploy.train.checkpoint.state_path`: last weights + :func:`trainer_state`, plain
data that ``torch.load(weights_only=True)`` reads); :func:`read_resume` and :func:`resume_run`
put it back, so a resumed run continues bit for bit as if it had never stopped. A run resumes
only as itself (:func:`run_identity`: architecture, variant, data, size, classes and the data
seed, which chooses the held-out images of an unsplit folder and the synthetic scenes: another
seed would validate later epochs on images earlier ones trained on). :func:`check_output`
refuses, before anything is built, to replace an earlier run's files without ``--force``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.publish import refuse_folder, refuse_overlap
from segdeploy.train.checkpoint import (
    STATE_SUFFIX,
    best_path,
    read_checkpoint_with_trainer,
    state_path,
)
from segdeploy.train.config import TrainConfig, output_path
from segdeploy.train.progress import EpochRecord
from segdeploy.train.setup import TrainingSetup

#: Keys of :func:`run_identity` that state files of older segdeploy versions lack; such a
#: file is resumed without checking them.
_LATER_KEYS = ("seed",)


@dataclass
class RunState:
    """Where a run stands between epochs: what :func:`trainer_state` saves and resume restores.

    ``epoch`` is the last finished epoch (0 before the first); ``card`` carries the training
    record of ``best_epoch``.
    """

    card: ModelCard
    epoch: int = 0
    best_metric: float = -1.0
    best_epoch: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    #: A budgeted run's epoch count, fixed after its first epoch (``None``: not yet, or
    #: ``config.epochs`` rules); why it stopped early; epochs a resumed run found done.
    planned_epochs: int | None = None
    stopped: str | None = None
    resumed_epochs: int = 0


def _plain(value: Any) -> Any:
    """``value`` as data ``torch.load(weights_only=True)`` reads: CPU tensors, Python scalars,
    lists, tuples and dicts (NumPy scalars and arrays would need an allow-list)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(item) for item in value)
    return value


def capture_rng(loader_generator: torch.Generator, device: str) -> dict[str, Any]:
    """Every random stream training draws from, as plain data (see :func:`restore_rng`).

    torch's global generator drives initialisation, augmentation and dropout; the loader's
    generator the shuffling; Python's and NumPy's are saved too, whoever draws from them.
    """
    state = {
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
        "numpy": _plain(np.random.get_state(legacy=False)),
        "python": _plain(list(random.getstate())),
    }
    if device.startswith("cuda"):
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any], loader_generator: torch.Generator) -> None:
    """Put back the streams :func:`capture_rng` saved."""
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_identity(setup: TrainingSetup) -> dict[str, Any]:
    """What a resumed run must share with the saved one: architecture, variant, data, size,
    classes and the data seed (the rest, e.g. ``--epochs``, may change)."""
    data = setup.config.data
    return {
        "arch": setup.spec.name,
        "variant": setup.variant,
        "data": data if data == "synthetic" else str(Path(data).resolve()),
        "img_size": setup.size,
        "classes": list(setup.card.class_names),
        "seed": setup.config.seed,
    }


def trainer_state(setup: TrainingSetup, run: RunState) -> dict[str, Any]:
    """Everything needed to continue after ``run.epoch``, as plain data: optimiser, scheduler,
    epoch, best metric and epoch, history, RNG states and the run's identity.

    In a distributed run also the number of processes and every rank's RNG states
    (:meth:`~segdeploy.train.distributed.DistributedContext.trainer_entries`, which every rank
    must call).
    """
    rng = capture_rng(setup.train_loader.generator, setup.config.device)
    return {
        "epoch": run.epoch,
        "best_metric": float(run.best_metric),
        "best_epoch": run.best_epoch,
        "history": _plain([asdict(record) for record in run.history]),
        "planned_epochs": run.planned_epochs,
        "optimizer": _plain(setup.optimizer.state_dict()),
        "scheduler": _plain(setup.scheduler.state_dict()),
        "rng": rng,
        "run": run_identity(setup),
        **setup.dist.trainer_entries(rng),
    }


def check_output(config: TrainConfig) -> None:
    """Refuse to replace an earlier run's files without ``config.force`` (resuming into the same
    file excepted), before anything is built."""
    out = output_path(config)
    if out.name.endswith(STATE_SUFFIX):
        raise SegdeployError(
            f"--out must not end in {STATE_SUFFIX}: that name is a run's state file"
        )
    reads = [Path(config.data)] if config.data != "synthetic" else []
    for path in (out, state_path(out)):  # never an input nor a folder, --force or not
        refuse_overlap(path, reads + [p for p in (config.pretrained,) if p], "checkpoint")
        refuse_folder(path, "checkpoint")
    if config.force:
        return
    if config.resume is not None and resume_paths(config.resume)[0].resolve() == out.resolve():
        return
    for path in (out, state_path(out)):
        if path.exists():
            raise SegdeployError(
                f"{path} already exists; pass --force to replace it, or --resume it to continue"
            )


def resume_paths(resume: str | Path) -> tuple[Path, Path]:
    """(best checkpoint, state file) of the run ``resume`` names (either of the two)."""
    return best_path(resume), state_path(resume)


def read_resume(config: TrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The last weights and trainer state of the run ``config.resume`` names.

    Raises:
        SegdeployError: no such run, or a checkpoint without trainer state.
    """
    best, state_file = resume_paths(config.resume)
    if not best.is_file() and not state_file.is_file():
        raise SegdeployError(f"--resume {config.resume}: checkpoint {best} does not exist")
    if not state_file.is_file():
        raise SegdeployError(
            f"{best} has no trainer state to resume from ({state_file.name} is missing: the run "
            "was written by an older segdeploy or its state file was removed)"
        )
    _, weights, trainer = read_checkpoint_with_trainer(state_file)
    if trainer is None:
        raise SegdeployError(f"{state_file} has no trainer state to resume from")
    return weights, trainer


def check_same_run(setup: TrainingSetup, trainer: dict[str, Any]) -> None:
    """Refuse, in one sentence, to resume a run of another architecture, variant, data, size,
    classes or data seed, or one that already trained ``config.epochs`` epochs (or,
    distributed, with another number of processes)."""
    config, resume = setup.config, Path(setup.config.resume)
    setup.dist.check_resume(trainer, resume)
    saved, current = trainer["run"], run_identity(setup)
    for key, value in current.items():
        if key in _LATER_KEYS and key not in saved:
            continue
        if saved.get(key) != value:
            flag = {"img_size": "--img-size", "classes": "--classes"}.get(key, f"--{key}")
            raise SegdeployError(
                f"{resume} was trained with {key} {saved.get(key)!r}, not {value!r}; resume it "
                f"with the same arch, variant, data, img_size, classes and seed ({flag} "
                f"{_as_flag(saved.get(key))})"
            )
    if trainer["epoch"] >= config.epochs:
        raise SegdeployError(
            f"{resume} already trained {trainer['epoch']} of --epochs {config.epochs}; pass a "
            "larger --epochs to train on"
        )


def _as_flag(value: Any) -> str:
    """A saved identity value as it is typed on the command line."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def resume_run(
    setup: TrainingSetup, weights: dict[str, torch.Tensor], trainer: dict[str, Any]
) -> RunState:
    """Load the saved run into ``setup`` (weights, optimiser, scheduler, RNG; each rank its own
    RNG states) after :func:`check_same_run`, and return where it stood. ``card`` is still
    ``setup.card``: the loop gives it the best epoch's record (``history[best_epoch - 1]``)."""
    check_same_run(setup, trainer)
    setup.model.load_state_dict(weights)
    setup.optimizer.load_state_dict(trainer["optimizer"])
    setup.scheduler.load_state_dict(trainer["scheduler"])
    restore_rng(setup.dist.own_rng(trainer), setup.train_loader.generator)
    history = [EpochRecord(**record) for record in trainer["history"]]
    run = RunState(setup.card, trainer["epoch"], trainer["best_metric"], trainer["best_epoch"])
    run.history = history
    run.resumed_epochs = run.epoch
    if setup.plan.budget_s is not None:  # the budget's count, as its schedule ends there
        run.planned_epochs = trainer.get("planned_epochs")
    return run
