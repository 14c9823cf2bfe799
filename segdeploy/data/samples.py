"""Labelled held-out images as numpy arrays, for the gates that score exported models."""

from __future__ import annotations

import numpy as np

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError


def labelled_samples(
    card: ModelCard, source: str, count: int, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` normalised images ``(N, C, size, size)`` and their labels (masks or classes)."""
    from torch.utils.data import Subset

    from segdeploy.train import TrainConfig, build_datasets

    config = TrainConfig(
        arch=card.arch,
        data=source,
        seed=seed,
        train_samples=count,
        val_samples=count,
        classes=card.class_names,
    )
    _, val_set, names, _ = build_datasets(config, card.task, size)
    if tuple(names) != card.class_names:
        raise SegdeployError(
            f"data classes {list(names)} differ from the model's {card.class_names}"
        )
    if len(val_set) > count:
        val_set = Subset(val_set, range(count))
    images, labels = zip(*(val_set[i] for i in range(len(val_set))), strict=True)
    return np.stack([i.numpy() for i in images]), np.stack([np.asarray(t) for t in labels])
