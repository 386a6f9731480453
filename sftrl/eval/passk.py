"""pass@k: the unbiased estimator, curves with bootstrap intervals, maj@k, and extrapolation.

Definitions (docs/design.md): for a prompt with n samples of which c are correct,
    pass@k = 1 - C(n - c, k) / C(n, k),
the probability that k samples drawn without replacement from the n contain a correct one. It is
computed in product form, C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i), as a difference of
cumulative sums of log1p(-k / i): exact to float64 rounding for n in the thousands, where the
binomials themselves overflow. The benchmark score is the mean over prompts; pass@1 = mean(c / n).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from scipy import optimize, special


def _as_counts(n: Any, c: Any) -> tuple[np.ndarray, np.ndarray]:
    n_arr = np.atleast_1d(np.asarray(n))
    c_arr = np.atleast_1d(np.asarray(c))
    if n_arr.shape != c_arr.shape and n_arr.size != 1:
        raise ValueError(
            f"n and c must have one entry per prompt, got {n_arr.shape} and {c_arr.shape}"
        )
    n_arr = np.broadcast_to(n_arr, c_arr.shape)
    for name, arr in (("n", n_arr), ("c", c_arr)):
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise ValueError(f"{name} must hold integers, got {arr.dtype} with fractions")
    n_arr, c_arr = n_arr.astype(np.int64), c_arr.astype(np.int64)
    if np.any(n_arr < 1):
        raise ValueError(f"every prompt needs n >= 1 samples (prompt {int(np.argmin(n_arr))})")
    bad = np.flatnonzero((c_arr < 0) | (c_arr > n_arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"prompt {i}: c = {c_arr[i]} correct of n = {n_arr[i]} samples")
    return n_arr, c_arr


def pass_at_k(n: Any, c: Any, k: int) -> np.ndarray:
    """Per-prompt unbiased pass@k (vectorised over prompts; n may differ per prompt)."""
    n_arr, c_arr = _as_counts(n, c)
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if np.any(k > n_arr):
        raise ValueError(f"k = {k} exceeds the samples of some prompt (min n = {n_arr.min()})")
    # log1p(-k/i) for i = 1..max n; only terms with i > n - c >= k are ever summed, and those
    # are finite. Where n - c < k every k-subset holds a correct sample: pass@k = 1.
    i = np.arange(1, int(n_arr.max()) + 1, dtype=np.float64)
    terms = np.where(i > k, np.log1p(-k / np.maximum(i, k + 1)), 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(terms)])
    log_fail = cumulative[n_arr] - cumulative[n_arr - c_arr]
    return np.where(n_arr - c_arr < k, 1.0, -np.expm1(log_fail))


def curve_ks(n_min: int) -> list[int]:
    """k = 1, 2, 4, ..., up to n_min, with n_min itself last."""
    ks = [1 << p for p in range(int(np.log2(n_min)) + 1)] if n_min >= 1 else []
    if ks and ks[-1] != n_min:
        ks.append(n_min)
    return ks


@dataclasses.dataclass(frozen=True)
class PassAtKCurve:
    ks: list[int]
    mean: list[float]  # benchmark pass@k per k (mean over prompts)
    ci_low: list[float]
    ci_high: list[float]
    num_prompts: int
    learnable_share: float  # prompts with 0 < c < n: the ones GRPO gets a signal from
    confidence: float

    def at(self, k: int) -> float:
        return self.mean[self.ks.index(k)]

    def to_json(self) -> dict[str, Any]:
        return {
            "num_prompts": self.num_prompts,
            "learnable_share": self.learnable_share,
            "confidence": self.confidence,
            "pass_at_k": {str(k): m for k, m in zip(self.ks, self.mean, strict=True)},
            "ci": {
                str(k): [lo, hi]
                for k, lo, hi in zip(self.ks, self.ci_low, self.ci_high, strict=True)
            },
        }


def pass_at_k_curve(
    n: Any,
    c: Any,
    ks: Sequence[int] | None = None,
    *,
    num_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PassAtKCurve:
    """Mean pass@k over prompts at each k, with percentile bootstrap intervals over prompts."""
    n_arr, c_arr = _as_counts(n, c)
    ks = list(ks) if ks is not None else curve_ks(int(n_arr.min()))
    per_prompt_PxK = np.stack([pass_at_k(n_arr, c_arr, k) for k in ks], axis=1)
    mean = per_prompt_PxK.mean(axis=0)
    rng = np.random.default_rng(seed)
    lows, highs = mean.copy(), mean.copy()
    if num_bootstrap > 0 and len(n_arr) > 1:
        draws_BxP = rng.integers(0, len(n_arr), size=(num_bootstrap, len(n_arr)))
        boot_BxK = per_prompt_PxK[draws_BxP].mean(axis=1)
        alpha = (1 - confidence) / 2
        lows, highs = np.quantile(boot_BxK, [alpha, 1 - alpha], axis=0)
    learnable = float(np.mean((c_arr > 0) & (c_arr < n_arr)))
    return PassAtKCurve(
        ks=[int(k) for k in ks], mean=mean.tolist(), ci_low=np.asarray(lows).tolist(),
        ci_high=np.asarray(highs).tolist(), num_prompts=len(n_arr), learnable_share=learnable,
        confidence=confidence,
    )


# --- maj@k ------------------------------------------------------------------------------------


def majority_at_k(
    answers: Sequence[Sequence[Hashable | None]],
    correct: Sequence[Sequence[bool]],
    k: int,
    *,
    num_draws: int = 200,
    seed: int = 0,
) -> float:
    """Expected maj@k over prompts: the most common extracted answer among k random samples.

    answers[p][i] is sample i's normalised answer (None when nothing was extracted: it casts no
    vote); correct[p][i] its verdict. Ties go to a uniformly random one of the tied answers. For
    k = n the vote is over all samples (ties still random); for k < n the expectation over
    k-subsets is estimated from `num_draws` random subsets per prompt.
    """
    if len(answers) != len(correct) or not answers:
        raise ValueError("answers and correct need one non-empty entry per prompt each")
    rng = np.random.default_rng(seed)
    scores = []
    for p, (prompt_answers, verdicts) in enumerate(zip(answers, correct, strict=True)):
        if len(prompt_answers) != len(verdicts):
            raise ValueError(f"prompt {p}: {len(prompt_answers)} answers, {len(verdicts)} verdicts")
        if not 1 <= k <= len(prompt_answers):
            raise ValueError(f"prompt {p}: k = {k} but {len(prompt_answers)} samples")
        right = {a for a, ok in zip(prompt_answers, verdicts, strict=True) if ok and a is not None}
        wins = 0.0
        draws = 1 if k == len(prompt_answers) else num_draws
        for _ in range(draws):
            subset = rng.choice(len(prompt_answers), size=k, replace=False)
            votes = Counter(prompt_answers[i] for i in subset if prompt_answers[i] is not None)
            if not votes:
                continue
            top = max(votes.values())
            tied = [a for a, v in votes.items() if v == top]
            wins += sum(a in right for a in tied) / len(tied)  # expected over random tie-breaks
        scores.append(wins / draws)
    return float(np.mean(scores))


# --- the guessing control -----------------------------------------------------------------------


def mismatched_answer_pass_at_k(
    answers: Sequence[Sequence[Hashable | None]],
    golds: Sequence[Hashable],
    k: int,
    *,
    shifts: int = 8,
) -> float:
    """pass@k of the same samples scored against ANOTHER prompt's gold answer: a control for
    how much of pass@k a model gets by guessing. Prompt p's samples are scored against the gold
    of prompt (p + s) mod P for s = 1..shifts (pairs whose golds are equal are skipped) and the
    unbiased pass@k is averaged over all those pairs. Reasoning finds the right answer far more
    often than a wrong one; guessing from a small answer space (the embedded task's integers)
    finds both about as often, so at large k a control close to pass@k means pass@k measures
    the spread of guesses, not reasoning.

    answers[p][i] is sample i's normalised answer (None: nothing extracted), compared with the
    gold by equality; verdicts that need symbolic equivalence are not reproduced, so on such
    benchmarks the control is a lower bound.
    """
    if len(answers) != len(golds) or len(golds) < 2:
        raise ValueError("answers and golds need one entry per prompt each, at least 2 prompts")
    if not isinstance(shifts, int) or shifts < 1:
        raise ValueError(f"shifts must be a positive integer, got {shifts!r}")
    n, c = [], []
    for p, prompt_answers in enumerate(answers):
        for s in range(1, min(shifts, len(golds) - 1) + 1):
            other = golds[(p + s) % len(golds)]
            if other == golds[p]:
                continue
            n.append(len(prompt_answers))
            c.append(sum(a is not None and a == other for a in prompt_answers))
    if not n:
        raise ValueError("every prompt has the same gold answer: no mismatched pair to score")
    return float(np.mean(pass_at_k(np.array(n), np.array(c), k)))


# --- extrapolation past n -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BetaBinomialFit:
    """Success rates ~ Beta(alpha, beta) over prompts: pass@k = 1 - B(a, b + k) / B(a, b)."""

    alpha: float
    beta: float
    log_likelihood: float
    max_abs_error: float  # fitted vs unbiased pass@k on the observed curve's ks
    ks_checked: list[int]

    def pass_at_k(self, k: int | np.ndarray) -> np.ndarray:
        k = np.asarray(k, dtype=np.float64)
        return 1.0 - np.exp(special.betaln(self.alpha, self.beta + k)
                            - special.betaln(self.alpha, self.beta))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_beta_binomial(n: Any, c: Any) -> BetaBinomialFit:
    """Maximum-likelihood Beta prior over per-prompt success rates, for pass@k beyond n.

    The fit quality is part of the result: `max_abs_error` compares the fitted curve with the
    unbiased estimates where both exist. A benchmark with many never-solved prompts fits poorly
    (a Beta puts little mass exactly at 0), and that shows there.
    """
    n_arr, c_arr = _as_counts(n, c)
    if len(n_arr) < 2:
        raise ValueError("a beta-binomial fit needs at least 2 prompts")
    if np.all(c_arr == 0) or np.all(c_arr == n_arr):
        raise ValueError("cannot fit: every prompt is all-wrong or every prompt is all-right")
    log_comb = special.gammaln(n_arr + 1) - special.gammaln(c_arr + 1) - special.gammaln(
        n_arr - c_arr + 1
    )

    def negative_log_likelihood(log_params: np.ndarray) -> float:
        a, b = np.exp(log_params)
        ll = log_comb + special.betaln(c_arr + a, n_arr - c_arr + b) - special.betaln(a, b)
        return -float(ll.sum())

    mean_rate = float(np.clip(np.mean(c_arr / n_arr), 1e-3, 1 - 1e-3))
    start = np.log([mean_rate, 1 - mean_rate])
    result = optimize.minimize(negative_log_likelihood, start, method="Nelder-Mead",
                               options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    alpha, beta = (float(v) for v in np.exp(result.x))
    ks = curve_ks(int(n_arr.min()))
    observed = np.array([pass_at_k(n_arr, c_arr, k).mean() for k in ks])
    fit = BetaBinomialFit(alpha, beta, -float(result.fun), 0.0, ks)
    error = float(np.max(np.abs(fit.pass_at_k(np.array(ks)) - observed)))
    return dataclasses.replace(fit, max_abs_error=error)
