"""Datasets: a synthetic road-scene generator and folder-backed segmentation/classification sets.

The synthetic scenes exist so that the whole train -> export -> runtime pipeline can be exercised
without downloading anything. Unlike the seed tutorial (whose images were pure noise, leaving a
model nothing but the position prior to learn), every class is *rendered into the image*: a gray
textured road, saturated boxy vehicles with dark windows, thin upright pedestrians with a head,
and background clutter. A small U-Net can therefore genuinely learn to read pixels.

Folder datasets validate eagerly in ``__init__`` so that a bad file fails before training starts,
with a :class:`~segdeploy.errors.SegdeployError` that names the file.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from segdeploy.errors import SegdeployError
from segdeploy.metrics import IGNORE_INDEX
from segdeploy.runtime.preprocess import load_image

ROAD_CLASSES = ("background", "road", "vehicle", "pedestrian")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png",)
SIZE_MULTIPLE = 16

_BACKGROUND, _ROAD, _VEHICLE, _PEDESTRIAN = range(4)
_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    Image.DecompressionBombError,
    SyntaxError,
    ValueError,
)


# --------------------------------------------------------------------------------------------
# Synthetic road scenes
# --------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """One RGB colour in [0, 255] float32 from HSV in [0, 1]."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _window(
    shape: tuple[int, int], y0: float, y1: float, x0: float, x1: float
) -> tuple[slice, slice, np.ndarray, np.ndarray] | None:
    """Clip a box to the image; return its slices and open (y, x) coordinate grids."""
    h, w = shape
    iy0, iy1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
    ix0, ix1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    # Pixel centres, so shapes are symmetric and do not shift by half a pixel. (arange rather
    # than np.ogrid: ogrid's overhead dominated rendering time for these small windows.)
    yy = np.arange(iy0, iy1, dtype=np.float32)[:, None] + 0.5  # (h, 1)
    xx = np.arange(ix0, ix1, dtype=np.float32)[None, :] + 0.5  # (1, w)
    return slice(iy0, iy1), slice(ix0, ix1), yy, xx


def _paint(
    img: np.ndarray,
    mask: np.ndarray | None,
    win: tuple[slice, slice, np.ndarray, np.ndarray] | None,
    inside: np.ndarray | None,
    colour: np.ndarray,
    cls: int | None = None,
) -> None:
    """Paint ``colour`` ((3,) or (h, w, 3)) where ``inside`` is true (None: the whole window),
    and label those pixels ``cls`` in ``mask`` unless ``cls`` is None (decoration only)."""
    if win is None:
        return
    sy, sx = win[0], win[1]
    if inside is None:
        img[sy, sx] = colour
        if mask is not None and cls is not None:
            mask[sy, sx] = cls
        return
    if colour.ndim == 3:
        colour = colour[inside]
    img[sy, sx][inside] = colour
    if mask is not None and cls is not None:
        mask[sy, sx][inside] = cls


def _rounded_box(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, hh: float, hw: float):
    """Superellipse |dx|^4 + |dy|^4 <= 1: a box with rounded corners, cheap to evaluate."""
    dy = (yy - cy) / max(hh, 0.5)
    dx = (xx - cx) / max(hw, 0.5)
    return dy**4 + dx**4 <= 1.0


def _draw_vehicle(img, mask, rng, cy_bottom: float, cx: float, width: float, height: float):
    shape = mask.shape
    hw, hh = width / 2, height / 2
    cy = cy_bottom - hh
    win = _window(shape, cy - hh, cy + hh, cx - hw, cx + hw)
    if win is None:
        return
    _, _, yy, xx = win
    body = _rounded_box(yy, xx, cy, cx, hh, hw)
    # Saturated paint is what makes a vehicle a vehicle; background clutter stays duller.
    colour = _hsv(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.6, 1.0))
    shade = 1.0 - 0.25 * (yy - (cy - hh)) / max(height, 1.0)  # (h, 1): lit from above
    paint = np.array(np.broadcast_to(colour * shade[..., None], (*body.shape, 3)))  # (h, w, 3)
    # Windows (a dark band in the upper part) and a dark tyre/bumper strip. Both are clipped to
    # the body so that no dark pixel outside the outline ends up labelled road or background.
    wy0, wy1 = cy - hh * rng.uniform(0.7, 0.8), cy - hh * rng.uniform(0.05, 0.25)
    wx = hw * rng.uniform(0.6, 0.8)
    glass = (yy >= wy0) & (yy < wy1) & (np.abs(xx - cx) <= wx)
    paint[glass] = _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.1, 0.4), rng.uniform(0.12, 0.3))
    bumper = (yy >= cy + hh * 0.75) & (np.abs(xx - cx) <= hw * 0.85)
    paint[bumper] = _hsv(0, 0, 0.1)
    _paint(img, mask, win, body, paint, _VEHICLE)


def _draw_pedestrian(img, mask, rng, y_bottom: float, cx: float, height: float):
    shape = mask.shape
    # Thin, but not so thin that a 1-pixel boundary error halves the IoU at 64x64.
    width = max(height * rng.uniform(0.26, 0.34), 4.0)
    top = y_bottom - height
    head_r = max(height * 0.11, 1.2)
    skin = _hsv(rng.uniform(0.03, 0.1), rng.uniform(0.3, 0.6), rng.uniform(0.4, 0.95))
    shirt = _hsv(rng.random(), rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.9))
    trousers = _hsv(rng.random(), rng.uniform(0.0, 0.4), rng.uniform(0.12, 0.4))
    # Legs: one narrow column; a leg gap would vanish at 64x64 and only add label noise.
    legs_top = top + height * 0.55
    win = _window(shape, legs_top, y_bottom, cx - width * 0.33, cx + width * 0.33)
    if win is not None:
        _paint(img, mask, win, None, trousers, _PEDESTRIAN)
    # Torso: rounded box from the neck to the hips.
    t0 = top + 2 * head_r * 0.9
    win = _window(shape, t0, legs_top + 1, cx - width / 2, cx + width / 2)
    if win is not None:
        _, _, yy, xx = win
        cy, hh = (t0 + legs_top + 1) / 2, (legs_top + 1 - t0) / 2
        _paint(img, mask, win, _rounded_box(yy, xx, cy, cx, hh, width / 2), shirt, _PEDESTRIAN)
    # Head: a skin-coloured disc on top.
    hy = top + head_r
    win = _window(shape, hy - head_r, hy + head_r, cx - head_r, cx + head_r)
    if win is not None:
        _, _, yy, xx = win
        disc = (yy - hy) ** 2 + (xx - cx) ** 2 <= head_r**2
        _paint(img, mask, win, disc, skin, _PEDESTRIAN)


def render_road_scene(
    index: int, height: int, width: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic road scene and its label mask.

    The scene is a function of ``(seed, index)`` only, so a dataset never has to store images.
    Classes (see :data:`ROAD_CLASSES`): 0 background (sky, grass or dirt, buildings, clutter
    blobs), 1 road (gray textured perspective trapezoid, lane markings included), 2 vehicle
    (saturated rounded boxes with dark windows), 3 pedestrian (thin upright figure with a head).
    Every image holds 1-3 vehicles and 1-3 pedestrians whose size scales with the image.

    Args:
        index: item index; different indices give different scenes.
        height: image height in pixels (at least 16).
        width: image width in pixels (at least 16).
        seed: dataset seed; combined with ``index`` in ``np.random.default_rng([seed, index])``.

    Returns:
        ``(image, mask)``: image (H, W, 3) uint8 RGB, mask (H, W) uint8 class indices.
    """
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16x16, got {height}x{width}")
    rng = np.random.default_rng([seed, index])
    H, W = height, width
    img = np.empty((H, W, 3), dtype=np.float32)  # (H, W, 3) float in [0, 255]
    mask = np.zeros((H, W), dtype=np.uint8)
    ys = np.arange(H, dtype=np.float32)[:, None] + 0.5  # (H, 1)
    xs = np.arange(W, dtype=np.float32)[None, :] + 0.5  # (1, W)
    texture = rng.standard_normal((H, W), dtype=np.float32)  # fine per-pixel grain
    # Coarse blotches (grass patches, road wear): upsampled low-resolution noise.
    cell = max(H, W) // 16 or 1
    coarse = rng.standard_normal((H // cell + 1, W // cell + 1), dtype=np.float32)
    coarse = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:H, :W]

    horizon = int(H * rng.uniform(0.28, 0.5))

    # Sky: a vertical gradient, brightening towards the horizon.
    sky_top = _hsv(rng.uniform(0.52, 0.66), rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0))
    sky_low = sky_top * 0.55 + 255.0 * 0.45 * rng.uniform(0.7, 1.0)
    frac = ys[:horizon] / max(horizon, 1)  # (horizon, 1)
    img[:horizon] = sky_top + (sky_low - sky_top) * frac[..., None]
    # Ground: grass or dirt, with blotches and grain.
    if rng.random() < 0.6:
        ground = _hsv(rng.uniform(0.18, 0.38), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.65))
    else:
        ground = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.6))
    g_var = 1.0 + 0.15 * coarse[horizon:, :, None] + 0.08 * texture[horizon:, :, None]
    img[horizon:] = ground * g_var

    # Buildings standing on the horizon: dull brick/tan/slate with a window grid.
    for _ in range(rng.integers(0, 5)):
        bw, bh = W * rng.uniform(0.08, 0.25), H * rng.uniform(0.08, 0.3)
        bx = W * rng.uniform(-0.05, 1.0)
        win = _window((H, W), horizon - bh, horizon, bx, bx + bw)
        if win is None:
            continue
        _, _, yy, xx = win
        hue = rng.uniform(0.0, 0.12) if rng.random() < 0.7 else rng.uniform(0.55, 0.65)
        wall = _hsv(hue, rng.uniform(0.1, 0.45), rng.uniform(0.3, 0.75))
        period = max(3.0, W * rng.uniform(0.03, 0.06))
        panes = ((yy % period) < period * 0.5) & ((xx % period) < period * 0.5)  # (h, w)
        _paint(img, None, win, None, wall * np.where(panes, 0.65, 1.0)[..., None])

    # Clutter blobs (bushes, trees, dirt, rocks): textured, moderately saturated, never the
    # bright saturated paint of vehicles; drawn before the road, so the road covers some.
    for _ in range(rng.integers(2, 7)):
        ry, rx = H * rng.uniform(0.03, 0.12), W * rng.uniform(0.03, 0.15)
        cy, cx = H * rng.uniform(0.15, 1.0), W * rng.uniform(0.0, 1.0)
        win = _window((H, W), cy - ry, cy + ry, cx - rx, cx + rx)
        if win is None:
            continue
        sy, sx, yy, xx = win
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        hue = rng.uniform(0.05, 0.4)
        base = _hsv(hue, rng.uniform(0.2, 0.6), rng.uniform(0.15, 0.6))
        grain = 1.0 + 0.25 * texture[sy, sx][..., None]  # (h, w, 1): rough surface
        _paint(img, None, win, blob, base * grain)

    # Road: a perspective trapezoid from the horizon to the bottom edge.
    cx_top, half_top = W * rng.uniform(0.35, 0.65), W * rng.uniform(0.02, 0.08)
    cx_bot, half_bot = W * rng.uniform(0.3, 0.7), W * rng.uniform(0.28, 0.6)
    depth = np.clip((ys - horizon) / max(H - horizon, 1), 0.0, 1.0)  # (H, 1): 0 far, 1 near
    centre = cx_top + depth * (cx_bot - cx_top)  # (H, 1)
    half = half_top + depth * (half_bot - half_top)  # (H, 1)
    dx = xs - centre  # (H, W)
    road = (ys >= horizon) & (np.abs(dx) <= half)
    grey = rng.uniform(65.0, 150.0) + rng.uniform(-6.0, 6.0, size=3).astype(np.float32)
    road_grain = 1.0 + 0.12 * texture + 0.06 * coarse  # (H, W)
    img[road] = grey * road_grain[road][:, None]
    mask[road] = _ROAD
    if rng.random() < 0.75:
        # Dashed centre line; dash phase follows 1/depth so dashes shrink with distance.
        line_half = max(0.5, W * 0.008) * (0.3 + depth)  # (H, 1)
        dashes = ((1.0 / (depth + 0.08)) * rng.uniform(0.8, 1.6)) % 1.0 < 0.5  # (H, 1)
        lane = road & (np.abs(dx) <= line_half) & dashes
        paint = _hsv(0.14, 0.8, 0.9) if rng.random() < 0.3 else _hsv(0, 0, 0.9)
        img[lane] = paint  # still labelled road: markings are part of the road surface

    def road_row(t: float) -> tuple[float, float, float]:
        y = horizon + t * (H - horizon)
        return y, cx_top + t * (cx_bot - cx_top), half_top + t * (half_bot - half_top)

    # Objects, painted far to near so nearer ones occlude farther ones.
    objects: list[tuple[float, str, tuple]] = []
    for _ in range(rng.integers(1, 4)):
        t = rng.uniform(0.2, 1.0)
        y, c, h = road_row(t)
        vw = max(h * rng.uniform(0.45, 0.8), W * 0.08)
        vh = vw * rng.uniform(0.55, 0.9)
        vx = np.clip(c + rng.uniform(-0.6, 0.6) * h, vw * 0.3, W - vw * 0.3)
        objects.append((y, "vehicle", (min(y, H), vx, vw, vh)))
    for _ in range(rng.integers(1, 4)):
        t = rng.uniform(0.15, 1.0)
        y, c, h = road_row(t)
        ph = H * (0.18 + 0.2 * t) * rng.uniform(0.85, 1.15)
        # Mostly on the verge beside the road, sometimes crossing it.
        side = rng.choice((-1.0, 1.0))
        px = c + side * h * rng.uniform(0.6, 1.35)
        px = float(np.clip(px, W * 0.05, W * 0.95))
        objects.append((y, "pedestrian", (min(y, H - 1), px, ph)))
    objects.sort(key=lambda o: o[0])
    for _, kind, args in objects:
        if kind == "vehicle":
            _draw_vehicle(img, mask, rng, *args)
        else:
            _draw_pedestrian(img, mask, rng, *args)

    # Global photometric jitter, then sensor noise: models must not key on exact colours.
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-25.0, 25.0)
    img -= 128.0
    img *= contrast
    img += 128.0 + brightness
    # Luminance-only noise: a third of the random draws of per-channel noise, same purpose.
    noise = rng.standard_normal((H, W, 1), dtype=np.float32)  # (H, W, 1)
    noise *= rng.uniform(2.0, 8.0)
    img += noise
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8), mask


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_size(size: Sequence[int], what: str, multiple: int | None) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
        raise SegdeployError(f"{what}: expected size as (height, width) positive ints, got {size}.")
    h, w = int(size[0]), int(size[1])
    if multiple and (h % multiple or w % multiple):
        raise SegdeployError(
            f"{what}: expected height and width to be multiples of {multiple}, got {h}x{w}."
        )
    return h, w


def _check_norm(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise SegdeployError(
            f"Normalisation: expected 3 mean values and 3 positive std values, got mean={mean} "
            f"std={std}."
        )
    return (
        torch.tensor(mean, dtype=torch.float32).view(3, 1, 1),
        torch.tensor(std, dtype=torch.float32).view(3, 1, 1),
    )


def _normalise(rgb: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, scaled to [0, 1] then standardised."""
    arr = np.ascontiguousarray(rgb)
    if not arr.flags.writeable:  # np.asarray(PIL image) is read-only; torch wants writable
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
    return x.sub_(mean).div_(std)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB with the runtime's conversion rules.

    Training and serving share :func:`segdeploy.runtime.preprocess.load_image`, so a model sees
    the same pixels from a 16-bit, palette, grayscale or RGBA file in both.

    Raises:
        SegdeployError: if the file is missing, unreadable or corrupt.
    """
    return Image.fromarray(load_image(Path(path), channels=3))


def _load_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as raw (H, W) class indices; palette indices are kept, not colours."""
    try:
        with Image.open(path) as im:
            # np.array of a "P" image yields palette indices, which are the class labels.
            arr = np.array(im)
    except FileNotFoundError:
        raise SegdeployError(f"Mask {path}: expected an existing file, found nothing.") from None
    except _PIL_ERRORS as exc:
        raise SegdeployError(
            f"Mask {path}: expected a readable PNG of class indices, found a corrupt or "
            f"unsupported file ({exc})."
        ) from exc
    if arr.ndim != 2:
        raise SegdeployError(
            f"Mask {path}: expected a single-channel PNG of class indices (mode L or P), "
            f"found {arr.shape[-1]} channels; colour masks must be converted to indices first."
        )
    return arr


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, which also catches files that are not images at all."""
    try:
        with Image.open(path) as im:
            return im.size
    except _PIL_ERRORS as exc:
        raise SegdeployError(
            f"Image {path}: expected a readable image file, found a corrupt or unsupported "
            f"file ({exc})."
        ) from exc


def _list_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def _random_flip_and_scale_crop(
    image: Image.Image, mask: Image.Image | None, max_scale: float = 1.5
) -> tuple[Image.Image, Image.Image | None]:
    """Random horizontal flip, then zoom in by up to ``max_scale`` and crop back to size.

    The same draw is applied to image (bilinear) and mask (nearest, so labels stay labels).
    torch's RNG is used so DataLoader workers get distinct, seedable streams.
    """
    if torch.rand(()) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if mask is not None:
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = 1.0 + (max_scale - 1.0) * float(torch.rand(()))
    w, h = image.size
    sw, sh = max(w, round(w * scale)), max(h, round(h * scale))
    if (sw, sh) != (w, h):
        x0 = int(torch.randint(0, sw - w + 1, ()))
        y0 = int(torch.randint(0, sh - h + 1, ()))
        box = (x0, y0, x0 + w, y0 + h)
        image = image.resize((sw, sh), Image.Resampling.BILINEAR).crop(box)
        if mask is not None:
            mask = mask.resize((sw, sh), Image.Resampling.NEAREST).crop(box)
    return image, mask


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


class SyntheticRoadScenes(Dataset):
    """Procedurally rendered road scenes with 4 classes (see :data:`ROAD_CLASSES`).

    Items are rendered on the fly from ``(seed, index)``, so the dataset costs no memory or disk
    and is identical on every machine.

    Args:
        length: number of items.
        size: (height, width); both must be multiples of 16 (the model's size multiple).
        seed: base seed; use different seeds for train and validation sets.
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip (the scenes already vary a lot by construction).

    Items are ``(image, mask)``: image (3, H, W) float32 normalised, mask (H, W) int64.
    """

    class_names = ROAD_CLASSES
    num_classes = len(ROAD_CLASSES)

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        if length < 0:
            raise SegdeployError(f"Synthetic dataset: expected length >= 0, got {length}.")
        self.length = int(length)
        self.size = _check_size(size, "Synthetic dataset", SIZE_MULTIPLE)
        self.seed = int(seed)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean, self._std = _check_norm(mean, std)
        self.augment = augment

    def __len__(self) -> int:
        return self.length

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 mask of item ``index`` without augmentation (for class weights)."""
        return render_road_scene(self._check_index(index), *self.size, seed=self.seed)[1]

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = render_road_scene(self._check_index(index), *self.size, seed=self.seed)
        if self.augment and torch.rand(()) < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        mask_t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))  # (H, W)
        return _normalise(image, self._mean, self._std), mask_t  # (3, H, W) float32

    def describe(self) -> str:
        """One line for logs and model cards."""
        h, w = self.size
        extra = ", augmented" if self.augment else ""
        return f"synthetic road scenes, {self.length} images {h}x{w}, seed {self.seed}{extra}"


class SegmentationFolder(Dataset):
    """Image/mask pairs from ``root/images/*`` and ``root/masks/*.png``, paired by file stem.

    Masks are single-channel PNGs (mode ``L`` or palette ``P``) whose raw values are class
    indices; 255 marks pixels to ignore. Everything is validated in ``__init__``: folder layout,
    pairing, that each image header is readable, each mask's size matches its image and its
    labels are ``< num_classes`` or 255. Image pixel data is decoded lazily in ``__getitem__``.

    Args:
        root: dataset folder containing ``images/`` and ``masks/``.
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or 255.
        size: optional (height, width), multiples of 16; images are resized bilinearly and
            masks with nearest neighbour. Without it items keep their native size.
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip and scale-crop, applied identically to image and mask.
        class_names: optional names; defaults to ``class_0``, ``class_1``, ...

    Items are ``(image, mask)``: image (3, H, W) float32 normalised, mask (H, W) int64.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise SegdeployError(
                f"Dataset {self.root}: expected num_classes between 1 and {IGNORE_INDEX}, "
                f"got {num_classes}."
            )
        self.num_classes = int(num_classes)
        self.size = None if size is None else _check_size(size, f"Dataset {root}", SIZE_MULTIPLE)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean, self._std = _check_norm(mean, std)
        self.augment = augment
        if class_names is None:
            class_names = tuple(f"class_{i}" for i in range(num_classes))
        if len(class_names) != num_classes:
            raise SegdeployError(
                f"Dataset {self.root}: expected {num_classes} class names, got "
                f"{len(class_names)} ({', '.join(class_names)})."
            )
        self.class_names = tuple(class_names)
        self.samples = self._pair_files()
        for image_path, mask_path in self.samples:
            self._validate_pair(image_path, mask_path)

    def _pair_files(self) -> list[tuple[Path, Path]]:
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise SegdeployError(
                    f"Dataset {self.root}: expected a folder {folder}, found none "
                    f"(layout: root/images/* and root/masks/*.png)."
                )
        images: dict[str, Path] = {}
        for p in _list_files(image_dir, IMAGE_EXTENSIONS):
            if p.stem in images:
                raise SegdeployError(
                    f"Image {p}: expected one image per name, found also {images[p.stem].name}."
                )
            images[p.stem] = p
        masks = {p.stem: p for p in _list_files(mask_dir, MASK_EXTENSIONS)}
        for stem, p in images.items():
            if stem not in masks:
                raise SegdeployError(
                    f"Image {p}: expected a mask {mask_dir / (stem + '.png')}, found none."
                )
        for stem, p in masks.items():
            if stem not in images:
                raise SegdeployError(
                    f"Mask {p}: expected an image named {stem}.* in {image_dir}, found none."
                )
        if not images:
            raise SegdeployError(
                f"Dataset {self.root}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) "
                f"in {image_dir}, found none."
            )
        return [(images[s], masks[s]) for s in sorted(images)]

    def _validate_pair(self, image_path: Path, mask_path: Path) -> None:
        image_size = _image_size(image_path)  # (W, H)
        mask = _load_mask(mask_path)
        if mask.shape != (image_size[1], image_size[0]):
            raise SegdeployError(
                f"Mask {mask_path}: expected the size of {image_path.name} "
                f"({image_size[0]}x{image_size[1]} WxH), found {mask.shape[1]}x{mask.shape[0]}."
            )
        labels = np.unique(mask)
        bad = labels[(labels >= self.num_classes) & (labels != IGNORE_INDEX)]
        if bad.size or (labels < 0).any():
            found = ", ".join(str(v) for v in labels[(labels < 0) | np.isin(labels, bad)][:10])
            raise SegdeployError(
                f"Mask {mask_path}: expected labels in 0..{self.num_classes - 1} or "
                f"{IGNORE_INDEX} (ignore), found {found}."
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) mask of item ``index``, resized but not augmented (for class weights)."""
        mask = _load_mask(self.samples[index][1])
        if self.size is not None and mask.shape != self.size:
            pil = Image.fromarray(mask.astype(np.uint8), "L")
            mask = np.asarray(pil.resize(self.size[::-1], Image.Resampling.NEAREST))
        return mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.samples[index]
        image = load_rgb(image_path)
        # Labels fit in uint8 (validated < num_classes <= 255), so mode "L" is lossless.
        mask = Image.fromarray(_load_mask(mask_path).astype(np.uint8), "L")
        if self.size is not None:
            wh = (self.size[1], self.size[0])
            image = image.resize(wh, Image.Resampling.BILINEAR)
            mask = mask.resize(wh, Image.Resampling.NEAREST)
        if self.augment:
            image, mask = _random_flip_and_scale_crop(image, mask)
        # Masks never go through ToTensor, which would rescale labels to [0, 1].
        mask_t = torch.from_numpy(np.array(mask, dtype=np.int64))  # (H, W)
        return _normalise(np.asarray(image), self._mean, self._std), mask_t

    def describe(self) -> str:
        """One line for logs and model cards."""
        size = f", resized to {self.size[0]}x{self.size[1]}" if self.size else ""
        extra = ", augmented" if self.augment else ""
        return (
            f"segmentation folder {self.root}, {len(self)} image/mask pairs, "
            f"{self.num_classes} classes{size}{extra}"
        )


class ClassificationFolder(Dataset):
    """Images in ``root/<class_name>/*``, one sub-folder per class (sorted names = classes).

    The folder layout and each image header are checked in ``__init__``; pixel data is decoded
    lazily, and a file that then fails to decode raises :class:`SegdeployError` naming it.

    Args:
        root: dataset folder with one sub-folder per class.
        size: (height, width) every image is resized to (aspect ratio is not preserved).
        mean: per-channel normalisation mean (RGB, 0-1 scale).
        std: per-channel normalisation std.
        augment: random horizontal flip and scale-crop.

    Items are ``(image, label)``: image (3, H, W) float32 normalised, label int64 scalar.
    """

    def __init__(
        self,
        root: str | Path,
        size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SegdeployError(
                f"Dataset {self.root}: expected a folder with one sub-folder per class, found none."
            )
        self.size = _check_size(size, f"Dataset {root}", None)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean, self._std = _check_norm(mean, std)
        self.augment = augment
        class_dirs = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not class_dirs:
            raise SegdeployError(
                f"Dataset {self.root}: expected one sub-folder per class, found none."
            )
        self.class_names = tuple(p.name for p in class_dirs)
        self.num_classes = len(self.class_names)
        self.samples: list[tuple[Path, int]] = []
        for label, folder in enumerate(class_dirs):
            files = _list_files(folder, IMAGE_EXTENSIONS)
            if not files:
                # An empty class cannot be learned and would silently shift later labels'
                # meaning if it were dropped, so it is an error (as in torchvision ImageFolder).
                raise SegdeployError(
                    f"Class folder {folder}: expected image files "
                    f"({', '.join(IMAGE_EXTENSIONS)}), found none."
                )
            for p in files:
                _image_size(p)
                self.samples.append((p, label))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        image = load_rgb(path).resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        if self.augment:
            image, _ = _random_flip_and_scale_crop(image, None)
        x = _normalise(np.asarray(image), self._mean, self._std)  # (3, H, W)
        return x, torch.tensor(label, dtype=torch.int64)

    def describe(self) -> str:
        """One line for logs and model cards."""
        extra = ", augmented" if self.augment else ""
        return (
            f"classification folder {self.root}, {len(self)} images, {self.num_classes} "
            f"classes, resized to {self.size[0]}x{self.size[1]}{extra}"
        )


class SyntheticRoadCrops(Dataset):
    """Classification twin of :class:`SyntheticRoadScenes`: what is at the centre of the crop?

    Item ``i`` renders a scene twice the crop size, picks a pixel of class ``i % 4`` (so classes
    are balanced) and crops a window centred on it; the label is the class of the centre pixel.
    Deterministic per ``(seed, index)``.
    """

    class_names = ROAD_CLASSES
    num_classes = len(ROAD_CLASSES)

    def __init__(
        self,
        length: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: bool = False,
    ) -> None:
        self.length = int(length)
        self.size = _check_size(size, "Synthetic crops", SIZE_MULTIPLE)
        self.seed = int(seed)
        self._mean, self._std = _check_norm(mean, std)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        h, w = self.size
        image, mask = render_road_scene(index, 2 * h, 2 * w, seed=self.seed)
        rng = np.random.default_rng([self.seed, index, 1])
        # Only centres whose window fits inside the scene; fall back to any class if needed.
        inner = np.zeros_like(mask, dtype=bool)
        inner[h // 2 : h // 2 + h, w // 2 : w // 2 + w] = True
        wanted = index % self.num_classes
        ys, xs = np.nonzero(inner & (mask == wanted))
        if len(ys) == 0:
            ys, xs = np.nonzero(inner)
        pick = rng.integers(len(ys))
        cy, cx = int(ys[pick]), int(xs[pick])
        crop = image[cy - h // 2 : cy - h // 2 + h, cx - w // 2 : cx - w // 2 + w]
        label = torch.tensor(int(mask[cy, cx]), dtype=torch.int64)
        return _normalise(np.ascontiguousarray(crop), self._mean, self._std), label

    def describe(self) -> str:
        h, w = self.size
        return f"synthetic road crops, {self.length} images {h}x{w}, seed {self.seed}"


def compute_class_weights(
    dataset: Dataset,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    max_items: int | None = None,
) -> torch.Tensor:
    """Per-class cross-entropy weights from inverse pixel frequency, normalised to mean 1.

    ``weight[c] ∝ 1 / count[c]`` over the labelled (non-ignored) pixels of the masks.

    Classes with zero pixels in the scanned items get the largest weight of the classes that
    do occur, not 0: with ``max_items`` a class may merely be missing from the sample, and a
    zero weight would silently stop the loss from ever learning it. (If it truly never occurs,
    its weight has no effect on cross-entropy anyway.)

    Args:
        dataset: a segmentation dataset; uses ``dataset.load_mask(i)`` when available (skips
            image decoding and augmentation), else ``dataset[i][1]``.
        num_classes: number of classes ``C``.
        ignore_index: label value that is not counted.
        max_items: scan only the first ``max_items`` items (for speed on large sets).

    Returns:
        (C,) float32 tensor with mean 1.

    Raises:
        SegdeployError: if the scanned masks contain no labelled pixels at all.
    """
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    counts = np.zeros(num_classes, dtype=np.int64)
    load_mask = getattr(dataset, "load_mask", None)
    for i in range(n):
        mask = load_mask(i) if load_mask is not None else dataset[i][1]
        mask = np.asarray(mask).reshape(-1)
        mask = mask[mask != ignore_index].astype(np.int64)
        counts += np.bincount(mask, minlength=num_classes)[:num_classes]
    present = counts > 0
    if not present.any():
        name = getattr(dataset, "root", type(dataset).__name__)
        raise SegdeployError(
            f"Dataset {name}: expected labelled pixels to compute class weights, found only "
            f"ignored pixels in {n} masks."
        )
    weights = np.zeros(num_classes, dtype=np.float64)
    weights[present] = counts.sum() / counts[present]
    weights[~present] = weights[present].max()
    weights /= weights.mean()
    return torch.tensor(weights, dtype=torch.float32)
