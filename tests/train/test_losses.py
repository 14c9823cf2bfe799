"""Dice / CE+Dice behaviour: perfect, wrong, ignore pixels, builder."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.core.errors import SegdeployError
from segdeploy.train.losses import CombinedLoss, DiceLoss, build_loss

NUM_CLASSES = 4


def _target(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, NUM_CLASSES, (2, 16, 16), generator=g)  # (B, H, W)


def _confident_logits(labels: torch.Tensor) -> torch.Tensor:
    return 20.0 * F.one_hot(labels, NUM_CLASSES).permute(0, 3, 1, 2).float()  # (B, C, H, W)


def test_dice_of_perfect_prediction_is_near_zero() -> None:
    target = _target()
    assert DiceLoss()(_confident_logits(target), target).item() < 1e-3


def test_dice_of_wrong_prediction_is_near_one() -> None:
    target = _target()
    wrong = (target + 1) % NUM_CLASSES  # every pixel confidently the wrong class
    assert DiceLoss()(_confident_logits(wrong), target).item() > 0.99


def test_dice_is_differentiable() -> None:
    target = _target()
    logits = torch.randn(2, NUM_CLASSES, 16, 16, requires_grad=True)
    DiceLoss()(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("kind", ["ce", "dice", "ce+dice"])
def test_ignored_pixels_change_nothing(kind: str) -> None:
    target = _target()
    target[0, :5] = 255
    target[1, :, :3] = 255
    ignored = (target == 255).unsqueeze(1).expand(-1, NUM_CLASSES, -1, -1)
    logits = torch.randn(2, NUM_CLASSES, 16, 16, generator=torch.Generator().manual_seed(1))
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 50.0
    loss = build_loss(kind)
    a = loss(logits, target)
    b = loss(changed, target)
    assert torch.allclose(a, b, atol=1e-6), (a, b)


def test_ignored_pixels_get_no_gradient() -> None:
    target = _target()
    target[0, :5] = 255
    logits = torch.randn(2, NUM_CLASSES, 16, 16, requires_grad=True)
    build_loss("ce+dice")(logits, target).backward()
    assert logits.grad[0, :, :5].abs().max().item() == 0.0


def test_combined_is_weighted_sum() -> None:
    target = _target()
    logits = torch.randn(2, NUM_CLASSES, 16, 16)
    weights = torch.tensor([0.5, 1.0, 1.5, 1.0])
    combined = CombinedLoss(ce_weight=2.0, dice_weight=0.5, class_weights=weights)(logits, target)
    ce = nn.CrossEntropyLoss(weight=weights, ignore_index=255)(logits, target)
    dice = DiceLoss()(logits, target)
    assert torch.allclose(combined, 2.0 * ce + 0.5 * dice)


def test_build_loss_kinds() -> None:
    assert isinstance(build_loss("ce"), nn.CrossEntropyLoss)
    assert isinstance(build_loss("dice"), DiceLoss)
    combined = build_loss("ce+dice", class_weights=torch.ones(NUM_CLASSES))
    assert isinstance(combined, CombinedLoss)
    assert combined.ce_weight == 1.0 and combined.dice_weight == 1.0


def test_build_loss_unknown_kind_raises() -> None:
    with pytest.raises(SegdeployError, match="focal"):
        build_loss("focal")
