"""The value and decision layers of the parity check on synthetic logits: the reduced-precision
tolerances must fail inverted logits and a zeroed class, and pass a faithful candidate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segdeploy.core.parity import CaseReport, Tolerance, compare_values, pool_cases
from segdeploy.export.contract import CONTRACTS

# (batch, classes, height, width) logits and (batch, classes) scores, class axis 1 for both.
SHAPES = {"segmentation": (2, 4, 24, 32), "classification": (64, 5)}
VARIANTS = [(task, precision) for task in SHAPES for precision in ("int8", "fp16")]


def reference_logits(task: str, seed: int = 0) -> np.ndarray:
    return 3 * np.random.default_rng(seed).standard_normal(SHAPES[task]).astype(np.float32)


def compare(reference, candidate, tolerance) -> CaseReport:
    return compare_values(reference, candidate, tolerance, CaseReport("cpu", reference.shape))


def argmax_failures(case: CaseReport) -> list[str]:
    return [failure for failure in case.failures if failure.startswith("argmax")]


@pytest.mark.parametrize(("task", "precision"), VARIANTS)
def test_inverted_logits_fail_on_their_decisions(task, precision):
    reference = reference_logits(task)
    case = compare(reference, -reference, CONTRACTS[task].tolerances[precision])
    assert not case.passed
    assert case.argmax_agreement == 0.0
    assert argmax_failures(case), case.failures


@pytest.mark.parametrize(("task", "precision"), VARIANTS)
def test_a_zeroed_class_fails_on_its_decisions(task, precision):
    reference = reference_logits(task)
    candidate = reference.copy()
    candidate[:, 1] = 0.0  # one class's logits gone, the others intact
    tolerance = CONTRACTS[task].tolerances[precision]
    case = compare(reference, candidate, tolerance)
    assert case.argmax_agreement < tolerance.min_argmax_agreement
    assert argmax_failures(case), case.failures


@pytest.mark.parametrize(("task", "precision"), VARIANTS)
def test_a_faithful_candidate_passes(task, precision):
    reference = reference_logits(task)
    noise = 1e-3 * np.random.default_rng(1).standard_normal(reference.shape)
    candidate = (reference + noise).astype(np.float32)
    case = compare(reference, candidate, CONTRACTS[task].tolerances[precision])
    assert case.passed, case.failures
    assert case.positions == reference.size // reference.shape[1]


def test_int8_judges_decisions_only_and_fp16_values_too():
    reference = reference_logits("segmentation")
    shifted = reference + 100.0  # every logit moved, no decision changed
    tolerances = CONTRACTS["segmentation"].tolerances
    assert not tolerances["int8"].judges_values
    assert compare(reference, shifted, tolerances["int8"]).passed
    fp16 = compare(reference, shifted, tolerances["fp16"])
    assert [f for f in fp16.failures if f.startswith("values")] and not argmax_failures(fp16)


def test_the_decisive_margin_no_longer_follows_atol():
    """An atol of 1e3 once made no position decisive, so inverted logits passed."""
    reference = reference_logits("segmentation")
    huge_atol = Tolerance(atol=1e3, rtol=0.0, min_argmax_agreement=0.95)
    case = compare(reference, -reference, huge_atol)
    assert case.decisive_positions == case.positions and argmax_failures(case)


def test_fp32_leaves_near_ties_out_of_its_decisions():
    reference = np.zeros((1, 2, 1, 4), np.float32)
    reference[0, 0] = [1.0, 1.0, 1.0, 1e-4]  # the last position is a near-tie
    candidate = reference.copy()
    candidate[0, 1, 0, 3] = 2e-4  # flips the near-tie, within atol
    fp32 = CONTRACTS["segmentation"].tolerances["fp32"]
    case = compare(reference, candidate, fp32)
    assert case.passed, case.failures
    assert (case.decisive_positions, case.argmax_agreement) == (3, 0.75)


def test_no_decisive_position_cannot_pass_when_values_are_not_judged():
    reference = reference_logits("segmentation")
    blind = Tolerance(atol=math.inf, rtol=0.0, min_argmax_agreement=0.95, decisive_margin=1e9)
    case = compare(reference, -reference, blind)
    assert case.decisive_argmax_agreement is None
    assert any("cannot be judged" in failure for failure in case.failures)


def test_non_finite_values_fail():
    reference = reference_logits("classification")
    candidate = reference.copy()
    candidate[3, 2] = np.nan
    case = compare(reference, candidate, CONTRACTS["classification"].tolerances["int8"])
    assert case.nonfinite_candidate == 1 and not case.passed


def test_pooled_agreement_weighs_every_position():
    tolerance = CONTRACTS["segmentation"].tolerances["int8"]
    large = reference_logits("segmentation")  # 2 x 24 x 32 = 1536 positions, all agreeing
    small = reference_logits("segmentation", seed=2)[:, :, :4, :4]  # 32 positions, none agree
    cases = [compare(large, large, tolerance), compare(small, -small, tolerance)]
    assert not cases[1].passed
    pooled = pool_cases(cases, tolerance, "cpu")
    assert pooled.positions == 1536 + 32
    assert pooled.argmax_agreement == pytest.approx(1536 / 1568)
    assert pooled.passed
    worse = pool_cases([compare(large, -large, tolerance), cases[0]], tolerance, "cpu")
    assert worse.argmax_agreement == pytest.approx(0.5) and not worse.passed


def test_pooling_keeps_a_case_that_could_not_be_compared():
    tolerance = CONTRACTS["segmentation"].tolerances["int8"]
    reference = reference_logits("segmentation")
    broken = compare(reference, reference[:, :3], tolerance)  # a class missing
    pooled = pool_cases([compare(reference, reference, tolerance), broken], tolerance, "cpu")
    assert not pooled.passed and any("shape" in failure for failure in pooled.failures)
