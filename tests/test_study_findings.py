"""The study's findings functions on small hand-made inputs (`sftrl.study.findings`)."""

from __future__ import annotations

import pytest
from scipy import stats

from sftrl import study
from sftrl.eval import predict


def _labeled(pass1, other, outcome):
    return [{"proxies": {"pass@1": a, "x": b}, "outcomes": {predict.OUTCOME: y}}
            for a, b, y in zip(pass1, other, outcome, strict=True)]


def test_spearman_margin_needs_a_paired_bootstrap_interval_above_zero():
    options = {"seed": 0, "n_bootstrap": 400}
    y = list(range(12))
    # a proxy that ranks perfectly against a post-SFT pass@1 that ranks in reverse
    d, low, high = study.spearman_margins(_labeled(y[::-1], y, y), ["x"], options)["x"]
    assert d == pytest.approx(2.0) and 0 < low <= high
    # the same ranking as pass@1 but one swapped pair: a small margin, inside the noise
    noisy = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10]
    better = [0, 1, 2, 3, 5, 4, 6, 8, 7, 9, 11, 10]
    d, low, high = study.spearman_margins(_labeled(noisy, better, y), ["x"], options)["x"]
    assert d == pytest.approx(stats.spearmanr(better, y)[0] - stats.spearmanr(noisy, y)[0])
    assert 0 < d < 0.05 and low <= 0 < high


def _verdict_input(best, significant, margins, discordant):
    return {"n": 10, "levels": {"instance": {"best": best,
                                             "significant_positive": significant}},
            "margins": [{"proxy": p, "diff": 0.1, "low": low, "high": 0.2}
                        for p, low in margins.items()],
            "misranking": {"discordant": discordant}}


def test_the_verdict_needs_every_condition_of_the_papers_claim():
    signal = {"n": 10, "mean_gain": 0.01, "mean_gain_se": 0.001, "rl_std": 0.005,
              "rl_se_rms": 0.001}
    # the best proxy ties pass@1 within noise: its interval's low end is below 0
    tied = _verdict_input(["average"], ["average", "pass@1"], {"average": -0.01}, 3)
    assert study.verdict(tied, signal) == {"judged": True, "reproduces": False,
                                           "reasons": ["within_noise"], "n": 10}
    beyond = _verdict_input(["average"], ["average", "pass@1"], {"average": 0.01}, 3)
    assert study.verdict(beyond, signal)["reproduces"]
    # each failing condition is named, in order; a flat RL result fails two of them
    flat = {**signal, "mean_gain": 0.001, "rl_std": 0.002}
    worst = _verdict_input(["pass@1"], [], {}, 0)
    assert study.verdict(worst, flat)["reasons"] == [
        "no_rl_signal", "no_rl_spread", "pass1_best", "no_misranking"]
    unsure = _verdict_input(["average"], ["pass@1"], {"average": 0.01}, 3)
    assert study.verdict(unsure, signal)["reasons"] == ["not_significant"]
    assert study.verdict(beyond, {"n": 0}) == {"judged": False}


def test_discordant_pairs_skip_ties_and_count_reversals():
    # pairs (0,1) agree, (0,2) and (1,2) reverse, (2,3) is tied in x, the rest agree/reverse
    x, y = [1, 2, 3, 3], [1, 3, 2, 0]
    # by hand: (0,1) +, (0,2) +, (0,3) -, (1,2) -, (1,3) -, (2,3) x tie
    assert study.findings.discordant_pairs(x, y) == (3, 5)
