"""What this CPU can do for INT8 and bf16: its model name and the instruction-set flags that decide
whether quantized or bf16 files can be faster than FP32 here, read once, torch-free.

On Linux the flags come from ``/proc/cpuinfo`` (x86: the ``flags`` line; aarch64: the
``Features`` line); elsewhere only :mod:`platform` is read and every flag is ``None``
("unknown"), never guessed. Without VNNI (x86) or the dot-product instructions (aarch64) an 8-bit
multiply-accumulate takes several instructions, so INT8 is mostly a size win there; without
AVX512-BF16 or AMX OpenVINO computes bf16 files in f32 (:mod:`segdeploy.runtime.openvino_session`
refuses to run them). This module is the one reader of those facts: ``segdeploy bench`` records
them with every result.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

#: The x86 flags recorded, as Linux names them in ``/proc/cpuinfo``.
X86_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
#: The aarch64 features recorded: 8-bit dot product, 8-bit matrix multiply, bf16.
ARM_FLAGS = ("asimd", "asimddp", "i8mm", "bf16")

#: Arm Ltd (implementer 0x41) CPU part numbers of the server cores seen in clouds; aarch64
#: ``/proc/cpuinfo`` has no model name, only these numbers.
_ARM_PARTS = {
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
    "0xd4f": "Neoverse-V2",
    "0xd8e": "Neoverse-N3",
    "0xd84": "Neoverse-V3",
}


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model and its INT8/bf16 instruction-set flags.

    ``flags`` maps each name of :data:`X86_FLAGS` (or :data:`ARM_FLAGS` on aarch64) to
    ``True``/``False``, or is empty when the flags could not be read (then ``vnni`` and ``bf16``
    are ``None``: unknown).
    """

    model: str
    arch: str
    flags: dict[str, bool]

    @property
    def x86(self) -> bool:
        return is_x86(self.arch)

    @property
    def vnni(self) -> bool | None:
        """Whether 8-bit multiply-accumulate is one instruction: VNNI or AMX-INT8 on x86, the
        dot-product instructions (``asimddp``) on aarch64; ``None`` when unknown."""
        if not self.flags:
            return None
        if self.x86:
            return any(self.flags.get(f) for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
        return bool(self.flags.get("asimddp"))

    @property
    def bf16(self) -> bool | None:
        """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16; aarch64 ``bf16``)."""
        if not self.flags:
            return None
        if self.x86:
            return bool(self.flags.get("avx512_bf16") or self.flags.get("amx_bf16"))
        return bool(self.flags.get("bf16"))

    @property
    def int8_path(self) -> str:
        """The fastest 8-bit path the flags allow, e.g. ``AMX-INT8``, ``AVX512-VNNI``,
        ``AVX2 (no VNNI)``, ``dot product (asimddp)``; ``unknown`` when the flags are unknown."""
        if not self.flags:
            return "unknown"
        on = [name for name, present in self.flags.items() if present]
        if self.x86:
            for flag, path in (
                ("amx_int8", "AMX-INT8"),
                ("avx512_vnni", "AVX512-VNNI"),
                ("avx_vnni", "AVX-VNNI"),
            ):
                if flag in on:
                    return path
            if "avx512f" in on:
                return "AVX-512 (no VNNI)"
            return "AVX2 (no VNNI)" if "avx2" in on else "SSE (no VNNI)"
        if "i8mm" in on:
            return "i8mm + dot product"
        return "dot product (asimddp)" if "asimddp" in on else "NEON (no dot product)"

    def summary(self) -> str:
        """One phrase for a table title: ``AMD EPYC; int8: AVX2 (no VNNI), VNNI: no, bf16: no``."""
        names = "VNNI" if self.x86 or not self.flags else "int8 dot product"
        return (
            f"{self.model}; int8: {self.int8_path}, {names}: {_yes_no(self.vnni)}, "
            f"bf16: {_yes_no(self.bf16)}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields and the derived ``vnni``, ``bf16`` and ``int8_path``."""
        return {**asdict(self), "vnni": self.vnni, "bf16": self.bf16, "int8_path": self.int8_path}


def is_x86(arch: str) -> bool:
    """Whether :func:`platform.machine`'s ``arch`` names an x86 CPU."""
    return arch.lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """The features described by a ``/proc/cpuinfo`` text of an ``arch`` machine
    (:func:`platform.machine`'s name). Only the first processor's block is read: every core of
    one machine reports the same flags."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    arm = arch.lower() in ("aarch64", "arm64")
    wanted = ARM_FLAGS if arm else X86_FLAGS
    present = set((fields.get("features" if arm else "flags") or "").split())
    flags = {name: name in present for name in wanted} if present else {}
    return CpuFeatures(_model_name(fields, arm), arch, flags)


def _model_name(fields: dict[str, str], arm: bool) -> str:
    if fields.get("model name"):
        return fields["model name"]
    if arm and fields.get("cpu part"):
        part = fields["cpu part"]
        if fields.get("cpu implementer") == "0x41" and part in _ARM_PARTS:
            return _ARM_PARTS[part]
        return f"Arm implementer {fields.get('cpu implementer', '?')} part {part}"
    return platform.processor() or "unknown"


def cpu_features() -> CpuFeatures:
    """This machine's features: from ``/proc/cpuinfo`` on Linux, else the platform's name and
    unknown flags."""
    arch = platform.machine() or "unknown"
    try:
        return parse_cpuinfo(CPUINFO.read_text(), arch)
    except OSError:  # not Linux (or /proc not mounted): say unknown rather than guess
        return CpuFeatures(platform.processor() or "unknown", arch, {})
