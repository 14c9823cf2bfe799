"""The input contract: how an image becomes model input and how the output maps back to it.

It travels in the model card, so training validation, ``evaluate``, the export gates and the
runtime's ``predict`` all size images the same way, through this one torch-free implementation:

* ``pad`` (segmentation default): the image keeps its own size and is padded at the bottom and
  right up to the size multiple; the logits are cropped back. Nothing is ever resized.
* ``fixed``: the image is resized (bilinear) to ``size`` = (H, W), the classifier default, which
  is also how classifiers are trained; segmentation logits are resized back to the image before
  the argmax (never the integer mask).
* ``shorter_side``: the shorter side is resized to ``size[0]`` keeping the aspect ratio, then
  padded as ``pad`` does; logits are cropped, then resized back.

Padding uses numpy's pad modes (``reflect`` by default: it continues edges and textures, so the
network sees no artificial border in the padded strip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from segdeploy.core.errors import SegdeployError
from segdeploy.core.preprocess import padded_size

RESIZE_POLICIES = ("pad", "fixed", "shorter_side")
PADDING_MODES = ("reflect", "edge", "constant")


@dataclass(frozen=True)
class InputContract:
    """One model's image sizing rule; see the module docstring for the policies."""

    resize: str = "pad"
    size: tuple[int, ...] | None = None
    padding: str = "reflect"

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", tuple(int(s) for s in self.size))

    def problems(self, size_multiple: int) -> list[str]:
        """What makes this contract unusable for a model with ``size_multiple`` (empty if fine)."""
        found = []
        if self.resize not in RESIZE_POLICIES:
            found.append(f"input resize must be one of {RESIZE_POLICIES}, found {self.resize!r}")
        if self.padding not in PADDING_MODES:
            found.append(f"input padding must be one of {PADDING_MODES}, found {self.padding!r}")
        wanted = {"pad": 0, "fixed": 2, "shorter_side": 1}.get(self.resize, 0)
        if len(self.size or ()) != wanted or any(s < 1 for s in self.size or ()):
            found.append(f"input resize '{self.resize}' needs {wanted} positive sizes")
        elif self.resize == "fixed" and any(s % size_multiple for s in self.size):
            found.append(f"input size {self.size} must be multiples of {size_multiple}")
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "size": list(self.size) if self.size else None,
            "padding": self.padding,
        }

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The image's size after resizing, before padding."""
        if self.resize == "fixed":
            return self.size[0], self.size[1]
        if self.resize == "shorter_side":
            scale = self.size[0] / min(height, width)
            return max(1, round(height * scale)), max(1, round(width * scale))
        return height, width

    def model_size(self, height: int, width: int, multiple: int) -> tuple[int, int]:
        """The ``(H, W)`` the model sees for an image of ``height`` x ``width``."""
        return padded_size(*self.resized_size(height, width), multiple)

    def to_model_pixels(self, image: np.ndarray, multiple: int) -> np.ndarray:
        """``(h, w, C)`` uint8 image -> ``(H, W, C)`` uint8 at :meth:`model_size`."""
        height, width = image.shape[:2]
        target = self.resized_size(height, width)
        if target != (height, width):
            image = _resize_pixels(image, target)
        model_h, model_w = self.model_size(height, width, multiple)
        pad_h, pad_w = model_h - target[0], model_w - target[1]
        if pad_h or pad_w:
            # np.pad's reflect mode reflects repeatedly when the pad exceeds the image.
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=self.padding)
        return image

    def to_image_logits(self, logits: np.ndarray, height: int, width: int) -> np.ndarray:
        """``(K, H, W)`` logits at the model's size -> ``(K, height, width)`` at the image's.

        Padding is cropped away first; a resized image's logits are then resized back
        (bilinear, on the float scores: resizing an integer mask would invent boundaries).
        """
        resized = self.resized_size(height, width)
        logits = logits[:, : resized[0], : resized[1]]
        if resized != (height, width):
            logits = _resize_logits(logits, (height, width))
        return logits


def _resize_pixels(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``(h, w, C)`` uint8 image to ``size`` = (H, W), as training does."""
    planes = image[:, :, 0] if image.shape[2] == 1 else image
    resized = np.asarray(Image.fromarray(planes).resize(size[::-1], Image.Resampling.BILINEAR))
    return resized.reshape(*size, image.shape[2])


def _resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(K, h, w)`` float scores to ``(K, H, W)``, one plane at a time."""
    planes = [
        np.asarray(
            Image.fromarray(plane.astype(np.float32), "F").resize(
                size[::-1], Image.Resampling.BILINEAR
            )
        )
        for plane in logits
    ]
    return np.stack(planes).astype(logits.dtype, copy=False)


def contract_from_data(data: Any, source: str) -> InputContract:
    """An :class:`InputContract` from the card's JSON (a mapping), naming ``source`` on error."""
    if isinstance(data, InputContract):
        return data
    if not isinstance(data, dict) or set(data) - {"resize", "size", "padding"}:
        raise SegdeployError(f"{source}: malformed input contract {data!r}")
    return InputContract(**data)
