"""Without ONNX Runtime (a base install with neither extra), the runtime says what to install."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
sys.modules["onnxruntime"] = None  # as if neither onnxruntime nor onnxruntime-gpu were installed
from segdeploy.core.errors import SegdeployError
from segdeploy.runtime import open_model
try:
    open_model(sys.argv[1])
except SegdeployError as err:
    print(err)
"""


def test_missing_onnxruntime_is_one_sentence_naming_both_extras(unet_onnx) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(unet_onnx)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ONNX Runtime is not installed" in done.stdout
    assert "segdeploy[cpu]" in done.stdout and "segdeploy[gpu]" in done.stdout


def test_installed_onnxruntime_is_the_real_module() -> None:
    import onnxruntime

    from segdeploy.runtime.engine import ort

    assert ort is onnxruntime
