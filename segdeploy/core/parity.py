"""Layered comparison of a reference and a candidate output: PyTorch against its FP32 export,
or the FP32 export against its INT8 / FP16 variant.

Checks run in layers, as Optimum's validation and Polygraphy do: output names, then symbolic
dims, then shapes, then values and decisions. Every failure is collected (a report never stops at
the first) and the value layer reports the statistics a reviewer needs: max absolute and relative
error, the smallest absolute tolerance that would have passed, argmax agreement (over all
positions and over the decisive ones, with their counts) and NaN/Inf counts.

numpy only: the runtime and the tests use it without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """When a candidate passes against its reference, declared per task and precision.

    * Values: ``|candidate - reference| <= atol + rtol * |reference|`` everywhere. An infinite
      ``atol`` (:data:`VALUES_NOT_JUDGED`) declares that values are not judged, only decisions:
      INT8 logits legitimately move by far more than any useful atol.
    * Decisions: the class argmax agrees on at least ``min_argmax_agreement`` of the *decisive*
      positions, those whose reference top-two logits differ by at least ``decisive_margin``.
      With a margin of 0 every position is decisive; a positive margin leaves out near-ties that a
      legitimate rounding difference may flip (FP32 against PyTorch). The margin is its own
      number: derived from an atol of 1e3 it once made no position decisive, and so let inverted
      logits pass.
    """

    atol: float
    rtol: float
    min_argmax_agreement: float
    decisive_margin: float = 0.0

    @property
    def judges_values(self) -> bool:
        """Whether values are checked at all (a finite ``atol``)."""
        return math.isfinite(self.atol)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON can hold them: ``atol`` is ``None`` when values are not judged."""
        return {**asdict(self), "atol": self.atol if self.judges_values else None}


#: ``atol`` of a tolerance that judges decisions only.
VALUES_NOT_JUDGED = math.inf


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
    positions: int = 0
    agreeing_positions: int = 0
    decisive_positions: int = 0
    agreeing_decisive_positions: int = 0
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
            "tolerance": self.tolerance.to_dict(),
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


def _argmax_counts(
    reference: np.ndarray, candidate: np.ndarray, class_axis: int, margin: float
) -> tuple[int, int, int, int]:
    """``(positions, agreeing, decisive positions, agreeing decisive positions)``."""
    agree = np.argmax(reference, axis=class_axis) == np.argmax(candidate, axis=class_axis)
    if reference.shape[class_axis] > 1:
        top2 = -np.partition(-reference, 1, axis=class_axis)
        gap = np.take(top2, 0, axis=class_axis) - np.take(top2, 1, axis=class_axis)
        decisive = gap >= margin
    else:  # one class: nothing to decide, every position agrees
        decisive = np.ones_like(agree)
    return agree.size, int(agree.sum()), int(decisive.sum()), int(agree[decisive].sum())


def _set_agreement(case: CaseReport, counts: tuple[int, int, int, int]) -> None:
    positions, agreeing, decisive, agreeing_decisive = counts
    case.positions, case.agreeing_positions = positions, agreeing
    case.decisive_positions, case.agreeing_decisive_positions = decisive, agreeing_decisive
    case.argmax_agreement = agreeing / positions if positions else None
    case.decisive_argmax_agreement = agreeing_decisive / decisive if decisive else None


def _judge(case: CaseReport, tolerance: Tolerance) -> None:
    """Append the value and decision failures of a filled-in ``case``."""
    needed = case.atol_needed
    if tolerance.judges_values and needed is not None and needed > tolerance.atol:
        case.failures.append(
            f"values: max abs error {case.max_abs_error:.3g} needs atol {needed:.3g} "
            f"(declared {tolerance.atol:g} with rtol {tolerance.rtol:g})"
        )
    agreement = case.decisive_argmax_agreement
    if agreement is None:
        # No decisive position: the decisions were not checked. With values judged, the value
        # layer vouches for every position; without, nothing would, so this cannot pass.
        if not tolerance.judges_values:
            case.failures.append(
                f"argmax: no position has a reference top-2 margin of at least "
                f"{tolerance.decisive_margin:g}, so agreement cannot be judged"
            )
        return
    if agreement < tolerance.min_argmax_agreement:
        where = "decisive positions" if tolerance.decisive_margin > 0 else "positions"
        case.failures.append(
            f"argmax agrees on {agreement:.4%} of {case.decisive_positions} {where} "
            f"(declared minimum {tolerance.min_argmax_agreement:.4%})"
        )


def compare_values(
    reference: np.ndarray,
    candidate: np.ndarray,
    tolerance: Tolerance,
    case: CaseReport,
    class_axis: int = 1,
) -> CaseReport:
    """Layers 3 and 4: shapes, then values and decisions; fills ``case`` and returns it."""
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
            f"non-finite values: {case.nonfinite_reference} in the reference, "
            f"{case.nonfinite_candidate} in the candidate"
        )
        return case
    abs_err = np.abs(candidate - reference)
    case.max_abs_error = float(abs_err.max())
    case.max_rel_error = float((abs_err / np.maximum(np.abs(reference), 1e-6)).max())
    case.atol_needed = float(np.maximum(abs_err - tolerance.rtol * np.abs(reference), 0).max())
    counts = _argmax_counts(reference, candidate, class_axis, tolerance.decisive_margin)
    _set_agreement(case, counts)
    _judge(case, tolerance)
    return case


def pool_cases(cases: list[CaseReport], tolerance: Tolerance, provider: str) -> CaseReport:
    """One case judged over every position of ``cases`` (e.g. one per image of a gate set).

    Agreement is pooled over positions, so a set is judged as a whole (a small image weighs
    what its pixels weigh); value errors are the worst of any case; a case that could not be
    compared (shape, non-finite values) fails the pooled one too.
    """
    pooled = CaseReport(provider=provider, input_shape=(len(cases),))
    for case in cases:
        pooled.nonfinite_reference += case.nonfinite_reference
        pooled.nonfinite_candidate += case.nonfinite_candidate
        if case.max_abs_error is None:
            pooled.failures += [f"[case {case.input_shape}] {f}" for f in case.failures]
    measured = [c for c in cases if c.max_abs_error is not None]
    if measured:
        pooled.max_abs_error = max(c.max_abs_error for c in measured)
        pooled.max_rel_error = max(c.max_rel_error for c in measured)
        pooled.atol_needed = max(c.atol_needed for c in measured)
    _set_agreement(
        pooled,
        (
            sum(c.positions for c in measured),
            sum(c.agreeing_positions for c in measured),
            sum(c.decisive_positions for c in measured),
            sum(c.agreeing_decisive_positions for c in measured),
        ),
    )
    if measured:
        _judge(pooled, tolerance)
    elif not pooled.failures:
        pooled.failures.append("nothing was compared")
    return pooled
