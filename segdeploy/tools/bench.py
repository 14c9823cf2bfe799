"""Latency and throughput of ONNX Runtime against PyTorch eager, in the same run, same input.

For each case (model x batch x size x precision): warm-up, then timed runs of ONNX Runtime and of
the PyTorch model rebuilt from the export's model card (the architecture decides speed, not the
weight values, so a checkpoint is not needed), latency percentiles, throughput, the speedup, the
graph's FLOPs and the achieved GFLOP/s, also as a share of this machine's matrix-multiply peak
measured in the same run (FP32 for FP32 cases, 8-bit for INT8 ones), and on request ONNX
Runtime's kernel time per operator type (:mod:`segdeploy.tools.opprofile`). Measurements only:
nothing here asserts a speed.

What is measured and its defaults are in :mod:`segdeploy.tools.bench_config`, the clock and the
machine's peaks in :mod:`segdeploy.tools.timing`, the chart in :mod:`segdeploy.tools.bench_chart`.
Planning reads every model card and checks sizes and precision variants first, so that bad input
is reported before minutes of benchmarking, not after.

Like with like on CUDA, in every row. Without io-binding ONNX Runtime's ``session.run`` takes a
host array and returns a host array, so the eager call does the same (:func:`eager_call` with
``host_io=True``): it copies the input host->device, runs, and copies the output device->host
inside the timed call. With io-binding both engines keep input and output on the device: the
input is copied once before timing and the output stays there. Both engines compute FP32 without
TF32 (ORT's ``use_tf32`` is off in every segdeploy session, and the eager model runs with
PyTorch's cuDNN and matmul TF32 switched off to match), so a speedup is never TF32 against FP32.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from segdeploy import __version__
from segdeploy.core.artifacts import VARIANT_COMMANDS, variant_path
from segdeploy.core.card import ModelCard
from segdeploy.core.cpu import cpu_features, is_x86
from segdeploy.core.errors import SegdeployError
from segdeploy.core.publish import publish_file
from segdeploy.runtime import open_model
from segdeploy.runtime.session import SessionOptions, create_session, session_provider
from segdeploy.runtime.variants import require_parent
from segdeploy.tools.bench_config import BenchConfig
from segdeploy.tools.opprofile import OpShare, profile_ops
from segdeploy.tools.timing import (
    PEAK_KEYS,
    Timing,
    measure_int8_matmul_peak,
    measure_matmul_peak,
    time_calls,
)


@dataclass
class BenchCase:
    """One measured case; ``torch`` is None when the eager comparison was switched off."""

    model: str
    arch: str
    provider: str
    precision: str
    batch: int
    height: int
    width: int
    onnx: Timing
    io_binding: bool = False
    torch: Timing | None = None
    gflops: float | None = None
    notes: list[str] = field(default_factory=list)
    op_profile: list[OpShare] | None = None
    round_speedups: list[float] | None = None
    file: str = ""
    file_bytes: int | None = None

    @property
    def speedup(self) -> float | None:
        """Eager p50 over ORT p50; with several rounds, the median of the rounds' ratios."""
        if self.round_speedups:
            return float(np.median(self.round_speedups))
        return self.torch.p50_ms / self.onnx.p50_ms if self.torch else None

    @property
    def achieved_gflops_per_s(self) -> float | None:
        if self.gflops is None:
            return None
        return self.gflops * self.batch / (self.onnx.p50_ms / 1e3)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speedup"] = self.speedup
        data["achieved_gflops_per_s"] = self.achieved_gflops_per_s
        data["file_mb"] = self.file_mb
        return data

    @property
    def file_mb(self) -> float | None:
        """The benchmarked file's size in MB (10**6 bytes)."""
        return self.file_bytes / 1e6 if self.file_bytes is not None else None


def share_of_peak(case: BenchCase, env: dict[str, Any]) -> float | None:
    """Achieved GFLOP/s as a fraction of the matching peak measured in the same run, if any.

    FP32 cases are read against the FP32 matrix-multiply peak and INT8 cases against the 8-bit
    one; FP16 (a GPU precision) has no CPU peak to compare with.
    """
    peak = env.get(PEAK_KEYS.get(case.precision, ""))
    achieved = case.achieved_gflops_per_s
    return achieved / peak if peak and achieved else None


#: Below this INT8-over-FP32 speed ratio the no-VNNI sentence calls INT8 mostly a size win.
SIZE_WIN_BELOW = 1.25


def int8_without_vnni_note(cases: list[BenchCase], env: dict[str, Any]) -> str | None:
    """One sentence when INT8 was benched on an x86 CPU without VNNI, else ``None``.

    Without VNNI an 8-bit multiply-accumulate takes several instructions, so INT8 gains at most
    about 2x there (the 8-bit peak of an AVX2 CPU) and on small models little or nothing: it is
    mostly a size win. The sentence cites this run's own ratios (each INT8 case's speed and file
    size against the FP32 case of the same model, batch, size and binding) and calls INT8 a size
    win only when every INT8 case ran below :data:`SIZE_WIN_BELOW` times FP32's speed; with no
    FP32 case it cites the 8-bit over FP32 matrix-multiply peak measured in the run.
    """
    features = env.get("cpu_features") or {}
    int8 = [c for c in cases if c.precision == "int8"]
    if not int8 or features.get("vnni") is not False or not is_x86(features.get("arch", "")):
        return None
    cpu = f"{env.get('cpu', 'unknown')}, no VNNI"
    fp32 = {_pair_key(c): c for c in cases if c.precision == "fp32"}
    pairs = [(fp32[_pair_key(c)], c) for c in int8 if _pair_key(c) in fp32]
    peak, int8_peak = env.get(PEAK_KEYS["fp32"]), env.get(PEAK_KEYS["int8"])
    bound = (
        f"its 8-bit matrix-multiply peak is {int8_peak / peak:.1f}x FP32's"
        if peak and int8_peak
        else ""
    )
    if not pairs:
        return f"INT8 gains little speed on this CPU ({cpu})" + (f": {bound} here" if bound else "")
    speeds = [f.onnx.p50_ms / i.onnx.p50_ms for f, i in pairs]
    sizes = [f.file_bytes / i.file_bytes for f, i in pairs if f.file_bytes and i.file_bytes]
    measured = f"in this run INT8 ran {_span(speeds)}x FP32's speed"
    measured += f" with {_span(sizes)}x smaller files" if sizes else ""
    if max(speeds) < SIZE_WIN_BELOW:
        return f"INT8 is mostly a size win on this CPU ({cpu}): {measured}"
    limit = f"; {bound}" if bound else ""
    return f"INT8 gains less speed on this CPU ({cpu}{limit}) than with VNNI: {measured}"


def _pair_key(case: BenchCase) -> tuple:
    return (case.model, case.provider, case.batch, case.height, case.width, case.io_binding)


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def engine_name(provider: str) -> str:
    """The engine that runs a bench case's ONNX file, for tables and charts."""
    return "OpenVINO" if provider == "openvino" else "ONNX Runtime"


def eager_precision(precision: str, provider: str) -> str:
    """The precision PyTorch eager runs beside an ONNX Runtime case.

    Eager FP16 is the fair partner of ORT FP16 on a GPU; INT8 (and FP16 on a CPU) have no eager
    counterpart worth timing, so those are compared with eager FP32, what users run otherwise.
    """
    return "fp16" if precision == "fp16" and provider == "cuda" else "fp32"


def eager_model(card: ModelCard, device: str = "cpu", half: bool = False):
    """The PyTorch model ``card`` describes, in eval mode on ``device`` (FP16 if ``half``).

    Its weights are seeded, not trained: the architecture decides the speed, not the values.
    """
    import torch

    from segdeploy.models import create_model

    torch.manual_seed(0)
    model = create_model(card.arch, num_classes=card.num_classes, **card.model_kwargs).eval()
    model = model.to(device)
    return model.half() if half else model


def count_gflops(card: ModelCard, height: int, width: int) -> float:
    """GFLOPs of one image (2 per multiply-accumulate), counted by PyTorch's FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = eager_model(card)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, card.in_channels, height, width))
    return counter.get_total_flops() / 1e9


def precision_file(path: Path, precision: str) -> Path:
    """The file benchmarked for a precision: ``x.onnx``, ``x.fp16.onnx`` or ``x.int8.onnx``.

    A variant is used only beside the FP32 file it was made from (its recorded parent sha256),
    so a row never compares an INT8 model with an FP32 export re-made since.

    Raises:
        SegdeployError: the variant has not been made yet (the message names the command), or
            it was made from another FP32 file than ``path``.
    """
    variant = variant_path(path, precision)
    if not variant.is_file():
        hint = f"segdeploy {VARIANT_COMMANDS[precision]} {path}"
        raise SegdeployError(f"no {precision} variant {variant} of {path}; make it with `{hint}`")
    if variant != path:
        require_parent(variant, path)
    return variant


def bench_case(
    path: Path,
    card: ModelCard,
    config: BenchConfig,
    batch: int,
    size: tuple[int, int],
    precision: str,
    io_binding: bool = False,
) -> BenchCase:
    """Measure one case: ONNX Runtime and PyTorch eager on the same input, in turns."""
    height, width = size
    source = precision_file(path, precision)
    options = SessionOptions(provider=config.provider, intra_op_threads=config.threads)
    session = create_session(source, options)
    if session_provider(session) != config.provider:
        # create_session already refuses a CUDA request it cannot honour; this guards the label.
        raise SegdeployError(f"{source} runs on {session_provider(session)}, not {config.provider}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, card.in_channels, height, width), dtype=np.float32)
    input_name = session.get_inputs()[0].name
    if io_binding:
        run = _bound_runner(session, x, config.provider)
    else:
        run = lambda: session.run(None, {input_name: x})  # noqa: E731
    notes: list[str] = []
    eager = None
    if config.compare_torch:
        eager = _torch_call(card, config, x, precision, notes, host_io=not io_binding)
    onnx_samples, torch_samples, round_speedups = _timed_rounds(run, eager, config)
    case = BenchCase(
        model=path.name,
        arch=card.arch,
        provider=config.provider,
        precision=precision,
        batch=batch,
        height=height,
        width=width,
        onnx=Timing.from_samples(onnx_samples, batch),
        io_binding=io_binding,
        torch=Timing.from_samples(torch_samples, batch) if eager is not None else None,
        notes=notes,
        round_speedups=round_speedups or None,
        file=source.name,
        file_bytes=source.stat().st_size,
    )
    if config.profile and not io_binding:
        # A separate profiled session: the profiler's own overhead stays out of the timings.
        del session, run
        case.op_profile = profile_ops(source, x, options)
    return case


def _timed_rounds(
    run: Callable[[], object], eager: Callable[[], None] | None, config: BenchConfig
) -> tuple[list[float], list[float], list[float]]:
    """ORT and eager samples over ``config.rounds`` rounds, and each round's speedup."""
    onnx_samples: list[float] = []
    torch_samples: list[float] = []
    round_speedups: list[float] = []
    for index in range(config.rounds):
        # Each engine runs its own block of calls: taking turns call by call would let one
        # engine's idle threads disturb the other (benchmarks/README.md, "Thread spinning").
        warmup = config.warmup if index == 0 else 1
        seconds = config.seconds / config.rounds
        onnx_round = time_calls(run, warmup, config.iters, seconds)
        onnx_samples += onnx_round
        if eager is not None:
            torch_round = time_calls(eager, warmup, config.iters, seconds)
            torch_samples += torch_round
            round_speedups.append(float(np.median(torch_round) / np.median(onnx_round)))
    return onnx_samples, torch_samples, round_speedups


def _bound_runner(session: ort.InferenceSession, x: np.ndarray, provider: str):
    """A call that runs ``session`` with input and output kept on the provider's device.

    The input is copied to the device once, before timing (as an application keeping frames on
    the GPU would); the output stays there. This measures the model, not host/device copies.
    """
    device = "cuda" if provider == "cuda" else "cpu"
    binding = session.io_binding()
    binding.bind_ortvalue_input(
        session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, device, 0)
    )
    binding.bind_output(session.get_outputs()[0].name, device, 0)
    return lambda: session.run_with_iobinding(binding)


def _torch_call(
    card: ModelCard, config: BenchConfig, x: np.ndarray, precision: str, notes, host_io: bool
):
    """A call that runs the eager model of ``card`` on ``x`` (on the bench's device) once."""
    device = "cuda" if config.provider == "cuda" else "cpu"
    half = eager_precision(precision, config.provider) == "fp16"
    if precision != "fp32" and not half:
        notes.append(f"PyTorch eager runs FP32 (no eager {precision} counterpart here)")
    if device == "cuda":
        _match_ort_fp32()
    return eager_call(eager_model(card, device, half), x, device, half, host_io)


def _match_ort_fp32() -> None:
    """Switch PyTorch's TF32 off, as ORT's ``use_tf32`` is in every segdeploy session.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs; left on, the
    eager side of a CUDA row would compute in lower precision than the ORT side.
    """
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def eager_call(model, x: np.ndarray, device: str, half: bool, host_io: bool):
    """A call running ``model`` once on ``x``, crossing the bus exactly as ORT's run does.

    Args:
        model: the eager model, already on ``device`` (and in FP16 if ``half``).
        x: the host input (FP32), as ONNX Runtime is given it.
        device: ``"cpu"`` or ``"cuda"``.
        half: feed the model FP16 (cast on the device; the output is cast back to FP32 there, as
            an FP16 ONNX graph with FP32 inputs and outputs does).
        host_io: ``True`` to match ``session.run``: each call copies ``x`` host->device and
            returns the output as a host numpy array (device->host copy included). ``False`` to
            match io-binding: ``x`` is copied to the device once, here, and each call returns the
            output tensor left on the device (after a synchronize, so the time is complete).
    """
    import torch

    def run(tensor):
        with torch.inference_mode():
            out = model(tensor.half() if half else tensor)
        return out.float() if half else out

    if host_io:

        def call_host() -> np.ndarray:
            return run(torch.from_numpy(x).to(device)).cpu().numpy()

        return call_host
    on_device = torch.from_numpy(x).to(device)

    def call_device():
        out = run(on_device)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return call_device


@dataclass(frozen=True)
class PlannedCase:
    """One case :func:`run_bench` will measure, known before any timing starts."""

    path: Path
    card: ModelCard
    precision: str
    batch: int
    size: tuple[int, int]
    io_binding: bool

    def describe(self) -> str:
        bound = " io-binding" if self.io_binding else ""
        h, w = self.size
        return f"{self.path.name} {self.precision} batch {self.batch} {h}x{w}{bound}"


def default_sizes(card: ModelCard) -> tuple[tuple[int, int], ...]:
    """The input size a model is benchmarked at when none is given: by task."""
    return ((224, 224),) if card.task == "classification" else ((256, 256),)


def plan_cases(config: BenchConfig) -> list[PlannedCase]:
    """Every (model x precision x size x batch x binding) case, in the order they are run.

    Reads each model card and checks the sizes against it and that every precision variant
    exists, so that bad input is reported before minutes of benchmarking, not after.

    Raises:
        SegdeployError: an unreadable model, a size the model cannot take (not a multiple of
            its card's ``size_multiple``) or a missing precision variant.
    """
    planned = []
    for path in config.models:
        card = open_model(path, provider="cpu").card
        sizes = config.sizes or default_sizes(card)
        for height, width in sizes:
            card.require_size(height, width)
        for precision in config.precisions:
            precision_file(path, precision)
            for size in sizes:
                for batch in config.batches:
                    for bound in config.io_binding:
                        planned.append(PlannedCase(path, card, precision, batch, size, bound))
    return planned


def run_bench(
    config: BenchConfig,
    progress: Callable[[PlannedCase], None] | None = None,
    planned: list[PlannedCase] | None = None,
) -> tuple[list[BenchCase], dict[str, Any]]:
    """Measure every case of ``planned`` (default: :func:`plan_cases` of ``config``).

    ``progress(case)`` is called before each case starts. Returns the measured cases and the
    environment (machine, versions and, on CPU, the matrix-multiply peaks of this run).
    """
    import torch

    planned = plan_cases(config) if planned is None else planned
    if config.threads:
        torch.set_num_threads(config.threads)
    env = environment(config.provider)
    if config.provider == "cpu":
        env[PEAK_KEYS["fp32"]] = measure_matmul_peak(config.threads)
        if "int8" in config.precisions:
            env[PEAK_KEYS["int8"]] = measure_int8_matmul_peak(config.threads)
    gflops: dict[tuple[str, tuple[int, int]], float] = {}  # counted once per model and size
    cases = []
    for plan in planned:
        if progress:
            progress(plan)
        case = bench_case(
            plan.path, plan.card, config, plan.batch, plan.size, plan.precision, plan.io_binding
        )
        key = (str(plan.path), plan.size)
        if key not in gflops:
            gflops[key] = count_gflops(plan.card, *plan.size)
        case.gflops = gflops[key]
        cases.append(case)
    return cases, env


def environment(provider: str) -> dict[str, Any]:
    """Machine and versions, recorded with every result, with the CPU's INT8/bf16 features
    (:func:`segdeploy.core.cpu.cpu_features`): they decide what INT8 and bf16 can gain here."""
    features = cpu_features()
    info: dict[str, Any] = {
        "segdeploy": __version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": features.model,
        "cpu_features": features.to_dict(),
        "cpu_count": os.cpu_count(),
        "provider": provider,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if provider == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def results_path(folder: Path, provider: str) -> Path:
    """``folder/<time>-<provider>.json``, with ``-2``, ``-3``... when an earlier run (or its
    chart) already took the name: the results folder is a log, no run replaces another's."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{stamp}-{provider}.json"
    count = 1
    while path.exists() or path.with_suffix(".png").exists():
        count += 1
        path = folder / f"{stamp}-{provider}-{count}.json"
    return path


def write_results(cases: list[BenchCase], env: dict[str, Any], folder: Path) -> Path:
    """JSON under ``folder`` named by time and provider (:func:`results_path`); returns its
    path."""
    path = results_path(folder, env["provider"])
    rows = [{**c.to_dict(), "share_of_peak": share_of_peak(c, env)} for c in cases]
    text = json.dumps({"environment": env, "cases": rows}, indent=2)
    return publish_file(path, lambda tmp: tmp.write_text(text), "bench results")
