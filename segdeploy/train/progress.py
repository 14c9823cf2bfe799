"""Progress of a training run, behind a callback: :func:`~segdeploy.train.loop.train` reports to a
:class:`TrainProgress`; :class:`RichTrainProgress` is the console display ``segdeploy train`` shows.

The loop itself draws nothing, so a Python caller can train silently (the default) or log the
epochs its own way by overriding the methods it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class EpochRecord:
    """One epoch: mean training loss, validation metric (and all its details), wall time."""

    epoch: int
    train_loss: float
    metric: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class TrainProgress:
    """What a training run reports, in order; every method does nothing here.

    ``data_ready`` and ``run_started`` once, then per epoch ``epoch_started``, ``step_done``
    after every optimiser step and ``epoch_done`` after validation, and ``run_finished`` once,
    also when training stops with an error.
    """

    def data_ready(self, summary: list[str]) -> None:
        """The data passed its checks; ``summary``: a few lines on what it holds."""

    def run_started(self, epochs: int, steps_per_epoch: int) -> None:
        """Setup is done (data, model, optimiser); the first epoch is about to start."""

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        """Epoch ``epoch`` of ``epochs`` (1-based) starts; it takes ``steps`` optimiser steps."""

    def step_done(self, step: int, mean_loss: float) -> None:
        """Step ``step`` (1-based) of the epoch is done; ``mean_loss``: the epoch's mean so far."""

    def epoch_done(self, record: EpochRecord, improved: bool, metric_name: str) -> None:
        """The epoch is trained and validated; ``improved``: its metric is the best so far."""

    def note(self, line: str) -> None:
        """A decision made during the run (a budget's epoch count, an early stop) and why."""

    def run_finished(self) -> None:
        """The run is over (finished or stopped by an error)."""


class RichTrainProgress(TrainProgress):
    """A rich progress bar per epoch on a terminal; one printed line per epoch elsewhere.

    Rich draws no live bar into pipes and CI logs, so there each epoch leaves the line
    ``epoch E/N: loss L, val mIoU M * (Ss)`` (``*`` marks a new best).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._progress: Progress | None = None
        self._bar = None
        self._epochs = 0

    def data_ready(self, summary: list[str]) -> None:
        for line in summary:
            self.console.print(line, highlight=False)

    def run_started(self, epochs: int, steps_per_epoch: int) -> None:
        columns = (
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[metric]}"),
            TimeElapsedColumn(),
        )
        self._progress = Progress(
            *columns,
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self._progress.start()

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self._epochs = epochs
        self._bar = self._progress.add_task(
            "train", total=steps, epoch=f"{epoch}/{epochs}", loss=0.0, metric=""
        )

    def step_done(self, step: int, mean_loss: float) -> None:
        self._progress.update(self._bar, advance=1, loss=mean_loss)

    def epoch_done(self, record: EpochRecord, improved: bool, metric_name: str) -> None:
        summary = f"val {metric_name} {record.metric:.4f}{' *' if improved else ''}"
        self._progress.update(self._bar, metric=summary)
        if not self.console.is_terminal:
            self.console.print(
                f"epoch {record.epoch}/{self._epochs}: loss {record.train_loss:.4f}, {summary} "
                f"({record.seconds:.1f}s)"
            )

    def note(self, line: str) -> None:
        self.console.print(line, highlight=False)

    def run_finished(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
