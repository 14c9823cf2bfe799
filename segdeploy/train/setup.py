"""What a training run is made of once it is built: :class:`TrainingSetup`, which
:func:`~segdeploy.train.loop.prepare_training` builds and both the epochs
(:mod:`segdeploy.train.loop`) and :mod:`segdeploy.train.resume` read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from segdeploy.core.card import ModelCard
from segdeploy.data.samples import LabelledImage
from segdeploy.data.summary import DataSummary
from segdeploy.models import ArchSpec
from segdeploy.train.config import TrainConfig
from segdeploy.train.distributed import SINGLE_PROCESS, DistributedContext
from segdeploy.train.plan import TrainingPlan


@dataclass
class TrainingSetup:
    """Everything the epochs need, built once by :func:`prepare_training`.

    ``card`` has no training record yet; ``variant`` is the resolved variant name; ``loss_of``
    maps ``(images, targets)`` to the training loss (through DDP in a run of several
    processes); ``dist`` is this process's place in such a run.
    """

    config: TrainConfig
    spec: ArchSpec
    size: int
    variant: str
    out: Path
    card: ModelCard
    data_description: str
    data_summary: DataSummary
    plan: TrainingPlan
    model: nn.Module
    criterion: nn.Module
    metric_name: str
    train_loader: DataLoader
    val_items: list[LabelledImage]
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    dist: DistributedContext = SINGLE_PROCESS
