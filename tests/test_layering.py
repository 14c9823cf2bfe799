"""The import graph: stages point one way and the torch-free packages stay torch-free.

Arrows: ``core`` <- ``data``, ``models``, ``runtime`` <- ``train``, ``serve`` <- ``export`` <-
``tools`` <- ``cli``. ``serve`` (Triton model repositories and serving) sits on the runtime and
stays torch-free. A module may import its own package and packages of a lower rank, never one
beside or above it. Imports inside functions count too (the CLI's lazy imports included), so a
lazy import cannot hide an arrow pointing up. Run ``pytest tests/test_layering.py -v`` to see the
rules hold.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import segdeploy

PACKAGE_ROOT = Path(segdeploy.__file__).parent
RANK = {"core": 0, "data": 1, "models": 1, "runtime": 1, "train": 2, "export": 3, "tools": 4}
RANK["serve"] = 2
RANK["cli"] = 5
#: Packages that must run on the edge install (onnxruntime, numpy, pillow): no torch, no onnx.
TORCH_FREE = ("core", "data", "runtime", "serve")
HEAVY = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim")
#: Modules of the export package that work on ONNX files only: onnx is fine, torch is not.
ONNX_ONLY = ("contract", "onnx_file", "gates", "quantize", "fp16", "end_to_end", "target_check")


def stage_modules() -> list[tuple[str, Path]]:
    """``(stage, path)`` of every module inside a stage package."""
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT).parts
        if len(parts) > 1:
            found.append((parts[0], path))
    return found


def imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_stage_package_has_a_rank():
    stages = {stage for stage, _ in stage_modules()}
    assert stages == set(RANK), f"give new packages a rank here: {sorted(stages ^ set(RANK))}"


def module_id(value) -> str:
    return str(value.relative_to(PACKAGE_ROOT)) if isinstance(value, Path) else str(value)


def banned_imports(stage: str, path: Path) -> tuple[str, ...]:
    """The heavy packages a module may not import: all of them in the torch-free packages,
    torch in the export modules that work on files only, none elsewhere."""
    if stage in TORCH_FREE:
        return HEAVY
    if stage == "export" and path.stem in ONNX_ONLY:
        return ("torch", "torchvision")
    return ()


LIGHT_MODULES = [(s, p) for s, p in stage_modules() if banned_imports(s, p)]


@pytest.mark.parametrize(("stage", "path"), stage_modules(), ids=module_id)
def test_imports_point_down(stage, path):
    upward = []
    for name in imported_names(path):
        parts = name.split(".")
        if parts[0] != "segdeploy" or len(parts) < 2 or parts[1] not in RANK:
            continue
        target = parts[1]
        if target != stage and RANK[target] >= RANK[stage]:
            upward.append(name)
    assert not upward, f"{path.relative_to(PACKAGE_ROOT)} ({stage}) imports {sorted(upward)}"


@pytest.mark.parametrize(("stage", "path"), LIGHT_MODULES, ids=module_id)
def test_torch_free_modules_name_no_torch(stage, path):
    banned = banned_imports(stage, path)
    heavy = {n for n in imported_names(path) if n.split(".")[0] in banned}
    assert not heavy, f"{path.relative_to(PACKAGE_ROOT)} imports {sorted(heavy)}"


def test_torch_free_modules_load_without_torch():
    """Import them all in a fresh interpreter: nothing may pull torch in indirectly."""
    modules = [
        ".".join(("segdeploy", *path.relative_to(PACKAGE_ROOT).with_suffix("").parts))
        for _, path in LIGHT_MODULES
    ]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY[:2]!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"torch was loaded by {modules}"
