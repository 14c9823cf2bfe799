"""Checks every dataset shares: the item size, the normalisation statistics, and that every
declared class occurs in a split."""

from __future__ import annotations

from collections.abc import Sequence

from segdeploy.core.errors import DataError, SegdeployError
from segdeploy.data.summary import SplitSummary


def check_size(size: Sequence[int], what: str, multiple: int | None) -> tuple[int, int]:
    """``size`` as ``(height, width)`` positive ints, multiples of ``multiple`` unless it is None.

    Raises:
        SegdeployError: naming ``what`` (e.g. ``"Dataset data/roads"``) and the size found.
    """
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise SegdeployError(f"{what}: expected size as (height, width) positive ints, got {size}.")
    h, w = int(size[0]), int(size[1])
    if multiple and (h % multiple or w % multiple):
        raise SegdeployError(
            f"{what}: expected height and width to be multiples of {multiple}, got {h}x{w}."
        )
    return h, w


def check_normalisation(
    mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` as tuples once they hold 3 values each and every std is positive.

    Raises:
        SegdeployError: if they do not.
    """
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise SegdeployError(
            f"Normalisation: expected 3 mean values and 3 positive std values, got mean={mean} "
            f"std={std}."
        )
    return tuple(mean), tuple(std)


def check_every_class(summary: SplitSummary, split: str, where: str) -> None:
    """Refuse a split in which a declared class has no labelled pixel (or no image).

    Args:
        summary: the split's summary (``per_class`` counted).
        split: ``"train"`` or ``"val"``.
        where: the split's items in words, e.g. the folder, for the message.

    Raises:
        DataError: one sentence naming the split, the class(es) and the fix.
    """
    missing = summary.missing_classes()
    if not missing:
        return
    names = ", ".join(repr(name) for name in missing)
    pixels = summary.unit == "pixels"
    what = "labelled pixel" if pixels else "image"
    masks = "fix their masks (or pass --mask-values), " if pixels else ""
    if split == "train":
        head, why = "Training", "so the model could never learn it"
        fix = f"add images that show it, {masks}or leave it out of the classes"
    else:
        head, why = "Validation", "so it could never be scored"
        fix = "add validation images that show it"
        fix += " or fix their masks (or pass --mask-values)" if pixels else ""
    raise DataError(f"{head} data {where} has no {what} of class {names}, {why}: {fix}.")
