"""What ``segdeploy bench`` measures: :class:`BenchConfig`, the one home of its defaults, and
:func:`config_from_options`, which checks the command's raw options before any timing starts.

Light on purpose (no torch, no onnx): the command line reads the defaults from here when it
starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segdeploy.core.artifacts import EXPORTS_FOLDER, PRECISIONS, is_variant, parse_shapes
from segdeploy.core.errors import ProviderUnavailableError, SegdeployError
from segdeploy.runtime.session import ALL_CORES

#: Where ``segdeploy bench`` writes its JSON and chart unless told otherwise.
RESULTS_FOLDER = Path("benchmarks/results")
#: The providers bench can label a measurement with.
BENCH_PROVIDERS = ("cpu", "cuda", "openvino")


@dataclass
class BenchConfig:
    """One benchmark run: every model x precision x size x batch x binding is a case."""

    models: list[Path]
    provider: str = "cpu"
    batches: tuple[int, ...] = (1,)
    sizes: tuple[tuple[int, int], ...] | None = None
    precisions: tuple[str, ...] = ("fp32",)
    warmup: int = 5
    iters: int | None = None
    seconds: float = 3.0
    compare_torch: bool = True
    threads: int = ALL_CORES
    io_binding: tuple[bool, ...] = (False,)
    profile: bool = False
    # ORT and eager take turns in this many rounds (each gets seconds / rounds per round), so a
    # slow spell of a shared machine hits both engines instead of one.
    rounds: int = 1


def config_from_options(
    models: Sequence[Path] | None,
    *,
    provider: str,
    batch: str,
    size: str | None,
    precision: str,
    io_binding: bool,
    **options,
) -> BenchConfig:
    """A checked :class:`BenchConfig` from the command's raw options.

    ``models`` defaults to every ``exports/*.onnx`` that is not a precision variant; ``batch``
    (``1,8``), ``size`` (``256x256,512x512``) and ``precision`` (``fp32,int8``) are the
    comma-separated lists the command takes; ``io_binding`` asks for the bound cases as well as
    the plain ones. The other keyword ``options`` are :class:`BenchConfig` fields, passed as
    they are.

    Raises:
        ProviderUnavailableError: ``provider`` is a provider ONNX Runtime cannot use on this
            machine (never a CPU figure labelled CUDA).
        SegdeployError: an unknown provider or precision, no model, a missing file, or a batch
            or size list that cannot be read.
    """
    from segdeploy.runtime.openvino_session import OPENVINO_HINT
    from segdeploy.runtime.session import usable_providers

    if provider not in BENCH_PROVIDERS:
        raise SegdeployError(
            f"--provider must be one of {', '.join(BENCH_PROVIDERS)}, found '{provider}'"
        )
    usable = usable_providers(engines=True)
    if provider not in usable:
        if provider == "openvino":
            raise ProviderUnavailableError(
                f"--provider openvino asked for, but OpenVINO is not installed: {OPENVINO_HINT}"
            )
        raise ProviderUnavailableError(
            f"--provider {provider} asked for, but ONNX Runtime cannot use "
            f"it on this machine (usable: {', '.join(usable)})"
        )
    precisions = tuple(p.strip() for p in precision.split(",") if p.strip())
    _check_precisions(precisions, provider, io_binding, options.get("profile", False))
    return BenchConfig(
        models=_existing_models(models),
        provider=provider,
        batches=_positive_ints(batch, "batch"),
        sizes=tuple((h, w) for _, h, w in parse_shapes(size)) if size else None,
        precisions=precisions,
        io_binding=(False, True) if io_binding else (False,),
        **options,
    )


def _check_precisions(
    precisions: tuple[str, ...], provider: str, io_binding: bool, profile: bool
) -> None:
    """Refuse what would be measured under a wrong name: an unknown precision, bf16 anywhere
    but on OpenVINO, or ONNX Runtime's IO binding and profiler asked of OpenVINO."""
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise SegdeployError(f"unknown precision {sorted(unknown)}; choose {', '.join(PRECISIONS)}")
    if "bf16" in precisions and provider != "openvino":
        raise SegdeployError("--precision bf16 is computed by OpenVINO: add --provider openvino")
    if provider == "openvino" and (io_binding or profile):
        option = "--io-binding" if io_binding else "--profile"
        raise SegdeployError(f"{option} is ONNX Runtime's; OpenVINO runs without it")


def _existing_models(models: Sequence[Path] | None) -> list[Path]:
    """The FP32 exports to measure: ``models``, or every one in the exports folder."""
    paths = list(models or sorted(EXPORTS_FOLDER.glob("*.onnx")))
    # x.int8.onnx and x.fp16.onnx are variants that --precision picks, not models of their own.
    paths = [p for p in paths if not is_variant(p)]
    if not paths:
        raise SegdeployError("no models to benchmark: pass ONNX files or export into exports/")
    for path in paths:
        if not path.is_file():
            raise SegdeployError(f"ONNX file {path} does not exist")
    return paths


def _positive_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise SegdeployError(f"--{what} expects positive integers like 1,8; found '{text}'")
    return values
