"""General statistics of paired points (x = a proxy, y = an outcome): ranks, Spearman's rho with
a permutation p-value and a bootstrap interval, least-squares lines, R² (in sample, on held-out
calibration splits, leave-one-out) and OLS prediction intervals.

Nothing here knows about checkpoints or eval records: `sftrl.eval.predict` applies these to
proxies and outcomes (its docstring states the conventions a report follows). Inputs are 1-d
float sequences; every function is deterministic given its seed. A question the points cannot
answer (too few, constant, mismatched lengths) raises StatsError naming `what` was asked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

# Up to this many points the permutation test enumerates every pairing (8! = 40320); above it,
# Monte Carlo.
EXACT_PERMUTATION_MAX_N = 8


class StatsError(ValueError):
    """The points cannot answer the question asked; the message names it."""


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based); ties share the mean of the ranks they span."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x) != 0) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # mean of ranks s+1 .. e
    return ranks


def _standardize(v: np.ndarray) -> np.ndarray | None:
    centered = v - v.mean()
    norm = float(np.sqrt(centered @ centered))
    return None if norm <= 1e-12 * max(1.0, float(np.abs(v).max())) else centered / norm


def check_points(x: np.ndarray, y: np.ndarray, what: str, need: int = 3) -> None:
    """Raises StatsError unless x and y pair up, have `need` points and neither is constant."""
    if len(x) != len(y):
        raise StatsError(f"{what}: {len(x)} proxy values but {len(y)} outcomes")
    if len(x) < need:
        raise StatsError(f"{what}: needs at least {need} points, got {len(x)}")
    if np.ptp(x) == 0:
        raise StatsError(f"{what}: proxy is constant ({x[0]:g}) over all {len(x)} points")
    if np.ptp(y) == 0:
        raise StatsError(f"{what}: outcome is constant ({y[0]:g}) over all {len(y)} points")


def spearman(x: Sequence[float], y: Sequence[float], what: str = "spearman") -> float:
    """Spearman's rho (ties handled by average ranks), like ``scipy.stats.spearmanr``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    check_points(x, y, what, need=2)
    rx, ry = _standardize(rankdata(x)), _standardize(rankdata(y))
    assert rx is not None and ry is not None  # non-constant inputs have non-constant ranks
    return float(np.clip(rx @ ry, -1.0, 1.0))


def permutation_pvalue(x: Sequence[float], y: Sequence[float], n_permutations: int = 10_000,
                       seed: int = 0, what: str = "permutation test") -> float:
    """Two-sided P(|rho| >= |rho_observed|) under random pairing of x and y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    check_points(x, y, what, need=2)
    rx, ry = _standardize(rankdata(x)), _standardize(rankdata(y))
    assert rx is not None and ry is not None
    observed = abs(float(rx @ ry))
    n = len(x)
    tol = 1e-9  # permutations that tie the observed |rho| must count as hits
    if n <= EXACT_PERMUTATION_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))))
        rhos = ry[perms] @ rx
        return float(np.mean(np.abs(rhos) >= observed - tol))
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    hits = int(np.sum(np.abs(ry[perms] @ rx) >= observed - tol))
    return (hits + 1) / (n_permutations + 1)


def bootstrap_spearman_ci(x: Sequence[float], y: Sequence[float], n_bootstrap: int = 1000,
                          confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho; NaNs if every resample is degenerate."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_bootstrap, len(x)))
    rhos = []
    for row in idx:
        rx, ry = _standardize(rankdata(x[row])), _standardize(rankdata(y[row]))
        if rx is not None and ry is not None:
            rhos.append(float(rx @ ry))
    if not rhos:
        return (math.nan, math.nan)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(rhos, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def fit_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y = a * x + b; x must not be constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx <= 0:
        raise StatsError("fit: proxy is constant over the fitted points")
    slope = float(dx @ (y - y.mean())) / sxx
    return slope, float(y.mean() - slope * x.mean())


def r2_score(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """1 - SS_res / SS_tot around the mean of y_true (negative when worse than that mean)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    if ss_tot == 0:
        raise StatsError("r2: outcome is constant over the scored points")
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / ss_tot


def _subsets(n: int, m: int, max_subsets: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    if math.comb(n, m) <= max_subsets:
        return list(itertools.combinations(range(n), m))
    # sampled subsets may repeat; with this many subsets that barely moves mean ± std
    return [tuple(sorted(rng.choice(n, m, replace=False).tolist())) for _ in range(max_subsets)]


def calibration_r2(x: Sequence[float], y: Sequence[float], m: int, max_subsets: int = 500,
                   seed: int = 0, what: str = "calibration R²") -> dict[str, float | int]:
    """Fit on each calibration subset of size m, R² on the rest: mean, std, counts."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    check_points(x, y, what)
    n = len(x)
    if m < 2 or n - m < 2:
        raise StatsError(f"{what}: calibration size {m} needs m >= 2 and at least 2 held-out "
                           f"points, have n={n}")
    rng = np.random.default_rng(seed)
    scores, skipped = [], 0
    for subset in _subsets(n, m, max_subsets, rng):
        calib = np.zeros(n, bool)
        calib[list(subset)] = True
        held_y = y[~calib]
        if np.ptp(x[calib]) == 0 or np.ptp(held_y) == 0:
            skipped += 1
            continue
        a, b = fit_line(x[calib], y[calib])
        scores.append(r2_score(held_y, a * x[~calib] + b))
    if not scores:
        raise StatsError(f"{what}: every calibration subset of size {m} is degenerate")
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "n_subsets": len(scores), "n_skipped": skipped}


def leave_one_out(x: Sequence[float], y: Sequence[float],
                  what: str = "leave-one-out") -> dict[str, Any]:
    """Predict each point from a line fitted to the others: RMSE, MAE and the predictions."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    check_points(x, y, what)
    preds = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        if np.ptp(x[keep]) == 0:
            raise StatsError(f"{what}: proxy is constant once point {i} is left out")
        a, b = fit_line(x[keep], y[keep])
        preds.append(a * x[i] + b)
    err = np.asarray(preds) - y
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
            "predictions": [float(p) for p in preds]}


def prediction_interval(x: Sequence[float], y: Sequence[float], x_new: Sequence[float],
                        confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OLS prediction and its prediction interval at x_new: (pred, lower, upper)."""
    x, y, x_new = np.asarray(x, float), np.asarray(y, float), np.asarray(x_new, float)
    check_points(x, y, "prediction interval")
    a, b = fit_line(x, y)
    n = len(x)
    resid = y - (a * x + b)
    s = math.sqrt(float(resid @ resid) / (n - 2))
    dx = x - x.mean()
    t = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, n - 2))
    half = t * s * np.sqrt(1.0 + 1.0 / n + (x_new - x.mean()) ** 2 / float(dx @ dx))
    pred = a * x_new + b
    return pred, pred - half, pred + half


def zscored_average(columns: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the columns, each z-scored over its points (population std); the
    predictor's ``average`` proxy."""
    zs = []
    for v in columns:
        std = float(v.std())
        # a constant base proxy carries no ranking information; it adds 0 to every candidate
        zs.append((v - v.mean()) / std if std > 0 else np.zeros_like(v))
    return np.mean(zs, axis=0)
