"""Measure the highest ONNX IR version and opset each onnxruntime release loads.

    python benchmarks/runtime_limits.py [--versions 1.15.1,1.16.3,...] [--venv DIR]
        > benchmarks/results/compat/runtime_limits.jsonl

One scratch venv (numpy < 2 and ORT's other dependencies) gets each release in turn
(``pip install --no-deps onnxruntime==X``); each loads one-node models (Identity, built by hand,
no onnx needed) at IR versions 3-13 (opset 13), then at opsets 13-29 (at its highest IR). ONNX
Runtime refuses a too-new IR version and a too-new opset at load, so the highest that loads is
what the release opens: the rows of ``segdeploy/core/targets.py``. One JSON line per release.
``--openvino`` probes the OpenVINO of the running interpreter instead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The probe model comes from segdeploy's torch-free core; the --here run in the scratch venv finds
# it through PYTHONPATH.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from segdeploy.core.onnx_header import identity_model  # noqa: E402

VERSIONS = (
    "1.15.1,1.16.3,1.17.3,1.18.1,1.19.2,1.20.1,1.21.1,1.22.1,1.23.2,1.24.4,1.25.1,1.26.0,"
    "1.27.0,1.28.0,1.29.0,1.30.0,1.31.1,1.32.0"
)


def probe(loads) -> dict:
    """``loads(model_bytes) -> bool`` for one runtime: its highest IR version and opset."""
    max_ir = max(ir for ir in range(3, 14) if loads(identity_model(ir, 13)))
    max_opset = max(op for op in range(13, 30) if loads(identity_model(max_ir, op)))
    return {"max_ir": max_ir, "max_opset": max_opset}


def probe_onnxruntime() -> dict:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)

    def loads(data: bytes) -> bool:
        try:
            ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        except Exception:  # refused at load
            return False
        return True

    return {"version": ort.__version__, **probe(loads)}


def probe_openvino() -> dict:
    import openvino as ov

    core = ov.Core()

    def loads(data: bytes) -> bool:
        try:
            core.compile_model(core.read_model(data, b""), "CPU")
        except Exception:  # refused at read or compile
            return False
        return True

    return {"version": ov.__version__, **probe(loads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", default=VERSIONS)
    parser.add_argument("--venv", type=Path, default=Path("/tmp/segdeploy-ort-probe"))
    parser.add_argument("--here", action="store_true", help="Probe this interpreter's ORT.")
    parser.add_argument("--openvino", action="store_true", help="Probe this one's OpenVINO.")
    args = parser.parse_args()
    if args.here or args.openvino:
        print(json.dumps(probe_openvino() if args.openvino else probe_onnxruntime()))
        return
    python = args.venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(args.venv)], check=True)
        deps = ["numpy<2", "protobuf", "flatbuffers", "coloredlogs", "sympy", "packaging"]
        subprocess.run([str(python), "-m", "pip", "install", "-q", *deps], check=True)
    for version in args.versions.split(","):
        pip = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall"]
        installed = subprocess.run([*pip, f"onnxruntime=={version}"], capture_output=True)
        if installed.returncode != 0:
            print(json.dumps({"version": version, "error": "install failed"}), flush=True)
            continue
        done = subprocess.run(
            [str(python), __file__, "--here"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        line = done.stdout.strip() or json.dumps({"version": version, "error": "probe failed"})
        print(line, flush=True)


if __name__ == "__main__":
    main()
