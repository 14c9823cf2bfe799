"""Training: any registered architecture on synthetic or folder data, to a self-describing ``.pt``.

    config      TrainConfig, the one home of training defaults (torch-free)
    datasets    torch datasets over synthetic scenes and folders, augmentation, class weights
    losses      cross-entropy, soft Dice and their sum
    loop        the training loop (setup, one epoch, validation, best checkpoint)
    setup       TrainingSetup, what prepare_training builds and the loop and resume read
    resume      the run's state between epochs, --resume and --force
    progress    the loop's progress callback (and the EpochRecord it reports), rich display
    checkpoint  weights + model card as plain data

Names are loaded on first use, so the CLI can read ``TrainConfig``'s defaults without torch.
"""

from __future__ import annotations

from segdeploy.core.lazy import lazy_attributes

_LAZY = {
    "TrainConfig": "config",
    "build_datasets": "datasets",
    "EpochRecord": "progress",
    "TrainResult": "loop",
    "freeze_frozen_batchnorm": "loop",
    "train": "loop",
    "RichTrainProgress": "progress",
    "TrainProgress": "progress",
}
__all__ = sorted(_LAZY)
__getattr__ = lazy_attributes(__name__, _LAZY)
