"""Check a file on the runtime it targets, not on the one segdeploy happens to run with.

``--target ort>=1.16`` is checked on onnxruntime 1.16.3 itself: a virtual environment holding only
that release and numpy < 2, built once and cached in :func:`runtimes_folder`, runs
:mod:`segdeploy.runtime.npz_runner` (segdeploy's torch-free runtime, through ``PYTHONPATH``).
``--target openvino>=2025.0`` on OpenVINO 2025.0.0 the same way (segdeploy's OpenVINO session), and
``--target ort-web`` on onnxruntime-web's wasm backend under Node
(``segdeploy/export/ort_web_runner.mjs``, the npm package cached beside the venvs). The outputs come
back as arrays and are compared with PyTorch's by the same layered comparison as every other
parity case (:func:`segdeploy.core.parity.compare_values`).

Build an environment once (what ``.ci/run`` does)::

    python -m segdeploy.export.target_check build 'ort>=1.16'     # or ort-web

``SEGDEPLOY_RUNTIMES`` moves the cache (default ``~/.cache/segdeploy/runtimes``). Nothing is
downloaded during an export: a missing environment is one sentence with the command above.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdeploy.core.errors import SegdeployError
from segdeploy.core.onnx_header import read_header
from segdeploy.core.targets import (
    DEFAULT_TARGET,
    Target,
    lowest_release,
    parse_target,
    read_record,
    refusal,
    version_tuple,
)

#: Environment variable naming the folder of cached runtime environments.
RUNTIMES_ENV = "SEGDEPLOY_RUNTIMES"
#: The Node runner of onnxruntime-web (wasm backend).
WEB_RUNNER = Path(__file__).with_name("ort_web_runner.mjs")
#: segdeploy's package root, put on the target interpreter's PYTHONPATH.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
#: A run on a target runtime longer than this is a hang.
_TIMEOUT_S = 600


def runtimes_folder() -> Path:
    """Where runtime environments are cached: ``$SEGDEPLOY_RUNTIMES``, else
    ``~/.cache/segdeploy/runtimes``."""
    return Path(os.environ.get(RUNTIMES_ENV) or Path.home() / ".cache" / "segdeploy" / "runtimes")


def installed_runtimes() -> dict[str, str]:
    """Versions of the runtimes installed here, by target name (``{"ort": "1.31.1", ...}``)."""
    found = {}
    try:
        import onnxruntime

        found["ort"] = found["ort-mobile"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino

        found["openvino"] = openvino.__version__.split("-")[0]
    except ImportError:
        pass
    return found


def resolve_target(spec: str | None) -> Target:
    """``--target`` as a :class:`Target` (:data:`DEFAULT_TARGET` when ``None``)."""
    return parse_target(spec or DEFAULT_TARGET, installed_runtimes())


@dataclass(frozen=True)
class RuntimeEnv:
    """A cached environment of one runtime release: where it is and how to run a file there."""

    target: Target
    release: str
    folder: Path

    @property
    def label(self) -> str:
        """The provider column of the parity table: ``onnxruntime 1.16.3``."""
        return f"{self.target.runtime} {self.release}"

    @property
    def ready(self) -> bool:
        marker = self.web_package if self.target.name == "ort-web" else self.python
        return marker.exists()

    @property
    def python(self) -> Path:
        return self.folder / "bin" / "python"

    @property
    def web_package(self) -> Path:
        return self.folder / "node_modules" / "onnxruntime-web"

    @property
    def build_hint(self) -> str:
        return f"python -m segdeploy.export.target_check build '{self.target.spec}'"

    def run(self, model: Path, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Outputs of ``model`` for each feed (input name -> array) on this runtime (CPU, one
        thread), in one process.

        Raises:
            SegdeployError: the environment is missing, the file is outside what the release
                opens (:func:`~segdeploy.core.targets.refusal`), or the runtime failed.
        """
        header = read_header(model)
        problem = refusal(
            str(model),
            header.ir_version,
            header.opset,
            self.target.runtime,
            self.release,
            read_record(header.metadata),
        )
        if problem:
            raise SegdeployError(problem)
        if not self.ready:
            raise SegdeployError(_missing(self))
        with tempfile.TemporaryDirectory(prefix="segdeploy-target-") as tmp:
            if self.target.name == "ort-web":
                return self._run_node(model, feeds, Path(tmp))
            return self._run_python(model, feeds, Path(tmp))

    def _run_python(self, model: Path, feeds: list[dict[str, np.ndarray]], tmp: Path):
        arrays = {
            f"{i}/{name}": value for i, feed in enumerate(feeds) for name, value in feed.items()
        }
        np.savez(tmp / "in.npz", **arrays)
        env = {**os.environ, "PYTHONPATH": str(_PACKAGE_ROOT)}
        command = [str(self.python), "-m", "segdeploy.runtime.npz_runner", str(model)]
        provider = "openvino" if self.target.name == "openvino" else "cpu"
        self._call([*command, str(tmp / "in.npz"), str(tmp / "out.npz"), provider], env)
        outputs: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        with np.load(tmp / "out.npz") as data:
            for key in data.files:
                if key != "__version__":
                    run_id, name = key.split("/", 1)
                    outputs[int(run_id)][name] = data[key]
        return outputs

    def _run_node(self, model: Path, feeds: list[dict[str, np.ndarray]], tmp: Path):
        spec = [{name: _write_raw(tmp, value) for name, value in feed.items()} for feed in feeds]
        (tmp / "in.json").write_text(json.dumps(spec))
        command = ["node", str(WEB_RUNNER), str(self.folder), str(model), str(tmp / "in.json")]
        self._call([*command, str(tmp / "out.json")], dict(os.environ))
        described = json.loads((tmp / "out.json").read_text())
        return [{name: _read_raw(item) for name, item in run.items()} for run in described]

    def _call(self, command: list[str], env: dict[str, str]) -> None:
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SegdeployError(f"{self.label} could not run the file ({err})") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            last = next((line for line in lines if line.startswith("error:")), lines[-1])
            raise SegdeployError(f"{self.label} refused or failed: {last.removeprefix('error: ')}")


def _write_raw(folder: Path, array: np.ndarray) -> dict:
    path = folder / f"in{len(list(folder.iterdir()))}.bin"
    np.ascontiguousarray(array).tofile(path)
    return {"file": str(path), "dtype": str(array.dtype), "shape": list(array.shape)}


def _read_raw(item: dict) -> np.ndarray:
    return np.fromfile(item["file"], dtype=item["dtype"]).reshape(item["shape"])


def runtime_env(target: Target) -> RuntimeEnv | None:
    """The environment that checks files for ``target``, or ``None`` when the runtime running
    segdeploy is that release already (the in-process parity cases check it: ``cpu`` for
    onnxruntime, the ``openvino`` provider for OpenVINO)."""
    release = target.release.install
    installed = installed_runtimes().get(target.name, "")
    if target.name != "ort-web" and version_tuple(installed) == target.min_version:
        return None
    folder = runtimes_folder() / f"{target.runtime}-{release}"
    return RuntimeEnv(target, release, folder)


@dataclass(frozen=True)
class TargetPlan:
    """How an export meets its target: the target, the environment that checks the file there
    (``None`` when this process's runtime is that release), the providers the parity gate adds,
    and a note on where the file was checked (for the report)."""

    target: Target
    env: RuntimeEnv | None
    providers: tuple[str, ...]
    note: str


def target_plan(spec: str | None, opset: int) -> TargetPlan:
    """Resolve ``--target`` (default :data:`DEFAULT_TARGET`) for an export at ``opset``.

    An explicit target must be checkable here: its environment must be built. The default
    target is checked where its environment exists and noted as unchecked otherwise, so that
    an export works on a machine that never built one.

    Raises:
        SegdeployError: an unknown or too old target, an opset the target cannot open, or (for
            an explicit target) a runtime environment that is not built.
    """
    target = resolve_target(spec)
    if opset > target.release.max_opset:
        raise SegdeployError(
            f"opset {opset} was asked for, but {target.spec} opens opset "
            f"{target.release.max_opset} at most; leave --opset at its default or raise the target"
        )
    installed = installed_runtimes()
    env = runtime_env(target)
    if env is None:
        here = f"{target.runtime} {installed.get(target.name)} (this process)"
        return TargetPlan(target, None, ("openvino",) if target.name == "openvino" else (), here)
    if env.ready:
        return TargetPlan(target, env, (), env.label)
    if spec is not None:
        raise SegdeployError(_missing(env))
    return TargetPlan(target, None, (), f"not checked on {env.label}: {_missing(env)}")


def _missing(env: RuntimeEnv) -> str:
    return (
        f"{env.label} is not installed in {env.folder}, so a file for '{env.target.spec}' "
        f"cannot be checked where it runs; build it once with `{env.build_hint}` (or point "
        f"{RUNTIMES_ENV} at a folder holding it)"
    )


def float16_lacking(model) -> list[str]:
    """Operators the target of ``model`` (its recorded ``segdeploy.target``) cannot run in
    float16 (``"Op@float16"`` in :attr:`Release.lacks`); none for a file without a record."""
    record = read_record({p.key: p.value for p in model.metadata_props})
    if not record:
        return []
    lacks = resolve_target(record["target"]).release.lacks
    return sorted(key.split("@")[0] for key in lacks if key.endswith("@float16"))


def require_target_ops(model, target: Target) -> None:
    """Refuse a graph holding an operator the target's release cannot run, in one sentence
    naming it and the lowest target that has it (:attr:`Release.lacks`)."""
    ops = {node.op_type for node in model.graph.node}
    lacking = sorted(set(target.release.lacks) & ops)  # "Op@float16" keys: see float16_lacking
    if not lacking:
        return
    op = lacking[0]
    lowest = lowest_release(target.name, model.ir_version, target.opset, {op})
    remedy = (
        f"the lowest target that runs it is {target.name}>={lowest.version[0]}.{lowest.version[1]}"
        if lowest
        else f"no {target.runtime} release listed runs it"
    )
    raise SegdeployError(
        f"{target.spec} cannot run this graph's {op} ({target.release.lacks[op]}); {remedy}"
    )


def end_to_end_on_target(e2e, model, onnx_path: Path, named, batch: bool) -> dict | None:
    """Run the end-to-end graph ``e2e`` of the export ``onnx_path`` (whose graph is ``model``)
    on its target's runtime, and require every mask (label) to equal, byte for byte, what
    ``segdeploy.runtime``'s ``predict`` gives for the same pixels here.

    Returns the record kept in the graph's metadata (``None`` when the target's runtime is
    this process's, already checked by the end-to-end gate, or its environment is not built).

    Raises:
        SegdeployError: a mask differs on the target runtime, or that runtime failed.
    """
    from segdeploy.runtime import open_model

    header = read_header(model.SerializeToString())
    record = read_record(header.metadata)
    if not record:
        return None
    env = runtime_env(resolve_target(record["target"]))
    if env is None or not env.ready:
        return None
    reference = open_model(onnx_path, provider="cpu")
    feeds = [{"image": pixels[None] if batch else pixels} for _, pixels in named]
    with tempfile.TemporaryDirectory(prefix="segdeploy-e2e-") as tmp:
        path = Path(tmp) / "e2e.onnx"
        path.write_bytes(e2e.SerializeToString())
        outputs = env.run(path, feeds)
    for (name, pixels), found in zip(named, outputs, strict=True):
        expected = reference.predict(pixels)
        if reference.card.task == "classification":
            same = reference.card.class_names[int(np.ravel(found["label"])[0])] == expected[0]
        else:
            mask = found["mask"][0] if batch else found["mask"]
            same = mask.dtype == expected.dtype and mask.tobytes() == expected.tobytes()
        if not same:
            raise SegdeployError(
                f"the end-to-end graph of {onnx_path} gives another result on {env.label} than "
                f"predict here for {name}; nothing was written"
            )
    return {"runtime": env.label, "images": len(named), "identical": len(named)}


def variant_on_target(variant, card, precision: str) -> str | None:
    """Run a variant (INT8, FP16, ...) on its parent's target runtime before it is written: one
    input of two size multiples by three, compared with this process's onnxruntime on argmax.

    Returns where it ran (``None`` when the target is this process's runtime or its environment
    is not built). Raises :class:`SegdeployError` when it does not open or disagrees there: the
    INT8 and FP16 files once failed on onnxruntime 1.16.3 although they passed here
    (benchmarks/README.md, "Compatibility").
    """
    from segdeploy.runtime.session import SessionOptions, create_session

    if precision == "bf16":
        return None  # computed by OpenVINO only, and gated there
    record = read_record({p.key: p.value for p in variant.metadata_props})
    env = runtime_env(resolve_target(record["target"])) if record else None
    if env is None or not env.ready:
        return None
    m = card.size_multiple
    x = np.random.default_rng(0).standard_normal((1, card.in_channels, 2 * m, 3 * m), np.float32)
    data = variant.SerializeToString()
    session = create_session(data, SessionOptions(provider="cpu"))
    name = session.get_inputs()[0].name
    here = session.run(None, {name: x})[0]
    with tempfile.TemporaryDirectory(prefix="segdeploy-variant-") as tmp:
        path = Path(tmp) / f"model.{precision}.onnx"
        path.write_bytes(data)
        try:
            there = next(iter(env.run(path, [{name: x}])[0].values()))
        except SegdeployError as err:
            raise SegdeployError(
                f"the {precision.upper()} variant does not run on {env.label}, the target of its "
                f"parent ({record['target']}): {err}; nothing was written"
            ) from None
    agreement = float(np.mean(np.argmax(here, axis=1) == np.argmax(there, axis=1)))
    if agreement < 0.9:
        raise SegdeployError(
            f"the {precision.upper()} variant decides differently on {env.label} than here "
            f"({agreement:.1%} argmax agreement on one input); nothing was written"
        )
    return env.label


def build(target: Target) -> Path:
    """Create the cached environment of ``target`` (a venv with the release, numpy < 2 and
    pillow, or the onnxruntime-web npm package) from the package registries (``.ci/run``)."""
    env = runtime_env(target)
    if env is None:
        raise SegdeployError(f"'{target.spec}' runs in this environment already; nothing to build")
    if env.ready:
        return env.folder
    staging = env.folder.with_name(env.folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    if target.name != "ort-web":
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True)
        pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "-q"]
        # pillow: segdeploy.runtime imports it (the runtime's base dependencies, as on a device).
        packages = [f"{target.runtime}=={env.release}", "numpy<2", "pillow"]
        subprocess.run([*pip, *packages], check=True)
    else:
        staging.mkdir()
        (staging / "package.json").write_text('{"private": true}\n')
        npm = ["npm", "install", "--no-audit", "--no-fund", f"onnxruntime-web@{env.release}"]
        subprocess.run(npm, cwd=staging, check=True)
    staging.rename(env.folder)  # a half-built environment is never taken for a ready one
    return env.folder


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "build":
        print("usage: python -m segdeploy.export.target_check build TARGET", file=sys.stderr)
        return 2
    try:
        print(build(resolve_target(argv[1])))
    except SegdeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
