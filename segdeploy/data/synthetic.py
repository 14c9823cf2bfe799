"""A procedural road-scene renderer: 4 classes drawn into the pixels, deterministic per index.

The synthetic scenes exist so that the whole train -> export -> runtime pipeline can be exercised
without downloading anything. Unlike the seed tutorial (whose images were pure noise, leaving a
model nothing but the position prior to learn), every class is *rendered into the image*: a gray
textured road, saturated boxy vehicles with dark windows, thin upright pedestrians with a head,
and background clutter. A small U-Net can therefore genuinely learn to read pixels.

:func:`render_road_scene` paints a scene layer by layer (sky and ground, buildings, clutter, road,
objects, photometric jitter), one helper per layer; :func:`render_road_crop` cuts the
classification twin, a crop labelled by its centre pixel. numpy only; the torch datasets that wrap
them live in :mod:`segdeploy.train.datasets`.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

ROAD_CLASSES = ("background", "road", "vehicle", "pedestrian")
#: Validation items use ``seed + VALIDATION_SEED_OFFSET``: scenes a model never trained on.
VALIDATION_SEED_OFFSET = 10_000
#: How many synthetic training and validation images a run renders unless told otherwise.
DEFAULT_TRAIN_SAMPLES = 512
DEFAULT_VAL_SAMPLES = 128
_BACKGROUND, _ROAD, _VEHICLE, _PEDESTRIAN = range(4)


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
    # One generator drawn from in a fixed order: the layers below must keep their order, or
    # every scene (and every test and benchmark built on one) changes.
    rng = np.random.default_rng([seed, index])
    scene = _new_scene(rng, height, width)
    _paint_sky_and_ground(scene, rng)
    _paint_buildings(scene, rng)
    _paint_clutter(scene, rng)
    road = _paint_road(scene, rng)
    _paint_objects(scene, rng, road)
    _jitter_photometrics(scene.img, rng)
    return scene.img.astype(np.uint8), scene.mask


@dataclass
class _Scene:
    """A scene being painted, and the noise fields its surfaces share."""

    img: np.ndarray  # (H, W, 3) float32 in [0, 255]
    mask: np.ndarray  # (H, W) uint8 class indices
    ys: np.ndarray  # (H, 1) pixel-centre rows
    xs: np.ndarray  # (1, W) pixel-centre columns
    texture: np.ndarray  # (H, W) fine per-pixel grain
    coarse: np.ndarray  # (H, W) coarse blotches
    horizon: int  # first ground row

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


@dataclass
class _Road:
    """The road trapezoid: centre and half-width at the horizon (top) and the bottom edge."""

    horizon: int
    height: int
    cx_top: float
    half_top: float
    cx_bot: float
    half_bot: float

    def row(self, t: float) -> tuple[float, float, float]:
        """(y, centre x, half-width) of the road at depth ``t`` (0 horizon, 1 bottom edge)."""
        y = self.horizon + t * (self.height - self.horizon)
        centre = self.cx_top + t * (self.cx_bot - self.cx_top)
        return y, centre, self.half_top + t * (self.half_bot - self.half_top)


def _new_scene(rng: np.random.Generator, H: int, W: int) -> _Scene:
    """An unpainted canvas, its noise fields and the horizon row."""
    texture = rng.standard_normal((H, W), dtype=np.float32)  # fine per-pixel grain
    # Coarse blotches (grass patches, road wear): upsampled low-resolution noise.
    cell = max(H, W) // 16 or 1
    coarse = rng.standard_normal((H // cell + 1, W // cell + 1), dtype=np.float32)
    coarse = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:H, :W]
    return _Scene(
        img=np.empty((H, W, 3), dtype=np.float32),
        mask=np.zeros((H, W), dtype=np.uint8),
        ys=np.arange(H, dtype=np.float32)[:, None] + 0.5,
        xs=np.arange(W, dtype=np.float32)[None, :] + 0.5,
        texture=texture,
        coarse=coarse,
        horizon=int(H * rng.uniform(0.28, 0.5)),
    )


def _paint_sky_and_ground(scene: _Scene, rng: np.random.Generator) -> None:
    """Sky above the horizon, grass or dirt below it (both background)."""
    img, horizon = scene.img, scene.horizon
    # Sky: a vertical gradient, brightening towards the horizon.
    sky_top = _hsv(rng.uniform(0.52, 0.66), rng.uniform(0.3, 0.7), rng.uniform(0.6, 1.0))
    sky_low = sky_top * 0.55 + 255.0 * 0.45 * rng.uniform(0.7, 1.0)
    frac = scene.ys[:horizon] / max(horizon, 1)  # (horizon, 1)
    img[:horizon] = sky_top + (sky_low - sky_top) * frac[..., None]
    # Ground: grass or dirt, with blotches and grain.
    if rng.random() < 0.6:
        ground = _hsv(rng.uniform(0.18, 0.38), rng.uniform(0.35, 0.75), rng.uniform(0.3, 0.65))
    else:
        ground = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.35, 0.65), rng.uniform(0.3, 0.6))
    g_var = 1.0 + 0.15 * scene.coarse[horizon:, :, None] + 0.08 * scene.texture[horizon:, :, None]
    img[horizon:] = ground * g_var


def _paint_buildings(scene: _Scene, rng: np.random.Generator) -> None:
    """Buildings standing on the horizon: dull brick/tan/slate with a window grid."""
    H, W = scene.shape
    for _ in range(rng.integers(0, 5)):
        bw, bh = W * rng.uniform(0.08, 0.25), H * rng.uniform(0.08, 0.3)
        bx = W * rng.uniform(-0.05, 1.0)
        win = _window((H, W), scene.horizon - bh, scene.horizon, bx, bx + bw)
        if win is None:
            continue
        _, _, yy, xx = win
        hue = rng.uniform(0.0, 0.12) if rng.random() < 0.7 else rng.uniform(0.55, 0.65)
        wall = _hsv(hue, rng.uniform(0.1, 0.45), rng.uniform(0.3, 0.75))
        period = max(3.0, W * rng.uniform(0.03, 0.06))
        panes = ((yy % period) < period * 0.5) & ((xx % period) < period * 0.5)  # (h, w)
        _paint(scene.img, None, win, None, wall * np.where(panes, 0.65, 1.0)[..., None])


def _paint_clutter(scene: _Scene, rng: np.random.Generator) -> None:
    """Clutter blobs (bushes, trees, dirt, rocks), labelled background.

    Textured and moderately saturated, never the bright saturated paint of vehicles; drawn
    before the road, so the road covers some.
    """
    H, W = scene.shape
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
        grain = 1.0 + 0.25 * scene.texture[sy, sx][..., None]  # (h, w, 1): rough surface
        _paint(scene.img, None, win, blob, base * grain)


def _paint_road(scene: _Scene, rng: np.random.Generator) -> _Road:
    """Road: a perspective trapezoid from the horizon to the bottom edge, maybe a centre line."""
    H, W = scene.shape
    img, ys, horizon = scene.img, scene.ys, scene.horizon
    cx_top, half_top = W * rng.uniform(0.35, 0.65), W * rng.uniform(0.02, 0.08)
    cx_bot, half_bot = W * rng.uniform(0.3, 0.7), W * rng.uniform(0.28, 0.6)
    depth = np.clip((ys - horizon) / max(H - horizon, 1), 0.0, 1.0)  # (H, 1): 0 far, 1 near
    centre = cx_top + depth * (cx_bot - cx_top)  # (H, 1)
    half = half_top + depth * (half_bot - half_top)  # (H, 1)
    dx = scene.xs - centre  # (H, W)
    road = (ys >= horizon) & (np.abs(dx) <= half)
    grey = rng.uniform(65.0, 150.0) + rng.uniform(-6.0, 6.0, size=3).astype(np.float32)
    road_grain = 1.0 + 0.12 * scene.texture + 0.06 * scene.coarse  # (H, W)
    img[road] = grey * road_grain[road][:, None]
    scene.mask[road] = _ROAD
    if rng.random() < 0.75:
        # Dashed centre line; dash phase follows 1/depth so dashes shrink with distance.
        line_half = max(0.5, W * 0.008) * (0.3 + depth)  # (H, 1)
        dashes = ((1.0 / (depth + 0.08)) * rng.uniform(0.8, 1.6)) % 1.0 < 0.5  # (H, 1)
        lane = road & (np.abs(dx) <= line_half) & dashes
        paint = _hsv(0.14, 0.8, 0.9) if rng.random() < 0.3 else _hsv(0, 0, 0.9)
        img[lane] = paint  # still labelled road: markings are part of the road surface
    return _Road(horizon, H, cx_top, half_top, cx_bot, half_bot)


def _paint_objects(scene: _Scene, rng: np.random.Generator, road: _Road) -> None:
    """1-3 vehicles on the road and 1-3 pedestrians, painted far to near so nearer ones
    occlude farther ones."""
    H, W = scene.shape
    objects: list[tuple[float, str, tuple]] = []
    for _ in range(rng.integers(1, 4)):
        t = rng.uniform(0.2, 1.0)
        y, c, h = road.row(t)
        vw = max(h * rng.uniform(0.45, 0.8), W * 0.08)
        vh = vw * rng.uniform(0.55, 0.9)
        vx = np.clip(c + rng.uniform(-0.6, 0.6) * h, vw * 0.3, W - vw * 0.3)
        objects.append((y, "vehicle", (min(y, H), vx, vw, vh)))
    for _ in range(rng.integers(1, 4)):
        t = rng.uniform(0.15, 1.0)
        y, c, h = road.row(t)
        ph = H * (0.18 + 0.2 * t) * rng.uniform(0.85, 1.15)
        # Mostly on the verge beside the road, sometimes crossing it.
        side = rng.choice((-1.0, 1.0))
        px = c + side * h * rng.uniform(0.6, 1.35)
        px = float(np.clip(px, W * 0.05, W * 0.95))
        objects.append((y, "pedestrian", (min(y, H - 1), px, ph)))
    objects.sort(key=lambda o: o[0])
    for _, kind, args in objects:
        if kind == "vehicle":
            _draw_vehicle(scene.img, scene.mask, rng, *args)
        else:
            _draw_pedestrian(scene.img, scene.mask, rng, *args)


def _jitter_photometrics(img: np.ndarray, rng: np.random.Generator) -> None:
    """Global photometric jitter, then sensor noise (in place, clipped to [0, 255]): models
    must not key on exact colours."""
    contrast = rng.uniform(0.75, 1.25)
    brightness = rng.uniform(-25.0, 25.0)
    img -= 128.0
    img *= contrast
    img += 128.0 + brightness
    # Luminance-only noise: a third of the random draws of per-channel noise, same purpose.
    noise = rng.standard_normal((*img.shape[:2], 1), dtype=np.float32)  # (H, W, 1)
    noise *= rng.uniform(2.0, 8.0)
    img += noise
    np.clip(img, 0.0, 255.0, out=img)


# --------------------------------------------------------------------------------------------
# Classification crops
# --------------------------------------------------------------------------------------------


def render_road_crop(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A ``height x width`` crop of a road scene and the class at its centre pixel.

    Item ``index`` renders a scene twice the crop size, picks a pixel of class
    ``index % len(ROAD_CLASSES)`` (so classes are balanced over consecutive indices) whose
    window fits inside the scene, and crops the window centred on it. Deterministic per
    ``(seed, index)``.

    Returns:
        ``(crop, label)``: crop (height, width, 3) uint8 RGB, label the centre pixel's class.
    """
    h, w = height, width
    image, mask = render_road_scene(index, 2 * h, 2 * w, seed=seed)
    rng = np.random.default_rng([seed, index, 1])
    # Only centres whose window fits inside the scene; fall back to any class if needed.
    inner = np.zeros_like(mask, dtype=bool)
    inner[h // 2 : h // 2 + h, w // 2 : w // 2 + w] = True
    wanted = index % len(ROAD_CLASSES)
    ys, xs = np.nonzero(inner & (mask == wanted))
    if len(ys) == 0:
        ys, xs = np.nonzero(inner)
    pick = rng.integers(len(ys))
    cy, cx = int(ys[pick]), int(xs[pick])
    crop = image[cy - h // 2 : cy - h // 2 + h, cx - w // 2 : cx - w // 2 + w]
    return np.ascontiguousarray(crop), int(mask[cy, cx])
