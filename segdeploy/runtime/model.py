"""Run an exported model on images: ``open_model(path).predict(image)``.

The model card (mean, std, class names, size multiple) is read from the ONNX file's metadata by
ONNX Runtime itself, so nothing but onnxruntime, numpy and pillow is needed. Input and output
names, dtypes and ranks are read once from the session when the model is opened.

Thread safety: ``InferenceSession.run`` is thread-safe and the model objects hold no per-call
state (an IO binding, when used, is created per call), so one model can serve many threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdeploy.core.artifacts import PRECISION_KEY
from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard, card_from_metadata
from segdeploy.core.errors import SegdeployError, first_line
from segdeploy.core.preprocess import normalise
from segdeploy.core.signing import verify_signature
from segdeploy.runtime import tiling
from segdeploy.runtime.engine import ort
from segdeploy.runtime.postprocess import Palette, argmax_mask, palette, softmax
from segdeploy.runtime.preprocess import ImageSource, load_image
from segdeploy.runtime.session import (
    ALL_CORES,
    SessionOptions,
    create_session,
    session_provider,
)
from segdeploy.runtime.tiling import DEFAULT_MAX_PIXELS, DEFAULT_OVERLAP, TileGrid

#: Where :func:`open_model` runs a model unless told: CUDA when it really works, else CPU.
DEFAULT_PROVIDER = "auto"
_OUTPUT_RANK = {"segmentation": 4, "classification": 2}
_ENGINE_NAMES = {"openvino": "OpenVINO"}
#: ``model.path`` of a model opened from bytes.
IN_MEMORY = Path("<in-memory model>")
#: One image's share of a session call: the batch output, its row in it, its original (H, W).
ImageOutput = tuple[np.ndarray, int, tuple[int, int]]


@dataclass(frozen=True)
class PreparedBatch:
    """Images under a model's input contract, ready for the session (see :meth:`prepare`).

    ``inputs`` holds one ``(image indices, normalised padded batch)`` per size the model sees,
    ``sizes`` each image's original ``(H, W)``.
    """

    inputs: list[tuple[list[int], np.ndarray]]
    sizes: list[tuple[int, int]]

    @property
    def count(self) -> int:
        """The number of images."""
        return len(self.sizes)


class _Model:
    """What both tasks share: the session, the card and the run with padding-size batches."""

    def __init__(
        self, session: ort.InferenceSession, card: ModelCard, path: Path, device_id: int = 0
    ) -> None:
        self.path = path
        self._device_id = device_id
        self.card = card
        #: Short name of the provider that really runs the model: ``"cpu"``, ``"cuda"`` or
        #: ``"openvino"``.
        self.provider = session_provider(session)
        #: ``"fp32"`` for an export, else the variant's precision (``int8``, ``fp16``, ``bf16``).
        self.precision = session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY, "fp32")
        self._session = session
        self._input_name, self._output_name = _check_signature(session, card, path)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.card.class_names

    @property
    def metadata(self) -> dict[str, str]:
        """The export's ``metadata_props`` (model card JSON, versions, opset, checkpoint hash)."""
        return dict(self._session.get_modelmeta().custom_metadata_map)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, arch={self.card.arch!r}, "
            f"classes={self.card.num_classes}, provider={self.provider!r})"
        )

    def _load(self, image: ImageSource) -> np.ndarray:
        return load_image(image, channels=self.card.in_channels)

    @property
    def session(self) -> ort.InferenceSession:
        """The ONNX Runtime session (read its options or profile it; do not close it)."""
        return self._session

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, Hp, Wp)`` float32, already normalised and padded -> the model's output.

        The step between the input contract (sizing, normalisation) and the
        post-processing; ``predict`` calls it, and benchmarks time it alone.
        """
        if self.provider == "cuda":
            # IO binding: ORT copies the input to the GPU once and allocates the output on the
            # device, instead of staging both through its default CPU-side feeds and fetches.
            # The binding is per call: sharing one across threads would race.
            binding = self._session.io_binding()
            binding.bind_cpu_input(self._input_name, batch)
            binding.bind_output(self._output_name, "cuda", self._device_id)
            self._session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    # predict_batch in three steps, so that a pipeline can run them on different threads:
    # prepare (CPU, no session) -> run_prepared (the session alone) -> finish (CPU, no session).

    def prepare(self, images: Sequence[ImageSource]) -> PreparedBatch:
        """Step 1 of ``predict_batch``: load, size and normalise ``images`` (no session call).

        Images are grouped by the size the model sees, one session input per group, so each
        image gets only its own minimal padding and a result never depends on which other
        images shared the batch. Thread-safe; :func:`~segdeploy.runtime.files.predict_files`
        runs it on its reader thread while the session works on the previous images.
        """
        arrays = [self._load(image) for image in images]
        contract, multiple = self.card.input, self.card.size_multiple
        groups: dict[tuple[int, int], list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(contract.model_size(*array.shape[:2], multiple), []).append(index)
        inputs = []
        for indices in groups.values():
            pixels = np.stack([contract.to_model_pixels(arrays[i], multiple) for i in indices])
            inputs.append((indices, normalise(pixels, self.card.mean, self.card.std)))
        return PreparedBatch(inputs, [array.shape[:2] for array in arrays])

    def run_prepared(self, prepared: PreparedBatch) -> list[ImageOutput]:
        """Step 2: the session calls alone; one :data:`ImageOutput` per image, in order."""
        results: list[ImageOutput] = [None] * prepared.count  # type: ignore[list-item]
        for indices, batch in prepared.inputs:
            output = self.run_batch(batch)
            for row, index in enumerate(indices):
                results[index] = (output, row, prepared.sizes[index])
        return results

    def _forward(self, images: Sequence[ImageSource]) -> list[ImageOutput]:
        return self.run_prepared(self.prepare(images))

    def _image_logits(self, result: ImageOutput) -> np.ndarray:
        """``(K, H, W)`` scores of one image at its own size (segmentation)."""
        output, row, (height, width) = result
        return self.card.input.to_image_logits(output[row], height, width)


class SegmentationModel(_Model):
    """A segmentation export: images in, ``(H, W)`` uint8 class-index masks out.

    Images with more than ``max_pixels`` pixels (default :data:`~tiling.DEFAULT_MAX_PIXELS`) run
    as overlapping windows whose logits are blended (:mod:`segdeploy.runtime.tiling`), so memory
    is bounded by the window, not the image; smaller images run whole, as one session call.
    """

    @property
    def palette(self) -> Palette:
        """One colour per class, background black (see :func:`postprocess.palette`)."""
        return palette(self.card.num_classes)

    def predict(
        self,
        image: ImageSource,
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """``(H, W)`` uint8 class indices, the same height and width as ``image``.

        Args:
            image: a path, a PIL image or an ``(H, W[, C])`` uint8 array.
            tile: run the image as overlapping ``tile`` x ``tile`` windows (a multiple of the
                card's size multiple) whatever its size; ``None`` tiles automatically.
            overlap: pixels neighbouring windows share (rounded up so that windows stay on the
                model's size-multiple grid); their logits are cross-faded there.
            max_pixels: without ``tile``, images with more pixels than this run as
                :data:`~tiling.DEFAULT_TILE` windows; ``None`` always runs images whole.

        Raises:
            SegdeployError: an unreadable image, a tile that is not a multiple of the size
                multiple, an overlap over ``tile`` minus the size multiple, or ``tile`` for a
                model whose input contract resizes the image (only ``pad`` can be tiled).
        """
        return self.predict_batch([image], tile=tile, overlap=overlap, max_pixels=max_pixels)[0]

    def predict_batch(
        self,
        images: Sequence[ImageSource],
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> list[np.ndarray]:
        """One mask per image, in order; images may differ in size. Options as for
        :meth:`predict`: images it tiles run window by window, the others share session calls."""
        arrays = [self._load(image) for image in images]
        grids = [self.tile_grid(*a.shape[:2], tile, overlap, max_pixels) for a in arrays]
        whole = [index for index, grid in enumerate(grids) if grid is None]
        masks: list[np.ndarray] = [None] * len(arrays)  # type: ignore[list-item]
        outputs = self._forward([arrays[i] for i in whole])
        for index, mask in zip(whole, self.finish(outputs), strict=True):
            masks[index] = mask
        for index, grid in enumerate(grids):
            if grid is not None:
                masks[index] = tiling.tiled_mask(
                    arrays[index], self._window_logits, self.card.num_classes, grid
                )
        return masks

    def finish(self, outputs: Sequence[ImageOutput]) -> list[np.ndarray]:
        """Step 3 of ``predict_batch`` (after :meth:`prepare` and :meth:`run_prepared`): one
        ``(H, W)`` uint8 mask per output, cropped to its image's size."""
        return [argmax_mask(self._image_logits(output)) for output in outputs]

    def logits(
        self,
        image: ImageSource,
        *,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> np.ndarray:
        """``(K, H, W)`` float32 class scores cropped to the image's size (for parity checks);
        tiled images give their blended logits. Options as for :meth:`predict`."""
        array = self._load(image)
        grid = self.tile_grid(*array.shape[:2], tile, overlap, max_pixels)
        if grid is not None:
            return tiling.tiled_logits(array, self._window_logits, self.card.num_classes, grid)
        return np.ascontiguousarray(self._image_logits(self._forward([array])[0]))

    def check_tiling(self, tile: int | None = None, overlap: int = DEFAULT_OVERLAP) -> None:
        """Raise a :class:`SegdeployError` sentence for tiling options this model cannot use
        (call it before a long run; :meth:`predict` checks them too)."""
        tiling.check_card_tiling(self.card, tile, overlap)

    def tile_grid(
        self,
        height: int,
        width: int,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> TileGrid | None:
        """The windows an image of ``height`` x ``width`` runs as, or ``None`` when it runs whole
        (options as for :meth:`predict`): :func:`~segdeploy.runtime.tiling.card_grid`, the rule
        PyTorch's predictor follows too. A model that resizes images never tiles."""
        return tiling.card_grid(self.card, height, width, tile, overlap, max_pixels)

    def _window_logits(self, window: np.ndarray) -> np.ndarray:
        """``(h, w, C)`` uint8 window -> ``(K, h, w)`` logits, padded and cropped as an image."""
        return self._image_logits(self._forward([window])[0])


class ClassificationModel(_Model):
    """A classification export: images in, ``(label, probabilities)`` out."""

    def predict(self, image: ImageSource) -> tuple[str, np.ndarray]:
        """The most likely class name and the ``(K,)`` float32 probabilities (they sum to 1)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageSource]) -> list[tuple[str, np.ndarray]]:
        """``(label, probabilities)`` per image, in order; images may differ in size."""
        return self.finish(self._forward(images))

    def finish(self, outputs: Sequence[ImageOutput]) -> list[tuple[str, np.ndarray]]:
        """Step 3 of ``predict_batch`` (after :meth:`prepare` and :meth:`run_prepared`):
        ``(label, probabilities)`` per output."""
        results = []
        for output, row, _ in outputs:
            probabilities = softmax(output[row])
            results.append((self.card.class_names[int(np.argmax(probabilities))], probabilities))
        return results


def open_model(
    path: str | os.PathLike | bytes,
    provider: str = DEFAULT_PROVIDER,
    threads: int = ALL_CORES,
    card: ModelCard | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    device_id: int = 0,
    allow_spinning: bool = True,
    require_signature: str | os.PathLike | None = None,
) -> SegmentationModel | ClassificationModel:
    """Open an ONNX export for inference.

    Args:
        path: the ``.onnx`` file, the ``.ort`` file of an ``ort-mobile`` export (card read from
            the flatbuffer's metadata), or the model's bytes (decrypted in memory, say;
            ``model.path`` is then :data:`IN_MEMORY`).
        provider: ``"cpu"``, ``"cuda"`` (fails loudly when CUDA cannot run here), ``"auto"``
            (CUDA when it really works, else CPU) or ``"openvino"`` (OpenVINO on the CPU, the
            ``openvino`` extra; the only engine for a ``.bf16.onnx`` variant);
            ``model.provider`` tells which one runs.
        threads: CPU threads per operator; 0 lets the engine use all cores.
        device_id: the CUDA device, when CUDA runs the model.
        allow_spinning: keep ONNX Runtime's busy-waiting CPU threads; pass False when other
            models or heavy work share the CPU in this process (see :class:`SessionOptions`).
        card: use this model card instead of the one stored in the file.
        mean, std, class_names: for an ONNX file without a segdeploy card, all three are needed;
            with a card they override its values.
        require_signature: a PEM public key: refuse a file whose ``x.onnx.sig`` (``segdeploy
            sign``) is missing, not its key's or not over these bytes, before ORT opens it.

    Returns:
        a :class:`SegmentationModel` or :class:`ClassificationModel`, by the card's task.

    Raises:
        SegdeployError: missing or unreadable file, no card and no mean/std/class names, a graph
            whose input or output does not fit the card, an unusable provider, a bad signature.
    """
    source, path = _model_source(path, require_signature)
    try:
        options = SessionOptions(provider, threads, device_id, allow_spinning=allow_spinning)
        session = create_session(source, options)
    except SegdeployError:
        raise
    except Exception as err:  # ORT raises InvalidProtobuf, Fail, ... for files it cannot read
        first = first_line(err)
        raise SegdeployError(
            f"ONNX file {path}: expected a model {_ENGINE_NAMES.get(provider, 'ONNX Runtime')} "
            f"can load, found an error ({first})"
        ) from None
    card = _resolve_card(session, path, card, mean, std, class_names)
    model_class = SegmentationModel if card.task == "segmentation" else ClassificationModel
    return model_class(session, card, path, device_id)


def _model_source(
    model: str | os.PathLike | bytes, require_signature: str | os.PathLike | None
) -> tuple[Path | bytes, Path]:
    """What the session opens, and the name errors and ``model.path`` use."""
    if isinstance(model, bytes):
        if require_signature is not None:
            raise SegdeployError(
                "require_signature checks a file's signature beside it, found the model as "
                "bytes; verify the file they came from (segdeploy.core.signing."
                "verify_signature) before reading it"
            )
        return model, IN_MEMORY
    path = Path(model)
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path}: expected an existing file, found nothing")
    if require_signature is not None:
        verify_signature(path, require_signature)
    return path, path


def _resolve_card(
    session: ort.InferenceSession,
    path: Path,
    card: ModelCard | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    class_names: Sequence[str] | None,
) -> ModelCard:
    overrides = {
        key: tuple(value)
        for key, value in (("mean", mean), ("std", std), ("class_names", class_names))
        if value is not None
    }
    metadata = session.get_modelmeta().custom_metadata_map
    if card is None and ONNX_METADATA_KEY in metadata:
        card = card_from_metadata(metadata, str(path))
    if card is not None:
        return card.replace(**overrides) if overrides else card
    missing = [key for key in ("mean", "std", "class_names") if key not in overrides]
    if missing:
        raise SegdeployError(
            f"ONNX file {path}: expected a segdeploy model card in its metadata "
            f"('{ONNX_METADATA_KEY}'), found none; pass card= or mean=, std= and class_names= "
            f"(missing: {', '.join(missing)})"
        )
    # A foreign graph: the task follows from the output rank, channels from mean/std.
    output_rank = len(session.get_outputs()[0].shape)
    task = next((t for t, rank in _OUTPUT_RANK.items() if rank == output_rank), None)
    if task is None:
        raise SegdeployError(
            f"ONNX file {path}: expected an output of rank 4 (segmentation) or 2 "
            f"(classification), found rank {output_rank}"
        )
    return ModelCard(
        arch=path.stem or "onnx",
        task=task,
        class_names=overrides["class_names"],
        in_channels=len(overrides["mean"]),
        mean=overrides["mean"],
        std=overrides["std"],
    )


def _check_signature(session: ort.InferenceSession, card: ModelCard, path: Path) -> tuple[str, str]:
    """Input and output names after checking the graph against the card (read once)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    where = f"ONNX file {path}"
    if len(inputs) != 1:
        raise SegdeployError(f"{where}: expected one input (the image), found {len(inputs)}")
    image = inputs[0]
    if len(image.shape) != 4:
        raise SegdeployError(
            f"{where}: expected a rank-4 image input (batch, channels, height, width), "
            f"found '{image.name}' with shape {image.shape}"
        )
    if image.type != "tensor(float)":
        raise SegdeployError(f"{where}: expected a float32 image input, found {image.type}")
    channels, height, width = image.shape[1:]
    if isinstance(channels, int) and channels != card.in_channels:
        raise SegdeployError(
            f"{where}: the card says {card.in_channels} input channels, the graph reads {channels}"
        )
    if isinstance(height, int) or isinstance(width, int):
        raise SegdeployError(
            f"{where}: expected dynamic height and width, found a fixed input size "
            f"{height}x{width}; export with dynamic spatial axes"
        )
    output = outputs[0]
    rank = _OUTPUT_RANK[card.task]
    if len(output.shape) != rank:
        raise SegdeployError(
            f"{where}: a {card.task} model needs a rank-{rank} output, found '{output.name}' "
            f"with shape {output.shape}"
        )
    classes = output.shape[1]
    if isinstance(classes, int) and classes != card.num_classes:
        raise SegdeployError(
            f"{where}: the card names {card.num_classes} classes, the graph outputs {classes}"
        )
    if card.task == "segmentation" and card.num_classes > 256:
        raise SegdeployError(
            f"{where}: masks are uint8, so at most 256 classes, found {card.num_classes}"
        )
    return image.name, output.name
