"""Replication v2 (issue 21): gate quantities, the plan's statistics and the report.

    python -m sftrl.study_v2 --gates SAMPLES.jsonl [SAMPLES.jsonl ...]     # pilots
    python -m sftrl.study_v2 --sweep_dir=runs/quagmire_v2 --out=docs/quagmire_v2  # the report

The report (`study.json`, then `README.md` rendered from it, nothing typed in) follows
docs/quagmire_v2/PLAN.md: gates per checkpoint, the primary statistic (instance-level Spearman ρ
of each proxy minus post-SFT pass@1's, paired bootstrap over checkpoints, sign test on the pairs
where pass@1 and the proxy disagree), the verdict, Spearman and calibration R² (mean, std and
median) at both levels, Spearman by k, the axes' pairwise outcomes and the run times.

Gate mode:

For each sample file (`<workdir>/samples/<checkpoint>/<benchmark>.jsonl`, one prompt per line
with its gold `answer`, the `extracted` answers and their `correct` verdicts) it prints the
quantities the plan's gates use (docs/quagmire_v2/PLAN.md), and nothing else, so that pilots can
look at gates without seeing any proxy-vs-outcome relation:

    pass@1, pass@n            unbiased estimates over the file's prompts
    control@1, control@n      the guessing control (`mismatched_answer_pass_at_k`): the same
                              samples scored against another prompt's gold answer
    control share             control@k / pass@k (gate: < 0.10 at k = 64)
    best constant             the share of prompts whose gold is the most common gold: the pass@1
                              of always answering that value (gate: < 0.01)
    mixed groups              the share of prompts whose samples are neither all right nor all
                              wrong (for RL prompts: how many GRPO groups carry signal)
"""

from __future__ import annotations

import argparse
import collections
import datetime
import itertools
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sp_stats

from sftrl.eval import record as eval_record
from sftrl.eval.passk import mismatched_answer_pass_at_k, pass_at_k
from sftrl.eval.predict import spearman

# The plan's thresholds (docs/quagmire_v2/PLAN.md); the report prints them from here.
LARGE_K = 64
CONTROL_SHARE_MAX = 0.10
CONSTANT_MAX = 0.01
SFT_MIN, SFT_LOW, SFT_HIGH = 0.05, 0.10, 0.50
GAIN_OVER_SPREAD = 3.0
LEARNABLE_MIN = 0.5
# Gates reported beside the others but not deciding the verdict (PLAN.md, "Change after the
# start (3)": the mixed-reward share measures how strong a checkpoint is on the RL prompts as
# much as how hard they are; G4 gates the RL signal itself).
DESCRIPTIVE_GATES = ("G5 RL prompts",)
REFUTED_BELOW = 0.10
N_BOOTSTRAP = 10_000
CONFIDENCE = 0.95


def read_samples(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        for field in ("answer", "extracted", "correct"):
            if field not in row:
                raise ValueError(f"{path}: line {i + 1} has no field {field!r}")
    return rows


def gates(rows: Sequence[dict[str, Any]], k: int | None = None) -> dict[str, float]:
    """The gate quantities of one checkpoint's samples on one benchmark (see the module doc)."""
    if len(rows) < 2:
        raise ValueError("gates need at least 2 prompts")
    n_min = min(len(r["correct"]) for r in rows)
    k = n_min if k is None else min(k, n_min)
    n = np.array([len(r["correct"]) for r in rows])
    c = np.array([sum(map(bool, r["correct"])) for r in rows])
    answers = [r["extracted"] for r in rows]
    golds = [r["answer"] for r in rows]
    out = {"prompts": float(len(rows)), "k": float(k),
           "pass@1": float(np.mean(pass_at_k(n, c, 1))),
           # the sampling noise of that mean with the prompts held fixed: each prompt's share
           # right is binomial, its variance estimated without bias by p(1-p)/(n-1)
           "pass@1_sampling_se": float(np.sqrt(np.sum(
               (c / n) * (1 - c / n) / np.maximum(n - 1, 1))) / len(rows)),
           f"pass@{k}": float(np.mean(pass_at_k(n, c, k))),
           "control@1": mismatched_answer_pass_at_k(answers, golds, 1),
           f"control@{k}": mismatched_answer_pass_at_k(answers, golds, k),
           "best_constant": collections.Counter(golds).most_common(1)[0][1] / len(golds),
           "mixed_groups": float(np.mean((c > 0) & (c < n)))}
    out["control_share@1"] = out["control@1"] / out["pass@1"] if out["pass@1"] else float("nan")
    out[f"control_share@{k}"] = (out[f"control@{k}"] / out[f"pass@{k}"] if out[f"pass@{k}"]
                                 else float("nan"))
    return out


# --------------------------------------------------------------------------------- collection

_SFT_NAME = re.compile(r"^(?P<run>.+?)-(?P<dataset>v2-.+)-step(?P<step>\d+)-sft$")


def _sample_file(run_dir: Path, name: str) -> Path | None:
    files = sorted((run_dir / "samples" / name).glob("*.jsonl"))
    return files[0] if files else None


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per SFT checkpoint of the sweep: its proxies, its RL results per seed, and the
    gate quantities of every sample file."""
    out = []
    for sft_path in sorted(sweep_dir.glob("*/eval/*-sft.json")):
        match = _SFT_NAME.match(sft_path.stem)
        if not match:
            continue
        run_dir = sft_path.parent.parent
        record = eval_record.read(sft_path, ("pass@k",))
        curve = record.mean_curve(as_written=True)  # over the benchmarks, the ks they all have
        metrics = record.metrics or {}
        entry: dict[str, Any] = {
            "checkpoint": sft_path.stem, "run": match["run"], "dataset": match["dataset"],
            "step": int(match["step"]), "pass@k": {str(k): v for k, v in curve.items()},
            "generalization_loss": record.generalization_loss,
            "own_heldout_loss": metrics.get("own_heldout/loss"), "rl": {}}
        samples = _sample_file(run_dir, sft_path.stem)
        if samples:
            entry["gates"] = gates(read_samples(samples), LARGE_K)
        prefix = sft_path.stem.removesuffix("-sft")
        for rl_path in sorted(run_dir.glob(f"eval/{prefix}-rl-seed*.json")):
            seed = rl_path.stem.rsplit("-seed", 1)[1]
            rl_record = eval_record.read(rl_path, ("pass@k",))
            rl_entry: dict[str, Any] = {"pass@1": rl_record.mean_curve(as_written=True)[1]}
            rl_samples = _sample_file(run_dir, rl_path.stem)
            if rl_samples:
                rl_entry["gates"] = gates(read_samples(rl_samples))
            metrics_file = (run_dir / "rl" / match["dataset"] / f"step{match['step']}-seed{seed}"
                            / "metrics.jsonl")
            if metrics_file.exists():
                shares = [json.loads(line).get("learnable_groups_share")
                          for line in metrics_file.read_text().splitlines() if line.strip()]
                shares = [x for x in shares if isinstance(x, int | float)]
                if shares:
                    rl_entry["learnable_groups_share"] = float(np.mean(shares))
            entry["rl"][seed] = rl_entry
        out.append(entry)
    return out


def run_times(sweep_dir: Path) -> dict[str, Any]:
    """{"runs": per run the launcher's state and elapsed time (summed over its attempts) and per
    pipeline step the time since the step before it (pipeline.json's completion stamps, in the
    order they were written); "wall_s": the sweep's end-to-end time, the union of every ended
    attempt of every run (parallel runs overlap, a resumed sweep's idle gaps do not count)}."""
    status_path = sweep_dir / "sweep.json"
    status = json.loads(status_path.read_text())["runs"] if status_path.exists() else {}
    runs: dict[str, Any] = {}
    spans: list[tuple[float, float]] = []
    for name, entry in sorted(status.items()):
        start = entry.get("start")
        attempts = [tuple(a) for a in entry.get("attempts", [])]
        if start and entry.get("end") and (start, entry["end"]) not in attempts:
            attempts.append((start, entry["end"]))  # written by a launcher that kept no list
        ended = [(_stamp(a), _stamp(b)) for a, b in attempts]
        spans += ended
        # A step's time runs from the stamp before it or, after a resume, from the start of the
        # attempt that wrote it: the gap between attempts is nobody's time.
        attempt_starts = sorted({a for a, _ in ended} | ({_stamp(start)} if start else set()))
        steps: dict[str, float] = {}
        progress = sweep_dir / name / "pipeline.json"
        if progress.exists() and attempt_starts:
            previous = attempt_starts[0]
            done = json.loads(progress.read_text())
            for step, info in sorted(done.items(), key=lambda kv: kv[1].get("time", 0)):
                stamp = float(info["time"])
                began = max((a for a in attempt_starts if a <= stamp), default=previous)
                steps[step] = max(0.0, stamp - max(previous, began))
                previous = stamp
        runs[name] = {"elapsed_s": entry.get("elapsed_s"), "state": entry.get("state"),
                      "steps_s": steps}
    # per stage (the part of a step name after its "/": sft, eval-sft, rl, eval-rl, ...), summed
    # over every run: where the sweep's compute went
    stages: dict[str, dict[str, float]] = {}
    for info in runs.values():
        for step, seconds in info["steps_s"].items():
            stage = stages.setdefault(step.rsplit("/", 1)[-1], {"count": 0, "total_s": 0.0})
            stage["count"] += 1
            stage["total_s"] += seconds
    return {"runs": runs, "stages": stages,
            "wall_s": _union_length(spans) if spans else None}


def _stamp(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def _union_length(spans: Sequence[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


# --------------------------------------------------------------------------------- statistics


def _z(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def proxy_table(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Each proxy over the checkpoints, higher = better (losses negated)."""
    ks = set.intersection(*(set(map(int, r["pass@k"])) for r in rows))
    largest = max(ks)
    large = LARGE_K if LARGE_K in ks else largest
    table = {
        "post-SFT pass@1": np.array([r["pass@k"]["1"] for r in rows]),
        "-generalization loss (common)": -np.array([r["generalization_loss"] for r in rows]),
        f"pass@{large}": np.array([r["pass@k"][str(large)] for r in rows]),
    }
    if largest != large:
        table[f"pass@{largest}"] = np.array([r["pass@k"][str(largest)] for r in rows])
    table["combination (loss + pass@k, no pass@1)"] = (
        _z(table["-generalization loss (common)"]) + _z(table[f"pass@{large}"])) / 2
    if all(r.get("own_heldout_loss") is not None for r in rows):
        table["-own held-out loss"] = -np.array([r["own_heldout_loss"] for r in rows])
    return table


PRIMARY = "combination (loss + pass@k, no pass@1)"
BASELINE = "post-SFT pass@1"


def outcome(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([np.mean([s["pass@1"] for s in r["rl"].values()]) for r in rows])


def paired_delta(x: np.ndarray, base: np.ndarray, y: np.ndarray, *, n_bootstrap: int = N_BOOTSTRAP,
                 confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, Any]:
    """ρ(x, y) − ρ(base, y) with a paired percentile bootstrap over points (both ρ on the same
    resample; resamples where any of the three is constant are dropped)."""
    if min(np.ptp(x), np.ptp(base), np.ptp(y)) == 0:
        return {"delta": math.nan, "ci": [math.nan, math.nan], "resamples": 0,
                "error": "a constant proxy or outcome"}
    delta = spearman(x, y) - spearman(base, y)
    rng = np.random.default_rng(seed)
    n, draws = len(y), []
    for _ in range(n_bootstrap):
        i = rng.integers(0, n, n)
        if min(np.ptp(x[i]), np.ptp(base[i]), np.ptp(y[i])) == 0:
            continue
        draws.append(spearman(x[i], y[i]) - spearman(base[i], y[i]))
    alpha = (1 - confidence) / 2
    ci = [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))] if draws else [
        math.nan, math.nan]
    return {"delta": float(delta), "ci": ci, "resamples": len(draws)}


def sign_test(x: np.ndarray, base: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """On the pairs of points that `x` and `base` order differently (ties on x, base or y
    dropped): how many `x` orders as `y` does; one-sided binomial p against 1/2."""
    wins = disagreements = 0
    for i, j in itertools.combinations(range(len(y)), 2):
        sx, sb, sy = np.sign(x[i] - x[j]), np.sign(base[i] - base[j]), np.sign(y[i] - y[j])
        if 0 in (sx, sb, sy) or sx == sb:
            continue
        disagreements += 1
        wins += int(sx == sy)
    p = (float(sp_stats.binomtest(wins, disagreements, 0.5, alternative="greater").pvalue)
         if disagreements else math.nan)
    return {"pairs": disagreements, "proxy_right": wins, "p_one_sided": p}


def calibration_r2(x: np.ndarray, y: np.ndarray, m: int) -> dict[str, Any]:
    """A line fitted on every subset of m points, R² on the rest: mean, std, median."""
    n, scores = len(y), []
    if m < 2 or n - m < 2:
        return {"error": f"m={m} needs at least m + 2 points, have {n}"}
    for subset in itertools.combinations(range(n), m):
        cal = np.array(subset)
        rest = np.setdiff1d(np.arange(n), cal)
        if np.ptp(x[cal]) == 0 or np.ptp(y[rest]) == 0:
            continue
        a, b = np.polyfit(x[cal], y[cal], 1)
        ss_res = float(np.sum((y[rest] - (a * x[rest] + b)) ** 2))
        scores.append(1 - ss_res / float(np.sum((y[rest] - y[rest].mean()) ** 2)))
    if not scores:
        return {"error": "every subset degenerate"}
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)),
            "median": float(np.median(scores)), "subsets": len(scores)}


# what an axis says after RL where a side ran none (PLAN.md's compute-saving rule)
NO_RL = f"no RL (post-SFT pass@1 < {SFT_MIN})"


def _winner(treatment: float, control: float) -> str:
    return "treatment" if treatment > control else "control" if control > treatment else "tie"


def _rho(x: np.ndarray, y: np.ndarray) -> float | None:
    return None if min(np.ptp(x), np.ptp(y)) == 0 else float(spearman(x, y))


def findings(rows: list[dict[str, Any]], times: dict[str, Any] | None = None,
             n_bootstrap: int = N_BOOTSTRAP) -> dict[str, Any]:
    """Everything the report says, as data."""
    # SFT-side gates over every checkpoint (those without RL included: the compute-saving rule
    # skips RL exactly where G3 already fails); RL-side statistics over those with RL results.
    all_rows = list(rows)
    if not all_rows:
        raise ValueError("no SFT checkpoints found")
    rows = [r for r in all_rows if r["rl"]]

    def share(g: dict[str, float]) -> float:
        return g[f"control_share@{int(g['k'])}"]

    def above_control(value: float) -> bool:  # nan: no pass@k to compare the control with
        return math.isnan(value) or value >= CONTROL_SHARE_MAX

    sft_shares = [share(r["gates"]) for r in all_rows if "gates" in r]
    rl_gates = [g["gates"] for r in rows for g in r["rl"].values() if "gates" in g]
    rl_shares = [share(g) for g in rl_gates]
    # per checkpoint, what of it fails G1 (its post-SFT samples, each RL seed's) and whether it
    # is below G3's floor: the gate table and the checkpoint table both read these
    guessed = {r["checkpoint"]: [
        label for label, g in [(r["checkpoint"], r.get("gates"))]
        + [(f"{r['checkpoint']} RL seed {seed}", s.get("gates")) for seed, s in r["rl"].items()]
        if g is not None and above_control(share(g))] for r in all_rows}
    below_floor = [r["checkpoint"] for r in all_rows if r["pass@k"]["1"] < SFT_MIN]
    rl_ses = [g["pass@1_sampling_se"] for g in rl_gates if "pass@1_sampling_se" in g]
    sft_p1 = np.array([r["pass@k"]["1"] for r in all_rows])
    gains = np.array([np.mean([s["pass@1"] for s in r["rl"].values()]) - r["pass@k"]["1"]
                      for r in rows])
    spreads = [np.std([s["pass@1"] for s in r["rl"].values()], ddof=1) for r in rows
               if len(r["rl"]) > 1]
    spread = float(np.sqrt(np.mean(np.square(spreads)))) if spreads else math.nan
    learnable = [g["learnable_groups_share"] for r in rows for g in r["rl"].values()
                 if "learnable_groups_share" in g]
    constants = [r["gates"]["best_constant"] for r in all_rows if "gates" in r]

    def ok(values: Sequence[float], test: Any) -> bool:
        return bool(values) and all(not math.isnan(v) and test(v) for v in values)

    mean_gain = float(gains.mean()) if len(gains) else math.nan
    gate_results: dict[str, dict[str, Any]] = {}
    if times is not None:  # G0: a partial sweep gives no verdict (PLAN.md, change (4))
        states = {name: t["state"] for name, t in times["runs"].items() if name != "predict"}
        done = sum(state == "done" for state in states.values())
        gate_results["G0 sweep complete"] = {"pass": bool(states) and done == len(states),
                                             "runs_done": done, "runs": len(states)}
    gate_results |= {
        "G1 guessing": {"pass": bool(sft_shares) and bool(rl_shares)
                        and not any(guessed.values()),
                        "sft_max_share": max(sft_shares, default=math.nan),
                        "rl_max_share": max(rl_shares, default=math.nan),
                        "failing": [part for parts in guessed.values() for part in parts]},
        "G2 constant": {"pass": ok(constants, lambda v: v < CONSTANT_MAX),
                        "max": max(constants, default=math.nan)},
        "G3 SFT strength": {"pass": bool(sft_p1.min() >= SFT_MIN and sft_p1.min() <= SFT_LOW
                                         and sft_p1.max() >= SFT_HIGH),
                            "min": float(sft_p1.min()), "max": float(sft_p1.max()),
                            "below_floor": below_floor},
        "G4 RL signal": {"pass": bool(not math.isnan(spread) and not math.isnan(mean_gain)
                                      and mean_gain > 0
                                      and mean_gain >= GAIN_OVER_SPREAD * spread),
                         "mean_gain": mean_gain, "seed_spread": spread,
                         # beside the spread: how much of it one eval's sampling alone makes
                         "rl_eval_sampling_se": (
                             float(np.sqrt(np.mean(np.square(rl_ses)))) if rl_ses else math.nan)},
        "G5 RL prompts": {"pass": bool(learnable) and float(np.mean(learnable)) >= LEARNABLE_MIN,
                          "mean_learnable_share": float(np.mean(learnable)) if learnable
                          else math.nan},
    }
    for name in DESCRIPTIVE_GATES:
        gate_results[name]["descriptive"] = True
    failed = [name for name, g in gate_results.items()
              if not g["pass"] and not g.get("descriptive")]
    checkpoints = [{**{k: r[k] for k in ("checkpoint", "run", "dataset", "step",
                                          "generalization_loss", "own_heldout_loss")},
                    "sft_pass@1": r["pass@k"]["1"], "sft_pass@k": r["pass@k"],
                    "rl_pass@1": (float(np.mean([v["pass@1"] for v in r["rl"].values()]))
                                  if r["rl"] else None),
                    "rl_pass@1_by_seed": {s: v["pass@1"] for s, v in r["rl"].items()},
                    "gates": r.get("gates"),
                    # the gates this checkpoint fails on its own (G1 after SFT or after RL, G3's
                    # floor); the others are properties of the whole sweep
                    "gates_failed": [gate for gate, fails in (
                        ("G1", bool(guessed[r["checkpoint"]])),
                        ("G3", r["checkpoint"] in below_floor)) if fails]} for r in all_rows]
    if len(rows) < 3:
        reason = (f"gate {', '.join(failed)} failed" if failed
                  else f"{len(rows)} checkpoints with RL results")
        return {"checkpoints": checkpoints, "with_rl": len(rows), "gates": gate_results,
                "verdict": f"inconclusive: {reason}", "primary_proxy": PRIMARY, "tests": {},
                "instance": {}, "within_run": {}, "between_runs": {}, "spearman_by_k": {},
                "axes": [], "over_training": [], "times": times or {"runs": {}, "wall_s": None},
                "proxies": {}}
    y = outcome(rows)
    table = proxy_table(rows)
    base = table[BASELINE]
    # the primary statistic and the secondary ones
    tests = {name: {**paired_delta(x, base, y, n_bootstrap=n_bootstrap),
                    "sign_test": sign_test(x, base, y)}
             for name, x in table.items() if name != BASELINE}
    primary = tests[PRIMARY]
    if failed:
        verdict = f"inconclusive: gate {', '.join(failed)} failed"
    elif primary["ci"][0] > 0 and primary["sign_test"]["p_one_sided"] < 0.05:
        verdict = "reproduces"
    elif primary["ci"][1] < REFUTED_BELOW:
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    # descriptive: both levels
    instance = {name: {"rho": _rho(x, y),
                       "r2": {str(m): calibration_r2(x, y, m) for m in (3, 4)}}
                for name, x in table.items()}
    runs = sorted({r["run"] for r in rows})
    within = {}
    for run in runs:
        idx = [i for i, r in enumerate(rows) if r["run"] == run]
        within[run] = {name: _rho(x[idx], y[idx]) for name, x in table.items()}
    run_idx = [[i for i, r in enumerate(rows) if r["run"] == run] for run in runs]
    y_run = np.array([y[i].mean() for i in run_idx])
    between = {name: {"rho": _rho(np.array([x[i].mean() for i in run_idx]), y_run),
                      "r2": {str(m): calibration_r2(np.array([x[i].mean() for i in run_idx]),
                                                    y_run, m) for m in (2,)}}
               for name, x in table.items()}
    ks = sorted(set.intersection(*(set(map(int, r["pass@k"])) for r in rows)))
    by_k = {str(k): _rho(np.array([r["pass@k"][str(k)] for r in rows]), y) for k in ks}
    # axes: each treatment run vs the base run at equal steps
    axes = []
    rl_of = {r["checkpoint"]: float(y[i]) for i, r in enumerate(rows)}
    by_key = {(r["run"], r["step"]): (r["pass@k"]["1"], rl_of.get(r["checkpoint"]))
              for r in all_rows}
    for run in sorted({r["run"] for r in all_rows} - {"base"}):
        for (other, step), (sft, rl) in sorted(by_key.items()):
            if other == run and ("base", step) in by_key:
                sft0, rl0 = by_key[("base", step)]
                axes.append({"treatment": run, "control": "base", "step": step,
                             "sft_pass@1": [sft, sft0], "rl_pass@1": [rl, rl0],
                             "sft_winner": _winner(sft, sft0),
                             "rl_winner": (_winner(rl, rl0) if rl is not None and rl0 is not None
                                           else NO_RL)})
    base_steps = sorted((r["step"], r["pass@k"]["1"], y[i]) for i, r in enumerate(rows)
                        if r["run"] == "base")
    return {
        "checkpoints": checkpoints, "with_rl": len(rows),
        "gates": gate_results, "verdict": verdict, "primary_proxy": PRIMARY,
        "tests": tests, "instance": instance, "within_run": within, "between_runs": between,
        "spearman_by_k": by_k, "axes": axes,
        # the values every statistic above used, per checkpoint with RL results (the figures
        # draw these)
        "proxies": {name: [float(v) for v in x] for name, x in table.items()},
        "over_training": [{"step": s, "sft_pass@1": a, "rl_pass@1": b} for s, a, b in base_steps],
        "times": times or {"runs": {}, "wall_s": None},
    }


# --------------------------------------------------------------------------------- rendering


def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(data: dict[str, Any]) -> str:
    """The findings as markdown (every number from `data`)."""
    lines = ["# Replication v2 (issue 21): results", "",
             "Generated by `python -m sftrl.study_v2` from the sweep's files; the plan is "
             "`PLAN.md` (committed before the sweep). Do not edit by hand.", "",
             f"**Verdict: {data['verdict']}** (primary proxy: {data['primary_proxy']}).", "",
             "## Gates", "", "| gate | pass | values |", "|---|---|---|"]
    for name, g in data["gates"].items():
        values = ", ".join(
            f"{k} {'; '.join(v) if v else 'none'}" if isinstance(v, list) else f"{k} {_f(v, 4)}"
            for k, v in g.items() if k not in ("pass", "descriptive"))
        shown = "yes" if g["pass"] else "no (reported only)" if g.get("descriptive") else "**no**"
        lines.append(f"| {name} | {shown} | {values} |")
    lines += ["", "## Checkpoints", "",
              "| checkpoint | step | gen. loss (common) | own held-out loss | SFT pass@1 | "
              f"control share@{LARGE_K} | RL pass@1 (mean) | RL pass@1 by seed | gates failed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in data["checkpoints"]:
        g = c.get("gates") or {}
        share = g.get(f"control_share@{int(g['k'])}") if g else None
        seeds = ", ".join(f"{s}: {_f(v, 4)}" for s, v in c["rl_pass@1_by_seed"].items())
        lines.append(f"| {c['checkpoint']} | {c['step']} | {_f(c['generalization_loss'], 4)} | "
                     f"{_f(c['own_heldout_loss'], 4)} | {_f(c['sft_pass@1'], 4)} | "
                     f"{_f(share)} | {_f(c['rl_pass@1'], 4)} | {seeds} | "
                     f"{', '.join(c.get('gates_failed') or []) or 'none'} |")
    total, with_rl = len(data["checkpoints"]), data["with_rl"]
    scope = [f"Every statistic below is over the {with_rl} checkpoints with post-RL results, "
             f"of {total}"
             + (f"; the other {total - with_rl} ran no RL (post-SFT pass@1 below {SFT_MIN}, "
                "the plan's compute-saving rule)" if total > with_rl else "") + "."]
    if data["verdict"].startswith("inconclusive: gate"):
        scope.append("A gate failed, so they describe the sweep and decide nothing "
                     "(the plan's rule).")
    lines += ["", "## Primary statistic (instance level)", "", " ".join(scope), "",
              "Spearman ρ(proxy, post-RL pass@1) minus ρ(post-SFT pass@1, post-RL pass@1); "
              f"{int(CONFIDENCE * 100)}% paired bootstrap interval over checkpoints; sign test "
              "on the pairs where the proxy and pass@1 disagree.", "",
              "| proxy | Δρ | interval | pairs | proxy right | p (one-sided) |",
              "|---|---|---|---|---|---|"]
    for name, t in data["tests"].items():
        st = t["sign_test"]
        lines.append(f"| {name} | {_f(t['delta'])} | [{_f(t['ci'][0])}, {_f(t['ci'][1])}] | "
                     f"{st['pairs']} | {st['proxy_right']} | {_f(st['p_one_sided'], 4)} |")
    lines += ["", "## Spearman ρ and calibration R² at both levels", "",
              "Instance level (every checkpoint): R² of a line fitted on every subset of m "
              "checkpoints, scored on the rest (mean ± std, median).", "",
              "| proxy | ρ | R² m=3 | median | R² m=4 | median |", "|---|---|---|---|---|---|"]
    for name, v in data["instance"].items():
        cells = []
        for m in ("3", "4"):
            r2 = v["r2"][m]
            cells += ([f"{_f(r2['mean'])} ± {_f(r2['std'])}", _f(r2["median"])]
                      if "mean" in r2 else [r2["error"], ""])
        lines.append(f"| {name} | {_f(v['rho'])} | " + " | ".join(cells) + " |")
    runs = list(data["within_run"])
    lines += ["", "Data-set level, the paper's sense (one data distribution trained for "
              "different lengths): ρ within each run's checkpoints; and one point per run "
              "(means over its checkpoints).", "",
              "| proxy | " + " | ".join(f"within {r}" for r in runs) + " | between runs |",
              "|---|" + "---|" * (len(runs) + 1)]
    for name in data["instance"]:
        cells = [_f(data["within_run"][r][name]) for r in runs]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {_f(data['between_runs'][name]['rho'])} |")
    lines += ["", "## Spearman ρ of post-SFT pass@k against the outcome, by k", "",
              "| k | " + " | ".join(data["spearman_by_k"]) + " |",
              "|---|" + "---|" * len(data["spearman_by_k"]),
              "| ρ | " + " | ".join(_f(v) for v in data["spearman_by_k"].values()) + " |",
              "", "## Axes (treatment vs control at equal SFT steps)", "",
              "| treatment | control | step | SFT pass@1 (treatment / control) | wins after SFT | "
              "RL pass@1 (treatment / control) | wins after RL |", "|---|---|---|---|---|---|---|"]
    for a in data["axes"]:
        lines.append(f"| {a['treatment']} | {a['control']} | {a['step']} | "
                     f"{_f(a['sft_pass@1'][0], 4)} / {_f(a['sft_pass@1'][1], 4)} | "
                     f"{a['sft_winner']} | "
                     f"{_f(a['rl_pass@1'][0], 4)} / {_f(a['rl_pass@1'][1], 4)} | "
                     f"{a['rl_winner']} |")
    lines += ["", "Over-training (the base run along its trajectory):", "",
              "| step | SFT pass@1 | RL pass@1 |", "|---|---|---|"]
    lines += [f"| {o['step']} | {_f(o['sft_pass@1'], 4)} | {_f(o['rl_pass@1'], 4)} |"
              for o in data["over_training"]]
    wall = data["times"]["wall_s"]
    lines += ["", "## Run time", "",
              f"The sweep end to end: {_f(wall / 3600 if wall else None, 2)} h of wall time "
              "(every run's attempts, overlapping runs counted once). Per run, its own time "
              "summed over its attempts:", "",
              "| run | state | total | slowest steps |", "|---|---|---|---|"]
    for name, t in data["times"]["runs"].items():
        slow = sorted(t["steps_s"].items(), key=lambda kv: -kv[1])[:3]
        lines.append(f"| {name} | {t['state']} | {_f(t['elapsed_s'], 0)} s | "
                     + ", ".join(f"{k} {v:.0f} s" for k, v in slow) + " |")
    stages = data["times"].get("stages") or {}
    if stages:
        lines += ["", "Per stage, summed over the runs (a run's own time; runs that ran side by "
                  "side each count in full):", "",
                  "| stage | steps | total | mean per step |", "|---|---|---|---|"]
        lines += [f"| {name} | {int(v['count'])} | {v['total_s'] / 3600:.2f} h | "
                  f"{v['total_s'] / v['count']:.0f} s |" for name, v in stages.items()]
    return "\n".join(lines) + "\n"


def plan_sections(plan: str) -> dict[str, list[str]]:
    """The plan's text the report quotes: {"quoted": the hypotheses, the gates and the decision
    rule, "deviations": every "Change after the start" section}, each a list of markdown
    blocks."""
    sections: list[tuple[str, list[str]]] = []
    for line in plan.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
    quoted = [f"### {title}\n" + "\n".join(body).strip() for title, body in sections
              if title.startswith(("Hypotheses", "Gates", "Primary statistic"))]
    deviations = [f"### {title}\n" + "\n".join(body).strip() for title, body in sections
                  if title.startswith("Change after the start")]
    return {"quoted": quoted, "deviations": deviations}


def render_plan(plan: str) -> str:
    parts = plan_sections(plan)
    lines = ["", "## The plan (quoted from PLAN.md)", ""]
    for block in parts["quoted"]:
        lines += ["> " + line if line else ">" for line in block.splitlines()] + [""]
    lines += ["## Deviations from the plan", ""]
    if not parts["deviations"]:
        lines.append("None.")
    for block in parts["deviations"]:
        lines += [block, ""]
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: Path, out: Path, n_bootstrap: int = N_BOOTSTRAP) -> Path:
    from sftrl import atomic, study_v2_plots

    if not sweep_dir.is_dir():
        raise ValueError(f"{sweep_dir}: no such sweep directory")
    rows = collect(sweep_dir)
    if not rows:
        raise ValueError(f"{sweep_dir}: no SFT checkpoint evaluated yet (no */eval/*-sft.json)")
    data = findings(rows, run_times(sweep_dir), n_bootstrap=n_bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "study.json",
                      json.dumps(data, indent=1, sort_keys=True, default=float) + "\n")
    figures = study_v2_plots.write_figures(data, out)
    text = render(data)
    if figures:
        text += "\n## Figures\n\n" + "\n".join(f"![{f.stem}]({f.name})" for f in figures) + "\n"
    plan = out / "PLAN.md"
    if plan.exists():
        text += render_plan(plan.read_text())
    readme = out / "README.md"
    atomic.write_text(readme, text)
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sftrl.study_v2", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gates", nargs="+", type=Path,
                        help="sample files (<workdir>/samples/<checkpoint>/<benchmark>.jsonl)")
    parser.add_argument("--diagnose", nargs="+", type=Path,
                        help="sample files: what the chain of thought gets right "
                             "(sftrl.study_v2_diagnostics)")
    parser.add_argument("--k", type=int, default=LARGE_K, help="the large k (default 64)")
    parser.add_argument("--sweep_dir", type=Path, help="the v2 sweep's directory")
    parser.add_argument("--out", type=Path, default=Path("docs/quagmire_v2"))
    parser.add_argument("--n_bootstrap", type=int, default=N_BOOTSTRAP)
    args = parser.parse_args(argv)
    if not args.gates and not args.diagnose and not args.sweep_dir:
        parser.error("give --gates FILES, --diagnose FILES or --sweep_dir DIR")
    from sftrl import errors

    try:
        for path in args.gates or ():
            result = gates(read_samples(path), args.k)
            print(json.dumps({"file": str(path),
                              **{key: round(v, 4) for key, v in result.items()}}))
        for path in args.diagnose or ():
            from sftrl.study_v2_diagnostics import diagnose

            result = diagnose(read_samples(path))
            print(json.dumps({"file": str(path), **{key: v if v is None else round(v, 4)
                                                     for key, v in result.items()}}))
        if args.sweep_dir:
            print(f"report written to {write_report(args.sweep_dir, args.out, args.n_bootstrap)}")
    except (OSError, ValueError) as error:  # a missing or malformed input file: one line
        return errors.report(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
