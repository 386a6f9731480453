"""Tables and plots from a run directory: `python -m sftrl.report --workdir=DIR`.

Reads `<workdir>/eval/*.json` (the eval records of `sftrl.eval.record`) and
`<workdir>/metrics.jsonl` (lines with `step` and `heldout/loss`), and writes into
`<workdir>/report/`:

  summary.md                  one table per checkpoint (per benchmark: pass@1, pass@n with its
                              bootstrap interval, maj@n, learnable share, truncation, length,
                              entropy, the beta-binomial pass@1024 and its fit error), links to
                              every plot, and the predictor's tables when predict has run
  passk_ckpt_<ckpt>.png       pass@k vs k (log2 axis) of each benchmark, CI band
  passk_bench_<bench>.png     the same curves per benchmark, one line per checkpoint
  heldout_loss.png            held-out loss vs step, one line per training stage

The predictor's own outputs (`predictor.json`, its plots) come from `sftrl.stages.predict`; this
module only links them and renders `predictor.json` with the predictor's own renderer.
Each file is written atomically (sftrl.atomic: temp file + rename, or one whole upload to an
object store).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl import atomic
from sftrl.eval import record as eval_record
from sftrl.eval.record import BenchmarkResult, EvalRecord, EvalRecordError

log = logging.getLogger(__name__)


class ReportError(ValueError):
    """An input file the report cannot use; the message names the file, line and field."""


# --- inputs -------------------------------------------------------------------------------------


def load_evals(eval_dir: Path) -> list[EvalRecord]:
    """The eval records, sorted by checkpoint name; each benchmark needs its pass@k curve."""
    return sorted(eval_record.read_dir(eval_dir, require=("pass@k",)),
                  key=lambda r: r.checkpoint)


def load_heldout(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    """{stage: [(step, heldout/loss)]} from metrics.jsonl; a torn last line is skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    if not metrics_path.exists():
        return series
    lines = metrics_path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # what a killed writer leaves; the trainer drops it too
                log.warning("%s:%d: skipping a partial last line", metrics_path, number)
                continue
            raise ReportError(f"{metrics_path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict) or "heldout/loss" not in row:
            continue
        step, loss = row.get("step"), row["heldout/loss"]
        if isinstance(step, bool) or not isinstance(step, int):
            raise ReportError(f"{metrics_path}:{number}: field 'step' is {step!r}, not an int")
        if isinstance(loss, bool) or not isinstance(loss, int | float):
            raise ReportError(f"{metrics_path}:{number}: field 'heldout/loss' is {loss!r}")
        series.setdefault(str(row.get("stage", "train")), []).append((step, float(loss)))
    return {stage: sorted(points) for stage, points in series.items()}


# --- plots --------------------------------------------------------------------------------------


def _slug(name: str, used: dict[str, str]) -> str:
    """A file-name-safe form of `name`, distinct from the ones in `used` (slug -> name)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"
    base, i = slug, 1
    while used.get(slug, name) != name:  # "a/b" and "a_b" must not share a plot
        i += 1
        slug = f"{base}-{i}"
    used[slug] = name
    return slug


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    try:
        with atomic.replacing(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _pyplot().close(fig)
    return path


def _plot_curves(curves: list[tuple[str, BenchmarkResult]], title: str, path: Path) -> Path:
    """pass@k vs k on a log2 axis, one line per (label, benchmark), CI band if present."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, bench in curves:
        curve = bench.pass_at_k
        ks = list(curve)
        line = ax.plot(ks, list(curve.values()), marker="o", markersize=3, label=label)[0]
        ci = bench.fields.get("pass@k_ci") or {}
        if all(str(k) in ci for k in ks):
            ax.fill_between(ks, [ci[str(k)][0] for k in ks], [ci[str(k)][1] for k in ks],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _plot_heldout(series: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3,
                label=stage)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Generalization loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- tables -------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _benchmark_row(name: str, bench: BenchmarkResult) -> str:
    curve, entry = bench.pass_at_k, bench.fields
    k_max = max(curve)
    ci = (entry.get("pass@k_ci") or {}).get(str(k_max))
    at_max = _fmt(curve[k_max]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
    maj = (entry.get("maj@k") or {}).get(str(k_max))
    extra = entry.get("extrapolation") or {}
    if extra.get("fitted"):
        far = max(extra["pass@k"], key=int, default=None)
        extrapolated = (f"{_fmt(extra['pass@k'][far])} @{far} (err {_fmt(extra['max_abs_error'])})"
                        if far else "–")
    else:
        extrapolated = "–"
    cells = [name, _fmt(entry.get("n", k_max)), _fmt(entry.get("num_prompts")),
             _fmt(entry.get("pass@1", curve.get(1))), f"pass@{k_max} = {at_max}", _fmt(maj),
             _fmt(entry.get("learnable_fraction")), _fmt(entry.get("truncation_rate")),
             _fmt(entry.get("mean_response_tokens"), 1), _fmt(entry.get("mean_token_entropy")),
             extrapolated]
    return "| " + " | ".join(cells) + " |"


_HEADER = ("| benchmark | n | prompts | pass@1 | pass@n [CI] | maj@n | learnable | truncated "
           "| mean tokens | token entropy | beta-binomial extrapolation |")


def render_summary(evals: list[EvalRecord], plots: dict[str, str],
                   heldout_plot: str | None, predictor: str | None) -> str:
    lines = ["# Evaluation report", ""]
    if not evals:
        lines += ["No eval files (`eval/*.json`) yet.", ""]
    for record in evals:
        ckpt = record.checkpoint
        facts = [f"{key} `{getattr(record, key)}`" for key in ("stage", "group", "dataset",
                                                              "sft_checkpoint")
                 if getattr(record, key)]
        lines += [f"## {ckpt}", "", ", ".join(facts) + ("." if facts else ""), ""]
        if record.generalization_loss is not None:
            lines += [f"Generalization loss: {record.generalization_loss:.4f} nats/token", ""]
        lines += [_HEADER, "|" + "---|" * (_HEADER.count("|") - 1)]
        lines += [_benchmark_row(name, bench)
                  for name, bench in sorted(record.benchmarks.items())]
        lines += ["", f"![pass@k of {ckpt}]({plots[ckpt]})", ""]
    if heldout_plot:
        lines += ["## Held-out loss", "", f"![held-out loss vs step]({heldout_plot})", ""]
    bench_plots = [(name, p) for name, p in plots.items() if name.startswith("bench:")]
    if bench_plots:
        lines += ["## pass@k by benchmark", ""]
        lines += [f"![{name[6:]}]({p})" for name, p in bench_plots] + [""]
    if predictor:
        lines += ["## Predictor", "", predictor]
    return "\n".join(lines).rstrip() + "\n"


def _predictor_section(report_dir: Path) -> str | None:
    path = report_dir / "predictor.json"
    if not path.exists():
        return None
    from sftrl.eval import predict

    try:
        body = predict.render_summary(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ReportError(f"{path}: cannot render ({error!r})") from None
    plots = sorted(p.name for p in report_dir.glob("scatter_*.png"))
    links = ["From [`predictor.json`](predictor.json) (written by the predict stage)."]
    links += [f"![{name}]({name})" for name in plots]
    # Demote the predictor's headings one level so they nest under this section.
    body = "\n".join("#" + line if line.startswith("#") else line for line in body.splitlines())
    return "\n".join(links) + "\n\n" + body


def write_report(workdir: str | os.PathLike[str]) -> Path:
    """Writes `<workdir>/report/` (see the module docstring; `workdir` may be any epath, e.g.
    gs://...); returns the summary.md path."""
    workdir = atomic.to_path(workdir)
    if not workdir.is_dir():
        raise ReportError(f"{workdir}: no such run directory")
    report_dir = workdir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    evals = load_evals(workdir / "eval")
    plots: dict[str, str] = {}
    ckpt_slugs: dict[str, str] = {}
    bench_slugs: dict[str, str] = {}
    for record in evals:
        ckpt = record.checkpoint
        curves = sorted(record.benchmarks.items())
        path = _plot_curves(curves, f"pass@k: {ckpt}",
                            report_dir / f"passk_ckpt_{_slug(ckpt, ckpt_slugs)}.png")
        plots[ckpt] = path.name
    for bench in sorted({b for record in evals for b in record.benchmarks}):
        curves = [(r.checkpoint, r.benchmarks[bench]) for r in evals if bench in r.benchmarks]
        path = _plot_curves(curves, f"pass@k: {bench}",
                            report_dir / f"passk_bench_{_slug(bench, bench_slugs)}.png")
        plots[f"bench:{bench}"] = path.name
    series = load_heldout(workdir / "metrics.jsonl")
    # a pipeline run keeps each SFT/RL run in <workdir>/{sft,rl}/<variant>/
    for sub in sorted(workdir.glob("*/*/metrics.jsonl")):
        if sub.parent.parent.name in ("sft", "rl"):
            for stage, points in load_heldout(sub).items():
                series[f"{stage} {sub.parent.name}"] = points
    heldout_plot = _plot_heldout(series, report_dir / "heldout_loss.png").name if series else None
    summary = report_dir / "summary.md"
    atomic.write_text(summary, render_summary(evals, plots, heldout_plot,
                                              _predictor_section(report_dir)))
    log.info("wrote %s", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sftrl.report", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--workdir", required=True, help="the run directory (any epath)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(args.workdir)
    except (ReportError, EvalRecordError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
