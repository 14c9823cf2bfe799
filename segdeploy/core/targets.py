"""Target runtimes, as data: which ONNX IR version and opset each runtime release opens.

An export is written for a *target* (``--target ort>=1.16``, ``ort-web``, ``openvino>=2025.0``):
the exporter stamps the highest IR version and an opset the target's oldest release opens, the
model's metadata records the range of runtimes that open the file, and the runtime refuses a file
its release cannot open in one sentence, before ONNX Runtime's own error. Torch-free and onnx-free:
the runtime imports it.

The table was measured, not copied from release notes: ``benchmarks/runtime_limits.py`` installs
each release and loads one-node models at each IR version and opset (ONNX Runtime refuses both a
newer IR version and a newer opset at load time). onnxruntime-web is built from the same sources as
onnxruntime (its wasm backend is ORT's CPU kernels), so the two share one table. OpenVINO accepts
every IR version and opset we tried (IR 13, opset 29 on 2024.0, 2025.0 and 2026.4).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from segdeploy.core.errors import SegdeployError

#: The lowest opset torch's dynamo exporter writes: below it torch hands the graph to
#: onnx.version_converter, which has no adapter for Pad-18 (every U-Net) and is not used.
EXPORTER_OPSET = 18
#: Highest IR version segdeploy writes (onnx 1.17+ defaults to 10 or more: never stamp newer).
MAX_WRITTEN_IR = 10


@dataclass(frozen=True)
class Release:
    """What one runtime release opens.

    Attributes:
        version: ``(major, minor)``.
        max_ir: the highest ONNX IR version it loads.
        max_opset: the highest default-domain opset it loads.
        install: the release to install to check a file on it (the last patch of the minor).
        lacks: operators a graph of ours may hold that this release cannot run, with the reason.
    """

    version: tuple[int, int]
    max_ir: int
    max_opset: int
    install: str
    lacks: dict[str, str] = field(default_factory=dict)


#: Measured with the FP16 SegFormer (benchmarks/compat_table.py): onnxruntime 1.15 and 1.16 have no
#: float16 CPU kernel for LayerNormalization and fall back to its ONNX function body, which they
#: reject at opset 18 (INVALID_GRAPH: "Unrecognized attribute: axes for operator ReduceMean");
#: 1.17.3 runs it. ``Op@float16``: the operator with float16 inputs.
_FP16_LAYERNORM = {
    "LayerNormalization@float16": "no float16 LayerNormalization: its function fallback is "
    "invalid at opset 18"
}


def _ort(minor: int, max_ir: int, max_opset: int, patch: int) -> Release:
    lacks = _FP16_LAYERNORM if minor <= 16 else {}
    return Release((1, minor), max_ir, max_opset, f"1.{minor}.{patch}", lacks)


#: onnxruntime (and onnxruntime-web) releases on PyPI for Python 3.11, the last patch of each
#: minor, measured (benchmarks/results/compat/runtime_limits.json; IR 13 is the highest the probe
#: tried, so "13" reads "13 or more").
ORT_RELEASES: tuple[Release, ...] = (
    _ort(15, 9, 18, 1),
    _ort(16, 9, 19, 3),
    _ort(17, 9, 20, 3),
    _ort(18, 10, 21, 1),
    _ort(19, 10, 21, 2),
    _ort(20, 10, 21, 1),
    _ort(21, 10, 22, 1),
    _ort(22, 10, 22, 1),
    _ort(23, 11, 23, 2),
    _ort(24, 13, 25, 4),
    _ort(25, 13, 26, 1),
    _ort(26, 13, 26, 0),
    _ort(27, 13, 26, 0),
    _ort(28, 13, 26, 0),
    _ort(29, 13, 26, 0),
    _ort(30, 13, 26, 0),
    _ort(31, 13, 26, 1),
    _ort(32, 13, 28, 0),
)
#: OpenVINO releases whose ONNX frontend was probed: each loaded IR 13 and opset 29, the highest
#: the probe tried (it enforces no limit at load; what it lacks fails at compile time). 2024.0 is
#: not listed: it compiled the U-Net but failed on the dynamic shapes of the DeepLabV3, ResNet-18
#: and SegFormer exports (benchmarks/README.md, "Compatibility"); 2025.0 ran every file.
OPENVINO_RELEASES: tuple[Release, ...] = (
    Release((2025, 0), 13, 29, "2025.0.0"),
    Release((2026, 4), 13, 29, "2026.4.1"),
)

#: ``--target`` names -> the runtime (distribution) they mean, and its release table.
RUNTIMES = {
    "ort": ("onnxruntime", ORT_RELEASES),
    "ort-web": ("onnxruntime-web", ORT_RELEASES),
    "openvino": ("openvino", OPENVINO_RELEASES),
    "ort-mobile": ("onnxruntime", ORT_RELEASES),
}
#: ``ort-mobile`` also writes the ``.ort`` flatbuffer of mobile and minimal builds. It is written
#: by the installed onnxruntime (``onnxruntime.tools.convert_onnx_models_to_ort``) and holds that
#: release's optimized graph (contrib kernels such as ``com.microsoft.FusedConv``), in ORT format
#: v6 (read by 1.16 and later). ONNX Runtime promises backward, not forward, compatibility of the
#: format ("we don't generally support forwards compatibility", onnxruntime #20670), so the
#: target is the writing release: ``ort-mobile`` or ``ort-mobile>=<installed minor>``; its IR and
#: opset limits are that release's row of :data:`ORT_RELEASES`.
MOBILE_TARGET = "ort-mobile"
ORT_FORMAT = {"version": 6, "read_since": (1, 16), "reader": "the writing release or newer"}
#: The oldest onnxruntime segdeploy writes for and checks on (see the README's "Targets").
OLDEST_ORT = (1, 16)
#: What ``segdeploy export`` writes for without ``--target``: the oldest supported onnxruntime,
#: since every file we write must open where the user runs it (the opset is 18 either way).
DEFAULT_TARGET = f"ort>={OLDEST_ORT[0]}.{OLDEST_ORT[1]}"
#: Metadata key of an export's target record (:meth:`Target.record`).
TARGET_KEY = "segdeploy.target"

_SPEC = re.compile(r"^\s*([a-z-]+)\s*(?:>=\s*(\d+)\.(\d+)(?:\.\d+)?)?\s*$")


def version_tuple(text: str) -> tuple[int, int]:
    """``"1.16.3"`` -> ``(1, 16)``; ``(0, 0)`` if it does not start with two numbers."""
    match = re.match(r"^(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _dotted(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


@dataclass(frozen=True)
class Target:
    """A runtime and the oldest release of it a file must open in.

    Attributes:
        name: ``ort``, ``ort-web`` or ``openvino``.
        min_version: the oldest release, ``(major, minor)``.
    """

    name: str
    min_version: tuple[int, int]

    @property
    def runtime(self) -> str:
        """The distribution: ``onnxruntime``, ``onnxruntime-web`` or ``openvino``."""
        return RUNTIMES[self.name][0]

    @property
    def spec(self) -> str:
        """``ort>=1.16``."""
        return f"{self.name}>={_dotted(self.min_version)}"

    @property
    def release(self) -> Release:
        """The table row of :attr:`min_version` (the newest row below it if it has none)."""
        return release_of(self.name, self.min_version)

    @property
    def max_ir(self) -> int:
        return min(self.release.max_ir, MAX_WRITTEN_IR)

    @property
    def opset(self) -> int:
        """The opset written for this target: the exporter's, which every listed release opens."""
        return EXPORTER_OPSET

    def record(self, ir_version: int, opset: int) -> str:
        """The JSON stored under :data:`TARGET_KEY`: the target, the file's format, and the
        releases of each runtime that open it (``{"onnxruntime": ">=1.16", ...}``; for
        ``ort-mobile``, whose ``.ort`` carries the same record, the writing release only)."""
        runtimes = {
            RUNTIMES[name][0]: f">={_dotted(lowest.version)}"
            for name in RUNTIMES
            if (lowest := lowest_release(name, ir_version, opset)) is not None
        }
        if self.name == MOBILE_TARGET:
            runtimes = {self.runtime: f">={_dotted(self.min_version)}"}
        return json.dumps(
            {"target": self.spec, "ir_version": ir_version, "opset": opset, "runtimes": runtimes},
            sort_keys=True,
        )


def parse_target(spec: str, installed: dict[str, str] | None = None) -> Target:
    """``ort>=1.16`` -> :class:`Target`. A bare name means the installed release
    (``installed["ort"] = "1.31.1"``), or for ``ort-web`` the oldest supported onnxruntime.

    Raises:
        SegdeployError: an unknown runtime, a malformed version, a bare name with nothing
            installed, or a release older than the table covers.
    """
    match = _SPEC.match(spec)
    if not match or match[1] not in RUNTIMES:
        raise SegdeployError(
            f"target '{spec}': expected one of {', '.join(RUNTIMES)} with an optional oldest "
            "release, e.g. ort>=1.16, ort-web or openvino>=2025.0"
        )
    name = match[1]
    if match[2] is not None:
        version = (int(match[2]), int(match[3]))
    elif name == "ort-web":
        version = OLDEST_ORT
    elif (installed or {}).get(name):
        version = version_tuple(installed[name])
    else:
        raise SegdeployError(
            f"target '{spec}' means the installed {RUNTIMES[name][0]}, and none is installed; "
            f"name a release, e.g. {name}>={_dotted(RUNTIMES[name][1][0].version)}"
        )
    oldest = RUNTIMES[name][1][0].version
    if version < oldest:
        raise SegdeployError(
            f"target '{spec}': {RUNTIMES[name][0]} {_dotted(version)} is older than the oldest "
            f"release segdeploy supports and checks files on ({_dotted(oldest)}); the lowest "
            f"target is {name}>={_dotted(oldest)}"
        )
    if name == MOBILE_TARGET:
        _require_writer(spec, version, (installed or {}).get(name, ""))
    return Target(name, version)


def _require_writer(spec: str, version: tuple[int, int], installed: str) -> None:
    """An ``ort-mobile`` target names the installed onnxruntime: it writes the ``.ort`` file,
    which older releases are not promised to read (:data:`ORT_FORMAT`)."""
    if version_tuple(installed) != version:
        raise SegdeployError(
            f"target '{spec}': the .ort file is written by the installed onnxruntime "
            f"({installed or 'none'}) and read by {ORT_FORMAT['reader']}, so it cannot be made "
            f"for {_dotted(version)}; use --target {MOBILE_TARGET}, or install onnxruntime "
            f"{_dotted(version)} to write one for it"
        )


def release_of(name: str, version: tuple[int, int]) -> Release:
    """The row of ``version`` in the table of ``name``; for a release newer than every row, the
    newest row (a newer release opens at least what it does)."""
    rows = RUNTIMES[name][1]
    return next((r for r in reversed(rows) if r.version <= version), rows[0])


def lowest_release(name: str, ir_version: int, opset: int, ops: set[str] = frozenset()):
    """The oldest release of ``name`` that opens a file of this IR version and opset and runs
    ``ops``, or ``None`` if no listed release does."""
    return next(
        (
            r
            for r in RUNTIMES[name][1]
            if r.max_ir >= ir_version and r.max_opset >= opset and not set(r.lacks) & set(ops)
        ),
        None,
    )


def read_record(metadata: dict[str, str]) -> dict | None:
    """The target record of a file's metadata (:meth:`Target.record`), or ``None``."""
    text = metadata.get(TARGET_KEY)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def refusal(
    source: str, ir_version: int, opset: int, runtime: str, version: str, record: dict | None
) -> str | None:
    """The sentence refusing a file on ``runtime`` ``version`` (``"onnxruntime"``, ``"1.16.3"``),
    or ``None`` if the file opens there. Judged by the file's recorded range when it has one,
    else by its IR version and opset against the table."""
    name = next(n for n, (r, _) in RUNTIMES.items() if r == runtime)
    have = version_tuple(version)
    needed = (record or {}).get("runtimes", {}).get(runtime)
    if needed and have < version_tuple(needed.removeprefix(">=")):
        return (
            f"{source} was exported for {runtime} {needed} (target {record.get('target')}: IR "
            f"{ir_version}, opset {opset}), but this is {runtime} {version}; upgrade "
            f"{runtime}, or export again with --target {name}>={_dotted(have)}"
        )
    if have < RUNTIMES[name][1][0].version:
        return None  # older than the table: ONNX Runtime's own error is all there is to say
    row = release_of(name, have)
    if ir_version <= row.max_ir and opset <= row.max_opset:
        return None
    limits = f"IR {row.max_ir} and opset {row.max_opset} at most"
    return (
        f"{source} is ONNX IR {ir_version}, opset {opset}, and {runtime} {version} opens "
        f"{limits}; export it again with --target {name}>={_dotted(have)}"
    )
