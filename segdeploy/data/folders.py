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
from segdeploy.core.images import IMAGE_EXTENSIONS, load_image
from segdeploy.core.metrics import IGNORE_INDEX
from segdeploy.core.preprocess import SIZE_MULTIPLE
from segdeploy.data.checks import check_size
from segdeploy.data.summary import SplitSummary, classification_split, segmentation_split

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


def mask_value_table(
    mask_values: Sequence[int] | None, class_names: Sequence[str], where: str
) -> np.ndarray | None:
    """The 256-entry lookup from mask file values to class indices (``None``: values are indices).

    ``mask_values[i]`` maps to class ``i``; 255, when not listed, stays the ignore label.

    Raises:
        DataError: unless there is one distinct value in 0..255 per class.
    """
    if mask_values is None:
        return None
    values = [int(v) for v in mask_values]
    if len(values) != len(class_names) or len(set(values)) != len(values):
        raise DataError(
            f"{where}: --mask-values {','.join(map(str, values))} must give one distinct mask "
            f"value per class, in class order ({', '.join(class_names)})."
        )
    if any(not 0 <= v <= 255 for v in values):
        raise DataError(
            f"{where}: --mask-values {','.join(map(str, values))} must lie in 0..255, the "
            "values a mask PNG can hold."
        )
    return _value_lookup(values)


def _value_lookup(values: Sequence[int]) -> np.ndarray:
    """(256,) uint8: ``values[i]`` -> ``i``, everything else -> 255 (ignore)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[list(values)] = np.arange(len(values), dtype=np.uint8)
    return table


def _check_mask_values(mask_path: Path, raw: np.ndarray, mask_values: Sequence[int]) -> None:
    """Raise :class:`DataError` naming the file if it holds a value ``mask_values`` lacks."""
    allowed = set(int(v) for v in mask_values) | {IGNORE_INDEX}
    labels = np.unique(raw)
    bad = [int(v) for v in labels if int(v) not in allowed]
    if bad:
        listed = ", ".join(map(str, mask_values))
        ignore = "" if IGNORE_INDEX in mask_values else f" or {IGNORE_INDEX} (ignore)"
        raise DataError(
            f"Mask {mask_path}: expected the values {listed} given by --mask-values{ignore}, "
            f"found {', '.join(map(str, bad[:10]))}."
        )


def check_mask_pair(
    image_path: Path,
    mask_path: Path,
    num_classes: int,
    mask_values: Sequence[int] | None = None,
) -> tuple[tuple[int, int], np.ndarray]:
    """Check a mask against its image and count its labels.

    The mask must be readable, have the image's size and hold only labels ``< num_classes`` or
    :data:`~segdeploy.core.metrics.IGNORE_INDEX` (or, with ``mask_values``, only those values
    or 255).

    Returns:
        the image's (height, width) and the mask's (num_classes + 1,) pixel counts per class,
        the last entry the ignored pixels.

    Raises:
        DataError: naming the file that breaks a rule.
    """
    width, height = image_size(image_path)
    mask = read_mask(mask_path)
    if mask.shape != (height, width):
        raise DataError(
            f"Mask {mask_path}: expected the size of {image_path.name} "
            f"({width}x{height} WxH), found {mask.shape[1]}x{mask.shape[0]}."
        )
    if mask_values is not None:
        _check_mask_values(mask_path, mask, mask_values)
        mask = _value_lookup(mask_values)[mask]
    labels = np.unique(mask)
    bad = labels[(labels >= num_classes) & (labels != IGNORE_INDEX)]
    if bad.size or (labels < 0).any():
        found = ", ".join(str(v) for v in labels[(labels < 0) | np.isin(labels, bad)][:10])
        raise DataError(
            f"Mask {mask_path}: expected labels in 0..{num_classes - 1} or "
            f"{IGNORE_INDEX} (ignore), found {found}; if the mask values are not the class "
            "indices, pass --mask-values (one value per class, in class order)."
        )
    counts = np.bincount(mask.reshape(-1).astype(np.int64), minlength=256)
    return (height, width), np.append(counts[:num_classes], counts[IGNORE_INDEX])


def check_not_ignore_only(mask_dir: Path, counts: np.ndarray, class_names: Sequence[str]) -> None:
    """Refuse masks whose only non-zero value is 255 while fewer than 2 classes are labelled.

    255 is the ignore label, so a binary mask saved as 0/255 would silently drop every object
    pixel and train a model that never predicts the object (to a perfect-looking mIoU).

    Args:
        mask_dir: the folder of the masks, for the message.
        counts: (C + 1,) pixels per class over the folder, the last entry the ignored pixels.
        class_names: the C class names.
    """
    labelled = np.flatnonzero(counts[:-1])
    if len(class_names) < 2 or counts[-1] == 0 or labelled.size >= 2 or counts[1:-1].any():
        return
    unseen = [name for i, name in enumerate(class_names) if i not in labelled]
    values = "0 and 255" if counts[0] else "255"
    hint = "pass --mask-values with one mask value per class, in class order"
    if len(class_names) == 2:
        hint = f"if 255 marks '{class_names[1]}', pass --mask-values 0,255"
    raise DataError(
        f"Masks in {mask_dir} hold only the values {values}, and 255 is the ignore label, so "
        f"class {', '.join(repr(n) for n in unseen)} would never be learned: {hint}."
    )


class DecodedCache:
    """Decoded items kept in memory, so that each file is decoded once per run.

    A class using it decodes in ``_decode(index)``; :meth:`read` returns the kept item when
    :meth:`keep_decoded` has decoded it (read-only arrays: callers crop and flip copies).
    """

    def keep_decoded(self, indices: Sequence[int]) -> None:
        """Decode the items ``indices`` now and keep them."""
        kept = {}
        for index in indices:
            item = self._decode(index)
            for part in item:
                if isinstance(part, np.ndarray):
                    part.setflags(write=False)
            kept[index] = item
        self._decoded = kept

    def read(self, index: int) -> tuple:
        """Item ``index``: kept in memory, or decoded now (see the class's ``_decode``)."""
        kept = getattr(self, "_decoded", {}).get(index)
        return kept if kept is not None else self._decode(index)

    def _decode(self, index: int) -> tuple:
        raise NotImplementedError


class SegmentationFiles(DecodedCache):
    """Validated image/mask pairs from ``root/images/*`` and ``root/masks/*.png``.

    Masks are single-channel PNGs (mode ``L`` or palette ``P``) whose raw values are class
    indices, or with ``mask_values`` the values ``mask_values[i]`` of class ``i``; 255 (when not
    a class's value) marks pixels to ignore. Everything is validated in ``__init__``: folder
    layout, pairing, that each image header is readable, each mask's size matches its image and
    its values are known, and that the masks are not 0/255 masks whose object would be ignored
    (:func:`check_not_ignore_only`). Image pixel data is decoded lazily in :meth:`read`.

    What the checks read is kept: ``image_sizes`` ((height, width) of each image) and
    ``label_counts`` ((N, num_classes + 1) pixels per class of each mask, the last column the
    ignored pixels), from which :meth:`summary` describes any subset of the items.

    Args:
        root: dataset folder containing ``images/`` and ``masks/``.
        num_classes: number of classes; labels must be in ``[0, num_classes)`` or 255.
        size: optional (height, width), multiples of ``size_multiple``; images are resized
            bilinearly and masks with nearest neighbour. Without it items keep their native size.
        class_names: optional names; defaults to ``class_0``, ``class_1``, ...
        size_multiple: the model's size multiple, which ``size`` must respect.
        mask_values: optional mask file values in class order, e.g. ``(0, 255)`` for binary
            masks saved as 0/255 (``--mask-values``).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        size: tuple[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        size_multiple: int = SIZE_MULTIPLE,
        mask_values: Sequence[int] | None = None,
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
        self.value_table = mask_value_table(mask_values, self.class_names, f"Dataset {self.root}")
        self.mask_values = None if mask_values is None else tuple(int(v) for v in mask_values)
        self.samples = pair_segmentation_files(self.root)
        checked = [
            check_mask_pair(image, mask, self.num_classes, self.mask_values)
            for image, mask in self.samples
        ]
        self.image_sizes = [hw for hw, _ in checked]
        self.label_counts = np.stack([counts for _, counts in checked])  # (N, C + 1)
        if self.mask_values is None:
            check_not_ignore_only(self.root / "masks", self.label_counts.sum(0), self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 mask of item ``index``, resized to ``size`` if one was given."""
        mask = read_mask(self.samples[index][1])
        if self.value_table is not None:
            mask = self.value_table[mask]
        if self.size is not None:
            return resize_mask(mask, self.size)
        return mask.astype(np.uint8, copy=False)

    def summary(self, indices: Sequence[int] | None = None) -> SplitSummary:
        """Images, sizes and labelled pixels per class of the items ``indices`` (default: all),
        at their own size, from what ``__init__`` read (nothing is decoded again)."""
        chosen = list(range(len(self))) if indices is None else list(indices)
        counts = self.label_counts[chosen] if chosen else np.zeros((0, self.num_classes + 1))
        sizes = [self.image_sizes[i] for i in chosen]
        return segmentation_split(counts, sizes, self.class_names)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
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


def check_split_class_folders(root: Path) -> None:
    """Refuse classification ``train/`` and ``val/`` folders whose class sub-folders differ.

    Each split numbers its classes by its sorted sub-folder names, so a class missing from one
    split would shift every later label there.

    Raises:
        DataError: naming the folders missing from (or extra in) ``val/``.
    """
    train, val = (
        {p.name for p in (root / split).iterdir() if p.is_dir() and not p.name.startswith(".")}
        for split in ("train", "val")
    )
    if train == val:
        return
    found = []
    if train - val:
        found.append(f"lacks {', '.join(sorted(train - val))}")
    if val - train:
        found.append(f"has {', '.join(sorted(val - train))} that train/ lacks")
    raise DataError(
        f"Dataset {root}: train/ and val/ must hold the same class folders (their sorted names "
        f"are the class indices), but val/ {' and '.join(found)}: add or remove those folders."
    )


class ClassificationFiles(DecodedCache):
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
        self.image_sizes: list[tuple[int, int]] = []  # (height, width) at their own size
        for label, (_, files) in enumerate(listing):
            for p in files:
                width, height = image_size(p)
                self.image_sizes.append((height, width))
                self.samples.append((p, label))

    def summary(self, indices: Sequence[int] | None = None) -> SplitSummary:
        """Images, sizes and images per class of the items ``indices`` (default: all)."""
        chosen = list(range(len(self))) if indices is None else list(indices)
        labels = [self.samples[i][1] for i in chosen]
        sizes = [self.image_sizes[i] for i in chosen]
        return classification_split(labels, sizes, self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int) -> tuple[np.ndarray, int]:
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
        DataError: if neither names any class, or ``classes.txt`` names one class only (names
            written on one line, separated by spaces or commas, would become one class).
    """
    if given:
        return tuple(given)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if len(names) == 1:
            raise DataError(_one_line_of_names(names_file, names[0]))
        if names:
            return names
    raise DataError(
        f"{root} has no classes.txt; pass --classes background,road,... "
        "(one name per label value in the masks)"
    )


def _one_line_of_names(names_file: Path, line: str) -> str:
    """The sentence for a ``classes.txt`` of one line: one class cannot be segmented, and a
    line of several words is almost always every class name on one line."""
    words = [word for word in line.replace(",", " ").split() if word]
    found = f"one line, {line!r}"
    if len(words) > 1:
        found += f", which looks like {len(words)} names on one line"
    return (
        f"{names_file}: expected one class name per line (at least 2 classes), found {found}; "
        "put each name on its own line, in label order"
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
        raise DataError(
            f"need at least 2 samples to split train/val (1 held out for validation), found "
            f"{count}: add images, or give train/ and val/ folders."
        )
    order = np.random.default_rng(seed).permutation(count).tolist()
    return order[n_val:], order[:n_val]
