"""A registry that maps architecture names to builders (in the style of timm's ``register_model``).

Each entry is an :class:`ArchSpec`: the builder plus the data that the rest of the pipeline needs
without special-casing the model (its task, a small configuration for tests, a sensible training
size). Tests and the parity suite are generated from :func:`list_models`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from segdeploy.core.errors import SegdeployError


@dataclass(frozen=True)
class ArchSpec:
    """What the pipeline knows about one architecture.

    Attributes:
        name: registry name.
        task: ``"segmentation"`` or ``"classification"``.
        builder: ``builder(num_classes=..., **kwargs) -> nn.Module``; the module maps
            ``(B, C, H, W)`` float images to logits ``(B, K, H, W)`` or ``(B, K)``.
        variants: named builder configurations: ``tiny`` (fast tests, parity matrix),
            ``small`` (the CPU training default) and ``full`` (the published architecture).
        train_size: default training/export height and width.
        description: one line for ``segdeploy models``.
        load_pretrained: ``(model, path) -> None`` loads local pretrained weights, if supported.
        finetune: ``(model, policy) -> None`` freezes parameters by policy, if supported.
    """

    name: str
    task: str
    builder: Callable[..., nn.Module]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_size: int = 128
    description: str = ""
    load_pretrained: Callable[[nn.Module, Any], None] | None = None
    finetune: Callable[[nn.Module, str], None] | None = None

    def variant_kwargs(self, variant: str) -> dict[str, Any]:
        """Builder kwargs of a named variant (a copy); unknown names raise."""
        if variant not in self.variants:
            raise SegdeployError(
                f"'{self.name}' has no variant '{variant}'; choose one of {sorted(self.variants)}"
            )
        return dict(self.variants[variant])


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(spec: ArchSpec) -> ArchSpec:
    """Add an architecture; registering a name twice is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models(task: str | None = None) -> list[str]:
    """Registered architecture names, sorted, optionally only those of one task."""
    return sorted(name for name, spec in _REGISTRY.items() if task in (None, spec.task))


def get_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; unknown names raise a :class:`SegdeployError`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SegdeployError(
            f"unknown architecture '{name}'; registered: {', '.join(list_models())}"
        ) from None


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered architecture with freshly initialised (or user-supplied) weights.

    Example:
        >>> model = create_model("unet", num_classes=4, features=(8, 16, 32, 64))
    """
    spec = get_spec(name)
    try:
        return spec.builder(num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise SegdeployError(f"cannot build '{name}' with arguments {kwargs}: {err}") from None
