"""Argument checks every dataset shares: the item size and the normalisation statistics."""

from __future__ import annotations

from collections.abc import Sequence

from segdeploy.core.errors import SegdeployError


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
