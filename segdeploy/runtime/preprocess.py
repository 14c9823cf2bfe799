"""The runtime's image decoding, re-exported: what serving reads images with.

Decoding lives in :mod:`segdeploy.core.images` and normalisation in
:mod:`segdeploy.core.preprocess`, shared with training. How an image is sized and padded for the
model (reflect-padded at the bottom and right to the size multiple, by default) is the card's
input contract, :mod:`segdeploy.core.input_contract`, the one implementation training
validation, ``evaluate``, the gates and :meth:`~segdeploy.runtime.model.SegmentationModel.prepare`
all use.
"""

from __future__ import annotations

from segdeploy.core.images import ImageSource, describe, load_image
from segdeploy.core.preprocess import padded_size

__all__ = ["ImageSource", "describe", "load_image", "padded_size"]
