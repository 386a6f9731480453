"""The general statistics against scipy.stats and numpy: ranks, Spearman, permutation p-values,
bootstrap intervals, least-squares lines, R² (in sample, calibration splits, leave-one-out),
prediction intervals and the z-scored average."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sftrl.eval import predict, stats


def _tied(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, max(2, n // 2), size=n).astype(float)  # many ties


@pytest.mark.parametrize("seed", range(6))
def test_rankdata_and_spearman_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 5 + 3 * seed
    for x, y in [(rng.normal(size=n), rng.normal(size=n)), (_tied(rng, n), _tied(rng, n)),
                 (_tied(rng, n), rng.normal(size=n))]:
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        np.testing.assert_allclose(stats.rankdata(x), scipy_stats.rankdata(x))
        assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y)[0], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_fit_and_r2_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=12), rng.normal(size=12)
    x[:3] = x[3]  # ties do not matter to the fit, but make sure they are handled
    fit = scipy_stats.linregress(x, y)
    a, b = stats.fit_line(x, y)
    assert (a, b) == pytest.approx((fit.slope, fit.intercept), abs=1e-12)
    assert stats.r2_score(y, a * x + b) == pytest.approx(fit.rvalue**2, abs=1e-12)
    # held-out R² is 1 - SS_res/SS_tot around the held-out mean, and may be negative
    held = rng.normal(size=5)
    bad = held[::-1] * 3
    expected = 1 - np.sum((held - bad) ** 2) / np.sum((held - held.mean()) ** 2)
    assert stats.r2_score(held, bad) == pytest.approx(expected)
    assert expected < 0


def _exact_pvalue_bruteforce(x, y):
    observed = abs(scipy_stats.spearmanr(x, y)[0])
    hits = [abs(scipy_stats.spearmanr(x, np.asarray(p))[0]) >= observed - 1e-9
            for p in itertools.permutations(y)]
    return np.mean(hits)


@pytest.mark.parametrize("seed,n", [(0, 4), (1, 5), (2, 6), (3, 6)])
def test_permutation_pvalue_is_exact_enumeration_for_small_groups(seed, n):
    rng = np.random.default_rng(seed)
    x = _tied(rng, n) if seed % 2 else rng.normal(size=n)
    y = x + rng.normal(scale=0.5, size=n)
    assert stats.permutation_pvalue(x, y) == pytest.approx(_exact_pvalue_bruteforce(x, y))


def test_monte_carlo_pvalue_is_seeded_and_close_to_exact():
    rng = np.random.default_rng(7)
    n = stats.EXACT_PERMUTATION_MAX_N + 1  # the smallest group that takes the Monte Carlo path
    x = rng.normal(size=n)
    y = x + rng.normal(scale=1.5, size=n)
    # exact enumeration of all 9! pairings, vectorised: Spearman's rho is Pearson's r of ranks
    rx, ry = (scipy_stats.zscore(scipy_stats.rankdata(v)) / math.sqrt(n) for v in (x, y))
    perms = np.array(list(itertools.permutations(range(n))))
    observed = abs(scipy_stats.spearmanr(x, y)[0])
    exact = np.mean(np.abs(ry[perms] @ rx) >= observed - 1e-9)
    p1 = stats.permutation_pvalue(x, y, n_permutations=20_000, seed=3)
    assert p1 == stats.permutation_pvalue(x, y, n_permutations=20_000, seed=3)
    assert p1 == pytest.approx(exact, abs=0.015)


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_rhos():
    rng = np.random.default_rng(0)
    n, draws = 15, 500
    x = rng.normal(size=n)
    y = x + rng.normal(scale=0.5, size=n)
    lo, hi = stats.bootstrap_spearman_ci(x, y, n_bootstrap=draws, confidence=0.9, seed=1)
    # the documented resampling (points with replacement, seeded), scored by scipy
    idx = np.random.default_rng(1).integers(0, n, size=(draws, n))
    rhos = [scipy_stats.spearmanr(x[i], y[i])[0] for i in idx
            if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(rhos, [0.05, 0.95])), abs=1e-12)
    assert lo <= scipy_stats.spearmanr(x, y)[0] <= hi <= 1


def test_bootstrap_of_two_points_has_no_interval():
    # x is constant in every resample: no resample has a rho
    assert all(math.isnan(v) for v in stats.bootstrap_spearman_ci([1.0, 1.0], [0.0, 1.0]))


def test_calibration_r2_enumerates_subsets_and_leave_one_out():
    rng = np.random.default_rng(1)
    x = rng.normal(size=7)
    y = 2 * x + rng.normal(scale=0.3, size=7)
    r = stats.calibration_r2(x, y, 3)
    assert r["n_subsets"] + r["n_skipped"] == math.comb(7, 3)
    manual = []
    for subset in itertools.combinations(range(7), 3):
        rest = [i for i in range(7) if i not in subset]
        fit = scipy_stats.linregress(x[list(subset)], y[list(subset)])
        pred = fit.slope * x[rest] + fit.intercept
        manual.append(1 - np.sum((y[rest] - pred) ** 2) / np.sum((y[rest] - y[rest].mean()) ** 2))
    assert r["mean"] == pytest.approx(np.mean(manual))
    assert r["std"] == pytest.approx(np.std(manual))
    sampled = stats.calibration_r2(x, y, 3, max_subsets=10, seed=2)
    assert sampled["n_subsets"] + sampled["n_skipped"] == 10  # C(7, 3) = 35 > 10: sampled
    loo = stats.leave_one_out(x, y)
    want = []
    for i in range(7):
        keep = np.arange(7) != i
        fit = scipy_stats.linregress(x[keep], y[keep])
        want.append(fit.slope * x[i] + fit.intercept)
    np.testing.assert_allclose(loo["predictions"], want, rtol=1e-12)
    err = np.asarray(want) - y
    assert loo["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
    assert loo["mae"] == pytest.approx(np.mean(np.abs(err)))


def test_prediction_interval_matches_the_ols_matrix_form():
    rng = np.random.default_rng(4)
    x = rng.normal(size=10)
    y = 0.7 * x + rng.normal(scale=0.2, size=10)
    x_new = np.array([-2.0, 0.1, 3.0])
    pred, lo, hi = stats.prediction_interval(x, y, x_new, confidence=0.9)
    # Var(y_new - ŷ) = s² (1 + x0ᵀ (XᵀX)⁻¹ x0), with X = [x, 1] and s² the residual variance
    design = np.column_stack([x, np.ones_like(x)])
    coef, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    s2 = residual[0] / (len(x) - 2)
    new = np.column_stack([x_new, np.ones_like(x_new)])
    se = np.sqrt(s2 * (1 + np.einsum("ij,jk,ik->i", new, np.linalg.inv(design.T @ design), new)))
    half = scipy_stats.t.ppf(0.95, len(x) - 2) * se
    np.testing.assert_allclose(pred, new @ coef, rtol=1e-12)
    np.testing.assert_allclose(lo, new @ coef - half, rtol=1e-10)
    np.testing.assert_allclose(hi, new @ coef + half, rtol=1e-10)


def test_zscored_average_matches_scipy_zscore_and_ignores_constant_columns():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=6), rng.exponential(size=6)
    constant = np.full(6, 3.0)
    want = (scipy_stats.zscore(a) + scipy_stats.zscore(b) + 0.0) / 3
    np.testing.assert_allclose(stats.zscored_average([a, b, constant]), want, rtol=1e-12)


def test_clear_errors_that_the_predictor_catches():
    with pytest.raises(stats.StatsError, match="at least 3 points"):
        stats.calibration_r2([1.0, 2.0], [1.0, 2.0], 1)
    with pytest.raises(stats.StatsError, match="proxy is constant"):
        stats.leave_one_out([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(stats.StatsError, match="2 proxy values but 3 outcomes"):
        stats.spearman([1.0, 2.0], [1.0, 2.0, 3.0])
    # callers of the predictor catch its error type around these statistics too
    with pytest.raises(predict.PredictError, match="outcome is constant"):
        stats.spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
