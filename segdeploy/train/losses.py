"""Segmentation losses: cross-entropy, soft Dice, and their weighted sum.

Cross-entropy alone lets a model score well by predicting the dominant class (background)
everywhere; Dice is computed per class and averaged, so small classes (pedestrians) weigh as
much as large ones. Both honour ``ignore_index`` so unlabelled pixels never influence training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.core.errors import SegdeployError
from segdeploy.core.metrics import IGNORE_INDEX

LOSS_KINDS = ("ce", "dice", "ce+dice")


class DiceLoss(nn.Module):
    """Soft multi-class Dice loss, ``1 - mean over classes of Dice``.

    Per-class Dice is computed over the whole batch (not per image) so that a class missing
    from one image does not produce an unstable 0/0 term. Pixels whose target equals
    ``ignore_index`` are removed from both numerator and denominator.

    Args:
        ignore_index: target value marking pixels to leave out.
        smooth: added to numerator and denominator; keeps classes absent from both prediction
            and target at Dice ~1 instead of 0/0.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss for ``logits`` (B, C, H, W) and integer ``target`` (B, H, W)."""
        num_classes = logits.shape[1]
        valid = target != self.ignore_index  # (B, H, W)
        # Ignored pixels get a dummy in-range label so one_hot works; the mask zeroes them below.
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        probs = logits.float().softmax(dim=1)  # (B, C, H, W)
        one_hot = F.one_hot(safe_target.long(), num_classes).permute(0, 3, 1, 2)  # (B, C, H, W)
        mask = valid.unsqueeze(1).to(probs.dtype)  # (B, 1, H, W)
        # torch.where (not multiplication) so NaN/Inf logits at ignored pixels cannot leak in.
        probs = torch.where(mask.bool(), probs, torch.zeros_like(probs))
        one_hot = one_hot.to(probs.dtype) * mask
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)  # (C,)
        cardinality = probs.sum(dims) + one_hot.sum(dims)  # (C,)
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1.0 - dice.mean()


class CombinedLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * Dice``, both honouring ``ignore_index``.

    Args:
        ce_weight: multiplier of the cross-entropy term.
        dice_weight: multiplier of the Dice term.
        class_weights: optional (C,) per-class weights for cross-entropy only; Dice already
            balances classes by averaging per-class scores.
        ignore_index: target value marking pixels to leave out.
        smooth: Dice smoothing constant.
    """

    def __init__(
        self,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ce = nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)
        self.dice = DiceLoss(ignore_index=ignore_index, smooth=smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss for ``logits`` (B, C, H, W) and integer ``target`` (B, H, W)."""
        return self.ce_weight * self.ce(logits, target) + self.dice_weight * self.dice(
            logits, target
        )


def build_loss(
    kind: str,
    class_weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> nn.Module:
    """Build a segmentation loss by name.

    Args:
        kind: ``"ce"``, ``"dice"`` or ``"ce+dice"`` (equal weights 1.0 and 1.0).
        class_weights: optional (C,) float weights for the cross-entropy term; unused by Dice.
        ignore_index: target value marking pixels to leave out.

    Raises:
        SegdeployError: if ``kind`` is not one of the names above.
    """
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, ignore_index=ignore_index)
    if kind == "dice":
        return DiceLoss(ignore_index=ignore_index)
    if kind == "ce+dice":
        return CombinedLoss(1.0, 1.0, class_weights=class_weights, ignore_index=ignore_index)
    raise SegdeployError(f"Unknown loss {kind!r}: expected one of {', '.join(LOSS_KINDS)}.")
