"""Compatibility table: every model x precision, run on every target runtime (not inferred).

    python -m segdeploy.export.target_check build 'ort>=1.16'   # once per runtime, cached
    python -m segdeploy.export.target_check build 'ort>=1.15'
    python -m segdeploy.export.target_check build ort-web
    python -m segdeploy.export.target_check build 'ort>=1.17'
    python -m segdeploy.export.target_check build 'openvino>=2025.0'
    python benchmarks/compat_table.py [--models unet:tiny,unet:small,...] [--out DIR]

For each model (untrained, torch seed 0; U-Net ``tiny`` and ``small``, DeepLabV3-MobileNetV3
``tiny`` (width 0.25), ResNet-18 ``full``, SegFormer ``tiny``: the full-size DeepLab and SegFormer
take minutes per export on 2 cores and hold the same operators) it exports the FP32 file with the
default target (``ort>=1.16``) and once more with ``--target ort`` (the installed onnxruntime,
IR 10: what ``segdeploy export`` wrote before targets), makes the INT8 and FP16 variants (the
accuracy gates' thresholds are off: the weights are random, only the files matter here) and the
end-to-end graph, then opens and runs each file on:

* onnxruntime 1.15.1, 1.16.3 and 1.17.3 (their own venvs, :mod:`segdeploy.runtime.npz_runner`),
* the installed onnxruntime (this process),
* onnxruntime-web 1.16.3 (wasm, under Node),
* OpenVINO 2025.0 (its venv) and the installed OpenVINO (this process).

A cell is ``ok`` with the comparison against the installed onnxruntime on the same file (max abs
error, argmax agreement; for the end-to-end graph whether the mask is byte for byte the same), or
``refused`` with segdeploy's sentence, or ``FAIL`` with the runtime's error. JSON goes to
``--out/compat.json``, the Markdown table to ``--out/compat.md`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segdeploy.core.card import ModelCard
from segdeploy.core.errors import SegdeployError
from segdeploy.core.targets import parse_target
from segdeploy.data.synthetic import render_road_scene
from segdeploy.export import export_checkpoint
from segdeploy.export.end_to_end import export_end_to_end
from segdeploy.export.fp16 import convert_fp16
from segdeploy.export.quantize import quantize_int8
from segdeploy.export.target_check import installed_runtimes, runtime_env
from segdeploy.models import create_model, get_spec
from segdeploy.runtime.session import SessionOptions, create_session
from segdeploy.train.checkpoint import save_checkpoint

MODELS = "unet:tiny,unet:small,deeplabv3_mobilenet_v3_large:tiny,resnet18:full,segformer:tiny"
#: Runtimes run in their own environment, by target spec.
EXTERNAL = (
    "ort>=1.15",
    "ort>=1.16",
    "ort>=1.17",
    "ort-web>=1.16",
    "openvino>=2025.0",
    "openvino>=2025.0",
)
#: ``fp32 (ort)``: the same checkpoint exported with ``--target ort`` (the installed onnxruntime:
#: IR 10), what ``segdeploy export`` wrote before targets existed.
ARTIFACTS = ("fp32", "int8", "fp16", "e2e", "fp32 (ort)")


def make_checkpoint(arch: str, variant: str, folder: Path) -> Path:
    spec = get_spec(arch)
    kwargs = spec.variant_kwargs(variant)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, **kwargs).eval()
    card = ModelCard(
        arch=arch,
        task=spec.task,
        class_names=("background", "road", "vehicle", "pedestrian"),
        model_kwargs=kwargs,
        size_multiple=spec.size_multiple,
    )
    return save_checkpoint(model, card, folder / f"{arch}_{variant}.pt")


def make_artifacts(checkpoint: Path) -> dict[str, Path | str]:
    """The four files of one model, or the sentence that refused one."""
    files: dict[str, Path | str] = {}
    onnx_path = checkpoint.with_suffix(".onnx")
    export_checkpoint(checkpoint, onnx_path, shapes=[(1, 64, 64)], providers=["cpu"])
    files["fp32"] = onnx_path
    gate = {"eval_samples": 4, "max_drop": 1.0, "min_agreement": 0.0}
    for precision, make in (("int8", quantize_int8), ("fp16", convert_fp16)):
        try:
            extra = {"samples": 8} if precision == "int8" else {}
            files[precision] = make(onnx_path, **gate, **extra).path
        except SegdeployError as err:
            files[precision] = f"not made: {err}"
    files["e2e"] = export_end_to_end(onnx_path, force=True).path
    newest = checkpoint.with_name(f"{checkpoint.stem}_ort.onnx")
    export_checkpoint(checkpoint, newest, shapes=[(1, 64, 64)], providers=["cpu"], target="ort")
    files["fp32 (ort)"] = newest
    return files


def inputs_for(kind: str, card_multiple: int) -> dict[str, np.ndarray]:
    if kind == "e2e":
        scene, _ = render_road_scene(0, 64, 96)
        return {"image": np.ascontiguousarray(scene[:61, :93])}
    rng = np.random.default_rng(0)
    m = card_multiple
    return {"image": rng.standard_normal((1, 3, 2 * m, 3 * m), dtype=np.float32)}


def compare(kind: str, reference: dict, found: dict) -> dict:
    if kind == "e2e":
        name = "mask" if "mask" in reference else "label"
        same = reference[name].tobytes() == found[name].tobytes()
        return {"result": "ok" if same else "DIFFERS", "identical": same}
    ref, got = reference["logits"], found["logits"]
    agree = float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))
    return {"result": "ok", "max_abs": float(np.max(np.abs(ref - got))), "argmax": agree}


def run_here(path: Path, feed: dict, provider: str) -> dict:
    session = create_session(path, SessionOptions(provider=provider, intra_op_threads=1))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feed), strict=True))


def cell(kind: str, path: Path | str, feed: dict, reference: dict | None, runner) -> dict:
    if isinstance(path, str):
        return {"result": "not made", "reason": path}
    started = time.perf_counter()
    try:
        found = runner(path, feed)
    except SegdeployError as err:
        text = str(err)
        refused = ("opens" in text and "at most" in text) or "was exported for" in text
        return {"result": "refused" if refused else "FAIL", "reason": text}
    out = compare(kind, reference, found) if reference is not None else {"result": "ok"}
    return {**out, "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compat"))
    parser.add_argument("--render", action="store_true", help="Only redraw compat.md from JSON.")
    args = parser.parse_args()
    if args.render:
        table = markdown(json.loads((args.out / "compat.json").read_text()))
        (args.out / "compat.md").write_text(table)
        print(table)
        return
    here = installed_runtimes()
    columns = {
        f"onnxruntime {here['ort']} (installed)": lambda p, f: run_here(p, f, "cpu"),
    }
    for spec in EXTERNAL:
        env = runtime_env(parse_target(spec, here))
        columns[env.label] = lambda p, f, env=env: env.run(p, [f])[0]
    columns[f"openvino {here.get('openvino')} (installed)"] = lambda p, f: run_here(
        p, f, "openvino"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="segdeploy-compat-") as tmp:
        for item in args.models.split(","):
            arch, variant = item.split(":")
            started = time.perf_counter()
            checkpoint = make_checkpoint(arch, variant, Path(tmp))
            files = make_artifacts(checkpoint)
            multiple = get_spec(arch).size_multiple
            for kind in ARTIFACTS:
                feed = inputs_for(kind, multiple)
                path = files[kind]
                reference = None if isinstance(path, str) else run_here(path, feed, "cpu")
                row = {"model": item, "artifact": kind, "cells": {}}
                for label, runner in columns.items():
                    row["cells"][label] = cell(kind, path, feed, reference, runner)
                rows.append(row)
                print(item, kind, {k: v["result"] for k, v in row["cells"].items()}, flush=True)
            print(f"{item}: {time.perf_counter() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": platform.processor() or platform.machine(),
        "installed": here,
        "columns": list(columns),
        "rows": rows,
    }
    (args.out / "compat.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / "compat.md").write_text(table)
    print(table)


def _short(c: dict) -> str:
    if c["result"] == "ok":
        if "identical" in c:
            return "ok, mask identical"
        return f"ok ({c['max_abs']:.0e}, {c['argmax']:.0%})"
    reason = c.get("reason", "")
    needs = re.search(r"exported for (\S+ >=\S+)", reason)
    if needs:
        return f"refused in one sentence (needs {needs[1]})"
    reason = re.sub(r"^\S+ [\d.]+ refused or failed: ", "", reason)
    return f"{c['result']}: {reason[:60]}" if reason else c["result"]


def markdown(result: dict) -> str:
    columns = result["columns"]
    lines = ["| model | file | " + " | ".join(columns) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(columns))
    for row in result["rows"]:
        cells = [_short(row["cells"][c]) for c in columns]
        lines.append(f"| {row['model']} | {row['artifact']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
