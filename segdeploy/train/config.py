"""Training configuration: the one home of training defaults (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segdeploy.data.folders import DEFAULT_VAL_FRACTION
from segdeploy.data.synthetic import DEFAULT_TRAIN_SAMPLES, DEFAULT_VAL_SAMPLES


@dataclass
class TrainConfig:
    """Everything ``segdeploy train`` accepts; the defaults train a small U-Net on CPU.

    ``variant`` names one of the architecture's variants (``segdeploy models`` lists them);
    ``None`` means the architecture's default (``small`` for U-Net, the full size of the others).

    ``data`` is ``"synthetic"`` or a folder. Segmentation folders hold ``images/`` + ``masks/``
    (or ``train/`` and ``val/`` sub-folders of that form) and class names in ``classes.txt`` or
    ``classes``; classification folders hold one sub-folder per class (or ``train/`` + ``val/``).
    """

    arch: str
    data: str = "synthetic"
    variant: str | None = None
    epochs: int = 10
    batch_size: int = 16
    img_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "ce+dice"
    class_weights: str | None = None
    out: Path | None = None
    device: str = "cpu"
    seed: int = 0
    pretrained: Path | None = None
    finetune: str = "fc"
    classes: tuple[str, ...] | None = None
    train_samples: int = DEFAULT_TRAIN_SAMPLES
    val_samples: int = DEFAULT_VAL_SAMPLES
    val_fraction: float = DEFAULT_VAL_FRACTION
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
