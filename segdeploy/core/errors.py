"""Typed errors under one base.

Every failure a user can act on (a missing file, a checkpoint that does not fit its card, a mask
with an unknown label) raises a :class:`SegdeployError` with one sentence that names the file,
what was expected and what was found. The CLI prints that sentence and exits non-zero (the codes
are in :mod:`segdeploy.cli.errors`); anything else is a bug and keeps its traceback.

The subclasses exist for Python callers that must tell failures apart: a parity failure carries
its layered report, an accuracy gate its measured result.
"""

from __future__ import annotations

from typing import Any


class SegdeployError(Exception):
    """A problem with the user's input, described in one actionable sentence."""


class DataError(SegdeployError):
    """Input data that cannot be used as it is: an unreadable image, a mask with a bad label, a
    folder in the wrong layout."""


class ProviderUnavailableError(SegdeployError):
    """An execution provider (CUDA) was asked for but cannot run here; never a silent fallback."""


class ParityError(SegdeployError):
    """ONNX Runtime disagrees with the reference; ``report`` is the full
    :class:`~segdeploy.core.parity.ParityReport`."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class AccuracyGateError(SegdeployError):
    """A reduced-precision variant lost more accuracy than allowed; ``result`` holds the
    measured FP32 and variant scores."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name when the message is empty: what
    a one-sentence error quotes from a library's exception (ONNX Runtime, protobuf, ...), whose
    messages can run over many lines."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
