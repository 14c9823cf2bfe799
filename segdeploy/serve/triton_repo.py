"""``segdeploy triton-repo``: a Triton model repository for the native onnxruntime backend.

Layout written (Triton's own)::

    DIR/<name>/config.pbtxt      from the graph's signature and the model card
    DIR/<name>/labels.txt        class names, one a line (Triton's ``label_filename``)
    DIR/<name>/1/model.onnx      the export, copied unchanged (its card stays in metadata_props)

``config.pbtxt`` holds: the input and output with ``-1`` for height and width (the export's
spatial axes are dynamic), ``max_batch_size`` with ``dynamic_batching`` when the graph has a batch
axis, an ``instance_group``, a ``model_warmup`` at one size, and the ONNX Runtime backend
parameter ``cudnn_conv_algo_search = 1`` (HEURISTIC): with dynamic batching and images of changing
size every request can be a new shape, and the default EXHAUSTIVE search re-benchmarks the
convolutions for each new shape (hundreds of milliseconds each on a GPU).

The text is generated here without protobuf; :func:`parse_model_config` checks it against the
``ModelConfig`` message that ``tritonclient`` ships, when tritonclient is installed.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segdeploy.core.card import ONNX_METADATA_KEY, ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.publish import check_name, publish_folder, refuse_overlap
from segdeploy.runtime.engine import ort

#: ONNX Runtime's tensor type names -> Triton's ``DataType`` names.
TRITON_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(bool)": "TYPE_BOOL",
}
#: Triton's ``instance_group`` kinds by the names the CLI takes.
INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
#: ONNX Runtime CUDA provider: 0 EXHAUSTIVE (its default), 1 HEURISTIC, 2 DEFAULT.
CUDNN_HEURISTIC = "1"


@dataclass(frozen=True)
class TritonRepoOptions:
    """How the model is served.

    Attributes:
        name: the model's name on the server; default: the ONNX file's stem.
        max_batch_size: the largest batch dynamic batching forms (graphs with a batch axis).
        instances: model instances per device.
        kind: ``"gpu"`` (one group per GPU, ``KIND_GPU``) or ``"cpu"``.
        max_queue_delay_us: how long the batcher waits to fill a batch.
        warmup_size: ``(height, width)`` of the zero image each instance runs at load; a multiple
            of the card's size multiple.
    """

    name: str | None = None
    max_batch_size: int = 8
    instances: int = 1
    kind: str = "gpu"
    max_queue_delay_us: int = 2000
    warmup_size: tuple[int, int] = (512, 512)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise SegdeployError(f"max batch size: expected >= 1, found {self.max_batch_size}")
        if self.instances < 1:
            raise SegdeployError(f"instances: expected >= 1, found {self.instances}")
        if self.kind not in INSTANCE_KINDS:
            raise SegdeployError(
                f"instance kind: expected one of {list(INSTANCE_KINDS)}, found {self.kind!r}"
            )
        if self.max_queue_delay_us < 0:
            raise SegdeployError(f"queue delay: expected >= 0, found {self.max_queue_delay_us}")
        if self.name is not None:
            check_name(self.name, "model name")  # never '.', '..' or a path
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
                raise SegdeployError(
                    f"model name: expected letters, digits, '_', '-' or '.', found {self.name!r}"
                )


@dataclass(frozen=True)
class TritonRepo:
    """What :func:`write_triton_repo` wrote."""

    model_dir: Path
    config_path: Path
    model_path: Path
    config_text: str
    batching: bool


@dataclass(frozen=True)
class _Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch axis when the graph batches; -1 = dynamic


@dataclass(frozen=True)
class _Signature:
    card: ModelCard
    image: _Tensor
    output: _Tensor
    batching: bool


def _read_signature(path: Path) -> _Signature:
    """The graph's one input and first output, and its model card, through ONNX Runtime."""
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path}: expected an existing file, found nothing")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except SegdeployError:
        raise
    except Exception as err:  # ORT raises InvalidProtobuf, Fail, ... for files it cannot read
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SegdeployError(
            f"ONNX file {path}: expected a model ONNX Runtime can load, found an error ({first})"
        ) from None
    stored = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
    if stored is None:
        raise SegdeployError(
            f"ONNX file {path}: expected a segdeploy model card in its metadata "
            f"('{ONNX_METADATA_KEY}'), found none; export it with segdeploy export"
        )
    card = ModelCard.from_json(stored, source=f"ONNX file {path}")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise SegdeployError(
            f"ONNX file {path}: expected one input (the image), found {len(inputs)}"
        )
    image, output = inputs[0], session.get_outputs()[0]
    # A batching graph is the NCHW export: rank 4 with a symbolic first axis. The end-to-end
    # graph (one HWC uint8 image per call) has no batch axis: Triton serves it unbatched.
    batching = len(image.shape) == 4 and not isinstance(image.shape[0], int)
    return _Signature(
        card, _tensor(image, batching, path), _tensor(output, batching, path), batching
    )


def _tensor(value: Any, batching: bool, path: Path) -> _Tensor:
    if value.type not in TRITON_TYPES:
        raise SegdeployError(
            f"ONNX file {path}: '{value.name}' has type {value.type}, which this writer does not "
            f"map to Triton; expected one of {sorted(TRITON_TYPES)}"
        )
    shape = value.shape[1:] if batching else value.shape
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)
    return _Tensor(value.name, TRITON_TYPES[value.type], dims)


def _warmup_dims(image: _Tensor, size: tuple[int, int], card: ModelCard, path: Path) -> list[int]:
    """The input's dims with its dynamic (spatial) axes set to ``size``, in order."""
    card.require_size(*size)
    dynamic = [i for i, d in enumerate(image.dims) if d == -1]
    if len(dynamic) != 2:
        raise SegdeployError(
            f"ONNX file {path}: expected two dynamic axes (height and width) in the input "
            f"'{image.name}' besides the batch axis, found dims {list(image.dims)}"
        )
    dims = list(image.dims)
    dims[dynamic[0]], dims[dynamic[1]] = size
    return dims


def _tensor_text(kind: str, tensor: _Tensor, extra: str = "") -> str:
    dims = ", ".join(str(d) for d in tensor.dims)
    return (
        f'{kind} [\n  {{\n    name: "{tensor.name}"\n    data_type: {tensor.data_type}\n'
        f"    dims: [ {dims} ]\n{extra}  }}\n]\n"
    )


def config_text(signature: _Signature, options: TritonRepoOptions, name: str, path: Path) -> str:
    """The ``config.pbtxt`` text for ``signature`` served with ``options``."""
    image, output = signature.image, signature.output
    warm = ", ".join(str(d) for d in _warmup_dims(image, options.warmup_size, signature.card, path))
    height, width = options.warmup_size
    parts = [
        f"# Written by segdeploy triton-repo from the model card of '{signature.card.arch}' "
        f"({signature.card.task}, {signature.card.num_classes} classes).\n",
        f'name: "{name}"\nbackend: "onnxruntime"\n',
        f"max_batch_size: {options.max_batch_size if signature.batching else 0}\n",
        _tensor_text("input", image),
        _tensor_text("output", output, '    label_filename: "labels.txt"\n'),
    ]
    if signature.batching:
        delay = options.max_queue_delay_us
        parts.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay}\n}}\n")
    parts += [
        f"instance_group [\n  {{\n    count: {options.instances}\n"
        f"    kind: {INSTANCE_KINDS[options.kind]}\n  }}\n]\n",
        f'model_warmup [\n  {{\n    name: "zeros_{height}x{width}"\n    batch_size: '
        f'{1 if signature.batching else 0}\n    inputs {{\n      key: "{image.name}"\n'
        f"      value {{\n        data_type: {image.data_type}\n        dims: [ {warm} ]\n"
        "        zero_data: true\n      }\n    }\n  }\n]\n",
        "# cuDNN HEURISTIC algorithm search: no re-benchmark for every new input shape.\n"
        f'parameters {{\n  key: "cudnn_conv_algo_search"\n'
        f'  value {{ string_value: "{CUDNN_HEURISTIC}" }}\n}}\n',
    ]
    return "".join(parts)


def parse_model_config(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``text`` as Triton's ``ModelConfig`` (the protobuf tritonclient ships).

    Raises:
        SegdeployError: tritonclient is not installed, or the text is not a valid ModelConfig.
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise SegdeployError(
            f"{source}: checking it needs tritonclient (pip install 'tritonclient[grpc]')"
        ) from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as err:
        raise SegdeployError(f"{source}: not a valid Triton ModelConfig ({err})") from None


def write_triton_repo(
    onnx_path: str | Path,
    repo_dir: str | Path,
    options: TritonRepoOptions | None = None,
    overwrite: bool = False,
    validate: bool = True,
) -> TritonRepo:
    """Write ``repo_dir/<name>/`` for Triton's onnxruntime backend from an export and its card.

    Args:
        onnx_path: a segdeploy export (its card is read from the file's metadata).
        repo_dir: the model repository (created when missing); other models in it are kept.
        options: batching, instances and warmup; see :class:`TritonRepoOptions`.
        overwrite: replace an existing ``repo_dir/<name>`` (built beside it, then swapped in by
            renames, so the old model stays whole until the new one is complete); otherwise that
            is an error. Never a name that is not a plain folder name (``..``, ``.``, ``a/b``),
            nor a folder that holds ``onnx_path``.
        validate: parse the config with tritonclient's ``ModelConfig`` before writing it.

    Raises:
        SegdeployError: an unreadable file or one without a card, a graph Triton cannot take
            as written, a bad name, an existing model folder, a model folder that would hold
            the export, another writer of the same folder, or a config that does not parse.
    """
    onnx_path, options = Path(onnx_path), options or TritonRepoOptions()
    signature = _read_signature(onnx_path)
    name = check_name(options.name or re.sub(r"[^A-Za-z0-9_.-]", "_", onnx_path.stem), "model name")
    model_dir = Path(repo_dir) / name
    refuse_overlap(model_dir, [onnx_path], "model folder")  # before any check of its contents
    text = config_text(signature, options, name, onnx_path)
    if validate:
        parse_model_config(text, source=f"config of {name}")
    if model_dir.exists() and not overwrite:
        raise SegdeployError(
            f"model repository {repo_dir}: '{name}' exists already; pass overwrite "
            "(--force) to replace it, or another name"
        )
    labels = "".join(f"{label}\n" for label in signature.card.class_names)

    def build(folder: Path) -> None:
        (folder / "1").mkdir()
        shutil.copyfile(onnx_path, folder / "1" / "model.onnx")
        (folder / "labels.txt").write_text(labels)
        (folder / "config.pbtxt").write_text(text)

    # Built as .<name>.new beside the old folder, swapped in by renames: a failure or Ctrl-C at
    # any moment leaves the old model or the new one whole (see segdeploy.core.publish).
    publish_folder(model_dir, build, "model folder", force=overwrite, inputs=[onnx_path])
    config_path = model_dir / "config.pbtxt"
    return TritonRepo(
        model_dir, config_path, model_dir / "1" / "model.onnx", text, signature.batching
    )
