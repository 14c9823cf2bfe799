"""Image folders read without torch: segmentation pairs, classification sub-folders, splits.

* :class:`SegmentationFiles`: ``root/images/*`` and ``root/masks/*.png`` paired by file stem;
* :class:`ClassificationFiles`: ``root/<class_name>/*``, one sub-folder per class;
* :func:`load_rgb` and :func:`read_mask`, the two file readers they use; :func:`crop_pair`,
  a window of an image and its mask at their own scale (training's crops);
* :func:`folder_layout` (built on :func:`data_root`, :func:`has_train_val_split` and
  :func:`folder_class_names`) and :func:`split_indices`: how a data folder given on the command
  line becomes train and validation items.

Both folder types validate eagerly in ``__init__`` (layout, pairing, image headers, mask sizes
and labels), so a bad file fails before training or calibration starts, with a
:class:`~segdeploy.core.errors.DataError` that names it. Items are numpy uint8 arrays; the torch
datasets in :mod:`segdeploy.train.datasets` add normalisation and augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from segdeploy.core.errors import DataError
from segdeploy.core.images import load_image
from segdeploy.core.metrics import IGNORE_INDEX
from segdeploy.core.preprocess import SIZE_MULTIPLE
from segdeploy.data.checks import check_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png",)
#: Share of an unsplit data folder held out for validation.
DEFAULT_VAL_FRACTION = 0.2

_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    Image.DecompressionBombError,
    SyntaxError,
    ValueError,
)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB with the runtime's conversion rules.

    Training and serving share :func:`segdeploy.core.images.load_image`, so a model sees the
    same pixels from a 16-bit, palette, grayscale or RGBA file in both.

    Raises:
        DataError: if the file is missing, unreadable or corrupt.
    """
    return load_image(Path(path), channels=3)


def read_mask(path: Path) -> np.ndarray:
    """Read a mask PNG as raw (H, W) class indices; palette indices are kept, not colours.

    Raises:
        DataError: if the file is missing, unreadable or has more than one channel.
    """
    try:
        with Image.open(path) as im:
            # np.array of a "P" image yields palette indices, which are the class labels.
            arr = np.array(im)
    except FileNotFoundError:
        raise DataError(f"Mask {path}: expected an existing file, found nothing.") from None
    except _PIL_ERRORS as exc:
        raise DataError(
            f"Mask {path}: expected a readable PNG of class indices, found a corrupt or "
            f"unsupported file ({exc})."
        ) from exc
    if arr.ndim != 2:
        raise DataError(
            f"Mask {path}: expected a single-channel PNG of class indices (mode L or P), "
            f"found {arr.shape[-1]} channels; colour masks must be converted to indices first."
        )
    return arr


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, which also catches files that are not images at all."""
    try:
        with Image.open(path) as im:
            return im.size
    except _PIL_ERRORS as exc:
        raise DataError(
            f"Image {path}: expected a readable image file, found a corrupt or unsupported "
            f"file ({exc})."
        ) from exc


def list_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The visible files in ``folder`` with one of ``extensions`` (any case), sorted."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 resized bilinearly to ``size`` = (height, width)."""
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) labels resized with nearest neighbour (labels stay labels), as uint8."""
    # Labels fit in uint8 (validated < num_classes <= 255, or 255), so mode "L" is lossless.
    pil = Image.fromarray(mask.astype(np.uint8), "L")
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.NEAREST))


def crop_pair(
    image: np.ndarray,
    mask: np.ndarray,
    top: int,
    left: int,
    size: tuple[int, int],
    padding: str = "reflect",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` = (height, width) window at ``(top, left)`` of an image and its mask.

    Nothing is resized. Where the window reaches past the bottom or right edge, the image is
    padded there with numpy's ``padding`` mode (``reflect``, as the input contract pads for the
    model) and the mask with :data:`~segdeploy.core.metrics.IGNORE_INDEX`, so no padded pixel
    is ever scored or learned as a class.
    """
    pad_h = max(0, top + size[0] - mask.shape[0])
    pad_w = max(0, left + size[1] - mask.shape[1])
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode=padding)
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return image[window], mask[window]


# --------------------------------------------------------------------------------------------
# Segmentation folders
# --------------------------------------------------------------------------------------------


def pair_segmentation_files(root: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of ``root/images/*`` and ``root/masks/*.png``, paired by stem.

    Raises:
        DataError: a missing folder, no images, two images with one stem, or a file without
            its partner.
    """
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(
                f"Dataset {root}: expected a folder {folder}, found none "
                f"(layout: root/images/* and root/masks/*.png)."
            )
    images: dict[str, Path] = {}
    for p in list_files(image_dir, IMAGE_EXTENSIONS):
        if p.stem in images:
            raise DataError(
                f"Image {p}: expected one image per name, found also {images[p.stem].name}."
            )
        images[p.stem] = p
    masks = {p.stem: p for p in list_files(mask_dir, MASK_EXTENSIONS)}
    for stem, p in images.items():
        if stem not in masks:
            raise DataError(f"Image {p}: expected a mask {mask_dir / (stem + '.png')}, found none.")
    for stem, p in masks.items():
        if stem not in images:
            raise DataError(
                f"Mask {p}: expected an image named {stem}.* in {image_dir}, found none."
            )
    if not images:
        raise DataError(
            f"Dataset {root}: expected image files ({', '.join(IMAGE_EXTENSIONS)}) "
            f"in {image_dir}, found none."
        )
    return [(images[s], masks[s]) for s in sorted(images)]


def check_mask_pair(image_path: Path, mask_path: Path, num_classes: int) -> None:
    """Raise :class:`DataError` unless the mask is readable, has the image's size and holds
    only labels ``< num_classes`` or :data:`~segdeploy.core.metrics.IGNORE_INDEX`."""
    width, height = image_size(image_path)
    mask = read_mask(mask_path)
    if mask.shape != (height, width):
        raise DataError(
            f"Mask {mask_path}: expected the size of {image_path.name} "
            f"({width}x{height} WxH), found {mask.shape[1]}x{mask.shape[0]}."
        )
    labels = np.unique(mask)
    bad = labels[(labels >= num_classes) & (labels != IGNORE_INDEX)]
    if bad.size or (labels < 0).any():
        found = ", ".join(str(v) for v in labels[(labels < 0) | np.isin(labels, bad)][:10])
        raise DataError(
            f"Mask {mask_path}: expected labels in 0..{num_classes - 1} or "
            f"{IGNORE_INDEX} (ignore), found {found}."
        )


class SegmentationFiles:
    """Validated image/mask pairs from ``root/images/*`` and ``root/masks/*.png``.

    Masks are single-channel PNGs (mode ``L`` or palette ``P``) whose raw values are class
    indices; 255 marks pixels to ignore. Everything is validated in ``__init__``: folder layout,
    pairing, that each image header is readable, each mask's size matches its image and its
    labels are ``< num_classes`` or 255. Image pixel data is decoded lazily in :meth:`read`.

    Args:
        root: dataset folder containing ``images/`` and ``masks/``.
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or 255.
        size: optional (height, width), multiples of ``size_multiple``; images are resized
            bilinearly and masks with nearest neighbour. Without it items keep their native size.
        class_names: optional names; defaults to ``class_0``, ``class_1``, ...
        size_multiple: the model's size multiple, which ``size`` must respect.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        size: tuple[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        size_multiple: int = SIZE_MULTIPLE,
    ) -> None:
        self.root = Path(root)
        if num_classes < 1 or num_classes > IGNORE_INDEX:
            raise DataError(
                f"Dataset {self.root}: expected num_classes between 1 and {IGNORE_INDEX}, "
                f"got {num_classes}."
            )
        self.num_classes = int(num_classes)
        self.size = None if size is None else check_size(size, f"Dataset {root}", size_multiple)
        if class_names is None:
            class_names = tuple(f"class_{i}" for i in range(num_classes))
        if len(class_names) != num_classes:
            raise DataError(
                f"Dataset {self.root}: expected {num_classes} class names, got "
                f"{len(class_names)} ({', '.join(class_names)})."
            )
        self.class_names = tuple(class_names)
        self.samples = pair_segmentation_files(self.root)
        for image_path, mask_path in self.samples:
            check_mask_pair(image_path, mask_path, self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 mask of item ``index``, resized to ``size`` if one was given."""
        mask = read_mask(self.samples[index][1])
        if self.size is not None:
            return resize_mask(mask, self.size)
        return mask.astype(np.uint8, copy=False)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``index`` as ``(image (H, W, 3) uint8, mask (H, W) uint8)``, resized."""
        image = load_rgb(self.samples[index][0])
        if self.size is not None:
            image = resize_image(image, self.size)
        return image, self.load_mask(index)

    def describe(self) -> str:
        """One line for logs and model cards."""
        size = f", resized to {self.size[0]}x{self.size[1]}" if self.size else ""
        return (
            f"segmentation folder {self.root}, {len(self)} image/mask pairs, "
            f"{self.num_classes} classes{size}"
        )


# --------------------------------------------------------------------------------------------
# Classification folders
# --------------------------------------------------------------------------------------------


def list_class_folders(root: Path) -> list[tuple[Path, list[Path]]]:
    """``(class folder, its image files)`` for each visible sub-folder of ``root``, sorted by
    name (sorted names = class indices).

    Raises:
        DataError: if ``root`` is missing, has no sub-folder, or a sub-folder has no images.
    """
    if not root.is_dir():
        raise DataError(
            f"Dataset {root}: expected a folder with one sub-folder per class, found none."
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"Dataset {root}: expected one sub-folder per class, found none.")
    listing = []
    for folder in class_dirs:
        files = list_files(folder, IMAGE_EXTENSIONS)
        if not files:
            # An empty class cannot be learned and would silently shift later labels'
            # meaning if it were dropped, so it is an error (as in torchvision ImageFolder).
            raise DataError(
                f"Class folder {folder}: expected image files "
                f"({', '.join(IMAGE_EXTENSIONS)}), found none."
            )
        listing.append((folder, files))
    return listing


class ClassificationFiles:
    """Images in ``root/<class_name>/*``, one sub-folder per class (sorted names = classes).

    The folder layout and each image header are checked in ``__init__``; pixel data is decoded
    lazily, and a file that then fails to decode raises :class:`DataError` naming it.

    Args:
        root: dataset folder with one sub-folder per class.
        size: (height, width) every image is resized to (aspect ratio is not preserved).
    """

    def __init__(self, root: str | Path, size: tuple[int, int] = (224, 224)) -> None:
        self.root = Path(root)
        listing = list_class_folders(self.root)
        self.size = check_size(size, f"Dataset {root}", None)
        self.class_names = tuple(folder.name for folder, _ in listing)
        self.num_classes = len(self.class_names)
        self.samples: list[tuple[Path, int]] = []
        for label, (_, files) in enumerate(listing):
            for p in files:
                image_size(p)
                self.samples.append((p, label))

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """Item ``index`` as ``(image (H, W, 3) uint8 resized to size, label)``."""
        path, label = self.samples[index]
        return resize_image(load_rgb(path), self.size), label

    def describe(self) -> str:
        """One line for logs and model cards."""
        return (
            f"classification folder {self.root}, {len(self)} images, {self.num_classes} "
            f"classes, resized to {self.size[0]}x{self.size[1]}"
        )


# --------------------------------------------------------------------------------------------
# From a data argument to train and validation items
# --------------------------------------------------------------------------------------------


def data_root(source: str | Path) -> Path:
    """The data folder ``source`` names.

    Raises:
        DataError: if it is not an existing folder.
    """
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (or use 'synthetic')")
    return root


def has_train_val_split(root: Path) -> bool:
    """Whether ``root`` holds ``train/`` and ``val/`` folders (else a share is held out)."""
    return (root / "train").is_dir() and (root / "val").is_dir()


def folder_class_names(root: Path, given: Sequence[str] | None) -> tuple[str, ...]:
    """Segmentation class names: ``given`` (``--classes``), else ``root/classes.txt``.

    Raises:
        DataError: if neither names any class.
    """
    if given:
        return tuple(given)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if names:
            return names
    raise DataError(
        f"{root} has no classes.txt; pass --classes background,road,... "
        "(one name per label value in the masks)"
    )


@dataclass(frozen=True)
class FolderLayout:
    """Where a data folder's items are.

    Attributes:
        root: the data folder.
        has_split: whether it holds ``train/`` and ``val/`` folders; if not, the items of
            ``root`` itself are split with :func:`split_indices`.
        class_names: segmentation class names (``None`` for classification, whose class names
            are its sub-folders).
    """

    root: Path
    has_split: bool
    class_names: tuple[str, ...] | None


def folder_layout(source: str | Path, task: str, class_names: Sequence[str] | None) -> FolderLayout:
    """The layout of data folder ``source`` for ``task``; ``class_names`` are the given
    segmentation class names (else ``classes.txt`` names them).

    Raises:
        DataError: if the folder does not exist, or segmentation classes are named nowhere.
    """
    root = data_root(source)
    names = folder_class_names(root, class_names) if task == "segmentation" else None
    return FolderLayout(root, has_train_val_split(root), names)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Shuffle ``range(count)`` with ``seed`` and hold out ``val_fraction`` of it (at least 1).

    Returns:
        ``(train indices, validation indices)``, each in shuffled order.

    Raises:
        DataError: if fewer than 2 items leave nothing to train on.
    """
    n_val = max(1, round(count * val_fraction))
    if count - n_val < 1:
        raise DataError(f"need at least 2 samples to split train/val, found {count}")
    order = np.random.default_rng(seed).permutation(count).tolist()
    return order[n_val:], order[:n_val]
