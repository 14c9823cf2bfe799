"""What an ONNX file says about itself, read without onnx, torch or ONNX Runtime.

A runtime that is too old for a file refuses it with its own error ("Unsupported model IR version:
10, max supported IR version: 9") before any metadata can be read through it. This reader walks the
top-level fields of the ``ModelProto`` protobuf (IR version, opset imports, producer,
``metadata_props``) and skips the graph by its length, so a file can be judged against a runtime
before the runtime sees it. Torch-free and onnx-free: the runtime imports it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from segdeploy.core.errors import SegdeployError

# ModelProto field numbers (onnx/onnx.proto3).
_IR_VERSION, _PRODUCER_NAME, _PRODUCER_VERSION, _GRAPH = 1, 2, 3, 7
_OPSET_IMPORT, _METADATA_PROPS = 8, 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class OnnxHeader:
    """The top-level facts of an ONNX model: everything but the graph.

    Attributes:
        ir_version: the file format version (``ModelProto.ir_version``).
        opsets: opset version per operator domain (``""`` is the default ONNX domain).
        producer: ``producer_name producer_version``.
        metadata: ``metadata_props`` as a dict.
    """

    ir_version: int
    opsets: dict[str, int] = field(default_factory=dict)
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        """The default-domain (``ai.onnx``) opset, 0 if none is imported."""
        return self.opsets.get("", self.opsets.get("ai.onnx", 0))


def read_header(source: str | os.PathLike | bytes) -> OnnxHeader:
    """The :class:`OnnxHeader` of an ONNX file (a path) or of serialized model bytes.

    Raises:
        SegdeployError: the file is missing or is not an ONNX protobuf.
    """
    name = "this model" if isinstance(source, bytes) else str(source)
    try:
        if isinstance(source, bytes):
            return _parse_model(memoryview(source))
        return _parse_model(memoryview(_top_level(Path(source))))
    except (IndexError, ValueError, UnicodeDecodeError) as err:
        raise SegdeployError(f"{name} is not a readable ONNX model ({err})") from None


def graph_sha256(source: str | os.PathLike | bytes, without: tuple[str, ...] = ()) -> str:
    """sha256 over the model bytes with the ``metadata_props`` entries named in ``without``
    left out: the hash a file can carry of itself (its card is not part of what it hashes)."""
    data = source if isinstance(source, bytes) else _read(Path(source))
    digest = hashlib.sha256()
    view = memoryview(data)
    begin = 0
    for number, _, start, end in _fields(view):
        if number == _METADATA_PROPS and _string_pair(view[start:end])[0] in without:
            begin = end
            continue
        digest.update(view[begin:end])  # the field with its key and length
        begin = end
    return digest.hexdigest()


def _top_level(path: Path) -> bytes:
    """The file's top-level fields with the graph (the bulk of the bytes) left out, read by
    seeking past it, so judging a large model costs no more than a small one."""
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path} does not exist")
    kept = bytearray()
    size = path.stat().st_size
    with path.open("rb") as handle:
        while handle.tell() < size:
            start = handle.tell()
            key = _read_varint(handle)
            if key & 7 != _LENGTH:
                handle.seek(start)
                head = handle.read(20)  # a varint field: key and value fit in 20 bytes
                _, _, _, end = next(_fields(memoryview(head)))
                kept += head[:end]
                handle.seek(start + end)
                continue
            length = _read_varint(handle)
            header_end = handle.tell()
            if header_end + length > size:
                raise ValueError(f"field {key >> 3} runs past the end of the file")
            if key >> 3 == _GRAPH:
                handle.seek(header_end + length)
                continue
            handle.seek(start)
            kept += handle.read(header_end - start + length)
    return bytes(kept)


def _read_varint(handle) -> int:
    result, shift = 0, 0
    while True:
        byte = handle.read(1)
        if not byte:
            raise ValueError("the file ends inside a field")
        result |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise SegdeployError(f"ONNX file {path} does not exist")
    return path.read_bytes()


def _parse_model(view: memoryview) -> OnnxHeader:
    ir_version, opsets, producer, metadata = 0, {}, ["", ""], {}
    for number, value, start, end in _fields(view):
        if number == _IR_VERSION:
            ir_version = value
        elif number in (_PRODUCER_NAME, _PRODUCER_VERSION):
            producer[number - _PRODUCER_NAME] = bytes(view[start:end]).decode()
        elif number == _OPSET_IMPORT:
            domain, version = _opset(view[start:end])
            opsets[domain] = version
        elif number == _METADATA_PROPS:
            key, text = _string_pair(view[start:end])
            metadata[key] = text
    if not ir_version:
        raise ValueError("no IR version")
    return OnnxHeader(ir_version, opsets, " ".join(p for p in producer if p), metadata)


def _fields(view: memoryview):
    """``(field number, varint value, payload start, payload end)`` per field of ``view``; a
    field's key and length lie between the previous field's end and its payload start."""
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, after = _varint(view, pos)
            yield number, value, pos, after
            pos = after
        elif wire == _LENGTH:
            length, pos = _varint(view, pos)
            if pos + length > len(view):
                raise ValueError(f"field {number} runs past the end of the file")
            yield number, 0, pos, pos + length
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            after = pos + (8 if wire == _FIXED64 else 4)
            yield number, 0, pos, after
            pos = after
        else:
            raise ValueError(f"unknown protobuf wire type {wire}")


def _opset(view: memoryview) -> tuple[str, int]:
    domain, version = "", 0
    for number, value, start, end in _fields(view):
        if number == 1:
            domain = bytes(view[start:end]).decode()
        elif number == 2:
            version = value
    return domain, version


def _string_pair(view: memoryview) -> tuple[str, str]:
    key, value = "", ""
    for number, _, start, end in _fields(view):
        if number == 1:
            key = bytes(view[start:end]).decode()
        elif number == 2:
            value = bytes(view[start:end]).decode()
    return key, value


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = view[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def identity_model(
    ir_version: int = 8, opset: int = 13, metadata: dict[str, str] | None = None
) -> bytes:
    """A serialized one-node ONNX model (Identity on a float vector), written without onnx: the
    runtime probes providers with it, and ``benchmarks/runtime_limits.py`` probes what IR version
    and opset a runtime opens.

    ModelProto{ir_version, graph{node{Identity x->y}, name, input x, output y},
    opset_import{version}, metadata_props (``metadata``)}.
    """

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2]) + _write_varint(len(payload)) + payload

    def value_info(name: bytes) -> bytes:
        tensor_type = b"\x08\x01" + field(2, field(1, b"\x08\x01"))  # FLOAT, shape [1]
        return field(1, name) + field(2, field(1, tensor_type))

    node = field(1, b"x") + field(2, b"y") + field(4, b"Identity")
    graph = field(1, node) + field(2, b"probe") + field(11, value_info(b"x"))
    graph += field(12, value_info(b"y"))
    opset_import = field(8, b"\x10" + _write_varint(opset))
    props = b"".join(
        field(14, field(1, key.encode()) + field(2, value.encode()))
        for key, value in (metadata or {}).items()
    )
    return b"\x08" + _write_varint(ir_version) + field(7, graph) + opset_import + props


def _write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
