"""Labelled test sets made of real photographs, not of our own synthetic scenes.

scikit-image ships real photographs and textures; these builders cut them into the folder layouts
``segdeploy train`` reads, the way users' data really looks: odd and non-square sizes, JPEG and
PNG images, palette and grayscale masks.

* :func:`write_texture_segmentation`: each image is a Voronoi partition whose cells are filled
  with one of four real textures (brick, grass, gravel, the coffee photograph); the mask says
  which. Sizes include 97x131 and 200x300 (not multiples of 16).
* :func:`write_face_classification`: ``lfw_subset``'s 25x25 faces and non-faces as two classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TEXTURE_CLASSES = ("brick", "grass", "gravel", "coffee")
#: Eight classes for the time-to-accuracy benchmark: the four above and four more photographs.
EIGHT_TEXTURE_CLASSES = (
    *TEXTURE_CLASSES,
    "chelsea",
    "astronaut",
    "hubble_deep_field",
    "immunohistochemistry",
)
#: (height, width) of the images, cycled: odd, non-square and square sizes.
SIZES = ((97, 131), (200, 300), (64, 64), (120, 90), (75, 75), (144, 176))


def _textures(classes: tuple[str, ...] = TEXTURE_CLASSES) -> list[np.ndarray]:
    """scikit-image's pictures named ``classes`` as (512, 512, 3) uint8 RGB."""
    from skimage import data

    textures = []
    for name in classes:
        pixels = getattr(data, name)()
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        textures.append(np.asarray(Image.fromarray(pixels[..., :3]).resize((512, 512))))
    return textures


def texture_scene(
    index: int, height: int, width: int, textures: list[np.ndarray], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image, mask)``: 3-6 Voronoi cells, each a real texture at a random offset."""
    rng = np.random.default_rng([seed, index])
    cells = int(rng.integers(3, 7))
    centres = rng.uniform((0, 0), (height, width), size=(cells, 2))  # (cells, 2)
    labels = rng.integers(0, len(textures), size=cells)
    labels[: len(textures)] = rng.permutation(len(textures))[: min(cells, len(textures))]
    yy, xx = np.mgrid[0:height, 0:width]
    distance = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    mask = labels[np.argmin(distance, axis=2)].astype(np.uint8)  # (H, W)
    image = np.empty((height, width, 3), np.uint8)
    for label, texture in enumerate(textures):
        y0 = int(rng.integers(0, texture.shape[0] - height + 1))
        x0 = int(rng.integers(0, texture.shape[1] - width + 1))
        window = texture[y0 : y0 + height, x0 : x0 + width]
        image[mask == label] = window[mask == label]
    return image, mask


def _save_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray, index: int) -> None:
    images, masks = folder / "images", folder / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    if index % 2:  # JPEG, as cameras write them
        Image.fromarray(image).save(images / f"{stem}.jpg", quality=90)
    else:
        Image.fromarray(image).save(images / f"{stem}.png")
    if index % 3 == 0:  # palette masks, as annotation tools (and PASCAL VOC) write them
        indexed = Image.fromarray(mask, "L").convert("P")
        indexed.putpalette([v for c in range(256) for v in (c * 60 % 256, c * 100 % 256, 0)])
        indexed.save(masks / f"{stem}.png")
    else:
        Image.fromarray(mask, "L").save(masks / f"{stem}.png")


def write_texture_segmentation(
    root: Path,
    train: int = 24,
    val: int = 12,
    seed: int = 0,
    split: bool = True,
    classes: tuple[str, ...] = TEXTURE_CLASSES,
) -> Path:
    """Write the texture set under ``root`` (``train/`` + ``val/``, or one folder) and return it."""
    textures = _textures(classes)
    for index in range(train + val):
        height, width = SIZES[index % len(SIZES)]
        image, mask = texture_scene(index, height, width, textures, seed)
        part = ("train" if index < train else "val") if split else ""
        _save_pair(root / part, f"scene_{index:03d}", image, mask, index)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def write_face_classification(root: Path, per_class: int = 40) -> Path:
    """``root/face`` and ``root/non_face``: lfw_subset's 25x25 grey images as PNG files."""
    from skimage import data

    images = data.lfw_subset()  # (200, 25, 25) float in [0, 1]: 100 faces, then 100 non-faces
    for label, offset in (("face", 0), ("non_face", 100)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (images[offset + i] * 255).round().astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{label}_{i:03d}.png")
    return root


def train_texture_unet(data: Path, folder: Path, epochs: int) -> Path:
    """Train the tiny U-Net on the texture set ``data`` for ``epochs`` and export it (CPU parity
    at 64x64); returns the ``.onnx`` path. The recipe tests share: 64 px crops, batch 4, lr 5e-3."""
    from segdeploy.export import export_checkpoint
    from segdeploy.train import TrainConfig, train

    checkpoint, onnx_path = folder / "unet.pt", folder / "unet.onnx"
    config = TrainConfig(
        arch="unet",
        data=str(data),
        variant="tiny",
        img_size=64,
        epochs=epochs,
        batch_size=4,  # 24 training images: 6 steps an epoch
        lr=5e-3,
        out=checkpoint,
    )
    train(config)
    export_checkpoint(checkpoint, out=onnx_path, shapes=[(1, 64, 64)], providers=["cpu"])
    return onnx_path
