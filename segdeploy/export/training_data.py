"""Which data calibrates and grades a variant when the user names none: what the card says the
model was trained on.

A model trained on a folder of the user's images must be calibrated on that folder's training
split and graded on its validation split, with the seed training split it with; calibrating it on
segdeploy's synthetic road scenes (the old default) measured the wrong images and refused files
that pass on their own data. The card's ``training["data_summary"]["source"]`` is the data
argument training read (``"synthetic"`` or the folder) and ``training["seed"]`` its seed.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.data.samples import card_seed

SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class DataChoice:
    """The data a variant is calibrated and graded on, its seed, and why it was chosen."""

    source: str
    seed: int
    reason: str


def trained_on(card: ModelCard) -> str | None:
    """The data argument the card says training read (``"synthetic"`` or a folder), or ``None``
    for a card without a training record (an untrained or imported model)."""
    summary = card.training.get("data_summary")
    if isinstance(summary, dict) and summary.get("source"):
        return str(summary["source"])
    return None


def choose_data(
    card: ModelCard, given: str | None, model_path: str | Path, option: str = "--calib"
) -> DataChoice:
    """``given`` when the user named data, else the data the card says the model trained on.

    The seed is always the card's training seed: it picks the hold-out share of a folder without
    ``train/`` + ``val/``, so the gate grades on the images training validated on. A card that
    records no training data falls back to the synthetic scenes (nothing else is known).
    ``option`` is the command's data option, named in the error.

    Raises:
        SegdeployError: the card names a folder that is not there.
    """
    seed = card_seed(card)
    if given is not None:
        return DataChoice(given, seed, "given")
    source = trained_on(card)
    if source is None:
        return DataChoice(SYNTHETIC, seed, "the card records no training data")
    if source != SYNTHETIC and not Path(source).is_dir():
        raise SegdeployError(
            f"the card of {model_path} says it was trained on {source}, which is not there; "
            f"pass {option} DIR"
        )
    return DataChoice(source, seed, "the data the card says the model was trained on")
