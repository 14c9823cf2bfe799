"""``/proc/cpuinfo`` texts of four kinds of machine, trimmed to the lines the reader uses and a
few around them (the flag lists are the kernel's, whole), with two processors each: the reader
must stop at the first block."""

from __future__ import annotations

_EPYC_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology "
    "nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 "
    "x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm "
    "sse4a misalignsse 3dnowprefetch osvw topoext fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed "
    "adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero arat umip vaes "
    "vpclmulqdq rdpid fsrm"
)
_COOPER_LAKE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi mmx "
    "fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma "
    "cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm "
    "3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms invpcid rtm mpx avx512f avx512dq rdseed "
    "adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves "
    "avx512_bf16 arat pku ospke avx512_vnni md_clear flush_l1d arch_capabilities"
)
_SAPPHIRE_RAPIDS_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse "
    "sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc "
    "cpuid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave "
    "avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch fsgsbase bmi1 hle avx2 smep bmi2 erms "
    "invpcid rtm avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni "
    "avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat "
    "avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
    "avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b fsrm md_clear serialize "
    "tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities"
)


def _x86(model: str, flags: str) -> str:
    block = (
        "processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        f"model name\t: {model}\nstepping\t: 8\ncpu MHz\t\t: 2000.000\ncache size\t: 107520 KB\n"
        f"fpu\t\t: yes\nflags\t\t: {flags}\nbogomips\t: 4000.00\n\n"
    )
    # The second processor reports other flags: only the first block may be read.
    return block.format(n=0) + block.format(n=1).replace(flags, "fpu sse sse2")


def _arm(part: str, features: str) -> str:
    block = (
        "processor\t: {n}\nBogoMIPS\t: 2100.00\n"
        f"Features\t: {features}\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
        f"CPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
    )
    return block.format(n=0) + block.format(n=1)


#: An AMD EPYC (Zen 3, as cloud VMs report it): AVX2 and FMA, no AVX-512, no VNNI.
EPYC_AVX2 = _x86("AMD EPYC 7B13", _EPYC_FLAGS).replace("GenuineIntel", "AuthenticAMD")
#: An Intel Xeon Cooper Lake: AVX512-VNNI and AVX512-BF16, no AMX.
XEON_COOPER_LAKE = _x86("Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz", _COOPER_LAKE_FLAGS)
#: An Intel Xeon Sapphire Rapids: AMX (tile, int8, bf16) besides AVX512-VNNI, AVX-VNNI and BF16.
XEON_SAPPHIRE_RAPIDS = _x86("Intel(R) Xeon(R) Platinum 8480+", _SAPPHIRE_RAPIDS_FLAGS)
#: An Arm Neoverse-V1 (AWS Graviton3): dot product, i8mm and bf16.
NEOVERSE_V1 = _arm(
    "0xd40",
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
    "dcpodp svei8mm svebf16 i8mm bf16 dgh rng",
)
#: An Arm Neoverse-N1 (AWS Graviton2): dot product, no i8mm, no bf16.
NEOVERSE_N1 = _arm(
    "0xd0c",
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
    "asimddp ssbs",
)
