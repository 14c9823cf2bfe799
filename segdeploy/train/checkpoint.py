"""Self-describing ``.pt`` checkpoints: weights plus the model card, as plain data.

The file is a dict of tensors, strings and numbers that ``torch.load(..., weights_only=True)``
reads, so loading a checkpoint can never execute code. :func:`load_checkpoint` rebuilds the
model from the card alone; nothing else has to be known about how it was trained.

A training run writes two files (:func:`state_path` names the second):

    runs/x.pt       the best epoch's weights + the card: what export, evaluate and predict read
    runs/x.last.pt  the LAST epoch's weights + the card + ``trainer``: what ``--resume`` reads

Two files rather than one because the best weights and the state to continue from belong to
different epochs, and the file that gets exported and shipped should not carry the optimiser's
moments (twice the weights again) nor change every epoch when the best one did not. Both are
written atomically, the best file first, so an interruption between the two leaves a state file
one epoch behind, whose resumed epoch rewrites the same best file.

Layout versions: 1 = ``format``, ``version``, ``card``, ``state_dict``; 2 adds the optional
``trainer`` entry (:func:`read_trainer_state`). A file without it is still written as version 1,
so older readers keep opening best checkpoints, and version 1 files read as before.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.publish import write_file
from segdeploy.models import create_model

CHECKPOINT_FORMAT = "segdeploy-checkpoint"
CHECKPOINT_VERSION = 2
# The version of a file without trainer state: its layout is version 1's.
_PLAIN_VERSION = 1
STATE_SUFFIX = ".last.pt"


def state_path(path: str | Path) -> Path:
    """The trainer-state file of the run whose best checkpoint is ``path``: ``x.pt`` ->
    ``x.last.pt`` (``path`` itself when it already is one)."""
    path = Path(path)
    if path.name.endswith(STATE_SUFFIX):
        return path
    return path.with_name(path.stem + STATE_SUFFIX)


def best_path(path: str | Path) -> Path:
    """The best checkpoint of the run ``path`` belongs to: ``x.last.pt`` -> ``x.pt``."""
    path = Path(path)
    if path.name.endswith(STATE_SUFFIX):
        return path.with_name(path.name[: -len(STATE_SUFFIX)] + ".pt")
    return path


def save_checkpoint(
    model: nn.Module,
    card: ModelCard,
    path: str | Path,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and ``card`` (and ``trainer_state``, plain data) atomically."""
    return save_weights(model.state_dict(), card, path, trainer_state)


def save_weights(
    state_dict: dict[str, torch.Tensor],
    card: ModelCard,
    path: str | Path,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """:func:`save_checkpoint` of a state dict rather than a model."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": _PLAIN_VERSION if trainer_state is None else CHECKPOINT_VERSION,
        "card": card.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if trainer_state is not None:
        payload["trainer"] = trainer_state
    write_file(path, lambda tmp: torch.save(payload, tmp))  # beside, then renamed into place
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Read and validate a checkpoint file without building the model."""
    card, state, _ = read_checkpoint_with_trainer(path)
    return card, state


def read_trainer_state(path: str | Path) -> dict[str, Any] | None:
    """The trainer state a checkpoint carries (optimiser, scheduler, epoch, best metric,
    history, RNG states), or ``None`` for a file without one (every version 1 file)."""
    return read_checkpoint_with_trainer(path)[2]


def read_checkpoint_with_trainer(
    path: str | Path,
) -> tuple[ModelCard, dict[str, torch.Tensor], dict[str, Any] | None]:
    """Card, weights and trainer state (``None`` when absent) of a checkpoint, read once."""
    path = Path(path)
    if not path.is_file():
        raise SegdeployError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if _pickle_imports_code(path):
            # weights_only refuses any pickle that would import or call something.
            raise SegdeployError(
                f"{path} is not a plain-data checkpoint: loading it would execute code, "
                "so it was refused"
            ) from None
        raise SegdeployError(f"{path} is not a readable checkpoint (not a PyTorch file)") from None
    except Exception as err:  # garbage gives BadZipFile, EOFError, KeyError, RuntimeError, ...
        raise SegdeployError(
            f"{path} is not a readable checkpoint (truncated or not a PyTorch file: {err})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise SegdeployError(
            f"{path} is a PyTorch file but not a segdeploy checkpoint (no model card); "
            "train with `segdeploy train` or save with segdeploy.train.checkpoint.save_checkpoint"
        )
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise SegdeployError(f"{path} was written by a newer segdeploy; upgrade to read it")
    card = ModelCard.from_dict(payload.get("card"), source=str(path))
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise SegdeployError(f"{path} has no state_dict")
    trainer = payload.get("trainer")
    return card, state, trainer if isinstance(trainer, dict) else None


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _pickle_imports_code(path: Path) -> bool:
    """Whether the file is a well-formed pickle that imports or calls objects.

    Used only to word the error after ``weights_only`` refused a file: torch says "weights only
    load failed" for garbage as well. Opcodes are listed, never executed.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # not a pickle at all
        return False


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by the checkpoint's card and load its weights (eval mode)."""
    card, state = read_checkpoint(path)
    model = create_model(card.arch, num_classes=card.num_classes, **card.model_kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise SegdeployError(
            f"{path}: the weights do not fit the '{card.arch}' described by its card ({first})"
        ) from None
    return model.to(device).eval(), card
