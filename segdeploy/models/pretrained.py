"""Shared helpers for local pretrained weights: read a state-dict file, check its keys, freeze.

Every architecture that takes ``--pretrained PATH`` reads the file the same way (``weights_only``,
never a download), reports keys that do not fit in the same one sentence, and freezes parameters
by the same name-prefix policies; only the key mapping and the policy prefixes differ per model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from segdeploy.core.errors import SegdeployError

#: How many keys of each kind an error names before it says "...".
SHOWN_KEYS = 3

#: Checkpoint formats that nest the weights one level down (Lightning, torchvision references).
WRAPPER_KEYS = ("state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a PyTorch state-dict file, unwrapping a ``state_dict``/``model`` entry.

    Loaded with ``weights_only=True``: a file cannot run code. Raises a :class:`SegdeployError`
    naming the file when it does not exist, cannot be read, or holds no state dict of tensors.
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
    for wrapper in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegdeployError(f"{path} does not hold a state dict of tensors")
    return state


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN_KEYS]) + (" ..." if len(keys) > SHOWN_KEYS else "")


def check_state_keys(
    path: str | Path,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    target: str,
) -> None:
    """Raise one sentence naming ``path`` and the first missing/unexpected/wrong-shape keys.

    ``state`` are the file's tensors already mapped to the model's key names, ``expected`` the
    model's tensors they must replace one for one; ``target`` names the model ("a ResNet-18
    backbone").
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        detail = "; ".join(
            f"{label}: {_listed(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", wrong_shape),
            )
            if keys
        )
        raise SegdeployError(f"{path} does not fit {target} ({detail})")


def freeze_by_prefix(
    model: nn.Module, policies: Mapping[str, tuple[str, ...]], policy: str
) -> None:
    """Leave trainable only the parameters whose names start with a prefix of ``policy``."""
    if policy not in policies:
        raise SegdeployError(
            f"unknown fine-tuning policy '{policy}'; choose one of {', '.join(policies)}"
        )
    prefixes = policies[policy]
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(prefixes))
