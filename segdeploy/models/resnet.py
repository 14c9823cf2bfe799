"""ResNet-18 classifier fine-tuned from a local ImageNet state dict.

Following the torchvision fine-tuning tutorial: load the pretrained weights, replace ``fc`` with a
fresh layer for the new classes, freeze the rest (or all but ``layer4``). Weights come only from a
file the user names; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from segdeploy.core.errors import SegdeployError
from segdeploy.models.registry import register_model

#: Which parameters stay trainable under each fine-tuning policy (name prefixes).
FINETUNE_POLICIES = {"fc": ("fc.",), "layer4": ("layer4.", "fc."), "all": ("",)}


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision-format ImageNet state dict from ``path``, keeping the new ``fc``.

    The file's ``fc`` (1000 ImageNet classes) is dropped; every other key must match the model
    exactly, otherwise a :class:`SegdeployError` names the file and the mismatching keys.
    """
    path = Path(path)
    if not path.is_file():
        raise SegdeployError(f"pretrained weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files; all mean "unreadable"
        raise SegdeployError(
            f"{path} is not a loadable PyTorch state dict ({type(err).__name__})"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegdeployError(f"{path} does not hold a state dict of tensors")
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(backbone) if backbone[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if keys
        )
        raise SegdeployError(f"{path} does not fit a ResNet-18 backbone ({detail})")
    model.load_state_dict(backbone, strict=False)


def apply_finetune_policy(model: nn.Module, policy: str) -> None:
    """Freeze every parameter outside the trainable prefixes of ``policy``."""
    if policy not in FINETUNE_POLICIES:
        raise SegdeployError(
            f"unknown fine-tuning policy '{policy}'; choose one of {sorted(FINETUNE_POLICIES)}"
        )
    prefixes = FINETUNE_POLICIES[policy]
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))


# Registered below the functions it names: the decorator's arguments are evaluated at definition.
@register_model(
    task="classification",
    variants={"full": {}},  # one size: the published ResNet-18
    train_size=224,
    description="torchvision ResNet-18 classifier, fine-tuned from a local ImageNet file",
    load_pretrained=load_pretrained_backbone,
    finetune=apply_finetune_policy,
)
def build_resnet18(num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a ``num_classes``-way ``fc``; ``(B, 3, H, W) -> (B, K)``."""
    return resnet18(weights=None, num_classes=num_classes)
