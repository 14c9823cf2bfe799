"""Training: any registered architecture on synthetic or folder data, to a self-describing ``.pt``.

config      TrainConfig, the one home of training defaults
datasets    torch datasets over synthetic scenes and folders, augmentation, class weights
losses      cross-entropy, soft Dice and their sum
loop        the training loop (setup, epochs, validation, best checkpoint)
checkpoint  weights + model card as plain data
"""

from segdeploy.train.config import TrainConfig
from segdeploy.train.datasets import build_datasets
from segdeploy.train.loop import TrainResult, freeze_frozen_batchnorm, train

__all__ = ["TrainConfig", "TrainResult", "build_datasets", "freeze_frozen_batchnorm", "train"]
