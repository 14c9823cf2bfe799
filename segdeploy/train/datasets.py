"""Datasets: synthetic road scenes (rendered by :mod:`segdeploy.data.synthetic`) and folder-backed
segmentation/classification sets.

Folder datasets validate eagerly in ``__init__`` so that a bad file fails before training starts,
with a :class:`~segdeploy.core.errors.SegdeployError` that names the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Subset

from segdeploy.core.errors import SegdeployError
from segdeploy.core.images import load_image
from segdeploy.core.metrics import IGNORE_INDEX
from segdeploy.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, SIZE_MULTIPLE
from segdeploy.data.synthetic import ROAD_CLASSES, render_road_scene
from segdeploy.train.config import TrainConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png",)

_PIL_ERRORS = (
    UnidentifiedImageError,
    OSError,
    Image.DecompressionBombError,
    SyntaxError,
    ValueError,
)


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


class _RenderedRoadScenes(Dataset):
    """What the synthetic datasets share: length, size, seed, normalisation, indexing."""

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

    def _check_index(self, index: int) -> int:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return index


class SyntheticRoadScenes(_RenderedRoadScenes):
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

    def load_mask(self, index: int) -> np.ndarray:
        """The (H, W) uint8 mask of item ``index`` without augmentation (for class weights)."""
        return render_road_scene(self._check_index(index), *self.size, seed=self.seed)[1]

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


class SyntheticRoadCrops(_RenderedRoadScenes):
    """Classification twin of :class:`SyntheticRoadScenes`: what is at the centre of the crop?

    Item ``i`` renders a scene twice the crop size, picks a pixel of class ``i % 4`` (so classes
    are balanced) and crops a window centred on it; the label is the class of the centre pixel.
    Deterministic per ``(seed, index)``.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._check_index(index)
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


# --------------------------------------------------------------------------------------------
# Train and validation sets from a TrainConfig
# --------------------------------------------------------------------------------------------


def _class_names_for_folder(root: Path, given: tuple[str, ...] | None) -> tuple[str, ...]:
    if given:
        return tuple(given)
    names_file = root / "classes.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if names:
            return names
    raise SegdeployError(
        f"{root} has no classes.txt; pass --classes background,road,... "
        "(one name per label value in the masks)"
    )


def _split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    n = len(dataset)
    n_val = max(1, round(n * val_fraction))
    if n - n_val < 1:
        raise SegdeployError(f"need at least 2 samples to split train/val, found {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


def build_datasets(
    config: TrainConfig, task: str, size: int
) -> tuple[Dataset, Dataset, tuple[str, ...], str]:
    """Train and validation sets, class names and a one-line description of the data."""
    hw = (size, size)
    if config.data == "synthetic":
        make = SyntheticRoadScenes if task == "segmentation" else SyntheticRoadCrops
        train_set = make(config.train_samples, size=hw, seed=config.seed)
        # A different seed gives scenes the model has never seen.
        val_set = make(config.val_samples, size=hw, seed=config.seed + 10_000)
        return train_set, val_set, train_set.class_names, train_set.describe()

    root = Path(config.data)
    if not root.is_dir():
        raise SegdeployError(f"data folder {root} does not exist (or use 'synthetic')")
    has_split = (root / "train").is_dir() and (root / "val").is_dir()
    if task == "segmentation":
        names = _class_names_for_folder(root, config.classes)

        def make_folder(path: Path, augment: bool) -> Dataset:
            return SegmentationFolder(
                path, num_classes=len(names), size=hw, augment=augment, class_names=names
            )

    else:

        def make_folder(path: Path, augment: bool) -> Dataset:
            return ClassificationFolder(path, size=hw, augment=augment)

    if has_split:
        train_set, val_set = make_folder(root / "train", True), make_folder(root / "val", False)
    else:
        train_set, val_set = _split(make_folder(root, True), config.val_fraction, config.seed)
        # The validation subset must not be augmented: give it its own un-augmented dataset.
        val_set = Subset(make_folder(root, False), val_set.indices)
    base = train_set.dataset if isinstance(train_set, Subset) else train_set
    if task == "classification":
        names = base.class_names
    return train_set, val_set, tuple(names), f"{base.describe()} ({len(val_set)} held out)"
