"""A PyTorch model run under its card's input contract, image in and result out.

The same sizing, normalisation and mapping back as the ONNX runtime's models
(:mod:`segdeploy.core.input_contract`), so that training validation and ``evaluate`` measure a
``.pt`` exactly the way ``predict`` will serve its export.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segdeploy.core.card import ModelCard
from segdeploy.core.images import ImageSource, load_image
from segdeploy.core.preprocess import normalise
from segdeploy.runtime import tiling
from segdeploy.runtime.postprocess import argmax_mask
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP
from segdeploy.train.checkpoint import load_checkpoint

#: Classification images per forward pass in :meth:`TorchPredictor.class_indices`.
VALIDATION_BATCH = 64
#: ONNX Runtime providers whose matching PyTorch device is CUDA (where PyTorch can use it).
_CUDA_PROVIDERS = ("cuda", "auto")


def torch_device(provider: str) -> str:
    """The PyTorch device that matches an ONNX Runtime ``provider``: ``cuda`` for ``cuda`` and
    ``auto`` when PyTorch can use CUDA, else ``cpu`` (``cpu``, ``openvino``: CPU engines)."""
    return "cuda" if provider in _CUDA_PROVIDERS and torch.cuda.is_available() else "cpu"


@contextmanager
def fp32_arithmetic() -> Iterator[None]:
    """PyTorch's TF32 switched off (cuDNN and matmul) for the block, then put back.

    Every segdeploy ONNX Runtime session runs with TF32 off; a ``.pt`` measured against it runs
    FP32 too, not with PyTorch's default TF32 convolutions on Ampere and newer GPUs.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return (shifted / shifted.sum()).astype(np.float32)


class TorchPredictor:
    """``predict`` and ``logits`` of an ``nn.Module`` with the runtime's semantics.

    Segmentation: ``predict(image)`` is the ``(H, W)`` uint8 mask at the image's size;
    classification: ``(label, probabilities)``. Images go through one at a time, so no image is
    padded to another's size. An image the runtime would tile (over
    :data:`~segdeploy.runtime.tiling.DEFAULT_MAX_PIXELS` pixels, or with ``tile``) runs as the
    same windows, blended by the same code (:func:`~segdeploy.runtime.tiling.card_grid`,
    :func:`~segdeploy.runtime.tiling.tiled_mask`): training validation and ``evaluate`` of a
    ``.pt`` measure a large photograph as ``predict`` serves it, in memory bounded by the tile.
    """

    def __init__(self, model: nn.Module, card: ModelCard, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.card = card
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> TorchPredictor:
        """Rebuild the checkpoint's model from its card (raises on a bad file)."""
        model, card = load_checkpoint(path, device)
        return cls(model, card, device)

    def logits(
        self,
        image: ImageSource,
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """``(K, H, W)`` float32 scores at the image's own size (tiled images: their blended
        logits), or ``(K,)`` for a classifier. Tiling options as for the runtime's
        :meth:`~segdeploy.runtime.model.SegmentationModel.predict`."""
        pixels = load_image(image, channels=self.card.in_channels)
        grid = tiling.card_grid(self.card, *pixels.shape[:2], tile, overlap, max_pixels)
        if grid is not None:
            return tiling.tiled_logits(pixels, self._image_logits, self.card.num_classes, grid)
        return self._image_logits(pixels)

    @torch.no_grad()
    def _image_logits(self, pixels: np.ndarray) -> np.ndarray:
        """One ``(h, w, C)`` uint8 image or window through the input contract and the model."""
        contract, multiple = self.card.input, self.card.size_multiple
        pixels_in = contract.to_model_pixels(pixels, multiple)[None]  # (1, H, W, C)
        batch = normalise(pixels_in, self.card.mean, self.card.std)  # (1, C, H, W)
        with fp32_arithmetic():
            output = self.model(torch.from_numpy(batch).to(self.device))[0].float().cpu().numpy()
        if self.card.task == "classification":
            return output
        return contract.to_image_logits(output, *pixels.shape[:2])

    @torch.no_grad()
    def class_indices(self, images: list[np.ndarray], batch: int = VALIDATION_BATCH) -> list[int]:
        """A classifier's predicted class index of each ``(h, w, C)`` uint8 image, in order.

        Every image goes through the input contract exactly as in :meth:`predict`, but the
        model sees :data:`VALIDATION_BATCH` of them at a time: a classifier's contract gives
        every image the same model size, and one image per forward pass made validating 224
        32x32 images cost as much as a third of a training epoch (see the benchmarks README,
        "Training step vs plain loop"). Scores agree with :meth:`predict`'s to float rounding.
        """
        contract, multiple = self.card.input, self.card.size_multiple
        found: list[int] = []
        for start in range(0, len(images), batch):
            # Same-size images only: a contract without a fixed size would not stack.
            chunk = [
                load_image(image, channels=self.card.in_channels)
                for image in images[start : start + batch]
            ]
            pixels = [contract.to_model_pixels(image, multiple) for image in chunk]
            batch_in = normalise(np.stack(pixels), self.card.mean, self.card.std)  # (B, C, H, W)
            with fp32_arithmetic():
                output = self.model(torch.from_numpy(batch_in).to(self.device))
            found.extend(int(i) for i in output.float().argmax(dim=1).cpu())
        return found

    def predict(
        self,
        image: ImageSource,
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        """The mask (segmentation) or ``(label, probabilities)`` (classification) of ``image``;
        tiling options as for :meth:`logits`."""
        pixels = load_image(image, channels=self.card.in_channels)
        if self.card.task == "classification":
            probabilities = _softmax(self._image_logits(pixels))
            return self.card.class_names[int(np.argmax(probabilities))], probabilities
        grid = tiling.card_grid(self.card, *pixels.shape[:2], tile, overlap, max_pixels)
        if grid is not None:  # window by window, a band of logits at a time
            return tiling.tiled_mask(pixels, self._image_logits, self.card.num_classes, grid)
        # argmax over classes, first maximum on ties, as the runtime's argmax_mask does
        return argmax_mask(self._image_logits(pixels))
