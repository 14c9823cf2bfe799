"""Model output back to user-facing results: cropped masks, probabilities, colours.

Logits come out at the padded size (see :mod:`segdeploy.runtime.preprocess`); they are cropped
back to each image's original size *before* the argmax, so masks have exactly the input's height
and width and no work is spent on the padding.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

#: A palette: one ``(r, g, b)`` per class index.
Palette = list[tuple[int, int, int]]


def crop(logits: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Crop ``(B, K, Hp, Wp)`` logits to each ``(H, W)`` in ``sizes``: a list of ``(K, H, W)``."""
    return [logits[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]


def argmax_mask(logits: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` scores -> ``(H, W)`` uint8 class indices (first maximum wins on ties).

    Raises ``ValueError`` for more than 256 classes, which do not fit a uint8 / palette PNG.
    """
    classes = logits.shape[0]
    if classes > 256:
        raise ValueError(f"uint8 masks hold at most 256 classes, found {classes}")
    # A running maximum over K contiguous (H, W) planes is several times faster than
    # np.argmax(axis=0), which walks the class axis with a stride of H*W, and keeps its ties.
    # putmask into preallocated buffers: 4.1 -> 3.3 ms for 4 classes at 640x480 (21: 14.7 -> 11.6).
    best = logits[0].copy()
    mask = np.zeros(best.shape, dtype=np.uint8)
    better = np.empty(best.shape, dtype=bool)
    for k in range(1, classes):
        np.greater(logits[k], best, out=better)
        np.putmask(mask, better, k)
        np.maximum(best, logits[k], out=best)
    return mask


def masks_from_logits(logits: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """``(B, K, Hp, Wp)`` logits -> one ``(H, W)`` uint8 mask per image, at its original size."""
    return [argmax_mask(cropped) for cropped in crop(logits, sizes)]


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (float32), e.g. ``(B, K)`` logits -> class probabilities."""
    shifted = logits.astype(np.float32) - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def palette(num_classes: int) -> Palette:
    """``num_classes`` fixed, distinct colours; class 0 (background) is black.

    This is the PASCAL VOC colour map (the bits of the class index spread over the high bits of
    r, g and b): colours are stable across runs and models and distinct for up to 256 classes.
    """
    if not 1 <= num_classes <= 256:
        raise ValueError(f"a palette holds 1 to 256 classes, asked for {num_classes}")
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return colours


def colorize(mask: np.ndarray, colours: Palette) -> Image.Image:
    """An ``(H, W)`` uint8 mask as a Pillow ``P`` image: pixel values stay the class indices.

    Saved as PNG, the file reads back (``np.asarray(Image.open(path))``) as the exact class
    indices, while viewers show each class in its palette colour.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), mask.tobytes())
    image.putpalette([channel for colour in colours for channel in colour])
    return image


def save_mask_png(mask: np.ndarray, colours: Palette, target: str | os.PathLike) -> None:
    """Write ``mask`` to ``target`` as a palette PNG of class indices (see :func:`colorize`)."""
    # zlib's run-length strategy, OpenCV's default for PNG: class masks are long runs of a few
    # values. On 640x480 masks of 4 classes it writes 3-4x faster than Pillow's default (level
    # 6, default strategy; 0.9 vs 3.1 ms) and the files are 10-18 % smaller.
    colorize(mask, colours).save(target, format="PNG", compress_type=zlib.Z_RLE)


def overlay(
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    colours: Palette,
    alpha: float = 0.5,
) -> Image.Image:
    """Blend class colours over ``image`` (RGB); background (class 0) pixels stay untouched.

    Args:
        image: ``(H, W, 3)`` / ``(H, W, 1)`` / ``(H, W)`` uint8 array or a PIL image, same size
            as ``mask``.
        mask: ``(H, W)`` uint8 class indices.
        colours: one colour per class, e.g. :func:`palette`.
        alpha: weight of the class colour, 0 (image only) to 1 (colour only).
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    image = image[:, :, :3]  # an alpha channel, if any, is not blended
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image is {image.shape[:2]} but mask is {mask.shape}")
    lut = np.zeros((256, 3), dtype=np.float32)
    lut[: len(colours)] = colours
    blended = image.astype(np.float32)
    labelled = mask > 0
    # Blending the background with black would only darken the scene; leave it as it is.
    blended[labelled] = (1.0 - alpha) * blended[labelled] + alpha * lut[mask[labelled]]
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
