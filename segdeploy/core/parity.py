"""Layered comparison of a reference (PyTorch) and a candidate (ONNX Runtime) output.

Checks run in layers, as Optimum's validation and Polygraphy do: output names, then symbolic
dims, then shapes, then values. Every failure is collected (a report never stops at the first)
and the value layer reports the statistics a reviewer needs: max absolute and relative error, the
smallest absolute tolerance that would have passed, argmax agreement and NaN/Inf counts.

numpy only: the runtime and the tests use it without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Pass when ``|candidate - reference| <= atol + rtol * |reference|`` everywhere and the
    class argmax agrees on at least ``min_argmax_agreement`` of the decisive positions.

    A position is *decisive* when the reference's top-two logits differ by more than
    ``2 * atol``: closer than that, a legitimate rounding difference may flip the argmax.
    """

    atol: float
    rtol: float
    min_argmax_agreement: float


@dataclass
class CaseReport:
    """Comparison of one input shape on one execution provider."""

    provider: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    atol_needed: float | None = None
    argmax_agreement: float | None = None
    decisive_argmax_agreement: float | None = None
    nonfinite_reference: int = 0
    nonfinite_candidate: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class ParityReport:
    """Everything one parity run found: structural failures plus one case per shape/provider."""

    model: str
    tolerance: Tolerance
    structural_failures: list[str] = field(default_factory=list)
    cases: list[CaseReport] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            not self.structural_failures and bool(self.cases) and all(c.passed for c in self.cases)
        )

    def failures(self) -> list[str]:
        found = list(self.structural_failures)
        for case in self.cases:
            shape = "x".join(map(str, case.input_shape))
            found += [f"[{case.provider} {shape}] {failure}" for failure in case.failures]
        return found

    def worst(self, key: str) -> float | None:
        values = [getattr(c, key) for c in self.cases if getattr(c, key) is not None]
        if not values:
            return None
        return min(values) if "agreement" in key else max(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "tolerance": asdict(self.tolerance),
            "structural_failures": self.structural_failures,
            "cases": [c.to_dict() for c in self.cases],
            "context": self.context,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_names(expected: list[str], found: list[str], what: str) -> list[str]:
    """Layer 1: the graph's input or output names are the declared ones, in order."""
    if list(expected) != list(found):
        return [f"{what} names: expected {list(expected)}, found {list(found)}"]
    return []


def check_dims(expected: list[str | int], found: list[str | int], what: str) -> list[str]:
    """Layer 2: each dim is the declared symbol (e.g. ``16*h``) or the declared fixed size."""
    if list(expected) != list(found):
        return [f"{what} dims: expected {list(expected)}, found {list(found)}"]
    return []


def _argmax_stats(reference: np.ndarray, candidate: np.ndarray, class_axis: int, atol: float):
    ref_top = np.argmax(reference, axis=class_axis)
    agree = ref_top == np.argmax(candidate, axis=class_axis)
    top2 = -np.partition(-reference, 1, axis=class_axis)
    margin = np.take(top2, 0, axis=class_axis) - np.take(top2, 1, axis=class_axis)
    decisive = margin > 2 * atol
    decisive_agreement = float(agree[decisive].mean()) if decisive.any() else 1.0
    return float(agree.mean()), decisive_agreement


def compare_values(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    case: CaseReport,
    class_axis: int = 1,
) -> CaseReport:
    """Layers 3 and 4: shapes, then values; fills ``case`` and returns it."""
    case.output_shape = tuple(candidate.shape)
    if reference.shape != candidate.shape:
        case.failures.append(f"shape: expected {reference.shape}, found {candidate.shape}")
        return case
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    case.nonfinite_reference = int((~np.isfinite(reference)).sum())
    case.nonfinite_candidate = int((~np.isfinite(candidate)).sum())
    if case.nonfinite_candidate or case.nonfinite_reference:
        case.failures.append(
            f"non-finite values: {case.nonfinite_reference} in PyTorch, "
            f"{case.nonfinite_candidate} in ONNX Runtime"
        )
        return case
    abs_err = np.abs(candidate - reference)
    case.max_abs_error = float(abs_err.max())
    case.max_rel_error = float((abs_err / np.maximum(np.abs(reference), 1e-6)).max())
    case.atol_needed = float(np.maximum(abs_err - tolerance.rtol * np.abs(reference), 0).max())
    case.argmax_agreement, case.decisive_argmax_agreement = _argmax_stats(
        reference, candidate, class_axis, tolerance.atol
    )
    if case.atol_needed > tolerance.atol:
        case.failures.append(
            f"values: max abs error {case.max_abs_error:.3g} needs atol {case.atol_needed:.3g} "
            f"(declared {tolerance.atol:g} with rtol {tolerance.rtol:g})"
        )
    if case.decisive_argmax_agreement < tolerance.min_argmax_agreement:
        case.failures.append(
            f"argmax agrees on {case.decisive_argmax_agreement:.4%} of decisive positions "
            f"(declared minimum {tolerance.min_argmax_agreement:.4%})"
        )
    return case
