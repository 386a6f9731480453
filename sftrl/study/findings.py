"""The study's findings as data: numbers and labels computed from the checkpoints and the
predictor's report, never sentences (`sftrl.study.render` words them).

Inputs are JSON-able: the checkpoint records of `sftrl.study.sweep.checkpoint_record` and one
group of the predictor's report (`sftrl.eval.predict.evaluate`); outputs are JSON-able dicts
(NaN written as None), stored in study.json so that the README can be rendered from it alone.
The statistics are the predictor's (Spearman ρ, permutation p-values, z-scored averages); this
module only derives plain facts from them (orders, differences, pairs, a sampling standard
error, a paired bootstrap of Spearman differences).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sftrl.eval import predict
from sftrl.study.sweep import CONTROL_SHIFTS

Checkpoint = Mapping[str, Any]  # a record of sftrl.study.sweep.checkpoint_record
ALPHA = 0.05
# Two standard errors: a gain or a spread below this is not told apart from sampling noise.
NOISE_SE = 2.0
# The confidence of the paired bootstrap intervals of Spearman differences.
CONFIDENCE = 0.95
_TOL = 1e-9
LEVELS = ("instance", "dataset")


def proxy_rows(k: int) -> list[tuple[str, str]]:
    """(label, the predictor's proxy name) in the paper's row order."""
    return [("post-SFT pass@1", "pass@1"), ("generalization loss", "-generalization_loss"),
            (f"pass@{k}", f"pass@{k}"), ("average of the three", predict.AVERAGE)]


def score(g: Mapping[str, Any], level: str, proxy: str) -> dict[str, Any]:
    """The predictor's scores of one proxy at one level (`error` where it could not score)."""
    return g["scores"][level][predict.OUTCOME][proxy]


def labeled_candidates(g: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The group's candidates that have the outcome (a post-RL result)."""
    return [c for c in g["candidates"] if predict.OUTCOME in c["outcomes"]]


def pass1(c: Checkpoint, stage: str) -> float:
    return c[f"{stage}_pass@k"]["1"]


def discordant_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[int, int]:
    """(pairs ordered oppositely by x and y, pairs ordered strictly by both)."""
    bad = total = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 or dy == 0:
            continue
        total += 1
        bad += dx * dy < 0
    return bad, total


def min_pvalue(n: int, options: Mapping[str, Any]) -> float:
    """The smallest permutation p-value n points can reach (a perfect ranking)."""
    ranks = list(range(n))
    return predict.permutation_pvalue(ranks, ranks, int(options["n_permutations"]),
                                      int(options["seed"]))


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    """The predictor's Spearman ρ; NaN where it is undefined (a resample with all ranks tied)."""
    try:
        return predict.spearman(x, y)
    except predict.PredictError:
        return math.nan


def _rho_p(x: np.ndarray, y: np.ndarray, options: Mapping[str, Any]) -> dict[str, float] | None:
    """Spearman ρ and its permutation p-value, the predictor's; None where ρ is undefined."""
    rho = _rho(x, y)
    if math.isnan(rho):
        return None
    return {"rho": float(rho), "p_value": float(predict.permutation_pvalue(
        x, y, int(options["n_permutations"]), int(options["seed"])))}


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def rl_signal(checkpoints: Sequence[Checkpoint]) -> dict[str, Any]:
    """RL gains and post-RL spread against the evaluation's sampling standard error."""
    done = [c for c in checkpoints if c["gain"] is not None]
    if not done:
        return {"n": 0}
    gains = np.array([c["gain"] for c in done])
    se = np.array([c["gain_se"] for c in done])
    rl = np.array([pass1(c, "rl") for c in done])
    rl_se = np.array([c["rl_se"] for c in done])
    se_rms = float(np.sqrt(np.mean(se**2)))
    return {
        "n": len(done),
        "mean_gain": float(gains.mean()), "std_gain": float(gains.std()),
        "gain_se_rms": se_rms,
        # the mean of N independent gains has SE rms/sqrt(N)
        "mean_gain_se": se_rms / math.sqrt(len(done)),
        "n_gain_beyond_noise": int(np.sum(np.abs(gains) > NOISE_SE * se)),
        "rl_std": float(rl.std()), "rl_min": float(rl.min()), "rl_max": float(rl.max()),
        "rl_se_rms": float(np.sqrt(np.mean(rl_se**2))),
    }


def _reason(error: str) -> str:
    """The predictor's error without the name of what it scored ("proxy x: reason")."""
    return error.split(": ", 1)[-1]


def level_findings(g: Mapping[str, Any], level: str, points: int,
                   options: Mapping[str, Any]) -> dict[str, Any]:
    """One level's Spearman order, best proxies, significance and best calibration R²."""
    names = [name for _, name in proxy_rows(g["k"])]
    scored = {name: score(g, level, name) for name in names}
    ok = {name: s for name, s in scored.items() if "error" not in s}
    out: dict[str, Any] = {"level": level, "points": points}
    if not ok:
        out["unscored"] = list(dict.fromkeys(_reason(s["error"]) for s in scored.values()))
        return out
    rho = {p: ok[p]["spearman"]["rho"] for p in ok}
    order = sorted(ok, key=lambda p: -rho[p])
    significant = [p for p in order if ok[p]["spearman"]["p_value"] < ALPHA]
    out.update(
        order=order, scores={p: dict(ok[p]["spearman"]) for p in order},
        best=[p for p in order if rho[p] >= rho[order[0]] - _TOL],
        min_p=min_pvalue(points, options) if points >= 2 else 1.0,
        significant_positive=[p for p in significant if rho[p] > 0],
        significant_negative=[p for p in significant if rho[p] < 0])
    if "pass@1" in rho and len(rho) > 1:
        # the paper's headline is this difference: up to +0.5
        out["minus_pass1"] = {p: rho[p] - rho["pass@1"] for p in order if p != "pass@1"}
    m = max(int(size) for size in options["calibration_sizes"])
    r2 = {p: ok[p]["r2"].get(str(m), {}) for p in ok}
    r2 = {p: v for p, v in r2.items() if "error" not in v and v}
    if r2:
        best = max(r2, key=lambda p: r2[p]["mean"])
        out["r2"] = {"m": m, "proxy": best, "mean": r2[best]["mean"], "std": r2[best]["std"]}
    else:
        out["r2"] = {"m": m, "errors": list(dict.fromkeys(
            _reason(v["error"]) for p in ok for v in ok[p]["r2"].values() if "error" in v))}
    return out


def misranking(labeled: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """How post-SFT pass@1 orders the checkpoints against post-RL pass@1 (None below 2)."""
    if len(labeled) < 2:
        return None
    x = [c["proxies"]["pass@1"] for c in labeled]
    y = [c["outcomes"][predict.OUTCOME] for c in labeled]
    bad, total = discordant_pairs(x, y)
    best = [i for i, v in enumerate(y) if v == max(y)]
    out: dict[str, Any] = {"pairs": total, "discordant": bad, "n_best_rl": len(best)}
    if len(best) == 1:
        i = best[0]
        out.update(top_rl=labeled[i]["checkpoint"], top_rl_sft_rank=1 + sum(v > x[i] for v in x),
                   top_rl_sft_ties=sum(v == x[i] for v in x) - 1)
    return out


def spearman_margins(labeled: Sequence[Mapping[str, Any]], proxies: Sequence[str],
                     options: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    """{proxy: (ρ(proxy) − ρ(post-SFT pass@1), interval low, high)} at the instance level: the
    paper's claim is this margin, so a proxy that ties pass@1 within noise does not carry it.
    Paired bootstrap: both ρ on the same resampled checkpoints (resamples where either ρ is
    undefined, all ranks tied, are dropped)."""
    y = np.array([c["outcomes"][predict.OUTCOME] for c in labeled], float)
    x = {p: np.array([c["proxies"][p] for c in labeled], float) for p in [*proxies, "pass@1"]}
    rng = np.random.default_rng(int(options["seed"]))
    draws = rng.integers(0, len(y), size=(int(options["n_bootstrap"]), len(y)))
    out = {}
    for p in proxies:
        diffs = np.array([_rho(x[p][i], y[i]) - _rho(x["pass@1"][i], y[i]) for i in draws])
        diffs = diffs[np.isfinite(diffs)]
        tail = 100 * (1 - CONFIDENCE) / 2
        low, high = np.percentile(diffs, [tail, 100 - tail]) if len(diffs) else (math.nan,) * 2
        out[p] = (_rho(x[p], y) - _rho(x["pass@1"], y), float(low), float(high))
    return out


def margins(labeled: Sequence[Mapping[str, Any]], k: int,
            options: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """`spearman_margins` of every proxy but pass@1, as data (None below 4 checkpoints)."""
    others = [name for _, name in proxy_rows(k) if name != "pass@1"]
    if len(labeled) < 4:
        return None
    return [{"proxy": p, "diff": _finite(d), "low": _finite(low), "high": _finite(high)}
            for p, (d, low, high) in spearman_margins(labeled, others, options).items()]


def data_distribution(c: Checkpoint) -> str:
    """The data set's name without its size: checkpoints of one distribution share it."""
    dataset, size = c["dataset"] or "", c["data_size"]
    return dataset.removesuffix(f"-{size}") if size is not None else dataset


def paper_settings(labeled: Sequence[Mapping[str, Any]], checkpoints: Sequence[Checkpoint],
                   k: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's two settings on the matching subsets of the checkpoints. Its "data-set
    level" compares checkpoints of ONE data distribution trained differently (epochs, size);
    its "instance level" compares DIFFERENT data sets trained the same way. The predictor's
    levels are another cut (every checkpoint; per data set averaged), so both are recomputed:
    Spearman ρ per subset (None where undefined), and for the one-distribution setting the
    number of checkpoint pairs each proxy orders the right way round, pooled over them."""
    names = [name for _, name in proxy_rows(k)]
    base = [name for name in names if name != predict.AVERAGE]
    by_name = {c["checkpoint"]: c for c in checkpoints}
    points = [(c, by_name.get(c["checkpoint"])) for c in labeled]
    points = [(c, r) for c, r in points if r is not None and r["epochs"] is not None]

    def proxies(members: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        x = {p: np.array([c["proxies"][p] for c in members], float) for p in base}
        # the predictor's average, z-scored within these points rather than the whole group
        x[predict.AVERAGE] = predict.zscored_average([x[p] for p in base])
        return x

    def subset(members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        y = np.array([c["outcomes"][predict.OUTCOME] for c in members], float)
        return {"n": len(members), "min_p": min_pvalue(len(members), options),
                "scores": {p: _rho_p(x, y, options) for p, x in proxies(members).items()}}

    groups: dict[str, list] = {}
    for c, r in points:
        groups.setdefault(data_distribution(r), []).append(c)
    right = dict.fromkeys(names, 0)
    pairs = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        y = [c["outcomes"][predict.OUTCOME] for c in members]
        pairs += sum(int(a != b) for a, b in itertools.combinations(y, 2))
        for p, x in proxies(members).items():
            bad, total = discordant_pairs(list(x), y)
            right[p] += int(total - bad)  # a proxy tie orders the pair neither way
    distributions = [{"name": dist, **subset(members)}
                     for dist, members in sorted(groups.items()) if len(members) >= 3]
    recipes: dict[tuple[int | None, int], list] = {}
    for c, r in points:
        recipes.setdefault((r["data_size"], r["epochs"]), []).append((c, r))
    same_recipe = [
        {"data_size": size, "epochs": epochs, **subset([c for c, _ in members])}
        for (size, epochs), members in sorted(recipes.items(), key=lambda kv: str(kv[0]))
        if len({data_distribution(r) for _, r in members}) >= 3]
    return {"pairs": pairs, "ordered_right": right, "distributions": distributions,
            "same_recipe": same_recipe}


def control(checkpoints: Sequence[Checkpoint], k: int,
            options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guessing control next to the true pass@k (ranges, and the control's mean share of
    the true value over checkpoints where that is not 0), and pass@k minus the control as a
    proxy; None when no checkpoint kept its samples."""
    done = [c for c in checkpoints
            if c["sft_pass@k"] is not None and c["sft_pass@k_control"] is not None]
    if not done:
        return None
    true_k = np.array([c["sft_pass@k"][str(k)] for c in done])
    ctrl_k = np.array([c["sft_pass@k_control"][str(k)] for c in done])
    true_1 = np.array([pass1(c, "sft") for c in done])
    ctrl_1 = np.array([c["sft_pass@k_control"]["1"] for c in done])

    def share(control: np.ndarray, true: np.ndarray) -> float | None:
        if not np.any(true > 0):
            return None
        return float(np.mean(control[true > 0] / true[true > 0]))

    labeled = [i for i, c in enumerate(done) if c["rl_pass@k"] is not None]
    minus = None
    if len(labeled) >= 3:
        y = np.array([pass1(done[i], "rl") for i in labeled])
        minus = _rho_p((true_k - ctrl_k)[labeled], y, options)
    return {"k": k, "shifts": CONTROL_SHIFTS,
            "control_min": float(ctrl_k.min()), "control_max": float(ctrl_k.max()),
            "true_min": float(true_k.min()), "true_max": float(true_k.max()),
            "share_k": share(ctrl_k, true_k), "share_1": share(ctrl_1, true_1),
            "minus_control": minus}


def spearman_by_k(checkpoints: Sequence[Checkpoint],
                  options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """[{k, Spearman ρ, permutation p}] of post-SFT pass@k against post-RL pass@1 over the
    checkpoints with both, for every k they all report: where along k the signal appears (the
    paper shows its correlation rising from k = 1 to k = 64)."""
    done = [c for c in checkpoints if c["sft_pass@k"] is not None and c["rl_pass@k"] is not None]
    if len(done) < 3:
        return []
    y = np.array([pass1(c, "rl") for c in done], float)
    ks = sorted(set.intersection(*(set(map(int, c["sft_pass@k"])) for c in done)))
    scores = [(k, _rho_p(np.array([c["sft_pass@k"][str(k)] for c in done], float), y, options))
              for k in ks]
    return [{"k": k, **score} for k, score in scores if score is not None]


def verdict(group: Mapping[str, Any], signal: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the paper's central finding reproduces in a group, and if not, why (reason
    codes, in the order they are told: `sftrl.study.render.VERDICT_REASONS`)."""
    if signal.get("n", 0) == 0:
        return {"judged": False}
    reasons = []
    if abs(signal["mean_gain"]) <= NOISE_SE * signal["mean_gain_se"]:
        reasons.append("no_rl_signal")
    if signal["rl_std"] <= NOISE_SE * signal["rl_se_rms"]:
        reasons.append("no_rl_spread")
    instance = group["levels"]["instance"]
    best = instance.get("best")
    beyond = [m["proxy"] for m in group.get("margins") or []
              if m["low"] is not None and m["low"] > 0]
    if best is None:
        reasons.append("unscored")
    elif "pass@1" in best:
        reasons.append("pass1_best")
    elif not set(best) & set(instance["significant_positive"]):
        reasons.append("not_significant")
    elif not set(best) & set(beyond):
        reasons.append("within_noise")
    if not (group.get("misranking") or {}).get("discordant", 0) > 0:
        reasons.append("no_misranking")
    return {"judged": True, "reproduces": not reasons, "reasons": reasons, "n": group["n"]}


def group_findings(g: Mapping[str, Any], checkpoints: Sequence[Checkpoint],
                   options: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the report says about one predictor group, as numbers and labels."""
    labeled = labeled_candidates(g)
    n, n_sets = len(labeled), len({c["dataset"] for c in labeled})
    out: dict[str, Any] = {
        "k": g["k"], "n": n, "n_datasets": n_sets,
        "levels": {"instance": level_findings(g, "instance", n, options),
                   "dataset": level_findings(g, "dataset", n_sets, options)},
        "misranking": misranking(labeled), "margins": margins(labeled, g["k"], options),
        "paper_settings": paper_settings(labeled, checkpoints, g["k"], options),
        "control": control(checkpoints, g["k"], options),
        "spearman_by_k": spearman_by_k(checkpoints, options)}
    out["verdict"] = verdict(out, rl_signal(checkpoints))
    return out
