"""A registry that maps architecture names to builders (in the style of timm's ``register_model``).

Each entry is an :class:`ArchSpec`: the builder plus the data that the rest of the pipeline needs
without special-casing the model (its task, its size variants, a sensible training size, the
multiple its input sizes must be). Builders register themselves with the :func:`register_model`
decorator, next to their definition::

    @register_model(task="segmentation", variants={"tiny": {...}, "full": {}})
    def build_mynet(num_classes: int, **kwargs) -> nn.Module: ...

Tests and the parity suite are generated from :func:`list_models`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from segdeploy.core.errors import SegdeployError
from segdeploy.core.preprocess import SIZE_MULTIPLE

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ArchSpec:
    """What the pipeline knows about one architecture.

    Attributes:
        name: registry name.
        task: ``"segmentation"`` or ``"classification"``.
        builder: ``builder(num_classes=..., **kwargs) -> nn.Module``; the module maps
            ``(B, C, H, W)`` float images to logits ``(B, K, H, W)`` or ``(B, K)``.
        variants: named builder configurations, declared smallest first. An architecture with
            several sizes declares e.g. ``tiny`` (fast tests, parity matrix), ``small`` and
            ``full`` (the published architecture); one with a single size declares only that.
        train_size: default training/export height and width.
        description: one line for ``segdeploy models``.
        load_pretrained: ``(model, path) -> None`` loads local pretrained weights, if supported.
        finetune: ``(model, policy) -> None`` freezes parameters by policy, if supported.
        finetune_policies: the policies ``finetune`` takes, each with what it leaves trainable
            (for help texts and errors); the first is the default with pretrained weights, and
            every one but ``"all"`` freezes part of the network.
        default_variant: what training builds when no variant is named; when left out, the
            last (largest) declared variant.
        size_multiple: input height and width must be multiples of this; it goes into the model
            card and from there into the export contract and the runtime's padding.
    """

    name: str
    task: str
    builder: Callable[..., nn.Module]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_size: int = 128
    description: str = ""
    load_pretrained: Callable[[nn.Module, Any], None] | None = None
    finetune: Callable[[nn.Module, str], None] | None = None
    finetune_policies: dict[str, str] = field(default_factory=dict)
    default_variant: str | None = None
    size_multiple: int = SIZE_MULTIPLE

    def __post_init__(self) -> None:
        if self.default_variant is None and self.variants:
            object.__setattr__(self, "default_variant", list(self.variants)[-1])
        if self.default_variant is not None and self.default_variant not in self.variants:
            raise ValueError(
                f"'{self.name}': default variant '{self.default_variant}' is not declared"
            )
        if (self.finetune is None) != (not self.finetune_policies):
            raise ValueError(f"'{self.name}': a finetune hook and its policies come together")

    @property
    def smallest_variant(self) -> str:
        """The first declared variant: what tests and the parity matrix build."""
        if not self.variants:
            raise SegdeployError(f"'{self.name}' declares no variants")
        return next(iter(self.variants))

    def resolve_variant(self, variant: str | None) -> str:
        """``variant`` itself, or the default one when ``None``; unknown names raise."""
        name = self.default_variant if variant is None else variant
        self.variant_kwargs(name)  # raises for a name that is not declared
        return name

    def variant_kwargs(self, variant: str) -> dict[str, Any]:
        """Builder kwargs of a named variant (a copy); unknown names raise."""
        if variant not in self.variants:
            raise SegdeployError(
                f"'{self.name}' has no variant '{variant}'; choose one of {sorted(self.variants)}"
            )
        return dict(self.variants[variant])


_REGISTRY: dict[str, ArchSpec] = {}


def _add(spec: ArchSpec) -> ArchSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"architecture '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_model(spec: ArchSpec | None = None, /, **fields: Any) -> Any:
    """Register an architecture; registering a name twice is a programming error.

    Two forms:

    * ``register_model(ArchSpec(...))`` adds a ready spec and returns it;
    * ``@register_model(task=..., variants=..., ...)`` above a builder: the keywords are the
      other :class:`ArchSpec` fields; ``name`` defaults to the builder's name without its
      ``build_`` prefix. The builder is returned unchanged.

    Raises:
        ValueError: the name is already registered.
    """
    if spec is not None:
        if fields:
            raise TypeError("register_model takes an ArchSpec or keyword fields, not both")
        return _add(spec)

    def decorator(builder: Builder) -> Builder:
        name = fields.get("name") or builder.__name__.removeprefix("build_")
        _add(ArchSpec(**{**fields, "name": name, "builder": builder}))
        return builder

    return decorator


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


#: The policy that trains every parameter; the only one that makes sense without pretrained weights.
TRAIN_ALL = "all"


def resolve_finetune(spec: ArchSpec, policy: str | None, pretrained: bool) -> str:
    """The fine-tuning policy to apply: ``policy``, or the default when it is ``None``.

    The default is the spec's first policy (head only) with pretrained weights and ``"all"``
    without. A policy that freezes anything is refused without pretrained weights: it would train
    a head on the random features of a frozen, randomly initialised backbone.

    Raises:
        SegdeployError: the policy is unknown for ``spec``, or freezes a random backbone.
    """
    if policy is None:
        if pretrained and spec.finetune_policies:
            return next(iter(spec.finetune_policies))
        return TRAIN_ALL
    if policy != TRAIN_ALL and policy not in spec.finetune_policies:
        known = ", ".join(spec.finetune_policies) or TRAIN_ALL
        raise SegdeployError(
            f"'{spec.name}' has no fine-tuning policy '{policy}'; choose one of {known}"
        )
    if policy != TRAIN_ALL and not pretrained:
        raise SegdeployError(
            f"freezing a randomly initialised backbone trains only "
            f"{spec.finetune_policies[policy]} on random features (--finetune {policy}); "
            f"pass --pretrained PATH or --finetune all"
        )
    return policy
