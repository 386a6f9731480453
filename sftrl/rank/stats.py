"""Proxies with paired bootstrap uncertainty, and which adjacent ranks are beyond noise.

Paired: every bootstrap replicate draws ONE set of held-out example indices and ONE set of
prompt indices per benchmark, and applies it to every checkpoint. Checkpoints scored on the same
hard examples are then compared on the same draw, so the spread of a *difference* is what it
would be if the evaluation were repeated on another sample of examples from the same
distribution (unpaired intervals overstate it, and would call more pairs ties).

Orientation: higher is better for every score reported here except `loss`; the ranking score is
the paper's combination, the predictor's z-scored average of -loss and pass@k_max, within a
group (so a replicate's combination is z-scored over that replicate's values).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from sftrl.eval import passk
from sftrl.eval.predict import zscored_average

BEYOND_NOISE = 0.95  # share of replicates in which the higher-ranked checkpoint wins


@dataclasses.dataclass(frozen=True)
class HeldoutCounts:
    """Per example (in the held-out file's order): NLL sum and scored token count."""

    nll_sums: np.ndarray  # float64 [E]
    token_counts: np.ndarray  # int64 [E]


@dataclasses.dataclass(frozen=True)
class BenchmarkCounts:
    """Per prompt (in the benchmark's order): samples drawn and samples correct."""

    n: np.ndarray  # int64 [P]
    c: np.ndarray  # int64 [P]


def heldout_loss(h: HeldoutCounts, index: np.ndarray | None = None) -> np.ndarray:
    """Token-weighted mean NLL; with `index` [B, E], one value per replicate row."""
    if index is None:
        return np.asarray(h.nll_sums.sum() / h.token_counts.sum())
    return h.nll_sums[index].sum(axis=-1) / h.token_counts[index].sum(axis=-1)


def per_prompt_curve(b: BenchmarkCounts, ks: Sequence[int]) -> np.ndarray:
    """[P, K] unbiased per-prompt pass@k."""
    return np.stack([passk.pass_at_k(b.n, b.c, k) for k in ks], axis=1)


@dataclasses.dataclass(frozen=True)
class Replicates:
    """Bootstrap draws shared by all checkpoints: row 0 of every array is the point estimate
    (identity draw), rows 1.. are the replicates."""

    heldout: np.ndarray  # int [B + 1, E]
    prompts: dict[str, np.ndarray]  # benchmark -> int [B + 1, P]


def draw(num_examples: int, num_prompts: Mapping[str, int], num_bootstrap: int,
         seed: int) -> Replicates:
    rng = np.random.default_rng(seed)

    def rows(size: int) -> np.ndarray:
        return np.concatenate([np.arange(size)[None, :],
                               rng.integers(0, size, size=(num_bootstrap, size))])

    heldout = rows(num_examples)
    return Replicates(heldout, {name: rows(p) for name, p in sorted(num_prompts.items())})


def proxy_replicates(
    heldout: HeldoutCounts, benchmarks: Mapping[str, BenchmarkCounts], k_max: int,
    reps: Replicates,
) -> dict[str, np.ndarray]:
    """{"loss", "pass@1", "pass@k_max"}: [B + 1] values of one checkpoint (mean over
    benchmarks for pass@k, each benchmark resampled over its own prompts)."""
    out = {"loss": heldout_loss(heldout, reps.heldout)}
    per_k: dict[str, list[np.ndarray]] = {"pass@1": [], "pass@k_max": []}
    for name, counts in sorted(benchmarks.items()):
        curve = per_prompt_curve(counts, [1, k_max])
        index = reps.prompts[name]
        per_k["pass@1"].append(curve[:, 0][index].mean(axis=1))
        per_k["pass@k_max"].append(curve[:, 1][index].mean(axis=1))
    for key, values in per_k.items():
        out[key] = np.mean(values, axis=0)
    return out


def combination(loss_CxB: np.ndarray, passk_CxB: np.ndarray) -> np.ndarray:
    """The paper's combination per replicate: z-scored average of -loss and pass@k_max over
    the checkpoints of one group ([C, B] in, [C, B] out)."""
    columns = [zscored_average([-loss_CxB[:, b], passk_CxB[:, b]])
               for b in range(loss_CxB.shape[1])]
    return np.stack(columns, axis=1)


def interval(values_B: np.ndarray, confidence: float = 0.95) -> list[float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values_B, [alpha, 1 - alpha])
    return [float(low), float(high)]


def win_share(a_B: np.ndarray, b_B: np.ndarray) -> float:
    """Share of replicates in which a > b (a tie counts half)."""
    return float(np.mean((a_B > b_B) + 0.5 * (a_B == b_B)))


def order_and_pairs(names: Sequence[str], score_CxB: np.ndarray,
                    threshold: float = BEYOND_NOISE) -> tuple[list[int], list[dict]]:
    """Ranks checkpoints by the point estimate (column 0), best first, and says for each
    adjacent pair whether the upper one wins in at least `threshold` of the replicates.

    A pair below the threshold is a tie: the data does not order it beyond bootstrap noise.
    """
    point = score_CxB[:, 0]
    order = sorted(range(len(names)), key=lambda i: (-point[i], names[i]))
    pairs = []
    for upper, lower in itertools.pairwise(order):
        share = win_share(score_CxB[upper, 1:], score_CxB[lower, 1:])
        pairs.append({"better": names[upper], "worse": names[lower], "share": share,
                      "beyond_noise": share >= threshold})
    return order, pairs


def best_share(score_CxB: np.ndarray) -> np.ndarray:
    """Per checkpoint, the share of replicates in which it has the top score."""
    replicates = score_CxB[:, 1:]
    top = replicates.max(axis=0, keepdims=True)
    is_top = replicates == top
    # several tied at the top split the replicate
    return (is_top / is_top.sum(axis=0, keepdims=True)).mean(axis=1)
