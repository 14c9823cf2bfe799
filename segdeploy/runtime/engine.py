"""ONNX Runtime, from whichever of its two distributions is installed.

``onnxruntime`` (CPU, about 17 MB) and ``onnxruntime-gpu`` (CUDA and CPU, about 255 MB) install
the same ``onnxruntime`` module, and installing both leaves one overwriting the other. So the base
``segdeploy`` install depends on neither: the ``cpu`` extra brings the first (edge devices),
the ``gpu`` extra the second (GPU servers), and an app that already depends on one of them
installs plain ``segdeploy`` and keeps it. Runtime modules import ``ort`` from here; without
either distribution, the first use of ``ort`` raises one sentence naming the two extras
(so ``segdeploy --help`` still works and ``segdeploy predict`` says what to install).
"""

from __future__ import annotations

from typing import Any

from segdeploy.core.errors import SegdeployError

#: How to get ONNX Runtime, for the sentence below and the README.
INSTALL_HINT = (
    "pip install 'segdeploy[cpu]' on a CPU-only device, or 'segdeploy[gpu]' where CUDA runs"
)


class RuntimeNotInstalledError(SegdeployError):
    """Neither ``onnxruntime`` nor ``onnxruntime-gpu`` is installed."""


class _NotInstalled:
    """Stands in for the ``onnxruntime`` module when it is missing: any use says what to do."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeNotInstalledError(
            f"ONNX Runtime is not installed (the base segdeploy install leaves the choice to "
            f"you): {INSTALL_HINT}"
        )


try:
    import onnxruntime as ort
except ImportError:  # a base install without the cpu or gpu extra
    ort = _NotInstalled()  # type: ignore[assignment]

__all__ = ["INSTALL_HINT", "RuntimeNotInstalledError", "ort"]
