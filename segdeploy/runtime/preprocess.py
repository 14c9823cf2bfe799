"""Decoded pixels in, model input out: padding to the size multiple, then normalisation.

Decoding lives in :mod:`segdeploy.core.images` and normalisation in
:mod:`segdeploy.core.preprocess`, shared with training; this module adds what only serving does.

Padding (see :func:`to_model_input`): height and width are padded at the bottom and right up to
the next multiple of the card's ``size_multiple`` by *reflecting* the un-normalised image.
Reflection continues edges and textures, so the network sees no artificial border in the padded
strip and predictions near the bottom/right edges are not skewed by a constant frame; the padding
is cropped away afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segdeploy.core.images import ImageSource, describe, load_image
from segdeploy.core.preprocess import SIZE_MULTIPLE, normalise, padded_size

__all__ = ["ImageSource", "describe", "load_image", "padded_size", "to_model_input"]


def to_model_input(
    images: Sequence[np.ndarray],
    mean: Sequence[float],
    std: Sequence[float],
    multiple: int = SIZE_MULTIPLE,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Normalise and pad ``(H, W, C)`` uint8 images into one float32 batch.

    Every image is reflect-padded at the bottom and right to the largest padded size in the batch
    (the batch's max height and width rounded up to ``multiple``), then normalised as
    ``(pixel / 255 - mean) / std``. Padding with other images' sizes changes what the network sees
    in the padded strip, so :class:`~segdeploy.runtime.model.SegmentationModel` groups images by
    their own padded size before calling this; each image then gets only its minimal padding and
    its result does not depend on what else is in the batch.

    Returns:
        ``(batch, sizes)``: batch ``(B, C, Hp, Wp)`` float32, sizes the original ``(H, W)`` of each
        image, to crop outputs with.
    """
    if not images:
        raise ValueError("to_model_input needs at least one image")
    channels = images[0].shape[2]
    sizes = [(int(image.shape[0]), int(image.shape[1])) for image in images]
    height, width = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes), multiple)
    padded = np.empty((len(images), height, width, channels), dtype=np.uint8)  # (B, Hp, Wp, C)
    for slot, image, (h, w) in zip(padded, images, sizes, strict=True):
        if image.shape[2] != channels:
            raise ValueError("all images in a batch need the same number of channels")
        # np.pad's reflect mode reflects repeatedly when the pad exceeds the image (tiny images).
        slot[...] = np.pad(image, ((0, height - h), (0, width - w), (0, 0)), mode="reflect")
    return normalise(padded, mean, std), sizes  # (B, C, Hp, Wp) float32
