"""Training configuration: the one home of training defaults (the CLI reads them from here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segdeploy.core.input_contract import InputContract
from segdeploy.data.synthetic import DEFAULT_TRAIN_SAMPLES, DEFAULT_VAL_SAMPLES

#: The resize policy of the input contract training writes into each task's card.
#:
#: * segmentation: ``pad``. Training sees crops at the data's own scale, so ``predict`` runs
#:   each image at its own size too, reflect-padded to the size multiple, logits cropped back.
#: * classification: ``fixed`` at the training size. Classifiers train on images resized to
#:   that size, and a prediction must not pool reflect padding into its one answer (a 17x17
#:   image padded to 32x32 would be 72 % reflection).
TRAINING_RESIZE_BY_TASK = {"segmentation": "pad", "classification": "fixed"}

# The contract's ``size`` for each policy, from the training image size.
_CONTRACT_SIZE = {
    "pad": lambda img_size: None,
    "fixed": lambda img_size: (img_size, img_size),
    "shorter_side": lambda img_size: (img_size,),
}


def training_input_contract(task: str, img_size: int) -> InputContract:
    """The input contract of a ``task`` model trained at ``img_size``: the policy of
    :data:`TRAINING_RESIZE_BY_TASK`, sized from ``img_size``."""
    resize = TRAINING_RESIZE_BY_TASK[task]
    return InputContract(resize, _CONTRACT_SIZE[resize](img_size))


@dataclass
class TrainConfig:
    """Everything ``segdeploy train`` accepts; the defaults train a small U-Net on CPU.

    ``variant`` names one of the architecture's variants (``segdeploy models`` lists them);
    ``None`` means the architecture's default (``small`` for U-Net, the full size of the others).

    ``data`` is ``"synthetic"`` or a folder. Segmentation folders hold ``images/`` + ``masks/``
    (or ``train/`` and ``val/`` sub-folders of that form) and class names in ``classes.txt`` or
    ``classes``; classification folders hold one sub-folder per class (or ``train/`` + ``val/``).
    A folder without ``train/`` + ``val/`` holds out
    :data:`~segdeploy.data.folders.DEFAULT_VAL_FRACTION` of its items, chosen with ``seed``: the
    split that ``evaluate`` and the export gates find again from the card's seed.

    ``epochs``, ``batch_size``, ``img_size`` and ``class_weights`` left at ``None`` are fitted to
    the data by :mod:`segdeploy.train.plan` (synthetic data: fixed defaults).

    ``img_size`` is the side of the square training images: synthetic scenes are rendered at
    it, segmentation folders are cut into random crops of it at their own scale, classification
    images are resized to it. Validation runs every image the way ``predict`` will
    (:func:`training_input_contract`).
    """

    arch: str
    data: str = "synthetic"
    variant: str | None = None
    # None: fitted to the data (see segdeploy.train.plan, which prints and records why).
    epochs: int | None = None
    batch_size: int | None = None
    img_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    # ce, dice or ce+dice; None: fitted (segmentation folders: ce+dice when a class is rare).
    loss: str | None = None
    # 'auto' (clipped median frequency), 'none'; None: 'auto' for segmentation folders.
    class_weights: str | None = None
    # Training time in seconds when epochs is None (segdeploy.train.plan's budget; None: its
    # default for folders, the fixed epochs for synthetic data). The CLI's --time 5m.
    time_budget_s: float | None = None
    # Keep decoded training data in memory up to this many MB (else DataLoader workers).
    cache_mb: int = 2048
    out: Path | None = None
    device: str = "cpu"
    seed: int = 0
    pretrained: Path | None = None
    # Trainable part; None: the architecture's head-only policy with --pretrained, "all" without
    # (a frozen random backbone would only train a probe on random features).
    finetune: str | None = None
    classes: tuple[str, ...] | None = None
    # Mask file values in class order, e.g. (0, 255) for binary masks saved as 0/255.
    mask_values: tuple[int, ...] | None = None
    # Continue the run saved in this checkpoint (weights and trainer state).
    resume: Path | None = None
    # Replace an existing output checkpoint.
    force: bool = False
    train_samples: int = DEFAULT_TRAIN_SAMPLES
    val_samples: int = DEFAULT_VAL_SAMPLES
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05


def output_path(config: TrainConfig) -> Path:
    """Where ``config`` writes its best checkpoint (``ARCH.pt`` by default)."""
    return Path(config.out or f"{config.arch}.pt")
