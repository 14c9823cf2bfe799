"""Run an ONNX file on this interpreter's ONNX Runtime: ``.npz`` inputs in, ``.npz`` outputs out.

The parity gate checks a file on the runtime it targets (``--target ort>=1.16``) by running this
module with that runtime's own Python (a virtual environment holding only ``onnxruntime`` and
``numpy``, see :mod:`segdeploy.export.target_check`) and ``PYTHONPATH`` pointing at segdeploy::

    python -m segdeploy.runtime.npz_runner MODEL.onnx INPUTS.npz OUTPUTS.npz [cpu|openvino]

The file is opened through :func:`segdeploy.runtime.session.create_session`, as an application
would, so a file the runtime cannot open is refused with segdeploy's sentence. The outputs are
saved under the graph's output names, and the runtime's version under ``__version__``. A
:class:`~segdeploy.core.errors.SegdeployError` is printed as one line on stderr, exit code 3.
Torch-free, and it runs on numpy 1.x (older ONNX Runtime releases need numpy < 2).
"""

from __future__ import annotations

import sys

import numpy as np

from segdeploy.core.errors import SegdeployError

#: Exit code of a refused file (a SegdeployError), distinct from a crash (1).
REFUSED = 3


def run(model_path: str, inputs_path: str, outputs_path: str, provider: str = "cpu") -> None:
    """Open ``model_path`` on the CPU, run it once per feed of ``inputs_path`` (arrays named
    ``<run>/<input name>``) and write the outputs as ``<run>/<output name>``, and the runtime's
    version as ``__version__``, to ``outputs_path``."""
    from segdeploy.runtime.session import SessionOptions, create_session

    session = create_session(model_path, SessionOptions(provider=provider, intra_op_threads=1))
    feeds: dict[str, dict[str, np.ndarray]] = {}
    with np.load(inputs_path) as data:
        for key in data.files:
            run_id, name = key.split("/", 1)
            feeds.setdefault(run_id, {})[name] = data[key]
    names = [o.name for o in session.get_outputs()]
    outputs = {"__version__": np.array(_version(provider))}
    for run_id, feed in feeds.items():
        for name, value in zip(names, session.run(None, feed), strict=True):
            outputs[f"{run_id}/{name}"] = value
    np.savez(outputs_path, **outputs)


def _version(provider: str) -> str:
    if provider == "openvino":
        import openvino

        return openvino.__version__
    from segdeploy.runtime.engine import ort

    return ort.__version__


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(
            "usage: python -m segdeploy.runtime.npz_runner MODEL.onnx IN.npz OUT.npz",
            file=sys.stderr,
        )
        return 2
    try:
        run(*argv)
    except SegdeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
