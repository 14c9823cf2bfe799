"""``--target ort-mobile``: the ``.ort`` file of ONNX Runtime's mobile and minimal builds.

Beside ``x.onnx`` the export writes, with ONNX Runtime's own tools:

* ``x.ort``: the flatbuffer, by ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed
  optimizations at level ``all``, the tool's default, which leaves out the x86-only NCHWc layout
  so the file runs on ARM);
* ``x.required_operators.config``: the operators a reduced build must include
  (``build.sh --include_ops_by_config``), written by the same tool;
* ``x.mobile_usability.txt``: the report of ``check_onnx_model_mobile_usability`` (whether the
  NNAPI or CoreML execution providers may help, and what they lack).

Where the card travels: inside the ``.ort`` file. The ORT flatbuffer keeps the ONNX model's
``metadata_props`` (measured with onnxruntime 1.31: every key of the ``.onnx`` reads back through
``get_modelmeta().custom_metadata_map``, which every build, minimal ones included, exposes), so
``open_model("x.ort")`` reads the card, content hash and target record from the file itself and
no sidecar can be lost or paired with the wrong file.

Parity: the ``.ort`` file's outputs are compared with the ``.onnx`` file's on the gate's shapes in
this onnxruntime (a mobile build runs the same CPU kernels); the result goes in the export's
parity report under ``context.mobile``.
"""

from __future__ import annotations

import logging
import pathlib
import tempfile
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import numpy as np

from segdeploy.core.errors import SegdeployError

#: ``.ort`` outputs may differ from the ``.onnx`` file's by float rounding only.
MOBILE_ATOL = 1e-5


def ort_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.ort``."""
    return Path(onnx_path).with_suffix(".ort")


def operators_config_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.required_operators.config`` (the name ONNX Runtime's tool gives it)."""
    return Path(onnx_path).with_suffix(".required_operators.config")


def usability_path(onnx_path: str | Path) -> Path:
    """``x.onnx`` -> ``x.mobile_usability.txt``."""
    return Path(onnx_path).with_suffix(".mobile_usability.txt")


@dataclass
class MobileBuild:
    """The three files of an ``ort-mobile`` export (destination -> bytes) and the parity record."""

    files: dict[Path, bytes]
    parity: dict


def build_mobile(onnx_bytes: bytes, out: Path, input_name: str, shapes, channels: int):
    """Convert the sealed export ``onnx_bytes`` (destined for ``out``) to ``.ort``, write its
    operator config and usability report, and compare the ``.ort`` with the ``.onnx`` on
    ``shapes`` (``(batch, height, width)``).

    Raises:
        SegdeployError: the conversion failed, or the ``.ort`` file disagrees with the ``.onnx``.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    with tempfile.TemporaryDirectory(prefix="segdeploy-mobile-") as tmp:
        source = Path(tmp) / out.name
        source.write_bytes(onnx_bytes)
        tool_log = logging.getLogger("ort_format_model.utils")  # logs "Created config" at INFO
        level, tool_log.level = tool_log.level, logging.WARNING
        try:
            with redirect_stdout(StringIO()):
                convert_onnx_models_to_ort(source, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as err:  # the tool raises whatever ORT raised
            raise SegdeployError(
                f"onnxruntime's convert_onnx_models_to_ort could not write {ort_path(out)}: {err}"
            ) from None
        finally:
            tool_log.setLevel(level)
        ort_bytes = ort_path(source).read_bytes()
        config = operators_config_path(source).read_text()
        usability = usability_report(source)
    # The tool names the temporary folder; the config should name the published file.
    config = config.replace(str(ort_path(source)), ort_path(out).name)
    parity = compare_ort(onnx_bytes, ort_bytes, input_name, shapes, channels)
    if not parity["passed"]:
        raise SegdeployError(
            f"{ort_path(out)} disagrees with {out.name}: max abs difference "
            f"{parity['max_abs']:.3g} (expected at most {MOBILE_ATOL}), so neither was written"
        )
    files = {
        ort_path(out): ort_bytes,
        operators_config_path(out): config.encode(),
        usability_path(out): usability.encode(),
    }
    return MobileBuild(files, parity)


def usability_report(model: Path) -> str:
    """The text ``check_onnx_model_mobile_usability`` logs for ``model``, and its verdict."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    text = StringIO()
    logger = logging.getLogger("segdeploy.mobile_usability")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    try:
        with redirect_stdout(StringIO()):
            try_eps = usability_checker.analyze_model(pathlib.Path(model), logger=logger)
    finally:
        logger.removeHandler(handler)
    verdict = (
        "NNAPI or CoreML may help: compare them with the CPU EP on the device"
        if try_eps
        else "use the CPU EP"
    )
    return f"{text.getvalue().replace(str(model.parent) + '/', '')}verdict: {verdict}\n"


def compare_ort(onnx_bytes: bytes, ort_bytes: bytes, input_name: str, shapes, channels: int):
    """Outputs of the ``.ort`` against the ``.onnx`` in this onnxruntime (CPU), one seeded random
    input per shape: max abs difference, bitwise equality and argmax agreement."""
    from segdeploy.runtime.session import SessionOptions, create_session

    options = SessionOptions(provider="cpu", intra_op_threads=1)
    sessions = [create_session(b, options) for b in (onnx_bytes, ort_bytes)]
    rng = np.random.default_rng(0)
    rows, worst = [], 0.0
    for batch, height, width in shapes:
        x = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
        onnx_out, ort_out = (s.run(None, {input_name: x})[0] for s in sessions)
        diff = float(np.abs(onnx_out - ort_out).max())
        worst = max(worst, diff)
        agree = float((onnx_out.argmax(1) == ort_out.argmax(1)).mean())
        rows.append(
            {
                "shape": [batch, channels, height, width],
                "max_abs": diff,
                "bitwise_equal": bool(np.array_equal(onnx_out, ort_out)),
                "argmax_agreement": agree,
            }
        )
    return {"max_abs": worst, "atol": MOBILE_ATOL, "passed": worst <= MOBILE_ATOL, "shapes": rows}
