"""Predictor: which SFT checkpoint of a group will be best after RL.

A *group* is the set of SFT checkpoints of one base model (several SFT data sets, lengths,
epochs). Each checkpoint has *proxies* measured after SFT and, for some or all of them, an
*outcome* measured after RL. We score how well each proxy predicts the outcome and predict the
outcome (with an interval) for checkpoints that have no RL result yet.

Inputs
------
1. Per-checkpoint eval records, ``<workdir>/eval/<ckpt>.json``, read by ``sftrl.eval.record``
   (the format is documented there). An SFT record needs ``group`` and ``dataset``, an RL
   record its ``sft_checkpoint``; every benchmark needs its ``pass@1``.

   Proxies of an SFT file: ``pass@1`` and ``pass@<k>`` (each averaged over the benchmarks),
   ``generalization_loss`` and every other number (top-level fields and ``metrics``, by
   name: the extra proxies). ``pass@1`` may come from either the
   ``"pass@1"`` field or ``pass@k["1"]``. The outcome of an RL file is its per-benchmark
   ``pass@1``; several RL files for one SFT checkpoint (seeds) are averaged.

2. A flat table of results from elsewhere, CSV or JSON (a list of row objects, or
   ``{"rows": [...]}``), one row per SFT checkpoint. Columns ``group``, ``dataset``,
   ``checkpoint`` are required; ``rl_pass@1`` is the outcome and ``rl_pass@1:<benchmark>`` the
   per-benchmark outcome (``rl_pass@1`` defaults to their mean); every other column is a
   numeric proxy by name (``pass@1``, ``pass@256``, ``generalization_loss``, ...). An empty
   cell (or null) means missing; a row without an outcome is a candidate to predict.

Conventions
-----------
* Sign: proxies whose name contains ``loss`` are "lower is better" and are NEGATED before any
  z-scoring, correlation, fit or ranking, so that higher always means better. Outputs name them
  ``-generalization_loss``.
* ``average`` is the mean of the base proxies (pass@1, -generalization_loss, pass@k), each
  z-scored within the group over all its candidates (population std).
* Spearman: Pearson correlation of average ranks (ties share the mean rank). The permutation
  p-value is two-sided, P(|rho_perm| >= |rho|): exact enumeration for n <= 8, otherwise Monte
  Carlo ``(hits + 1) / (n_perm + 1)`` with a seed. The interval is a percentile bootstrap over
  points (resamples with a constant side are dropped).
* R²: ``outcome = a * proxy + b`` is fitted by least squares on a calibration subset of size m
  and scored on the remaining points as ``1 - SS_res / SS_tot``, SS_tot around the held-out
  mean, so it can be negative. Reported as mean ± std over subsets (all subsets when there are
  at most ``max_subsets``, else a seeded random sample). Subsets whose calibration proxy or
  held-out outcome is constant are skipped and counted.
* Leave-one-out: fit on n - 1 points, predict the one left out; RMSE and MAE.
* Levels: ``instance`` (one point per checkpoint) and ``dataset`` (one point per SFT data set,
  proxy and outcome averaged over its checkpoints that have an outcome).
* Prediction: for checkpoints without an outcome, the instance-level proxy with the lowest
  leave-one-out RMSE gives ``a * x + b`` with a 95% OLS prediction interval; with fewer than 3
  RL results the candidates are only ranked by ``average``.

Everything is deterministic given ``Options.seed``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl import atomic
from sftrl.eval import record as eval_record
from sftrl.eval.record import EvalRecord
from sftrl.eval.stats import (
    StatsError,
    bootstrap_spearman_ci,
    calibration_r2,
    check_points,
    fit_line,
    leave_one_out,
    permutation_pvalue,
    prediction_interval,
    r2_score,
    spearman,
    zscored_average,
)

OUTCOME = "rl_pass@1"
AVERAGE = "average"
LEVELS = ("instance", "dataset")


# Bad predictor input or a question the data cannot answer; the message names the culprit.
# One type with the statistics' error, so that callers (the study, the ranking tool, the
# pipeline) catch both with `except predict.PredictError`.
PredictError = StatsError


@dataclasses.dataclass
class Candidate:
    """One SFT checkpoint: its raw proxies and (if RL was run from it) its outcomes."""

    group: str
    dataset: str
    checkpoint: str
    source: str  # file (and row) it came from, for error messages
    proxies: dict[str, float] = dataclasses.field(default_factory=dict)
    outcomes: dict[str, float] = dataclasses.field(default_factory=dict)  # OUTCOME[:bench]


@dataclasses.dataclass(frozen=True)
class Options:
    k: int | None = None  # pass@k proxy; None: the largest k > 1 every candidate has
    proxies: tuple[str, ...] = ()  # extra proxies by name, scored besides the defaults
    benchmarks: tuple[str, ...] | None = None  # None: every benchmark in the files
    per_benchmark: bool = False  # also score each benchmark's outcome on its own
    calibration_sizes: tuple[int, ...] = (3, 4)
    max_subsets: int = 500
    n_permutations: int = 10_000
    n_bootstrap: int = 1000
    confidence: float = 0.95
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Loading


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PredictError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise PredictError(f"{where}: not finite ({value!r})")
    return float(value)


def _string(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value:
        raise PredictError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _chosen(record: EvalRecord, benchmarks: Sequence[str] | None) -> list[str]:
    names = sorted(record.benchmarks) if benchmarks is None else list(benchmarks)
    for name in names:
        if name not in record.benchmarks:
            raise PredictError(f"{record.source}: benchmark {name!r} missing from 'benchmarks'")
    return names


def _sft_proxies(record: EvalRecord, benchmarks: Sequence[str] | None) -> dict[str, float]:
    # pass@k averaged over the chosen benchmarks, for the ks every one of them reports
    curve = record.mean_curve(_chosen(record, benchmarks))
    proxies = {f"pass@{k}": v for k, v in curve.items()}
    proxies.update(record.numbers())
    return proxies


def candidates(records: Iterable[EvalRecord],
               benchmarks: Sequence[str] | None = None) -> list[Candidate]:
    """Candidates from eval records; RL records are attached to their SFT one."""
    sft: dict[str, Candidate] = {}
    rl: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for record in records:
        record.require("stage", "pass@1")
        where, name = record.source, record.checkpoint
        if record.stage == "sft":
            record.require("group", "dataset")
            if name in sft:
                raise PredictError(f"{where}: checkpoint {name!r} also in {sft[name].source}")
            sft[name] = Candidate(record.group or "", record.dataset or "", name, where,
                                  _sft_proxies(record, benchmarks))
        else:
            parent = record.sft_checkpoint or ""
            pass1 = {b: record.benchmarks[b].curve[1] for b in _chosen(record, benchmarks)}
            rl.setdefault(parent, []).append((where, pass1))
    for parent, runs in rl.items():
        if parent not in sft:
            raise PredictError(f"{runs[0][0]}: sft_checkpoint {parent!r} has no SFT eval file")
        names = set(runs[0][1])
        for where, scores in runs:
            if set(scores) != names:
                raise PredictError(f"{where}: benchmarks {sorted(scores)} differ from "
                                   f"{runs[0][0]}'s {sorted(names)}")
        per_bench = {b: float(np.mean([s[b] for _, s in runs])) for b in sorted(names)}
        sft[parent].outcomes = {f"{OUTCOME}:{b}": v for b, v in per_bench.items()}
        sft[parent].outcomes[OUTCOME] = float(np.mean(list(per_bench.values())))
    return list(sft.values())


def candidates_from_records(
    records: Iterable[tuple[str, Mapping[str, Any]]], benchmarks: Sequence[str] | None = None
) -> list[Candidate]:
    """Candidates from (source, decoded eval-record JSON) pairs (see `candidates`)."""
    return candidates((eval_record.parse(data, where) for where, data in records), benchmarks)


def load_eval_dir(
    directory: Path | Sequence[Path], benchmarks: Sequence[str] | None = None
) -> list[Candidate]:
    """Candidates from every ``*.json`` in ``directory`` (or in several: a sweep's RL runs'
    files may sit in other run directories than their SFT checkpoints'; see the module
    docstring)."""
    return candidates(eval_record.read_dir(directory), benchmarks)


def _flat_value(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError as e:
            raise PredictError(f"{where}: expected a number, got {value!r}") from e
    return _number(value, where)


def candidates_from_rows(rows: Sequence[Mapping[str, Any]], source: str) -> list[Candidate]:
    """Candidates from flat rows (see the module docstring)."""
    out: dict[str, Candidate] = {}
    for i, row in enumerate(rows):
        where = f"{source} row {i + 1}"
        if not isinstance(row, Mapping):
            raise PredictError(f"{where}: expected an object")
        c = Candidate(_string(row, "group", where), _string(row, "dataset", where),
                      _string(row, "checkpoint", where), where)
        if c.checkpoint in out:
            raise PredictError(f"{where}: checkpoint {c.checkpoint!r} repeats "
                               f"{out[c.checkpoint].source}")
        for key, raw in row.items():
            if key in ("group", "dataset", "checkpoint"):
                continue
            value = _flat_value(raw, f"{where}: column {key!r}")
            if value is None:
                continue
            if key == OUTCOME or key.startswith(OUTCOME + ":"):
                c.outcomes[key] = value
            else:
                c.proxies[key] = value
        per_bench = [v for k, v in c.outcomes.items() if k != OUTCOME]
        if OUTCOME not in c.outcomes and per_bench:
            c.outcomes[OUTCOME] = float(np.mean(per_bench))
        out[c.checkpoint] = c
    return list(out.values())


def load_flat(path: Path) -> list[Candidate]:
    """Candidates from a flat CSV or JSON table of results from elsewhere (any epath)."""
    path = atomic.to_path(path)
    if path.suffix == ".csv":
        # the bytes, as csv wants them (newline=""); an epath's open takes no newline argument
        text = path.read_bytes().decode("utf-8")
        rows: Any = list(csv.DictReader(io.StringIO(text, newline="")))
    else:
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise PredictError(f"{path}: invalid JSON ({e})") from e
        if isinstance(rows, dict):
            rows = rows.get("rows")
        if not isinstance(rows, list):
            raise PredictError(f"{path}: expected a list of rows or {{'rows': [...]}}")
    return candidates_from_rows(rows, str(path))


# ---------------------------------------------------------------------------------------------
# Proxies, points and scores


def lower_is_better(proxy: str) -> bool:
    return "loss" in proxy


def display_name(proxy: str) -> str:
    """The oriented proxy's name: '-generalization_loss' says it was negated."""
    return f"-{proxy}" if lower_is_better(proxy) else proxy


def choose_k(candidates: Sequence[Candidate], k: int | None) -> int:
    """The pass@k proxy's k: the requested one, else the largest k > 1 every candidate has."""
    if k is not None:
        return k
    common = set.intersection(*({int(p[5:]) for p in c.proxies
                                 if p.startswith("pass@") and p[5:].isdigit()}
                                for c in candidates))
    common.discard(1)
    if not common:
        raise PredictError("no pass@k with k > 1 is reported by every checkpoint; "
                           "set k explicitly or add pass@k curves")
    return max(common)


def base_proxies(k: int) -> tuple[str, ...]:
    return ("pass@1", "generalization_loss", f"pass@{k}")


def oriented_values(candidates: Sequence[Candidate], proxy: str) -> np.ndarray:
    """The proxy of every candidate, negated when lower is better; names what is missing."""
    missing = [f"{c.checkpoint} ({c.source})" for c in candidates if proxy not in c.proxies]
    if missing:
        raise PredictError(f"proxy {proxy!r} missing for checkpoints: {', '.join(missing)}")
    values = np.array([c.proxies[proxy] for c in candidates])
    return -values if lower_is_better(proxy) else values


def proxy_matrix(candidates: Sequence[Candidate], proxies: Sequence[str],
                 k: int) -> dict[str, np.ndarray]:
    """{oriented proxy name: values over the candidates}, with the z-scored average."""
    out = {display_name(p): oriented_values(candidates, p) for p in proxies}
    out[AVERAGE] = zscored_average([out[display_name(p)] for p in base_proxies(k)])
    return out


def dataset_points(datasets: Sequence[str], x: np.ndarray,
                   y: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One point per data set: proxy and outcome averaged over its checkpoints."""
    names = sorted(set(datasets))
    idx = [[i for i, d in enumerate(datasets) if d == name] for name in names]
    return (names, np.array([x[i].mean() for i in idx]), np.array([y[i].mean() for i in idx]))


def score_proxy(x: np.ndarray, y: np.ndarray, options: Options, what: str) -> dict[str, Any]:
    """Every score of one proxy against one outcome, or {'error': message}."""
    try:
        check_points(x, y, what)
        rho = spearman(x, y, what)
        a, b = fit_line(x, y)
        result: dict[str, Any] = {
            "n": len(x),
            "spearman": {
                "rho": rho,
                "p_value": permutation_pvalue(x, y, options.n_permutations, options.seed, what),
                # NaN (every resample degenerate) becomes null: strict JSON has no NaN
                "ci": [None if math.isnan(v) else v for v in bootstrap_spearman_ci(
                    x, y, options.n_bootstrap, options.confidence, options.seed)],
            },
            "fit": {"slope": a, "intercept": b, "r2_in_sample": r2_score(y, a * x + b)},
            "r2": {},
            "loo": leave_one_out(x, y, what),
        }
    except PredictError as e:
        return {"n": len(x), "error": str(e)}
    for m in options.calibration_sizes:
        try:
            result["r2"][str(m)] = calibration_r2(x, y, m, options.max_subsets, options.seed,
                                                  f"{what}, m={m}")
        except PredictError as e:
            result["r2"][str(m)] = {"error": str(e)}
    return result


def _predict(group: str, cands: list[Candidate], matrix: dict[str, np.ndarray],
             scores: dict[str, dict[str, Any]], options: Options) -> dict[str, Any]:
    """Predicted outcome with an interval, and a ranking, for candidates without RL results."""
    labeled = np.array([OUTCOME in c.outcomes for c in cands])
    todo = [c for c, lab in zip(cands, labeled, strict=True) if not lab]
    usable = {p: s["loo"]["rmse"] for p, s in scores.items() if "loo" in s}
    if not usable:
        order = np.argsort(-matrix[AVERAGE][~labeled], kind="stable")
        return {"proxy": AVERAGE, "reason": "fewer than 3 usable RL results: ranked by the "
                "z-scored average proxy, no predicted score",
                "candidates": [{"checkpoint": todo[i].checkpoint, "dataset": todo[i].dataset,
                                "proxy_value": float(matrix[AVERAGE][~labeled][i]),
                                "rank": r + 1} for r, i in enumerate(order)]}
    # RMSEs equal up to rounding (e.g. two exact fits) tie; the earlier proxy then wins
    best = min(usable, key=lambda p: (round(usable[p], 12), list(usable).index(p)))
    y = np.array([c.outcomes[OUTCOME] for c in cands if OUTCOME in c.outcomes])
    x = matrix[best]
    pred, lo, hi = prediction_interval(x[labeled], y, x[~labeled], options.confidence)
    order = np.argsort(-pred, kind="stable")
    return {"proxy": best, "reason": f"lowest leave-one-out RMSE ({usable[best]:.4g}) in group "
            f"{group!r}", "confidence": options.confidence,
            "candidates": [{"checkpoint": todo[i].checkpoint, "dataset": todo[i].dataset,
                            "proxy_value": float(x[~labeled][i]), "predicted": float(pred[i]),
                            "lower": float(lo[i]), "upper": float(hi[i]), "rank": r + 1}
                           for r, i in enumerate(order)]}


def evaluate_group(group: str, cands: list[Candidate], options: Options) -> dict[str, Any]:
    """Scores per level, outcome and proxy, plus predictions, for one group."""
    k = choose_k(cands, options.k)
    proxies = list(dict.fromkeys([*base_proxies(k), *options.proxies]))
    matrix = proxy_matrix(cands, proxies, k)
    labeled = [i for i, c in enumerate(cands) if OUTCOME in c.outcomes]
    outcomes = [OUTCOME]
    if options.per_benchmark:
        outcomes += sorted({o for i in labeled for o in cands[i].outcomes if o != OUTCOME})
    scores: dict[str, Any] = {level: {} for level in LEVELS}
    for outcome in outcomes:
        rows = [i for i in labeled if outcome in cands[i].outcomes]
        y = np.array([cands[i].outcomes[outcome] for i in rows])
        datasets = [cands[i].dataset for i in rows]
        for level in LEVELS:
            per_proxy = {}
            for name, values in matrix.items():
                x = values[rows]
                if level == "dataset":
                    _, x, yl = dataset_points(datasets, x, y)
                else:
                    yl = y
                per_proxy[name] = score_proxy(x, yl, options,
                                              f"group {group!r}, {level} level, {name} vs "
                                              f"{outcome}")
            scores[level][outcome] = per_proxy
    return {
        "k": k,
        "n_candidates": len(cands),
        "n_labeled": len(labeled),
        "datasets": sorted({c.dataset for c in cands}),
        "candidates": [{"checkpoint": c.checkpoint, "dataset": c.dataset, "source": c.source,
                        "proxies": {n: float(v[i]) for n, v in matrix.items()},
                        "outcomes": c.outcomes} for i, c in enumerate(cands)],
        "scores": scores,
        "prediction": _predict(group, cands, matrix, scores["instance"][OUTCOME], options),
    }


def evaluate(candidates: Sequence[Candidate], options: Options | None = None) -> dict[str, Any]:
    """The whole report as JSON-able data: every number, per group."""
    options = options or Options()
    if not candidates:
        raise PredictError("no candidates: no SFT eval results were found")
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.group, []).append(c)
    return {
        "sign_convention": "proxies with 'loss' in the name are negated (shown as '-name') so "
                           "that higher is better everywhere",
        "r2_definition": "fit outcome = a * proxy + b on m calibration points; R² = "
                         "1 - SS_res/SS_tot on the held-out points (can be negative)",
        "options": dataclasses.asdict(options),
        "groups": {g: evaluate_group(g, cs, options) for g, cs in sorted(groups.items())},
    }


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _score_row(name: str, s: dict[str, Any], sizes: Sequence[int]) -> str:
    if "error" in s:
        return f"| {name} | {s['n']} | n/a: {s['error']} |" + " |" * (len(sizes) + 1)
    sp = s["spearman"]
    cells = [name, str(s["n"]),
             f"{_fmt(sp['rho'])} (p={_fmt(sp['p_value'])}) [{_fmt(sp['ci'][0], 2)}, "
             f"{_fmt(sp['ci'][1], 2)}]"]
    for m in sizes:
        r2 = s["r2"][str(m)]
        cells.append("n/a" if "error" in r2 else f"{_fmt(r2['mean'])} ± {_fmt(r2['std'])}")
    cells.append(_fmt(s["loo"]["rmse"], 4))
    return "| " + " | ".join(cells) + " |"


def _na_notes(per_proxy: dict[str, Any]) -> list[str]:
    """Why R² cells say n/a (once per distinct reason, since proxies usually share it)."""
    reasons = {r2["error"].split(": ", 1)[-1]: None for s in per_proxy.values()
               for r2 in s.get("r2", {}).values() if "error" in r2}
    return [*(f"- R² n/a: {r}" for r in reasons), ""] if reasons else []


def render_summary(report: dict[str, Any]) -> str:
    """Markdown tables like the paper's: Spearman and R² per proxy per group and level."""
    sizes = report["options"]["calibration_sizes"]
    lines = ["# Predictor summary", "", f"Sign convention: {report['sign_convention']}.",
             f"R²: {report['r2_definition']}; mean ± std over calibration subsets.", ""]
    header = ("| proxy | n | Spearman ρ (p) [CI] | " + " | ".join(f"R² m={m}" for m in sizes)
              + " | LOO RMSE |")
    sep = "|" + "---|" * (4 + len(sizes))
    for group, g in report["groups"].items():
        lines += [f"## Group `{group}`", "",
                  f"{g['n_candidates']} SFT checkpoints ({g['n_labeled']} with RL results), "
                  f"{len(g['datasets'])} data sets, pass@k at k={g['k']}.", ""]
        for level in LEVELS:
            for outcome, per_proxy in g["scores"][level].items():
                lines += [f"### {level} level, outcome `{outcome}`", "", header, sep]
                lines += [_score_row(n, s, sizes) for n, s in per_proxy.items()]
                lines += ["", *_na_notes(per_proxy)]
        pred = g["prediction"]
        lines += ["### Prediction for checkpoints without RL results", "",
                  f"Proxy: `{pred['proxy']}` ({pred['reason']}).", ""]
        if not pred["candidates"]:
            lines += ["Every checkpoint has RL results.", ""]
            continue
        lines += ["| rank | checkpoint | data set | proxy | predicted | interval |",
                  "|---|---|---|---|---|---|"]
        for c in pred["candidates"]:
            interval = (f"[{_fmt(c['lower'])}, {_fmt(c['upper'])}]" if "predicted" in c
                        else "n/a")
            lines.append(f"| {c['rank']} | {c['checkpoint']} | {c['dataset']} | "
                         f"{_fmt(c['proxy_value'])} | {_fmt(c.get('predicted'))} | {interval} |")
        lines.append("")
    return "\n".join(lines)


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_plots(report: dict[str, Any], outdir: Path) -> list[Path]:
    """Scatter of each proxy vs the outcome with its fit, per group; only with matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []

    written = []
    for group, g in report["groups"].items():
        labeled = [c for c in g["candidates"] if OUTCOME in c["outcomes"]]
        per_proxy = g["scores"]["instance"][OUTCOME]
        fig, axes = plt.subplots(1, len(per_proxy), figsize=(4 * len(per_proxy), 3.5),
                                 squeeze=False)
        for ax, (name, s) in zip(axes[0], per_proxy.items(), strict=True):
            x = np.array([c["proxies"][name] for c in labeled])
            y = np.array([c["outcomes"][OUTCOME] for c in labeled])
            ax.scatter(x, y)
            if "fit" in s and len(x):
                xs = np.linspace(x.min(), x.max(), 2)
                ax.plot(xs, s["fit"]["slope"] * xs + s["fit"]["intercept"])
                ax.set_title(f"{name}: ρ={s['spearman']['rho']:.2f}")
            ax.set_xlabel(name)
            ax.set_ylabel(OUTCOME)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        path = outdir / f"scatter_{_safe_name(group)}.png"
        atomic.write_bytes(path, buf.getvalue())
        written.append(path)
    return written


def write_report(report: dict[str, Any], outdir: Path) -> dict[str, Path]:
    """predictor.json, predictor.md (the tables; report.py links it from summary.md) and
    (with matplotlib) scatter plots, each written atomically (any epath: gs://...)."""
    outdir = atomic.to_path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = {"json": outdir / "predictor.json", "summary": outdir / "predictor.md"}
    # allow_nan=False: a NaN would be a bug here, and strict JSON readers reject it
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False)
    atomic.write_text(paths["json"], text + "\n")
    atomic.write_text(paths["summary"], render_summary(report))
    for i, p in enumerate(write_plots(report, outdir)):
        paths[f"plot{i}"] = p
    return paths
