"""The end-to-end graph: uint8 image in, uint8 class mask out, every step inside one ONNX file.

``x.onnx`` -> ``x.e2e.onnx``. The graph wraps the export's model in the steps the Python runtime
(:mod:`segdeploy.runtime`) does in numpy and Pillow, so an app in C++, C#, Java, Rust or
JavaScript needs nothing but an ONNX Runtime binding and the decoded pixels::

    image (height, width, C) uint8       one image per call, any height and width
                                         (or, made with batch=True, (N, height, width, C):
                                         N images of one size; every output gains the N axis)
      -> float, (1, C, height, width)
      -> resize by the card's input contract ('fixed', 'shorter_side'; nothing for 'pad')
      -> pad at the bottom and right to the size multiple with the card's padding mode
      -> normalise: (pixel / 255 - mean) / std
      -> the model
      -> segmentation: crop the padding, resize the scores back ('fixed', 'shorter_side'),
         argmax -> mask (height, width) uint8
      -> classification: softmax -> probabilities (K,) float32, argmax -> label () int64

Two steps are built from index arithmetic and Gather rather than the ONNX op of the same name,
because the runtime's results differ from the op's:

* padding: ONNX ``Pad``'s reflect mode needs the pad to be smaller than the image (a 5-pixel-high
  image padded to 16 breaks it), while numpy reflects again and again. The graph computes numpy's
  source row and column for every padded position (a triangle wave of period ``2 (n - 1)``;
  ``edge``: the last one), so images of any size, down to 1x1, get the runtime's pixels.
* resizing: the runtime resizes with Pillow, whose bilinear filter widens when shrinking, drops
  taps outside the image and, for 8-bit images, rounds the weights to 22-bit fixed point and the
  result after each pass, in an order that depends on the sizes. ONNX ``Resize`` with
  ``antialias`` and ``exclude_outside`` computes the same filter in float and rounds differently
  on about 1 % of the pixels; the graph computes Pillow's coefficients and integer sums and gets
  its pixels exactly (at some cost: a 4000x3000 photo resized to 224x224 took about 0.4 s here,
  Pillow 0.2 s).

The graph always runs the whole image; ``predict`` may tile images above a pixel budget
(tiled prediction), so the two are compared below it.

The card stays in ``metadata_props``, with :data:`~segdeploy.core.artifacts.END_TO_END_KEY`
describing the inputs, outputs and the parity gate's result. The gate (:func:`check_end_to_end`)
runs the graph and ``open_model(export).predict`` on the same images at odd, non-square and tiny
sizes; the file is written only if the masks agree on at least :data:`MIN_PIXEL_AGREEMENT` of the
pixels and the scores behind them within :data:`SCORE_RTOL` (classification: every label, the
probabilities within :data:`PROBABILITY_ATOL`). Torch-free: it needs onnx and onnxruntime.

Laid out as a builder, a gate and the publisher: :mod:`~segdeploy.export.e2e_ops` (a node
builder, Pillow's resize and numpy's padding as ONNX ops), :mod:`~segdeploy.export.e2e_graph`
(the graph around an export), :mod:`~segdeploy.export.e2e_gate` (the comparison with
``predict``), and here :func:`export_end_to_end`, which publishes the file through
:mod:`segdeploy.core.publish`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from segdeploy.core.artifacts import END_TO_END_KEY, PARENT_SHA256_KEY, end_to_end_path
from segdeploy.core.errors import ParityError
from segdeploy.core.fileio import file_sha256
from segdeploy.core.images import ImageSource
from segdeploy.core.publish import publishing
from segdeploy.export.e2e_gate import (
    GATE_SIZES,
    MIN_PIXEL_AGREEMENT,
    PROBABILITY_ATOL,
    SCORE_RTOL,
    EndToEndReport,
    ImageCheck,
    check_end_to_end,
    gate_images,
    named_images,
    refusal,
)
from segdeploy.export.e2e_graph import (
    END_TO_END_FORMAT,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAMES,
    SCORES_NAME,
    build_end_to_end,
    io_description,
)
from segdeploy.export.onnx_file import attach_metadata, load_onnx, read_card, seal
from segdeploy.export.target_check import end_to_end_on_target

__all__ = [
    "END_TO_END_FORMAT",
    "GATE_SIZES",
    "INPUT_NAME",
    "MIN_OPSET",
    "MIN_PIXEL_AGREEMENT",
    "OUTPUT_NAMES",
    "PROBABILITY_ATOL",
    "SCORES_NAME",
    "SCORE_RTOL",
    "EndToEndReport",
    "EndToEndResult",
    "ImageCheck",
    "build_end_to_end",
    "check_end_to_end",
    "export_end_to_end",
    "gate_images",
    "io_description",
]


@dataclass(frozen=True)
class EndToEndResult:
    """What :func:`export_end_to_end` wrote: the file, the gate's report and the seconds taken."""

    path: Path
    report: EndToEndReport
    seconds: float


def export_end_to_end(
    onnx_path: str | Path,
    out: str | Path | None = None,
    images: Sequence[ImageSource] | None = None,
    force: bool = False,
    batch: bool = False,
) -> EndToEndResult:
    """Write the end-to-end graph of a segdeploy export (``x.onnx`` -> ``x.e2e.onnx``); with
    ``batch``, one that takes ``(N, height, width, C)`` (:func:`build_end_to_end`).

    The graph is built, checked against ``segdeploy.runtime``'s ``predict`` on ``images``
    (default: :func:`gate_images`, odd, non-square and tiny sizes) and written atomically only if
    it passes; the gate's result goes into its metadata.

    Raises:
        SegdeployError: unreadable export or one that cannot be wrapped, an existing ``out``
            without ``force``, an ``out`` that is the export itself (even with ``force``), or
            another writer of ``out`` at work.
        ParityError: the graph disagrees with the runtime (``.report`` is the
            :class:`EndToEndReport`); nothing is written.
    """
    started = time.perf_counter()
    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else end_to_end_path(onnx_path)
    model = load_onnx(onnx_path)
    card = read_card(model, str(onnx_path))
    # The lock is held from the checks to the rename; the export it wraps is never replaced.
    with publishing(out, "end-to-end graph", force, inputs=[onnx_path]) as staging:
        e2e = build_end_to_end(model, card, str(onnx_path), batch)
        report = check_end_to_end(e2e, onnx_path, images)
        if not report.passed:
            raise ParityError(refusal(onnx_path, report), report)
        # On the target's own runtime too (onnxruntime-web for ort-web): the masks must be the
        # bytes predict writes.
        named = named_images(images, card)
        on_target = end_to_end_on_target(e2e, model, onnx_path, named, batch)
        record = io_description(card, batch) | {"gate": report.to_dict(), "on_target": on_target}
        attach_metadata(
            e2e,
            {
                END_TO_END_KEY: json.dumps(record, sort_keys=True),
                PARENT_SHA256_KEY: file_sha256(onnx_path),
            },
        )
        seal(e2e)
        staging.stage(out, lambda tmp: onnx.save(e2e, tmp))
    return EndToEndResult(out, report, time.perf_counter() - started)
