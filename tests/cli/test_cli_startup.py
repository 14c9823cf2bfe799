"""The command line starts on the edge install: reading the option defaults loads no torch/onnx.

Commands import their torch-side modules when they run; the defaults they read at start-up come
from light modules (config dataclasses, the export contract), so ``segdeploy predict`` works with
the base install and ``segdeploy --help`` answers at once.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchvision", "onnx", "onnxscript", "onnxsim")


def test_importing_the_cli_loads_neither_torch_nor_onnx():
    code = (
        "import sys\n"
        "from segdeploy.cli import app\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
