"""The model card: one typed record that travels inside every artifact.

A ``.pt`` checkpoint stores it next to the weights and an ``.onnx`` export stores it as JSON in
``metadata_props``, so ``export``, ``predict`` and the runtime never ask the user for mean, std,
class names or builder arguments. This module is torch-free: the runtime imports it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from segdeploy.core.errors import SegdeployError
from segdeploy.core.input_contract import InputContract, contract_from_data
from segdeploy.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, SIZE_MULTIPLE

TASKS = ("segmentation", "classification")
# 2: the input contract (``input``); a card without one (version 1) is read with the default.
CARD_FORMAT_VERSION = 2
#: Key under which an ONNX export stores the card in ``metadata_props``.
ONNX_METADATA_KEY = "segdeploy.model_card"


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, feed and interpret a model.

    Attributes:
        arch: registry name of the architecture, e.g. ``"unet"``.
        task: ``"segmentation"`` or ``"classification"``.
        class_names: one name per output class; its length is the number of classes.
        model_kwargs: keyword arguments for the registry builder (without ``num_classes``).
        in_channels: channels the model reads (3 for RGB).
        mean, std: per-channel normalisation applied to ``[0, 1]`` pixels.
        input: how images are sized for the model and its output mapped back
            (:class:`~segdeploy.core.input_contract.InputContract`).
        size_multiple: height and width must be multiples of this (the architecture's, 16 for
            every model here).
        training: free-form summary of how the weights were made (epochs, best metric, data).
    """

    arch: str
    task: str
    class_names: tuple[str, ...]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    size_multiple: int = SIZE_MULTIPLE
    input: InputContract = field(default_factory=InputContract)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so a card read from JSON equals the one written.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "input", contract_from_data(self.input, f"card of {self.arch}"))
        # An older card is read with the defaults of the fields it lacks: it is a current card now.
        object.__setattr__(self, "format_version", max(self.format_version, CARD_FORMAT_VERSION))
        problems = self._problems()
        if problems:
            raise SegdeployError(f"invalid model card for '{self.arch}': " + "; ".join(problems))

    def _problems(self) -> list[str]:
        found = []
        if not self.arch or not isinstance(self.arch, str):
            found.append("arch must be a non-empty string")
        if self.task not in TASKS:
            found.append(f"task must be one of {TASKS}, found {self.task!r}")
        if len(self.class_names) < 2:
            found.append(f"need at least 2 class names, found {len(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            found.append("class names must be unique")
        if "num_classes" in self.model_kwargs:
            found.append("model_kwargs must not hold num_classes (it comes from class_names)")
        if self.in_channels < 1:
            found.append(f"in_channels must be >= 1, found {self.in_channels}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            found.append(
                f"mean and std need {self.in_channels} values each, "
                f"found {len(self.mean)} and {len(self.std)}"
            )
        if any(not math.isfinite(s) or s <= 0 for s in self.std):
            found.append("std values must be positive")
        if self.size_multiple < 1:
            found.append(f"size_multiple must be >= 1, found {self.size_multiple}")
        found += self.input.problems(self.size_multiple)
        if self.format_version > CARD_FORMAT_VERSION:
            found.append(
                f"card format {self.format_version} is newer than this segdeploy "
                f"understands ({CARD_FORMAT_VERSION}); upgrade segdeploy"
            )
        return found

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def require_size(self, height: int, width: int) -> None:
        """Raise unless the model takes ``height x width`` inputs (multiples of ``size_multiple``).

        For commands that run the graph at sizes the user chose (``--shapes``, ``--size``); the
        runtime pads images instead.
        """
        multiple = self.size_multiple
        if height % multiple or width % multiple:

            def nearest(value: int) -> int:
                return max(multiple, round(value / multiple) * multiple)

            raise SegdeployError(
                f"size {height}x{width}: '{self.arch}' takes heights and widths that are "
                f"multiples of {multiple}, e.g. {nearest(height)}x{nearest(width)}"
            )

    def replace(self, **changes: Any) -> ModelCard:
        """Return a copy with some fields changed (validated again)."""
        return ModelCard(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (lists, dicts, str, numbers)."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["input"] = self.input.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card") -> ModelCard:
        """Build a card from plain data, raising :class:`SegdeployError` naming ``source``."""
        if not isinstance(data, dict):
            raise SegdeployError(f"{source}: expected a model card mapping, found {type(data)}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SegdeployError(f"{source}: unknown model card fields {unknown}")
        missing = sorted({"arch", "task", "class_names"} - set(data))
        if missing:
            raise SegdeployError(f"{source}: model card lacks fields {missing}")
        try:
            return cls(**data)
        except SegdeployError as err:
            raise SegdeployError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise SegdeployError(f"{source}: malformed model card ({err})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SegdeployError(f"{source}: model card is not valid JSON ({err})") from None
        return cls.from_dict(data, source)


def card_from_metadata(
    metadata: Mapping[str, str], source: str, hint: str = "export it with segdeploy export"
) -> ModelCard:
    """The model card an ONNX file carries in ``metadata_props`` (as ``{key: value}``).

    The one reader of the card from ONNX metadata: the runtime, ``info``, Triton's repository and
    the export stages all use it, so a file without a card is refused in the same words
    everywhere (``hint`` says what to do instead).

    Raises:
        SegdeployError: no card under :data:`ONNX_METADATA_KEY`, or a malformed one.
    """
    stored = metadata.get(ONNX_METADATA_KEY)
    if stored is None:
        raise SegdeployError(
            f"ONNX file {source}: expected a segdeploy model card in its metadata "
            f"('{ONNX_METADATA_KEY}'), found none; {hint}"
        )
    return ModelCard.from_json(stored, source=f"ONNX file {source}")
