"""Image files, PIL images and arrays in, ``(H, W, C)`` uint8 pixels out: one decoder everywhere.

Training data, the export gates and the runtime all read images through :func:`load_image`, so a
model sees the same pixels at serving time as in training:

* grayscale, palette, CMYK and other modes go through Pillow's ``convert``;
* alpha is dropped (``convert("RGB")`` keeps the colour channels and ignores transparency), not
  composited, because that is what training did;
* 16-bit images (``I;16*``, ``I``) are scaled to 8 bits with ``/ 257`` (65535 -> 255), and 32-bit
  float images (``F``) are clipped to ``[0, 255]``; a plain ``convert`` would clip 16-bit data to
  white;
* EXIF orientation is *not* applied: masks line up with the pixel grid as stored in the file,
  which is also how training read images.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segdeploy.core.errors import DataError, SegdeployError

#: Image file extensions (lower case) segdeploy reads from folders, for training data and for
#: ``predict`` alike: the formats Pillow decodes (GIF's first frame, the netpbm family included).
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

#: What :func:`load_image` accepts.
ImageSource = str | os.PathLike | Image.Image | np.ndarray

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# warnings.catch_warnings swaps process-wide state; serialise the (header-only) open that needs it
# so concurrent loaders cannot leave each other's filters behind.
_OPEN_LOCK = threading.Lock()


def describe(source: ImageSource) -> str:
    """A name for ``source`` to put in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return f"image {os.fspath(source)}"
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or ""
        return f"image {name}" if name else "the PIL image"
    return "the image array"


def load_image(source: ImageSource, channels: int = 3) -> np.ndarray:
    """Read ``source`` as an ``(H, W, channels)`` uint8 array.

    Args:
        source: a file path, a PIL image, or an ``(H, W)`` / ``(H, W, C)`` uint8 array (``C`` of
            1, 3 or 4; a 4th channel is alpha and is dropped).
        channels: channels the model reads: 3 gives RGB, 1 gives luminance (``L``). Other counts
            accept only arrays that already have that many channels.

    Raises:
        SegdeployError: missing file, unreadable, corrupt or truncated image, an image over
            Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), a zero-size image,
            or an array of the wrong dtype, rank or channel count. The message names the file.
    """
    name = describe(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, channels, name)
    if isinstance(source, Image.Image):
        image = source
        _load_pixels(image, name)
    elif isinstance(source, (str, os.PathLike)):
        image = _open(Path(source), name)
    else:
        raise DataError(
            f"{name}: expected a path, a PIL image or a uint8 array, found {type(source).__name__}"
        )
    try:
        return _from_pil(image, channels, name)
    finally:
        if image is not source:
            image.close()


def _open(path: Path, name: str) -> Image.Image:
    if not path.exists():
        raise DataError(f"{name}: expected an existing file, found nothing at that path")
    if not path.is_file():
        raise DataError(f"{name}: expected an image file, found a folder or special file")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a batch job should
            # refuse such files, not decode gigapixel images because a warning scrolled by.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _too_many_pixels(name, err) from None
    except UnidentifiedImageError:
        raise DataError(
            f"{name}: expected an image file, found data Pillow cannot identify as an image"
        ) from None
    except OSError as err:
        raise DataError(f"{name}: expected a readable file, found {err.strerror or err}") from None
    try:
        _load_pixels(image, name)
    except SegdeployError:
        image.close()
        raise
    return image


def _too_many_pixels(name: str, err: Exception) -> DataError:
    """The one sentence for an image over Pillow's pixel limit, which is checked from the header
    before anything is decoded (decoding is the only step whose memory grows with the image:
    3 bytes a pixel; tiled prediction bounds the rest)."""
    declared = re.search(r"\((\d+) pixels\)", str(err))  # Pillow: "Image size (N pixels) ..."
    found = f"{int(declared.group(1)):,}" if declared else "more"
    return DataError(
        f"{name}: expected at most {Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's "
        f"decompression-bomb limit, PIL.Image.MAX_IMAGE_PIXELS), found {found}; refusing it "
        "as a possible decompression bomb: split the image into smaller files, or raise that "
        "limit from Python if you trust the file"
    )


def _load_pixels(image: Image.Image, name: str) -> None:
    # Image.open only parses the header; truncated or corrupt pixel data fails here.
    try:
        image.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise DataError(
            f"{name}: expected a complete image, found truncated or corrupt pixel data "
            f"({type(err).__name__}: {err})"
        ) from None
    if image.width == 0 or image.height == 0:
        raise DataError(f"{name}: expected a non-empty image, found size {image.size}")


def _to_eight_bit(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit data spans 0..65535; dividing by 257 maps 65535 exactly onto 255.
        values = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
    else:
        return image
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))  # mode L


def _from_pil(image: Image.Image, channels: int, name: str) -> np.ndarray:
    image = _to_eight_bit(image)
    if channels == 3:
        image = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(image)
    if channels == 1:
        image = image if image.mode == "L" else image.convert("L")
        return np.asarray(image)[:, :, None]
    if len(image.getbands()) == channels:
        return np.asarray(image).reshape(image.height, image.width, channels)
    raise DataError(
        f"{name}: the model reads {channels} channels, found a {image.mode} image with "
        f"{len(image.getbands())}; pass an (H, W, {channels}) uint8 array instead"
    )


def _from_array(array: np.ndarray, channels: int, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{name}: expected dtype uint8, found {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataError(f"{name}: expected shape (H, W) or (H, W, C), found {array.shape}")
    height, width, found = array.shape
    if height == 0 or width == 0:
        raise DataError(f"{name}: expected a non-empty image, found shape {array.shape}")
    if found == channels:
        return np.ascontiguousarray(array)
    if channels in (1, 3) and found in (1, 3, 4):
        # Pillow infers L / RGB / RGBA from the array's shape.
        pixels = array[:, :, 0] if found == 1 else array
        return _from_pil(Image.fromarray(np.ascontiguousarray(pixels)), channels, name)
    raise DataError(
        f"{name}: expected {channels} channels (or 1, 3 or 4 to convert), found {found}"
    )
