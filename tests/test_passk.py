"""pass@k estimators against exact formulas; interval coverage on simulated data."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from sftrl.eval import passk


def _exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_matches_math_comb_on_every_small_case():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                got = float(passk.pass_at_k(n, c, k)[0])
                assert got == pytest.approx(float(_exact(n, c, k)), abs=1e-13), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(1024, 1, 1), (1024, 1, 512), (1024, 3, 256),
                                            (1024, 100, 1000), (1024, 1023, 2), (512, 7, 256)])
def test_stable_for_large_n(n, c, k):
    # math.comb(1024, 512) has ~300 digits: a float ratio of binomials would overflow.
    assert float(passk.pass_at_k(n, c, k)[0]) == pytest.approx(float(_exact(n, c, k)), rel=1e-12)


def test_vectorised_over_prompts_with_different_n():
    n = np.array([4, 8, 16, 16])
    c = np.array([0, 3, 16, 5])
    got = passk.pass_at_k(n, c, 4)
    want = [float(_exact(int(a), int(b), 4)) for a, b in zip(n, c, strict=True)]
    np.testing.assert_allclose(got, want, atol=1e-14)
    np.testing.assert_allclose(passk.pass_at_k(n, c, 1), c / n, atol=1e-15)


@pytest.mark.parametrize(("n", "c", "k", "match"), [
    (4, 5, 1, "c = 5 correct of n = 4"), (4, -1, 1, "c = -1"), (4, 2, 5, "k = 5 exceeds"),
    (0, 0, 1, "n >= 1"), (4, 2, 0, "positive integer"), (4, 1.5, 1, "integers"),
])
def test_bad_counts_are_named(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        passk.pass_at_k(n, c, k)


def test_curve_ks_and_values():
    assert passk.curve_ks(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert passk.curve_ks(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    curve = passk.pass_at_k_curve([8, 8, 8], [0, 2, 8], num_bootstrap=0)
    assert curve.ks == [1, 2, 4, 8]
    assert curve.at(1) == pytest.approx((0 + 2 / 8 + 1) / 3)
    assert curve.at(8) == pytest.approx(2 / 3)
    assert curve.learnable_share == pytest.approx(1 / 3)
    assert list(curve.to_json()["pass_at_k"]) == ["1", "2", "4", "8"]


def test_bootstrap_interval_covers_the_truth():
    """Prompts with known success rates; the 90% interval should hold the truth ~90% of the time."""
    rng = np.random.default_rng(0)
    rates = rng.beta(0.5, 1.5, size=200)
    n, k = 32, 8
    truth = float(np.mean(1 - (1 - rates) ** k))  # expected pass@k over this prompt population
    hits = 0
    trials = 150
    for t in range(trials):
        prompts = rng.choice(rates, size=len(rates))
        c = rng.binomial(n, prompts)
        curve = passk.pass_at_k_curve(np.full(len(c), n), c, [k], num_bootstrap=300,
                                      confidence=0.9, seed=t)
        hits += curve.ci_low[0] <= truth <= curve.ci_high[0]
    assert 0.82 <= hits / trials <= 0.97


def test_majority_at_k():
    answers = [["4", "4", "5", None], ["1", "2", "2", "2"], [None, None, None, None]]
    correct = [[True, True, False, False], [True, False, False, False], [False] * 4]
    assert passk.majority_at_k(answers, correct, 4) == pytest.approx((1 + 0 + 0) / 3)
    # one sample: maj@1 = fraction of samples that are correct and extracted
    maj1 = passk.majority_at_k(answers, correct, 1, num_draws=4000, seed=1)
    assert maj1 == pytest.approx((2 / 4 + 1 / 4 + 0) / 3, abs=0.02)
    # a tie between a right and a wrong answer counts one half
    assert passk.majority_at_k([["a", "b"]], [[True, False]], 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k = 5 but 4 samples"):
        passk.majority_at_k(answers, correct, 5)


def test_beta_binomial_recovers_parameters_and_extrapolates():
    rng = np.random.default_rng(3)
    alpha, beta = 0.6, 2.0
    rates = rng.beta(alpha, beta, size=3000)
    c = rng.binomial(64, rates)
    fit = passk.fit_beta_binomial(np.full(len(c), 64), c)
    assert fit.alpha == pytest.approx(alpha, rel=0.15)
    assert fit.beta == pytest.approx(beta, rel=0.15)
    assert fit.max_abs_error < 0.02
    truth_1024 = 1 - np.exp(np.log(np.mean((1 - rates) ** 1024)))
    assert float(fit.pass_at_k(1024)) == pytest.approx(truth_1024, abs=0.03)
    with pytest.raises(ValueError, match="all-wrong"):
        passk.fit_beta_binomial([8, 8], [0, 0])


# --- the guessing control ---------------------------------------------------------------------


def test_mismatched_answer_control_against_exact_counts():
    answers = [["1", "2", "1"], ["2", "2", "3"], ["3", None, "1"]]
    golds = ["1", "2", "3"]
    # shift 1: prompt 0 vs "2" (1 of 3), prompt 1 vs "3" (1 of 3), prompt 2 vs "1" (1 of 3)
    assert passk.mismatched_answer_pass_at_k(answers, golds, 1, shifts=1) == pytest.approx(1 / 3)
    assert passk.mismatched_answer_pass_at_k(answers, golds, 3, shifts=1) == pytest.approx(1.0)
    # shift 2 adds prompt 0 vs "3", 1 vs "1", 2 vs "2": none match
    expected = (3 * float(_exact(3, 1, 2)) + 3 * 0.0) / 6
    assert passk.mismatched_answer_pass_at_k(answers, golds, 2, shifts=2) == pytest.approx(expected)
    # shifts beyond P - 1 wrap no further; pairs with equal golds are skipped
    assert passk.mismatched_answer_pass_at_k(answers, golds, 1, shifts=50) == pytest.approx(1 / 6)
    same = ["1", "1", "2"]  # prompt 0 vs 1 skipped (equal golds)
    got = passk.mismatched_answer_pass_at_k(answers, same, 1, shifts=1)
    # pairs: 1 vs "2" (2 of 3), 2 vs "1" (1 of 3)
    assert got == pytest.approx(1 / 2)


def test_mismatched_answer_control_tells_guessing_from_reasoning():
    rng = np.random.default_rng(0)
    golds = [str(g) for g in rng.integers(1, 30, size=64)]
    # A guesser draws answers from the task's answer range, whatever the prompt says.
    guesser = [[str(a) for a in rng.integers(1, 30, size=64)] for _ in golds]
    true = float(np.mean(passk.pass_at_k(64, [sum(a == g for a in row)
                                             for row, g in zip(guesser, golds, strict=True)], 8)))
    control = passk.mismatched_answer_pass_at_k(guesser, golds, 8)
    # about 1 - (28/29)^8 = 0.24 each: a control this close to pass@k means guessing
    assert control == pytest.approx(true, abs=0.06) and control > 0.15
    # A reasoner answers its own prompt: full marks, and no credit against another's answer.
    reasoner = [[g] * 64 for g in golds]
    distinct = [g for i, g in enumerate(golds) if g not in golds[:i]]
    assert len(distinct) > 10
    assert passk.mismatched_answer_pass_at_k(reasoner, golds, 8) == 0.0


@pytest.mark.parametrize("answers, golds, kwargs, match", [
    ([["1"]], ["1"], {}, "at least 2 prompts"),
    ([["1"], ["2"]], ["1"], {}, "one entry per prompt"),
    ([["1"], ["2"]], ["1", "2"], {"shifts": 0}, "shifts must be a positive integer"),
    ([["1"], ["1"]], ["1", "1"], {}, "same gold answer"),
    ([["1"], ["2"]], ["1", "2"], {"k": 2}, "exceeds the samples"),
])
def test_mismatched_answer_control_rejects_bad_input(answers, golds, kwargs, match):
    k = kwargs.pop("k", 1)
    with pytest.raises(ValueError, match=match):
        passk.mismatched_answer_pass_at_k(answers, golds, k, **kwargs)
