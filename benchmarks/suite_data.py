"""A benchmark suite of real-pixel data sets, built offline from pictures installed packages ship.

Nothing is downloaded: every pixel comes from scikit-image's bundled pictures (``skimage.data``
functions that need no ``pooch`` fetch: photographs, textures, ``coins``, ``lfw_subset``).
scikit-learn's sample images and scikit-image's ``human_mitosis``/``cells3d`` are not installed
offline here, so no set uses them. Every set is seeded (``--seed``, default 0) and written in the
layouts ``segdeploy train`` reads:

* segmentation: ``train/`` and ``val/``, each ``images/`` (PNG and JPEG) + ``masks/*.png`` (grey
  or palette indices, or 0/255 for the binary set) and ``classes.txt``;
* classification: ``train/<class>/*`` and ``val/<class>/*``.

``suite.json`` in each set says its task, the segdeploy arch the suite trains, and the
``--mask-values`` the folder needs (data description, not tuning: a 0/255 mask cannot be read
otherwise).

=================  ==================================================================  ========
set                what it covers                                                      status
=================  ==================================================================  ========
``textures8``      8 texture/photo classes, Voronoi cells, odd sizes (tests/real_pixels) dev
``small_objects``  3 object classes as small discs on a photo background: each <= 2 %  new
                   of the pixels, background : rarest class >= 100 : 1 (strong
                   imbalance)
``many_classes``   12 texture/photo classes (>= 10)                                    held aside
``few_images``     24 training images, 4 classes, 200x300..320x240                    new
``large_images``   1024x1152 and 1040x1008 images, 4 classes                           new
``binary_coins``   scikit-image's coins, Otsu-thresholded to 0/255 masks, 96x112 tiles  new
``photos22``       classification: 22 classes of 48x48 patches of different photos    new
``faces``          classification: lfw_subset faces against non-faces (25x25 grey)     held aside
=================  ==================================================================  ========

segdeploy's current training defaults were developed on ``textures8`` (the eight-texture folder
of ``tests/real_pixels.py``, which the single-set time-to-accuracy benchmark uses). The sets
marked *held aside* are looked at only at the end: nothing in segdeploy is tuned on them.

Usage::

    python benchmarks/suite_data.py OUTDIR [--sets small_objects,binary_coins] [--seed 0]

writes ``OUTDIR/<set>/`` and prints a table: images, sizes, classes and pixel (or image)
shares per split, read back through segdeploy's own folder checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from real_pixels import EIGHT_TEXTURE_CLASSES, texture_scene  # noqa: E402

#: Twelve classes for ``many_classes``: the eight above and four more bundled pictures.
TWELVE_CLASSES = (*EIGHT_TEXTURE_CLASSES, "rocket", "camera", "moon", "retina")
#: Bundled pictures ``photos22`` cuts patches from (each is one class).
PHOTO_CLASSES = (
    *TWELVE_CLASSES,
    "coins",
    "page",
    "text",
    "colorwheel",
    "clock",
    "cell",
    "stereo_motorcycle",
    "checkerboard",
    "microaneurysms",
    "logo",
)
HELD_ASIDE = ("many_classes", "faces")
DEVELOPED_ON = ("textures8",)


def picture(name: str, side: int | None = None) -> np.ndarray:
    """scikit-image's bundled picture ``name`` as (H, W, 3) uint8, optionally resized square."""
    from skimage import data

    pixels = getattr(data, "chelsea" if name == "cat" else name)()
    if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        pixels = (np.asarray(pixels, np.float64) * 255).round().astype(np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    return np.asarray(image.resize((side, side)) if side else image)


def _save(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray | None, index: int) -> None:
    """One image (JPEG on odd indices, PNG otherwise) and its mask (palette every third)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    if index % 2:
        Image.fromarray(image).save(images / f"{stem}.jpg", quality=92)
    else:
        Image.fromarray(image).save(images / f"{stem}.png")
    if mask is None:
        return
    masks = folder / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    if index % 3 == 0 and mask.max() < 255:  # palette masks, as annotation tools write them
        indexed = Image.fromarray(mask, "L").convert("P")
        indexed.putpalette([v for c in range(256) for v in (c * 40 % 256, c * 90 % 256, 0)])
        indexed.save(masks / f"{stem}.png")
    else:
        Image.fromarray(mask, "L").save(masks / f"{stem}.png")


def _segmentation(
    root: Path,
    classes: tuple[str, ...],
    scene: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]],
    train: int,
    val: int,
    seed: int,
    mask_values: tuple[int, ...] | None = None,
) -> Path:
    for index in range(train + val):
        image, mask = scene(index, np.random.default_rng([seed, index]))
        _save(root / ("train" if index < train else "val"), f"img_{index:03d}", image, mask, index)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    card = {"task": "segmentation", "arch": "unet", "mask_values": mask_values}
    (root / "suite.json").write_text(json.dumps(card) + "\n")
    return root


def _voronoi(classes, sizes, side=512):
    textures = [picture(name, side) for name in classes]

    def scene(index, rng):
        height, width = sizes[index % len(sizes)]
        return texture_scene(index, height, width, textures, int(rng.integers(1 << 30)))

    return scene


def textures8(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """The development set: tests/real_pixels.py's eight classes, 160 train, 48 val."""
    from real_pixels import SIZES

    n = max(2, round(160 * scale)), max(2, round(48 * scale))
    return _segmentation(
        root, EIGHT_TEXTURE_CLASSES, _voronoi(EIGHT_TEXTURE_CLASSES, SIZES), *n, seed
    )


def many_classes(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Twelve classes in Voronoi scenes of 3-6 cells (at least 10 classes)."""
    sizes = ((128, 160), (144, 144), (112, 176), (160, 128))
    n = max(2, round(144 * scale)), max(2, round(36 * scale))
    return _segmentation(root, TWELVE_CLASSES, _voronoi(TWELVE_CLASSES, sizes), *n, seed)


def few_images(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """24 training images (and 8 validation), four classes, larger scenes."""
    classes = ("brick", "grass", "gravel", "coffee")
    sizes = ((200, 300), (320, 240), (256, 256), (240, 272))
    n = max(2, round(24 * scale)), max(2, round(8 * scale))
    return _segmentation(root, classes, _voronoi(classes, sizes), *n, seed)


def large_images(root: Path, seed: int = 0, scale: float = 1.0, side: int = 1024) -> Path:
    """Images with sides >= 1000 px (``side``), four classes; ``scale`` shrinks the count only."""
    classes = ("brick", "grass", "hubble_deep_field", "astronaut")
    sizes = ((side, side + side // 8), (side + 16, side - side // 64))
    n = max(2, round(8 * scale)), 2
    return _segmentation(root, classes, _voronoi(classes, sizes, side + side // 8 + 16), *n, seed)


SMALL_OBJECT_CLASSES = ("background", "coffee", "chelsea", "astronaut")
BACKGROUNDS = ("grass", "gravel", "brick", "moon")


def small_objects(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Discs (radius 3-5 px) of three photographs on a texture background, one disc of each
    object class per 144x176 image: each object class <= 2 % of the pixels, and background
    outnumbers the rarest class by >= 100 : 1."""
    objects = [picture(name, 256) for name in SMALL_OBJECT_CLASSES[1:]]
    backgrounds = [picture(name, 512) for name in BACKGROUNDS]
    height, width = 144, 176

    def scene(index, rng):
        back = backgrounds[index % len(backgrounds)]
        y0, x0 = rng.integers(0, 512 - height), rng.integers(0, 512 - width)
        image = back[y0 : y0 + height, x0 : x0 + width].copy()
        mask = np.zeros((height, width), np.uint8)
        yy, xx = np.mgrid[0:height, 0:width]
        for label, source in enumerate(objects, start=1):
            radius = rng.uniform(3, 5)
            cy, cx = rng.uniform(radius, height - radius), rng.uniform(radius, width - radius)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (mask == 0)
            sy, sx = rng.integers(0, 256 - height), rng.integers(0, 256 - width)
            image[disc] = source[sy : sy + height, sx : sx + width][disc]
            mask[disc] = label
        return image, mask

    n = max(2, round(96 * scale)), max(2, round(32 * scale))
    return _segmentation(root, SMALL_OBJECT_CLASSES, scene, *n, seed)


def binary_coins(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Tiles of scikit-image's coins photograph, masks by Otsu's threshold saved as 0/255."""
    from skimage import data
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk, opening

    coins = data.coins()
    mask = opening(coins > threshold_otsu(coins), disk(2))
    height, width = 96, 112

    def scene(index, rng):
        y0 = int(rng.integers(0, coins.shape[0] - height))
        x0 = int(rng.integers(0, coins.shape[1] - width))
        window = (slice(y0, y0 + height), slice(x0, x0 + width))
        tile, labels = coins[window], mask[window]
        if index % 2:  # flips: the 40 tiles are not 40 crops of one orientation
            tile, labels = tile[:, ::-1], labels[:, ::-1]
        image = np.repeat(np.ascontiguousarray(tile)[..., None], 3, axis=2)
        return image, np.ascontiguousarray(labels).astype(np.uint8) * 255

    n = max(2, round(32 * scale)), max(2, round(8 * scale))
    return _segmentation(root, ("background", "coin"), scene, *n, seed, mask_values=(0, 255))


def _classification(root: Path, samples: dict[str, tuple[list, list]]) -> Path:
    for split, position in (("train", 0), ("val", 1)):
        for name, parts in samples.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(parts[position]):
                suffix = ".jpg" if i % 2 else ".png"
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}{suffix}")
    (root / "suite.json").write_text(json.dumps({"task": "classification", "arch": "resnet18"}))
    return root


def photos22(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """22 classes: random 48x48 patches of 22 different bundled pictures (20 train, 6 val each)."""
    rng = np.random.default_rng(seed)
    per_train, per_val = max(2, round(20 * scale)), max(1, round(6 * scale))
    samples = {}
    for name in PHOTO_CLASSES:
        pixels = picture(name)
        patches = []
        for _ in range(per_train + per_val):
            y0 = int(rng.integers(0, pixels.shape[0] - 48))
            x0 = int(rng.integers(0, pixels.shape[1] - 48))
            patches.append(np.ascontiguousarray(pixels[y0 : y0 + 48, x0 : x0 + 48]))
        samples[name] = (patches[:per_train], patches[per_train:])
    return _classification(root, samples)


def faces(root: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """lfw_subset: 100 faces and 100 non-faces (25x25 grey); 70 + 30 of each, shuffled by seed."""
    from skimage import data

    pixels = (data.lfw_subset() * 255).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    per_train, per_val = max(2, round(70 * scale)), max(1, round(30 * scale))
    samples = {}
    for name, offset in (("face", 0), ("non_face", 100)):
        order = offset + rng.permutation(100)
        chosen = [pixels[i] for i in order[: per_train + per_val]]
        samples[name] = (chosen[:per_train], chosen[per_train:])
    return _classification(root, samples)


@dataclass(frozen=True)
class SuiteSet:
    name: str
    build: Callable[..., Path]
    status: str  # "dev", "new" or "held aside"


SETS = {
    s.name: s
    for s in (
        SuiteSet("textures8", textures8, "dev"),
        SuiteSet("small_objects", small_objects, "new"),
        SuiteSet("many_classes", many_classes, "held aside"),
        SuiteSet("few_images", few_images, "new"),
        SuiteSet("large_images", large_images, "new"),
        SuiteSet("binary_coins", binary_coins, "new"),
        SuiteSet("photos22", photos22, "new"),
        SuiteSet("faces", faces, "held aside"),
    )
}


def read_back(root: Path) -> dict:
    """The set at ``root`` as segdeploy's folder checks read it: ``{"train", "val"}`` summaries
    (:class:`segdeploy.data.summary.SplitSummary`), raising DataError where segdeploy would."""
    from segdeploy.data.folders import ClassificationFiles, SegmentationFiles

    card = json.loads((root / "suite.json").read_text())
    out = {"card": card}
    for split in ("train", "val"):
        if card["task"] == "segmentation":
            names = (root / "classes.txt").read_text().split()
            files = SegmentationFiles(
                root / split, len(names), class_names=names, mask_values=card["mask_values"]
            )
        else:
            files = ClassificationFiles(root / split)
        out[split] = files.summary()
    return out


def build(names: list[str], out: Path, seed: int = 0, scale: float = 1.0) -> dict[str, Path]:
    """Write the sets ``names`` under ``out`` and return their folders."""
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}; known: {', '.join(SETS)}")
    return {n: SETS[n].build(out / n, seed=seed, scale=scale) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink counts/sizes (tests)")
    args = parser.parse_args()
    folders = build(args.sets.split(","), args.out, args.seed, args.scale)
    print("| set | status | split | summary |\n|---|---|---|---|")
    for name, root in folders.items():
        found = read_back(root)
        for split in ("train", "val"):
            print(f"| {name} | {SETS[name].status} | {split} | {found[split].describe()} |")


if __name__ == "__main__":
    main()
