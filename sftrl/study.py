"""The replication study's report: a sweep directory -> `docs/<study>/README.md` and plots.

    python -m sftrl.study --sweep_dir=runs/quagmire --out=docs/quagmire_tiny \
        --sweep=configs/sweeps/quagmire_tiny.py [--allow_partial] \
        [--paper_numbers=docs/quagmire_paper_numbers.json]

Reads what `python -m sftrl.launch` left in the sweep directory:
  sweep.json                        per run: state, start and end times (the wall-clock time)
  <run>/config.json                 epochs, data variant, model size, RL steps
  <run>/pipeline.json               SFT steps of each variant (`<variant>/sft: final_step`)
  <run>/eval/*.json                 post-SFT and post-RL evals (`sftrl.eval.record`)
  <run>/samples/<ckpt>/<bench>.jsonl  the post-SFT samples, for the guessing control (optional)
  predict/report/predictor.json     the predictor's scores (Spearman, R², levels, proxies)
and writes into the output directory:
  README.md                         per-checkpoint table, the predictor table laid out like the
                                    paper's, the paper's own numbers (only from
                                    `--paper_numbers`, with its source; empty without it) and
                                    this study's ρ next to them, findings computed from the
                                    numbers (the paper's two settings recomputed on the
                                    matching subsets included), the wall-clock time, commands
  study.json                        every number the README shows
  proxies_vs_rl*.png, passk_curves.png, rl_gain.png

The statistics are the predictor's (`sftrl.eval.predict`); this module only arranges them and
derives plain facts (orders, differences, a sampling standard error). Unfinished runs are
listed and refused; with `allow_partial` they are shown as missing and, when the predict run's
output does not match the finished runs, the predictor is re-run here over those runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import itertools
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl import atomic, rewards
from sftrl.eval import passk, predict, sample_store
from sftrl.eval import record as eval_record
from sftrl.eval.record import EvalRecord, EvalRecordError

STATUS_FILE = "sweep.json"
PREDICT_RUN = "predict"
PREDICTOR_JSON = Path("report") / "predictor.json"
PAPER_MODELS = ("Llama-3-8B", "Mistral-NeMo-12B")
# The one quantitative claim of the paper's abstract (arXiv 2510.01624), the yardstick when the
# table above is empty.
PAPER_HEADLINE = (
    "The paper's abstract (Kang et al., arXiv 2510.01624) sums its table up as: predicting from "
    "generalization loss and pass@large k instead of post-SFT performance improves R² and "
    "Spearman's ρ by up to 0.5 (2×).")
PAPER_COLUMNS = ("dataset_spearman", "dataset_r2", "instance_spearman", "instance_r2")
ALPHA = 0.05
# Two standard errors: a gain or a spread below this is not told apart from sampling noise.
NOISE_SE = 2.0
# The confidence of the paired bootstrap intervals of Spearman differences.
CONFIDENCE = 0.95
_TOL = 1e-9


class StudyError(ValueError):
    """An input the study cannot use; the message names the file and the field."""


# ------------------------------------------------------------------ inputs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StudyError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _time(value: Any, where: str) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise StudyError(f"{where}: expected an ISO time, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class RunStatus:
    name: str
    state: str
    start: datetime.datetime | None
    end: datetime.datetime | None
    # the launcher's time summed over every attempt of a resumed run (None from older launchers)
    elapsed_s: float | None = None
    # attempts a killed launcher left open, whose end the launcher estimated
    estimated_attempts: int = 0

    @property
    def seconds(self) -> float | None:
        if self.elapsed_s is not None and self.state == "done":
            return self.elapsed_s
        return (self.end - self.start).total_seconds() if self.start and self.end else None


def load_status(sweep_dir: Path) -> tuple[str, dict[str, RunStatus]]:
    """(sweep name, {run: status}) from `sweep.json`, the predict run included."""
    path = sweep_dir / STATUS_FILE
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("runs"), dict) or not data["runs"]:
        raise StudyError(f"{path}: field 'runs' must be a non-empty object")
    runs = {}
    for name, entry in data["runs"].items():
        where = f"{path}: runs.{name}"
        if not isinstance(entry, dict):
            raise StudyError(f"{where}: expected an object")
        state = entry.get("state")
        if state not in ("pending", "running", "done", "failed"):
            raise StudyError(f"{where}: field 'state' is {state!r}")
        start = _time(entry.get("start"), f"{where}.start")
        end = _time(entry.get("end"), f"{where}.end")
        if state == "done" and (start is None or end is None):
            raise StudyError(f"{where}: a done run needs fields 'start' and 'end'")
        elapsed = entry.get("elapsed_s")
        if elapsed is not None and (isinstance(elapsed, bool) or
                                    not isinstance(elapsed, int | float) or elapsed < 0):
            raise StudyError(f"{where}: field 'elapsed_s' is {elapsed!r}, not seconds")
        estimated = entry.get("estimated_attempts") or 0
        if isinstance(estimated, bool) or not isinstance(estimated, int) or estimated < 0:
            raise StudyError(f"{where}: field 'estimated_attempts' is {estimated!r}, not a count")
        runs[name] = RunStatus(name, state, start, end,
                               None if elapsed is None else float(elapsed), estimated)
    return str(data.get("sweep") or sweep_dir.name), runs


@dataclasses.dataclass
class EvalResult:
    """One eval record: its mean-over-benchmarks pass@k curve and sampling size."""

    record: EvalRecord
    curve: dict[int, float]
    # per benchmark (samples per prompt, prompts, pass@1): for the sampling standard error
    sizes: list[tuple[int, int, float]]

    @property
    def path(self) -> str:
        return self.record.source

    @property
    def pass1(self) -> float:
        return self.curve[1]

    def sampling_se(self) -> float:
        """An upper bound on the standard error of pass@1 from drawing n samples per prompt
        (prompts fixed, as they are for every checkpoint): per benchmark
        sqrt(sum_i p_i (1 - p_i) / n) / P <= sqrt(p (1 - p) / (n P)) by concavity, then the
        mean over benchmarks."""
        var = sum(p * (1 - p) / (n * prompts) for n, prompts, p in self.sizes)
        return math.sqrt(var) / len(self.sizes)


# What the study reads of each record: pass@1 as the predictor reads it, the curve, the sizes.
_REQUIRED = ("stage", "group", "dataset", "pass@1", "pass@k", "num_prompts")


def load_eval(path: Path) -> EvalResult:
    record = eval_record.read(path, _REQUIRED)
    if record.stage == "sft":
        record.require("generalization_loss")
    # n defaults to the largest k of the curve (older records do not write it)
    sizes = [(b.n or max(b.curve), b.num_prompts or 0, b.curve[1])
             for _, b in sorted(record.benchmarks.items())]
    return EvalResult(record, record.mean_curve(), sizes)


@dataclasses.dataclass
class Row:
    """One SFT checkpoint of the sweep with its RL result (None where missing)."""

    run: str
    checkpoint: str
    group: str | None = None
    dataset: str | None = None
    epochs: int | None = None
    sft_steps: int | None = None
    seconds: float | None = None
    seconds_estimated: bool = False  # an attempt's end is the launcher's estimate
    sft: EvalResult | None = None
    rl: EvalResult | None = None
    missing: str = ""  # why the row is incomplete
    data_size: int | None = None  # SFT examples of a synthetic data set (its name ends in it)

    @property
    def gain(self) -> float | None:
        return self.rl.pass1 - self.sft.pass1 if self.rl and self.sft else None

    @property
    def gain_se(self) -> float | None:
        if not (self.rl and self.sft):
            return None
        return math.hypot(self.sft.sampling_se(), self.rl.sampling_se())


def _run_config(run_dir: Path) -> dict[str, Any]:
    config = _read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise StudyError(f"{run_dir / 'config.json'}: expected a JSON object")
    return config


def _epochs(config: dict[str, Any], where: str) -> int | None:
    value = (config.get("sft") or {}).get("num_epochs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{where}: field 'sft.num_epochs' is {value!r}, not an int")
    return value


def _data_size(config: dict[str, Any], where: str) -> int | None:
    """The synthetic data set's size from a run's config; None for file-based data."""
    data = config.get("data") or {}
    if data.get("source", "synthetic") != "synthetic":
        return None
    value = (data.get("synthetic") or {}).get("size")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{where}: field 'data.synthetic.size' is {value!r}, not an int")
    return value


def _sft_steps(run_dir: Path, variant: str) -> int:
    path = run_dir / "pipeline.json"
    steps = _read_json(path)
    entry = steps.get(f"{variant}/sft") if isinstance(steps, dict) else None
    value = entry.get("final_step") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{path}: field '{variant}/sft.final_step' must be an int, "
                         f"got {value!r}")
    return value


def load_run(sweep_dir: Path, status: RunStatus) -> list[Row]:
    """The checkpoints of one finished run: SFT evals joined to their RL evals."""
    run_dir = sweep_dir / status.name
    config = _run_config(run_dir)
    epochs = _epochs(config, str(run_dir / "config.json"))
    size = _data_size(config, str(run_dir / "config.json"))
    evals = [load_eval(p) for p in sorted((run_dir / "eval").glob("*.json"))]
    sft = {e.record.checkpoint: e for e in evals if e.record.stage == "sft"}
    if not sft:
        raise StudyError(f"{run_dir / 'eval'}: no post-SFT eval file (stage 'sft')")
    rows = {name: Row(status.name, name, e.record.group, e.record.dataset, epochs,
                      _sft_steps(run_dir, e.record.dataset or ""), status.seconds,
                      status.estimated_attempts > 0, e, data_size=size)
            for name, e in sft.items()}
    for e in evals:
        if e.record.stage != "rl":
            continue
        parent = e.record.sft_checkpoint or ""
        if parent not in rows:
            raise StudyError(f"{e.path}: field 'sft_checkpoint' {parent!r} has no post-SFT "
                             f"eval file in {run_dir / 'eval'}")
        if rows[parent].rl is not None:
            raise StudyError(f"{e.path}: a second RL eval of {parent!r} (first: "
                             f"{rows[parent].rl.path})")
        rows[parent].rl = e
    for row in rows.values():
        if row.rl is None:
            row.missing = "no post-RL eval file"
    return list(rows.values())


# ------------------------------------------------------------------ the predictor


def _candidates(rows: Sequence[Row], benchmarks: Sequence[str] | None) -> list[Any]:
    records = [e.record for r in rows for e in (r.sft, r.rl) if e is not None]
    try:
        return predict.candidates(records, benchmarks)
    except predict.PredictError as e:
        raise StudyError(str(e)) from None


def _stale(report: dict[str, Any], candidates: Sequence[Any], path: Path) -> str:
    """Why `report` does not describe `candidates` ('' when it does)."""
    groups = report.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise StudyError(f"{path}: field 'groups' must be a non-empty object")
    have: dict[str, dict[str, Any]] = {}
    for g in groups.values():
        for c in g.get("candidates", []) if isinstance(g, dict) else []:
            have[c.get("checkpoint")] = c
    want = {c.checkpoint: c for c in candidates}
    if set(have) != set(want):
        return (f"it covers checkpoints {sorted(have)} but the eval files give "
                f"{sorted(want)}")
    for name, c in want.items():
        got = (have[name].get("outcomes") or {}).get(predict.OUTCOME)
        wanted = c.outcomes.get(predict.OUTCOME)
        if (got is None) != (wanted is None) or (
                got is not None and abs(got - wanted) > _TOL):
            return f"checkpoint {name!r}: field 'outcomes.{predict.OUTCOME}' is {got!r}, " \
                   f"the eval files give {wanted!r}"
        got = (have[name].get("proxies") or {}).get("pass@1")
        if got is None or abs(got - c.proxies["pass@1"]) > _TOL:
            return f"checkpoint {name!r}: field 'proxies.pass@1' is {got!r}, the eval " \
                   f"files give {c.proxies['pass@1']!r}"
    return ""


def predictor_report(sweep_dir: Path, rows: Sequence[Row], statuses: Mapping[str, RunStatus],
                     allow_partial: bool) -> tuple[dict[str, Any], str]:
    """(predictor report, where it came from): the predict run's, checked against the eval
    files, or (partial sweeps only) re-computed by `sftrl.eval.predict` over the rows."""
    path = sweep_dir / PREDICT_RUN / PREDICTOR_JSON
    done = [r for r in rows if r.sft is not None]
    config_dir = sweep_dir / PREDICT_RUN
    if not (config_dir / "config.json").is_file():
        config_dir = sweep_dir / done[0].run
    from sftrl import predict_stage

    options = predict_stage.options_from_config(_run_config(config_dir))
    candidates = _candidates(done, options.benchmarks)
    problem = ""
    if statuses.get(PREDICT_RUN) is None or statuses[PREDICT_RUN].state != "done":
        problem = f"the {PREDICT_RUN!r} run is not done in {sweep_dir / STATUS_FILE}"
    elif not path.is_file():
        problem = f"{path}: no such file"
    else:
        report = _read_json(path)
        if not isinstance(report, dict):
            raise StudyError(f"{path}: expected a JSON object")
        stale = _stale(report, candidates, path)
        if not stale:
            return report, f"`{PREDICT_RUN}/{PREDICTOR_JSON.as_posix()}` (the sweep's predict run)"
        problem = f"{path} is stale: {stale}"
    if not allow_partial:
        raise StudyError(f"{problem}; re-run the sweep's predict run, or pass --allow_partial "
                         "to re-compute the predictor over the finished runs")
    try:
        report = predict.evaluate(candidates, options)
    except predict.PredictError as e:
        raise StudyError(f"predictor over the finished runs: {e}") from None
    return report, (f"re-computed by `sftrl.study` with `sftrl.eval.predict` over the "
                    f"{len(candidates)} finished checkpoints ({problem})")


# ------------------------------------------------------------------ derived facts


def _fmt(value: float | None, digits: int = 4) -> str:
    return "missing" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "missing" if value is None else f"{value:+.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "missing"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


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


def _score(g: dict[str, Any], level: str, proxy: str) -> dict[str, Any]:
    return g["scores"][level][predict.OUTCOME][proxy]


def proxy_rows(k: int) -> list[tuple[str, str]]:
    """(label, the predictor's proxy name) in the paper's row order."""
    return [("post-SFT pass@1", "pass@1"), ("generalization loss", "-generalization_loss"),
            (f"pass@{k}", f"pass@{k}"), ("average of the three", predict.AVERAGE)]


def min_pvalue(n: int, options: Mapping[str, Any]) -> float:
    """The smallest permutation p-value n points can reach (a perfect ranking)."""
    ranks = list(range(n))
    return predict.permutation_pvalue(ranks, ranks, int(options["n_permutations"]),
                                      int(options["seed"]))


def rl_signal(rows: Sequence[Row]) -> dict[str, Any]:
    """RL gains and post-RL spread against the evaluation's sampling standard error."""
    done = [r for r in rows if r.gain is not None]
    if not done:
        return {"n": 0}
    gains = np.array([r.gain for r in done])
    se = np.array([r.gain_se for r in done])
    rl = np.array([r.rl.pass1 for r in done])
    rl_se = np.array([r.rl.sampling_se() for r in done])
    se_rms = float(np.sqrt(np.mean(se**2)))
    rl_se_rms = float(np.sqrt(np.mean(rl_se**2)))
    return {
        "n": len(done),
        "mean_gain": float(gains.mean()), "std_gain": float(gains.std()),
        "gain_se_rms": se_rms,
        # the mean of N independent gains has SE rms/sqrt(N)
        "mean_gain_se": se_rms / math.sqrt(len(done)),
        "n_gain_beyond_noise": int(np.sum(np.abs(gains) > NOISE_SE * se)),
        "rl_std": float(rl.std()), "rl_min": float(rl.min()), "rl_max": float(rl.max()),
        "rl_se_rms": rl_se_rms,
    }


def group_findings(group: str, g: dict[str, Any], rows: Sequence[Row],
                   options: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Statements computed from the group's numbers, and the facts behind them."""
    labels = dict((name, label) for label, name in proxy_rows(g["k"]))
    lines: list[str] = []
    facts: dict[str, Any] = {}
    labeled = [c for c in g["candidates"] if predict.OUTCOME in c["outcomes"]]
    n, n_sets = len(labeled), len({c["dataset"] for c in labeled})
    lines.append(f"Group `{group}`: {n} SFT checkpoints with a post-RL result, from {n_sets} "
                 f"data sets; pass@k uses k = {g['k']}.")
    for level, count in (("instance", n), ("dataset", n_sets)):
        where = "data-set" if level == "dataset" else level
        scored = {name: _score(g, level, name) for name in labels}
        ok = {name: s for name, s in scored.items() if "error" not in s}
        if not ok:
            reasons = dict.fromkeys(s["error"].split(": ", 1)[-1] for s in scored.values())
            lines.append(f"At the {where} level no proxy could be scored "
                         f"({'; '.join(reasons)}).")
            continue
        rho = {p: ok[p]["spearman"]["rho"] for p in ok}
        order = sorted(ok, key=lambda p: -rho[p])
        top = [p for p in order if rho[p] >= rho[order[0]] - _TOL]
        facts[f"{level}_best_proxies"] = top
        ranking = ", ".join(f"{labels[p]} {rho[p]:.3f} (p = {ok[p]['spearman']['p_value']:.3f})"
                            for p in order)
        best = (f"{labels[top[0]]}'s" if len(top) == 1 else
                "shared by " + " and ".join(labels[p] for p in top))
        lines.append(f"At the {where} level ({count} points) the highest Spearman ρ "
                     f"({rho[top[0]]:.3f}) is {best}; in order: {ranking}.")
        if "pass@1" in rho and len(rho) > 1:
            # the paper's headline is this difference: up to +0.5
            lines.append(f"Spearman ρ minus post-SFT pass@1's at the {where} level (the "
                         "paper's headline: up to +0.5): " + ", ".join(
                             f"{labels[p]} {rho[p] - rho['pass@1']:+.3f}"
                             for p in order if p != "pass@1") + ".")
        floor = min_pvalue(count, options) if count >= 2 else 1.0
        significant = [p for p in order if ok[p]["spearman"]["p_value"] < ALPHA]
        facts[f"{level}_significant_positive"] = [p for p in significant if rho[p] > 0]
        if floor >= ALPHA:
            lines.append(f"With {count} points even a perfect ranking has p = {floor:.3f} "
                         f">= {ALPHA}, so no {where}-level correlation can be significant.")
        else:
            for sign, chosen in (("positive", [p for p in significant if rho[p] > 0]),
                                 ("negative (ranks in reverse)",
                                  [p for p in significant if rho[p] < 0])):
                lines.append(f"Significantly {sign} at {ALPHA} ({where} level): "
                             f"{', '.join(labels[p] for p in chosen) or 'none'}.")
        m = max(int(size) for size in options["calibration_sizes"])
        r2 = {p: ok[p]["r2"].get(str(m), {}) for p in ok}
        r2 = {p: v for p, v in r2.items() if "error" not in v and v}
        if r2:
            best_r2 = max(r2, key=lambda p: r2[p]["mean"])
            lines.append(f"Highest mean calibration R² at the {where} level (m = {m}): "
                         f"{labels[best_r2]} {r2[best_r2]['mean']:.3f} ± "
                         f"{r2[best_r2]['std']:.3f}.")
        else:
            errors = dict.fromkeys(v["error"].split(": ", 1)[-1] for p in ok
                                   for v in ok[p]["r2"].values() if "error" in v)
            lines.append(f"No calibration R² at the {where} level: {'; '.join(errors)}.")
    # Misranking by post-SFT pass@1, from the checkpoints' own numbers.
    x = [c["proxies"]["pass@1"] for c in labeled]
    y = [c["outcomes"][predict.OUTCOME] for c in labeled]
    names = [c["checkpoint"] for c in labeled]
    if n >= 2:
        bad, total = discordant_pairs(x, y)
        facts.update(discordant=bad, comparable_pairs=total)
        text = (f"Of the {total} checkpoint pairs that post-SFT and post-RL pass@1 both order "
                f"strictly, post-SFT pass@1 orders {bad} the wrong way round.")
        best = [i for i, v in enumerate(y) if v == max(y)]
        if len(best) == 1:
            i = best[0]
            rank = 1 + sum(v > x[i] for v in x)
            ties = sum(v == x[i] for v in x) - 1
            facts.update(top_rl=names[i], top_rl_sft_rank=rank)
            text += (f" The best checkpoint after RL, `{names[i]}`, ranks {rank} of {n} by "
                     "post-SFT pass@1" + (f" (tied with {ties} other)" if ties else "") + ".")
        else:
            text += f" {len(best)} checkpoints share the best post-RL pass@1."
        lines.append(text)
    others = [name for name in labels if name != "pass@1"]
    if n >= 4 and others:
        margins = spearman_margins(labeled, others, options)
        facts["instance_margin_beyond_noise"] = [p for p, (_, low, _) in margins.items()
                                                 if low > 0]
        lines.append(
            "Instance-level Spearman ρ minus post-SFT pass@1's, with a "
            f"{100 * CONFIDENCE:g}% paired bootstrap interval over the checkpoints: "
            + ", ".join(f"{labels[p]} {_margin_text(d, low, high)}"
                        for p, (d, low, high) in margins.items()) + ".")
    return lines, facts


def _margin_text(d: float, low: float, high: float) -> str:
    if math.isnan(d):
        return "undefined (tied ranks)"
    if math.isnan(low):
        return f"{d:+.3f} [no interval: every resample has tied ranks]"
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


CONTROL_SHIFTS = 8


def guessing_control(sweep_dir: Path, row: Row, ks: Sequence[int]) -> dict[int, float] | None:
    """{k: post-SFT pass@k scored against another prompt's gold answer} (the guessing control,
    `passk.mismatched_answer_pass_at_k`), averaged over the benchmarks like pass@k itself; None
    when the run kept no samples. Answers are compared after `rewards.normalize_answer`."""
    if row.sft is None:
        return None
    folder = sweep_dir / row.run / "samples" / row.checkpoint
    benches = sorted(row.sft.record.benchmarks)
    paths = [folder / f"{bench}.jsonl" for bench in benches]
    if not all(path.is_file() for path in paths):
        return None
    per_bench = []
    for bench, path in zip(benches, paths, strict=True):
        try:
            samples = sample_store.read_rows(path)
        except (OSError, sample_store.SampleStoreError) as e:
            raise StudyError(str(e)) from e
        expected = row.sft.record.benchmarks[bench].num_prompts
        if expected is not None and len(samples) != expected:
            raise StudyError(f"{path}: {len(samples)} prompts, but {row.sft.path} field "
                             f"'benchmarks.{bench}.num_prompts' is {expected}")
        answers = [[None if a is None else rewards.normalize_answer(a) for a in r["extracted"]]
                   for r in samples]
        golds = [rewards.normalize_answer(r["answer"]) for r in samples]
        try:
            per_bench.append({k: passk.mismatched_answer_pass_at_k(
                answers, golds, k, shifts=CONTROL_SHIFTS) for k in ks})
        except ValueError as e:
            raise StudyError(f"{path}: {e}") from e
    return {k: float(np.mean([b[k] for b in per_bench])) for k in ks}


def control_findings(rows: Sequence[Row], controls: Mapping[str, dict[int, float]], k: int,
                     options: Mapping[str, Any]) -> list[str]:
    """The guessing control next to the true pass@k, and whether pass@k above the control
    ranks the checkpoints after RL."""
    done = [r for r in rows if r.sft is not None and r.checkpoint in controls]
    if not done:
        return []
    true_k = np.array([r.sft.curve[k] for r in done])
    ctrl_k = np.array([controls[r.checkpoint][k] for r in done])
    true_1 = np.array([r.sft.pass1 for r in done])
    ctrl_1 = np.array([controls[r.checkpoint][1] for r in done])

    def share(control: np.ndarray, true: np.ndarray, what: str) -> str:
        """The control as a share of the true value, over checkpoints where that is not 0."""
        if not np.any(true > 0):
            return f"no share ({what} is 0 for every checkpoint)"
        return (f"on average "
                f"{100 * float(np.mean(control[true > 0] / true[true > 0])):.0f}% of {what}")

    text = (f"Guessing control (the same post-SFT samples scored against another prompt's gold "
            f"answer, {CONTROL_SHIFTS} shifts; `sftrl.eval.passk.mismatched_answer_pass_at_k`): "
            f"pass@{k} control {ctrl_k.min():.3f} to {ctrl_k.max():.3f} against the true "
            f"{true_k.min():.3f} to {true_k.max():.3f}, {share(ctrl_k, true_k, f'pass@{k}')}; "
            f"at k = 1 the control is {share(ctrl_1, true_1, 'pass@1')}.")
    labeled = [i for i, r in enumerate(done) if r.rl is not None]
    if len(labeled) >= 3:
        x = (true_k - ctrl_k)[labeled]
        y = np.array([done[i].rl.pass1 for i in labeled])
        score = _rho_p(x, y, options)
        if score is not None:
            text += (f" pass@{k} minus its control, as a proxy (not one of the paper's): "
                     f"instance-level Spearman ρ {score['rho']:.3f} "
                     f"(p = {score['p_value']:.3f}).")
    return [text]


def data_distribution(row: Row) -> str:
    """The data set's name without its size: checkpoints of one distribution share it."""
    dataset, suffix = row.dataset or "", f"-{row.data_size}"
    return dataset.removesuffix(suffix) if row.data_size is not None else dataset


def _rho_p(x: np.ndarray, y: np.ndarray, options: Mapping[str, Any]) -> dict[str, float] | None:
    """Spearman ρ and its permutation p-value, the predictor's; None where ρ is undefined."""
    rho = _rho(x, y)
    if math.isnan(rho):
        return None
    return {"rho": float(rho), "p_value": float(predict.permutation_pvalue(
        x, y, int(options["n_permutations"]), int(options["seed"])))}


def spearman_by_k(rows: Sequence[Row], options: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """{k: Spearman ρ and permutation p of post-SFT pass@k against post-RL pass@1} over the
    checkpoints with both, for every k they all report: where along k the signal appears (the
    paper shows its correlation rising from k = 1 to k = 64)."""
    done = [r for r in rows if r.sft is not None and r.rl is not None]
    if len(done) < 3:
        return {}
    y = np.array([r.rl.pass1 for r in done], float)
    ks = sorted(set.intersection(*(set(r.sft.curve) for r in done)))
    scores = {k: _rho_p(np.array([r.sft.curve[k] for r in done], float), y, options)
              for k in ks}
    return {k: score for k, score in scores.items() if score is not None}


def paper_settings(labeled: Sequence[Mapping[str, Any]], rows: Sequence[Row], k: int,
                   options: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The paper's two settings on the matching subsets of the checkpoints. Its "data-set
    level" compares checkpoints of ONE data distribution trained differently (epochs, size);
    its "instance level" compares DIFFERENT data sets trained the same way. The predictor's
    levels here are another cut (every checkpoint; per data set averaged), so both are
    recomputed: Spearman ρ per subset, and for the one-distribution setting the share of
    checkpoint pairs each proxy orders the right way round, pooled over the distributions."""
    labels = {name: label for label, name in proxy_rows(k)}
    base = [name for name in labels if name != predict.AVERAGE]
    by_name = {r.checkpoint: r for r in rows}
    points = [(c, by_name.get(c["checkpoint"])) for c in labeled]
    points = [(c, r) for c, r in points if r is not None and r.epochs is not None]

    def proxies(members: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        x = {p: np.array([c["proxies"][p] for c in members], float) for p in base}
        # the predictor's average, z-scored within these points rather than the whole group
        x[predict.AVERAGE] = predict.zscored_average([x[p] for p in base])
        return x

    def rho_text(members: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
        y = np.array([c["outcomes"][predict.OUTCOME] for c in members], float)
        out, cells = {}, []
        for p, x in proxies(members).items():
            score = _rho_p(x, y, options)
            if score is None:
                cells.append(f"{labels[p]} undefined (tied ranks)")
                continue
            out[p] = score
            cells.append(f"{labels[p]} {score['rho']:.3f} (p = {score['p_value']:.3f})")
        return ", ".join(cells), out

    lines: list[str] = []
    facts: dict[str, Any] = {"one_distribution": {}, "same_recipe": {}}
    # One distribution, trained differently.
    groups: dict[str, list] = {}
    for c, r in points:
        groups.setdefault(data_distribution(r), []).append(c)
    right = dict.fromkeys(labels, 0)
    pairs = 0
    for members in groups.values():
        if len(members) < 2:
            continue
        y = [c["outcomes"][predict.OUTCOME] for c in members]
        pairs += sum(int(a != b) for a, b in itertools.combinations(y, 2))
        for p, x in proxies(members).items():
            bad, total = discordant_pairs(list(x), y)
            right[p] += int(total - bad)  # a proxy tie orders the pair neither way
    if pairs:
        facts["one_distribution"]["pairs"] = pairs
        facts["one_distribution"]["ordered_right"] = right
        lines.append(
            "The paper's data-set level (checkpoints of one data distribution that differ in SFT "
            f"epochs or data size): of the {pairs} pairs of such checkpoints that post-RL pass@1 "
            "orders strictly, each proxy orders the right way round " + ", ".join(
                f"{labels[p]} {right[p]}" for p in labels) + ".")
    for dist, members in sorted(groups.items()):
        if len(members) < 3:
            continue
        text, scores = rho_text(members)
        facts["one_distribution"][dist] = {"n": len(members), "scores": scores}
        floor = min_pvalue(len(members), options)
        lines.append(f"Within `{dist}` ({len(members)} checkpoints), Spearman ρ: {text}"
                     + (f"; with {len(members)} points even a perfect ranking has "
                        f"p = {floor:.3f}" if floor >= ALPHA else "") + ".")
    # Different data sets, one recipe (same size and epochs).
    recipes: dict[tuple[int | None, int], list] = {}
    for c, r in points:
        recipes.setdefault((r.data_size, r.epochs), []).append((c, r))
    for (size, epochs), recipe_points in sorted(recipes.items(), key=lambda kv: str(kv[0])):
        members = [c for c, _ in recipe_points]
        if len({data_distribution(r) for _, r in recipe_points}) < 3:
            continue
        text, scores = rho_text(members)
        recipe = (f"{size} examples × " if size else "") + \
            f"{epochs} epoch{'' if epochs == 1 else 's'}"
        facts["same_recipe"][recipe] = {"n": len(members), "scores": scores}
        floor = min_pvalue(len(members), options)
        lines.append(f"The paper's instance level (different data sets, one SFT recipe: "
                     f"{recipe}; {len(members)} checkpoints), Spearman ρ: {text}"
                     + (f"; with {len(members)} points even a perfect ranking has "
                        f"p = {floor:.3f}" if floor >= ALPHA else "") + ".")
    return lines, facts


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    """The predictor's Spearman ρ; NaN where it is undefined (a resample with all ranks tied)."""
    try:
        return predict.spearman(x, y)
    except predict.PredictError:
        return math.nan


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


def verdict(group_facts: dict[str, Any], signal: dict[str, Any], n: int) -> list[str]:
    """Whether the paper's central claim reproduces here, and if not, why."""
    reasons = []
    if signal.get("n", 0) == 0:
        return ["No checkpoint has both a post-SFT and a post-RL result: nothing to judge."]
    no_signal = abs(signal["mean_gain"]) <= NOISE_SE * signal["mean_gain_se"]
    no_spread = signal["rl_std"] <= NOISE_SE * signal["rl_se_rms"]
    if no_signal:
        reasons.append("too little RL signal at this scale: the mean RL gain is within "
                       f"{NOISE_SE:g} standard errors of zero")
    if no_spread:
        reasons.append("the post-RL scores of the checkpoints differ by less than "
                       f"{NOISE_SE:g} sampling standard errors, so their order is noise")
    best = group_facts.get("instance_best_proxies")
    significant = group_facts.get("instance_significant_positive", [])
    misranks = group_facts.get("discordant", 0) > 0
    if best is None:
        reasons.append("no proxy could be scored at the instance level")
    elif "pass@1" in best:
        reasons.append("post-SFT pass@1 ranks the checkpoints at least as well as the other "
                       "proxies")
    elif not set(best) & set(significant):
        reasons.append(f"the best proxy's correlation is not significantly positive at {ALPHA} "
                       f"with {n} checkpoints (too few checkpoints or too noisy)")
    elif not set(best) & set(group_facts.get("instance_margin_beyond_noise", [])):
        reasons.append("the best proxy ranks the checkpoints better than post-SFT pass@1 only "
                       f"within noise (its {100 * CONFIDENCE:g}% paired bootstrap interval of "
                       "the difference in Spearman ρ includes 0)")
    if not misranks:
        reasons.append("post-SFT pass@1 misranks no pair of checkpoints")
    if reasons:
        return ["**The paper's central finding does not reproduce at this scale**: "
                + "; ".join(reasons) + "."]
    return ["**The paper's central finding reproduces at this scale**: post-SFT pass@1 "
            "misranks checkpoints, and the best proxy at the instance level is not pass@1 "
            f"but one with a significantly positive correlation (p < {ALPHA}) that ranks them "
            f"better than pass@1 beyond noise ({100 * CONFIDENCE:g}% paired bootstrap)."]


# ------------------------------------------------------------------ paper numbers


@dataclasses.dataclass(frozen=True)
class PaperNumbers:
    """The `--paper_numbers` file: {model: {row label: {column: value}}}, where the numbers
    come from, and notes on them."""

    table: dict[str, dict[str, dict[str, Any]]]
    source: str = ""
    notes: tuple[str, ...] = ()


def _paper_provenance(data: Any, path: Path) -> tuple[str, tuple[str, ...]]:
    """(source, notes): a table without a source cannot be checked, so it is required."""
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source.strip():
        raise StudyError(f"{path}: field 'source' must say where the numbers come from")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise StudyError(f"{path}: field 'notes' must be a list of strings")
    return source.strip(), tuple(notes)


def _leading_number(cell: Any) -> float | None:
    """The number a paper cell starts with ("0.57 ± 0.29" -> 0.57); None for text."""
    if isinstance(cell, int | float) and not isinstance(cell, bool):
        return float(cell)
    match = re.match(r"\s*(-?\d+(?:\.\d+)?)", cell) if isinstance(cell, str) else None
    return float(match[1]) if match else None


def paper_differences(paper: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      g: dict[str, Any], k: int) -> list[str]:
    """Per paper model, this study's Spearman ρ next to the paper's, proxy by proxy, and the
    margin over post-SFT pass@1 in both (the paper's headline), at both levels."""
    lines = []
    for level, column, pooling in (("dataset", "dataset_spearman", "one point per data set"),
                                   ("instance", "instance_spearman", "one point per checkpoint")):
        where = "data-set" if level == "dataset" else level
        ours = {name: _score(g, level, name) for _, name in proxy_rows(k)}
        ours = {n: s["spearman"]["rho"] for n, s in ours.items() if "error" not in s}
        for model in PAPER_MODELS:
            cells = []
            base_paper = _leading_number(paper.get(model, {}).get("post-SFT pass@1", {})
                                         .get(column))
            for label, name in proxy_rows(k):
                key = "pass@k" if label == f"pass@{k}" else label
                theirs = _leading_number(paper.get(model, {}).get(key, {}).get(column))
                if theirs is None or name not in ours:
                    continue
                text = f"{label} {ours[name]:.2f} vs {theirs:.2f}"
                if name != "pass@1" and base_paper is not None and "pass@1" in ours:
                    text += (f" (margin over pass@1: {ours[name] - ours['pass@1']:+.2f} here, "
                             f"{theirs - base_paper:+.2f} there)")
                cells.append(text)
            if cells:
                lines.append(f"Spearman ρ at the {where} level, this study's ({pooling}) vs "
                             f"the paper's {model}: " + "; ".join(cells) + ".")
    return lines


def load_paper_numbers(path: Path | None, k_label: str) -> PaperNumbers:
    """The paper's table from a JSON file typed in from it: {"source": "...", "notes": [...],
    "models": {"Llama-3-8B": {"post-SFT pass@1": {"dataset_spearman": 0.1,
    "dataset_r2": "0.2 ± 0.1", ...}}}}; values are numbers or text, absent cells stay empty."""
    if path is None:
        return PaperNumbers({})
    data = _read_json(path)
    source, notes = _paper_provenance(data, path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise StudyError(f"{path}: field 'models' must be an object")
    rows = {label for label, _ in proxy_rows(0)} | {k_label, "pass@k (large k)"}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, table in models.items():
        if model not in PAPER_MODELS:
            raise StudyError(f"{path}: models.{model}: not one of {PAPER_MODELS}")
        if not isinstance(table, dict):
            raise StudyError(f"{path}: models.{model}: expected an object")
        for row, cells in table.items():
            where = f"{path}: models.{model}.{row}"
            if row not in rows:
                raise StudyError(f"{where}: unknown row (known: {sorted(rows)})")
            if not isinstance(cells, dict):
                raise StudyError(f"{where}: expected an object")
            for column, value in cells.items():
                if column not in PAPER_COLUMNS:
                    raise StudyError(f"{where}.{column}: unknown column ({PAPER_COLUMNS})")
                if not isinstance(value, str):
                    _number(value, f"{where}.{column}")
            key = "pass@k" if row in (k_label, "pass@k (large k)") else row
            out.setdefault(model, {})[key] = cells
    return PaperNumbers(out, source, notes)


# ------------------------------------------------------------------ rendering


def _spearman_cell(s: dict[str, Any]) -> str:
    if "error" in s:
        return "n/a¹"
    sp = s["spearman"]
    return f"{sp['rho']:.4f} (p = {sp['p_value']:.4f})"


def _r2_cell(s: dict[str, Any], m: int) -> str:
    r2 = s.get("r2", {}).get(str(m)) if "error" not in s else None
    if r2 is None or "error" in r2:
        return "n/a¹"
    return f"{r2['mean']:.4f} ± {r2['std']:.4f}"


def predictor_table(g: dict[str, Any], sizes: Sequence[int]) -> list[str]:
    header = ["proxy"]
    for level in ("data-set", "instance"):
        header += [f"{level} Spearman ρ (p)"] + [f"{level} R² m={m}" for m in sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes: dict[str, None] = {}
    for label, name in proxy_rows(g["k"]):
        cells = [label]
        for level, where in (("dataset", "data-set"), ("instance", "instance")):
            s = _score(g, level, name)
            cells += [_spearman_cell(s)] + [_r2_cell(s, m) for m in sizes]
            if "error" in s:
                notes[f"{where} level: {s['error'].split(': ', 1)[-1]}"] = None
            for m in sizes:
                r2 = s.get("r2", {}).get(str(m), {})
                if "error" in r2:
                    notes[f"{where} level, m={m}: {r2['error'].split(': ', 1)[-1]}"] = None
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if notes:
        lines += ["¹ n/a, as the predictor reports it:", ""]
        lines += [f"- {note}" for note in notes] + [""]
    return lines


def checkpoint_table(rows: Sequence[Row], k: int,
                     controls: Mapping[str, dict[int, float]] | None = None) -> list[str]:
    controls = controls or {}
    header = ["#", "run", "checkpoint", "data set", "epochs", "SFT steps", "gen. loss",
              "SFT pass@1", f"SFT pass@{k}", f"SFT pass@{k} control", "RL pass@1", "RL gain",
              "2·SE(gain)", "run time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for number, r in enumerate(rows, start=1):
        sft = r.sft
        loss = sft.record.generalization_loss if sft else None
        at_k = sft.curve.get(k) if sft else None
        se = r.gain_se
        cells = [str(number), r.run, r.checkpoint, r.dataset or "missing",
                 "missing" if r.epochs is None else str(r.epochs),
                 "missing" if r.sft_steps is None else str(r.sft_steps),
                 _fmt(loss), _fmt(sft.pass1 if sft else None), _fmt(at_k),
                 (_fmt(controls[r.checkpoint][k]) if r.checkpoint in controls else
                  "no samples" if sft else "missing"),
                 _fmt(r.rl.pass1 if r.rl else None), _signed(r.gain),
                 _fmt(None if se is None else NOISE_SE * se),
                 ("≈" if r.seconds_estimated else "") + _duration(r.seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [r for r in rows if r.missing]
    lines.append("")
    if any(r.seconds_estimated for r in rows):
        lines += ["≈: the run was resumed after its launcher was killed; the killed attempt is "
                  "counted up to the run's last file write (the launcher's estimate), so the "
                  "time may be short by the minutes that wrote nothing.", ""]
    if missing:
        lines += ["Missing (shown because of `--allow_partial`):", ""]
        lines += [f"- `{r.run}`: {r.missing}" for r in missing] + [""]
    return lines


def paper_table(paper: dict[str, dict[str, dict[str, Any]]], k: int) -> list[str]:
    header = ["model", "proxy", "data-set Spearman", "data-set R²", "instance Spearman",
              "instance R²"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model in PAPER_MODELS:
        for label, _ in proxy_rows(k):
            key = "pass@k" if label == f"pass@{k}" else label
            cells = paper.get(model, {}).get(key, {})
            shown = "pass@k (large k)" if key == "pass@k" else label
            values = [("" if cells.get(c) is None else str(cells[c])) for c in PAPER_COLUMNS]
            lines.append("| " + " | ".join([model, shown, *values]) + " |")
    return [*lines, ""]


def _params(model: Mapping[str, Any]) -> int | None:
    """Llama-family parameter count from config.json's model section."""
    try:
        e, f, v = model["hidden_size"], model["intermediate_size"], model["vocab_size"]
        h, kv, layers = model["num_heads"], model["num_kv_heads"], model["num_layers"]
        d = model.get("head_dim") or e // h
        per_layer = e * h * d * 2 + 2 * e * kv * d + 3 * e * f + 2 * e
        return v * e * (1 if model.get("tie_embeddings") else 2) + layers * per_layer + e
    except (KeyError, TypeError):
        return None


def _or_list(values: Sequence[Any]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def setup_facts(sweep_dir: Path, rows: Sequence[Row]) -> list[str]:
    """This study's scale, for comparison with the paper's (whose models are 8B and 12B)."""
    finished = [r for r in rows if r.sft is not None]
    first = finished[0]
    config = _run_config(sweep_dir / first.run)
    model = config.get("model") or {}
    params = _params(model)
    sizes = first.sft.sizes
    benches = sorted(first.sft.record.benchmarks)
    rl_steps = (config.get("rl") or {}).get("num_steps")
    # A sweep may vary the data size too, so every run's size counts, not the first's.
    data_sizes = sorted({r.data_size for r in finished if r.data_size is not None})
    return [
        f"- model: {model.get('model_type')} with hidden size {model.get('hidden_size')} and "
        f"{model.get('num_layers')} layers"
        + (f" (≈{params / 1e6:.2f}M parameters)" if params else "")
        + "; the paper's are Llama-3-8B and Mistral-NeMo-12B.",
        f"- {len(finished)} SFT checkpoints"
        + (f" (of {len(rows)} in the sweep)" if len(finished) < len(rows) else "")
        + f" from {len({r.dataset for r in finished})} data sets"
        + (f" of {_or_list(data_sizes)} synthetic examples" if data_sizes else "") + ".",
        f"- the same GRPO budget per checkpoint: {rl_steps} steps.",
        f"- evaluation: {', '.join(benches)}; {sizes[0][0]} samples on each of {sizes[0][1]} "
        "prompts.",
    ]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


# ------------------------------------------------------------------ plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    _atomic_write(path, buf.getvalue())
    return path.name


def plot_proxies(g: dict[str, Any], numbers: Mapping[str, int], path: Path) -> str:
    """Each proxy vs post-RL pass@1; points carry their number (#) in the checkpoint table."""
    plt = _pyplot()
    proxies = proxy_rows(g["k"])
    labeled = [c for c in g["candidates"] if predict.OUTCOME in c["outcomes"]]
    fig, axes = plt.subplots(1, len(proxies), figsize=(4.2 * len(proxies), 3.8), squeeze=False)
    y = [c["outcomes"][predict.OUTCOME] for c in labeled]
    for ax, (label, name) in zip(axes[0], proxies, strict=True):
        x = [c["proxies"][name] for c in labeled]
        ax.scatter(x, y)
        for xi, yi, c in zip(x, y, labeled, strict=True):
            ax.annotate(str(numbers.get(c["checkpoint"], "?")), (xi, yi), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        s = _score(g, "instance", name)
        rho = "n/a" if "error" in s else f"{s['spearman']['rho']:.2f}"
        ax.set_title(f"{label}: ρ = {rho}", fontsize=9)
        ax.set_xlabel(f"{name} (higher = better)", fontsize=8)
        ax.set_ylabel("post-RL pass@1", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(rows: Sequence[Row], path: Path) -> str:
    plt = _pyplot()
    shown = [r for r in rows if r.sft is not None]
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, shown, strict=False):
        for result, style, label in ((r.sft, "--", "after SFT"), (r.rl, "-", "after RL")):
            if result is not None:
                ax.plot(list(result.curve), list(result.curve.values()), style, marker="o",
                        markersize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.set_title(f"#{rows.index(r) + 1} {r.run}", fontsize=8)
        ax.set_xlabel("k", fontsize=8)
        ax.set_ylabel("pass@k", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_gains(rows: Sequence[Row], path: Path) -> str:
    plt = _pyplot()
    done = [r for r in rows if r.gain is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(done)), 3.5))
    ax.bar(range(len(done)), [r.gain for r in done],
           yerr=[NOISE_SE * r.gain_se for r in done], capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(done)))
    ax.set_xticklabels([f"#{rows.index(r) + 1} {r.run}" for r in done], rotation=60,
                       ha="right", fontsize=7)
    ax.set_ylabel("post-RL − post-SFT pass@1 (±2 SE)")
    ax.set_title("RL gain per checkpoint")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


# ------------------------------------------------------------------ the whole study


def _atomic_write(path: Path, data: str | bytes) -> None:
    atomic.write_bytes(path, data.encode() if isinstance(data, str) else data)


def _sweep_names(spec: str) -> tuple[str, list[str]]:
    from sftrl import launch

    try:
        sweep, _ = launch.load_sweep(spec)
    except launch.SweepError as e:
        raise StudyError(f"--sweep: {e}") from None
    return sweep.name, [run.name for run in sweep.runs]


def collect(sweep_dir: Path, allow_partial: bool = False,
            sweep_spec: str | None = None) -> tuple[str, dict[str, RunStatus], list[Row]]:
    """(sweep name, statuses, one row per checkpoint); unfinished runs refused or marked."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise StudyError(f"{sweep_dir}: no such sweep directory")
    name, statuses = load_status(sweep_dir)
    runs = [n for n in statuses if n != PREDICT_RUN]
    if sweep_spec:
        sweep_name, expected = _sweep_names(sweep_spec)
        if sweep_name != name:
            raise StudyError(f"{sweep_dir / STATUS_FILE}: field 'sweep' is {name!r}, but "
                             f"{sweep_spec} defines sweep {sweep_name!r}")
        extra = sorted(set(runs) - set(expected))
        if extra:
            raise StudyError(f"{sweep_dir / STATUS_FILE}: runs {extra} are not in {sweep_spec}")
        runs = expected
    rows: list[Row] = []
    unfinished: list[str] = []
    for run in runs:
        status = statuses.get(run)
        if status is None or status.state != "done":
            state = "not started" if status is None else status.state
            unfinished.append(f"{run} ({state})")
            rows.append(Row(run, run, missing=f"run {state}"))
            continue
        run_rows = load_run(sweep_dir, status)
        unfinished += [f"{run} ({r.missing})" for r in run_rows if r.missing]
        rows += run_rows
    if unfinished and not allow_partial:
        raise StudyError(f"{sweep_dir}: unfinished runs: {', '.join(unfinished)}; wait for "
                         "them or pass --allow_partial to mark them as missing")
    if not any(r.sft is not None for r in rows):
        raise StudyError(f"{sweep_dir}: no run has a post-SFT eval yet")
    return name, statuses, rows


def _commands(sweep_dir: Path, out_dir: Path, sweep_spec: str | None,
              paper_numbers: Path | None) -> list[str]:
    spec = sweep_spec or "<sweep file>"
    study = (f"python -m sftrl.study --sweep_dir={sweep_dir} --out={out_dir}"
             + (f" --sweep={sweep_spec}" if sweep_spec else "")
             + (f" --paper_numbers={paper_numbers}" if paper_numbers else ""))
    return [f"python -m sftrl.launch --sweep={spec} --workdir={sweep_dir} --max_parallel=1",
            study]


def write_study(sweep_dir: Path, out_dir: Path, *, allow_partial: bool = False,
                sweep_spec: str | None = None, paper_numbers: Path | None = None) -> Path:
    """Writes `out_dir/README.md`, `study.json` and the plots; returns the README's path."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    name, statuses, rows = collect(sweep_dir, allow_partial, sweep_spec)
    report, source = predictor_report(sweep_dir, rows, statuses, allow_partial)
    options = report["options"]
    sizes = list(options["calibration_sizes"])
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("proxies_vs_rl*.png"):
        old.unlink()  # a plot of a group that is gone must not linger
    signal = rl_signal(rows)
    runs = [s for n, s in statuses.items() if n != PREDICT_RUN or s.state == "done"]
    starts = [s.start for s in runs if s.start]
    ends = [s.end for s in runs if s.end]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    busy = sum(s.seconds or 0.0 for s in runs)
    partial = any(r.missing for r in rows) or statuses.get(PREDICT_RUN) is None or \
        statuses[PREDICT_RUN].state != "done"

    lines = [f"# Replication study: `{name}`", "",
             "Generated by `sftrl.study` from the sweep's output; every number below is "
             "computed from the files it names, none is typed in. Do not edit by hand: "
             "re-run the commands at the end.", ""]
    if partial:
        lines += ["**Partial: some runs are unfinished (see the missing rows).**", ""]
    k_first = next(iter(report["groups"].values()))["k"]
    lines += ["## Checkpoints", "",
              "Generalization loss is the held-out loss after SFT (nats/token, lower is "
              "better); pass@1 and pass@k are means over the evaluated benchmarks. The "
              "pass@k control is the guessing control (see the findings): the same samples "
              "scored against another prompt's answer. 2·SE(gain) is twice the sampling "
              "standard error of the gain (an upper bound; see the findings).", ""]
    controls = {r.checkpoint: c for r in rows
                if (c := guessing_control(sweep_dir, r, sorted({1, k_first}))) is not None}
    lines += checkpoint_table(rows, k_first, controls)
    findings: list[str] = []
    verdicts: list[str] = []
    study_groups: dict[str, Any] = {}
    plots: list[str] = []
    for group, g in report["groups"].items():
        suffix = "" if len(report["groups"]) == 1 else f"_{_slug(group)}"
        group_rows = [r for r in rows if r.group in (group, None)]
        lines += [f"## Predictor: group `{group}`", "",
                  f"Outcome: post-RL pass@1. Source: {source}. Spearman ρ with its "
                  "two-sided permutation p-value over all points; R²: a line fitted on every "
                  "calibration subset of m checkpoints (data sets at the data-set level), "
                  "scored on the rest, mean ± std over subsets. Generalization loss is negated "
                  "so that higher is better for every proxy; the average is of the three "
                  "proxies z-scored within the group.", ""]
        lines += predictor_table(g, sizes)
        numbers = {r.checkpoint: i for i, r in enumerate(rows, start=1)}
        plot = plot_proxies(g, numbers, out_dir / f"proxies_vs_rl{suffix}.png")
        plots.append(plot)
        lines += [f"![each proxy vs post-RL pass@1; points numbered as in the checkpoint "
                  f"table]({plot})", ""]
        statements, facts = group_findings(group, g, group_rows, options)
        findings += statements
        labeled = [c for c in g["candidates"] if predict.OUTCOME in c["outcomes"]]
        settings, facts["paper_settings"] = paper_settings(labeled, group_rows, g["k"], options)
        findings += settings
        findings += control_findings(group_rows, controls, g["k"], options)
        by_k = spearman_by_k(group_rows, options)
        facts["spearman_by_k"] = {str(k): v for k, v in by_k.items()}
        if by_k:
            findings.append(
                "Instance-level Spearman ρ of post-SFT pass@k against post-RL pass@1, by k "
                "(permutation p): " + ", ".join(f"k = {k} {v['rho']:.3f} ({v['p_value']:.3f})"
                                                for k, v in by_k.items()) + ".")
        verdicts += verdict(facts, rl_signal(group_rows), g["n_labeled"])
        study_groups[group] = {"facts": facts, "k": g["k"]}
    if signal["n"]:
        s = signal
        findings.append(
            f"RL gain in post-RL minus post-SFT pass@1 over {s['n']} checkpoints: mean "
            f"{s['mean_gain']:+.4f}, std {s['std_gain']:.4f}; its sampling standard error is "
            f"{s['mean_gain_se']:.4f} for the mean and {s['gain_se_rms']:.4f} (rms) per "
            f"checkpoint; {s['n_gain_beyond_noise']} of {s['n']} gains exceed "
            f"{NOISE_SE:g} standard errors. "
            + ("That is too little RL signal at this scale."
               if abs(s["mean_gain"]) <= NOISE_SE * s["mean_gain_se"] else
               "The mean gain is beyond sampling noise.")
            + f" Post-RL pass@1 spans {s['rl_min']:.4f} to {s['rl_max']:.4f} (std "
            f"{s['rl_std']:.4f}, per-checkpoint SE {s['rl_se_rms']:.4f})."
            " The SE counts only evaluation sampling (n samples per fixed prompt, bounded "
            "by sqrt(p(1-p)/(nP))); seed-to-seed variation of RL itself is not measured "
            "(one RL run per checkpoint) and adds to it.")
    lines += ["## Findings", "", *[f"- {f}" for f in findings + verdicts], ""]
    paper = load_paper_numbers(paper_numbers, f"pass@{k_first}")
    lines += ["## The paper's numbers", "",
              "For comparison with the paper's own table for Llama-3-8B and Mistral-NeMo-12B. "
              + (f"Values from `{paper_numbers}`, as typed in there; their source: "
                 f"{paper.source}"
                 if paper_numbers else
                 "**To be filled from the paper**: its numbers are not available in this "
                 "workspace, so the cells are left empty rather than guessed. Fill them by "
                 "passing `--paper_numbers=FILE` (see `sftrl.study.load_paper_numbers`)."),
              "", PAPER_HEADLINE, ""]
    lines += paper_table(paper.table, k_first)
    lines += [f"- {note}" for note in paper.notes] + ([""] if paper.notes else [])
    if paper.table:
        differences = [line for g in report["groups"].values()
                       for line in paper_differences(paper.table, g, g["k"])]
        lines += [f"- {line}" for line in differences] + ([""] if differences else [])
    lines += ["How this study differs from the paper's setting (differences in the numbers "
              "above follow partly from these):", "", *setup_facts(sweep_dir, rows), ""]
    lines += ["## Plots", ""]
    if any(r.sft for r in rows):
        plots.append(plot_curves(rows, out_dir / "passk_curves.png"))
        lines += [f"![pass@k before and after RL per checkpoint]({plots[-1]})", ""]
    if signal["n"]:
        plots.append(plot_gains(rows, out_dir / "rl_gain.png"))
        lines += [f"![RL gain per checkpoint with ±2 SE]({plots[-1]})", ""]
    lines += ["## Time and reproduction", "",
              f"Sweep wall-clock time{' so far' if partial else ''} (first start to last "
              f"end in `{STATUS_FILE}`, the "
              f"predict run included): {_duration(wall)}; the runs' own times add up to "
              f"{_duration(busy)}.", "", "Regenerate everything (sweep, then this page):", "",
              "```", *_commands(sweep_dir, out_dir, sweep_spec, paper_numbers), "```", ""]
    readme = out_dir / "README.md"
    _atomic_write(readme, "\n".join(lines))
    numbers = {
        "sweep": name, "partial": partial, "predictor_source": source,
        "wall_clock_s": wall, "runs_total_s": busy, "rl_signal": signal,
        "groups": study_groups, "plots": plots,
        "checkpoints": [{
            "run": r.run, "checkpoint": r.checkpoint, "dataset": r.dataset, "epochs": r.epochs,
            "sft_steps": r.sft_steps, "missing": r.missing, "seconds": r.seconds,
            "seconds_estimated": r.seconds_estimated,
            "generalization_loss": r.sft.record.generalization_loss if r.sft else None,
            "sft_pass@k": {str(k): v for k, v in r.sft.curve.items()} if r.sft else None,
            "rl_pass@k": {str(k): v for k, v in r.rl.curve.items()} if r.rl else None,
            "sft_pass@k_control": ({str(k): v for k, v in controls[r.checkpoint].items()}
                                   if r.checkpoint in controls else None),
            "gain": r.gain, "gain_se": r.gain_se} for r in rows],
        "predictor": report,
    }
    _atomic_write(out_dir / "study.json",
                  json.dumps(numbers, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sftrl.study",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--sweep_dir", required=True, type=Path, help="the sweep's --workdir")
    parser.add_argument("--out", required=True, type=Path, help="e.g. docs/quagmire_tiny")
    parser.add_argument("--sweep", default=None,
                        help="the sweep file (path[:arg]): checks the runs and completes the "
                             "regeneration command")
    parser.add_argument("--allow_partial", action="store_true",
                        help="mark unfinished runs as missing instead of refusing")
    parser.add_argument("--paper_numbers", type=Path, default=None,
                        help="JSON of the paper's table (see load_paper_numbers)")
    args = parser.parse_args(argv)
    try:
        path = write_study(args.sweep_dir, args.out, allow_partial=args.allow_partial,
                           sweep_spec=args.sweep, paper_numbers=args.paper_numbers)
    except (StudyError, EvalRecordError) as e:
        print(f"sftrl.study: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
