"""Self-describing ``.pt`` checkpoints: weights plus the model card, as plain data.

The file is a dict of tensors, strings and numbers that ``torch.load(..., weights_only=True)``
reads, so loading a checkpoint can never execute code. :func:`load_checkpoint` rebuilds the
model from the card alone; nothing else has to be known about how it was trained.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path

import torch
from torch import nn

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.fileio import atomic_write
from segdeploy.models import create_model

CHECKPOINT_FORMAT = "segdeploy-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write ``model``'s weights and ``card`` to ``path`` atomically."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "card": card.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def read_checkpoint(path: str | Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    """Read and validate a checkpoint file without building the model."""
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
    return card, state


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
