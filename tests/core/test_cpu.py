"""The CPU feature reader on four machines' ``/proc/cpuinfo`` and on a platform without one."""

from __future__ import annotations

import pytest
from cpuinfo_samples import (
    EPYC_AVX2,
    NEOVERSE_N1,
    NEOVERSE_V1,
    XEON_COOPER_LAKE,
    XEON_SAPPHIRE_RAPIDS,
)

from segdeploy.core import cpu
from segdeploy.core.cpu import ARM_FLAGS, X86_FLAGS, parse_cpuinfo


def on(features) -> set[str]:
    return {name for name, present in features.flags.items() if present}


def test_an_avx2_only_epyc_has_no_vnni_and_no_bf16():
    features = parse_cpuinfo(EPYC_AVX2, "x86_64")
    assert features.model == "AMD EPYC 7B13"
    assert set(features.flags) == set(X86_FLAGS) and on(features) == {"avx2", "fma"}
    assert (features.vnni, features.bf16, features.int8_path) == (False, False, "AVX2 (no VNNI)")
    assert features.summary() == "AMD EPYC 7B13; int8: AVX2 (no VNNI), VNNI: no, bf16: no"


def test_a_cooper_lake_xeon_has_avx512_vnni_and_bf16():
    features = parse_cpuinfo(XEON_COOPER_LAKE, "x86_64")
    assert features.model == "Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz"
    assert on(features) == {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert (features.vnni, features.bf16, features.int8_path) == (True, True, "AVX512-VNNI")


def test_sapphire_rapids_takes_the_amx_path():
    features = parse_cpuinfo(XEON_SAPPHIRE_RAPIDS, "x86_64")
    assert on(features) == set(X86_FLAGS)  # all nine, AMX included
    assert (features.vnni, features.bf16, features.int8_path) == (True, True, "AMX-INT8")


def test_neoverse_cores_read_the_features_line_and_their_part_number():
    v1 = parse_cpuinfo(NEOVERSE_V1, "aarch64")
    assert v1.model == "Neoverse-V1" and set(v1.flags) == set(ARM_FLAGS)
    assert on(v1) == {"asimd", "asimddp", "i8mm", "bf16"}
    assert (v1.vnni, v1.bf16, v1.int8_path) == (True, True, "i8mm + dot product")
    assert v1.summary() == "Neoverse-V1; int8: i8mm + dot product, int8 dot product: yes, bf16: yes"
    n1 = parse_cpuinfo(NEOVERSE_N1, "aarch64")
    assert n1.model == "Neoverse-N1" and on(n1) == {"asimd", "asimddp"}
    assert (n1.vnni, n1.bf16, n1.int8_path) == (True, False, "dot product (asimddp)")


def test_without_cpuinfo_the_flags_are_unknown_not_guessed(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "absent")
    monkeypatch.setattr(cpu.platform, "processor", lambda: "arm")
    monkeypatch.setattr(cpu.platform, "machine", lambda: "arm64")
    features = cpu.cpu_features()
    assert (features.model, features.arch, features.flags) == ("arm", "arm64", {})
    assert (features.vnni, features.bf16, features.int8_path) == (None, None, "unknown")
    assert features.summary() == "arm; int8: unknown, VNNI: unknown, bf16: unknown"
    assert features.to_dict()["vnni"] is None


@pytest.mark.parametrize("text", ["", "processor\t: 0\nmodel name\t: Some CPU\n"])
def test_a_cpuinfo_without_flags_says_unknown(text):
    features = parse_cpuinfo(text, "x86_64")
    assert features.flags == {} and features.vnni is None and features.int8_path == "unknown"


def test_avx_vnni_without_avx512_counts_as_vnni():
    # Alder Lake and later client cores: VNNI on 256-bit registers, no AVX-512.
    text = "processor\t: 0\nmodel name\t: 12th Gen Intel(R) Core(TM) i7-12700\n"
    features = parse_cpuinfo(text + "flags\t\t: sse2 avx avx2 fma avx_vnni\n", "x86_64")
    assert (features.vnni, features.bf16, features.int8_path) == (True, False, "AVX-VNNI")
