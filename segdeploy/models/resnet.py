"""ResNet-18 classifier fine-tuned from a local ImageNet state dict.

Following the torchvision fine-tuning tutorial: load the pretrained weights, replace ``fc`` with a
fresh layer for the new classes, freeze the rest (or all but ``layer4``). Weights come only from a
file the user names; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from torchvision.models import resnet18

from segdeploy.models.pretrained import check_state_keys, freeze_by_prefix, read_state_dict
from segdeploy.models.registry import register_model

#: Which parameters stay trainable under each fine-tuning policy (name prefixes).
FINETUNE_POLICIES = {"fc": ("fc.",), "layer4": ("layer4.", "fc."), "all": ("",)}


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision-format ImageNet state dict from ``path``, keeping the new ``fc``.

    The file's ``fc`` (1000 ImageNet classes) is dropped; every other key must match the model
    exactly, otherwise a :class:`SegdeployError` names the file and the mismatching keys.
    """
    state = read_state_dict(path)
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    check_state_keys(path, backbone, expected, "a ResNet-18 backbone")
    model.load_state_dict(backbone, strict=False)


def apply_finetune_policy(model: nn.Module, policy: str) -> None:
    """Freeze every parameter outside the trainable prefixes of ``policy``."""
    freeze_by_prefix(model, FINETUNE_POLICIES, policy)


# Registered below the functions it names: the decorator's arguments are evaluated at definition.
@register_model(
    task="classification",
    variants={"full": {}},  # one size: the published ResNet-18
    train_size=224,
    description="torchvision ResNet-18 classifier, fine-tuned from a local ImageNet file",
    load_pretrained=load_pretrained_backbone,
    finetune=apply_finetune_policy,
    finetune_policies={"fc": "the fc layer", "layer4": "layer4 and fc", "all": "every layer"},
)
def build_resnet18(num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a ``num_classes``-way ``fc``; ``(B, 3, H, W) -> (B, K)``."""
    return resnet18(weights=None, num_classes=num_classes)
