"""The whole study: a sweep directory -> its data (study.json), README.md and plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sftrl import atomic
from sftrl.study import findings, paper, plots, render, sweep
from sftrl.study.predictor import predictor_report


def _commands(sweep_dir: Path, out_dir: Path, sweep_spec: str | None,
              paper_numbers: Path | None) -> list[str]:
    spec = sweep_spec or "<sweep file>"
    study = (f"python -m sftrl.study --sweep_dir={sweep_dir} --out={out_dir}"
             + (f" --sweep={sweep_spec}" if sweep_spec else "")
             + (f" --paper_numbers={paper_numbers}" if paper_numbers else ""))
    return [f"python -m sftrl.launch --sweep={spec} --workdir={sweep_dir} --max_parallel=1",
            study]


def _times(statuses: Mapping[str, sweep.RunStatus]) -> tuple[float | None, float]:
    """(wall-clock time from the first start to the last end, the runs' own times summed);
    an unfinished predict run is not counted."""
    runs = [s for n, s in statuses.items() if n != sweep.PREDICT_RUN or s.state == "done"]
    starts = [s.start for s in runs if s.start]
    ends = [s.end for s in runs if s.end]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return wall, sum(s.seconds or 0.0 for s in runs)


def _paper(path: Path | None, report: Mapping[str, Any], k: int) -> dict[str, Any]:
    numbers = paper.load_paper_numbers(path, f"pass@{k}")
    differences = [{"group": group, **d} for group, g in report["groups"].items()
                   for d in (paper.paper_differences(numbers.table, g, g["k"])
                             if numbers.table else [])]
    return {"path": None if path is None else str(path), "source": numbers.source,
            "notes": list(numbers.notes), "table": numbers.table, "differences": differences}


def study_data(sweep_dir: Path, out_dir: Path, *, allow_partial: bool = False,
               sweep_spec: str | None = None,
               paper_numbers: Path | None = None) -> dict[str, Any]:
    """Every number the README shows (study.json), read and computed from the sweep."""
    name, statuses, rows = sweep.collect(sweep_dir, allow_partial, sweep_spec)
    report, source = predictor_report(sweep_dir, rows, statuses, allow_partial)
    k_first = next(iter(report["groups"].values()))["k"]
    checkpoints = [sweep.checkpoint_record(r, sweep.guessing_control(
        sweep_dir, r, sorted({1, k_first}))) for r in rows]
    groups = {group: findings.group_findings(
        g, [c for c in checkpoints if c["group"] in (group, None)], report["options"])
        for group, g in report["groups"].items()}
    wall, busy = _times(statuses)
    predict_run = statuses.get(sweep.PREDICT_RUN)
    return {
        "sweep": name, "predictor_source": source,
        "partial": any(r.missing for r in rows) or predict_run is None or
        predict_run.state != "done",
        "wall_clock_s": wall, "runs_total_s": busy,
        "rl_signal": findings.rl_signal(checkpoints), "groups": groups,
        "checkpoints": checkpoints, "setup": sweep.setup(sweep_dir, rows),
        "paper": _paper(paper_numbers, report, k_first),
        "commands": _commands(sweep_dir, out_dir, sweep_spec, paper_numbers),
        "predictor": report,
    }


def write_study(sweep_dir: Path, out_dir: Path, *, allow_partial: bool = False,
                sweep_spec: str | None = None, paper_numbers: Path | None = None) -> Path:
    """Writes `out_dir/README.md`, `study.json` and the plots; returns the README's path."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    data = study_data(sweep_dir, out_dir, allow_partial=allow_partial, sweep_spec=sweep_spec,
                      paper_numbers=paper_numbers)
    out_dir.mkdir(parents=True, exist_ok=True)
    data["plots"] = plots.write_plots(data, out_dir)
    readme = out_dir / "README.md"
    atomic.write_bytes(readme, render.readme(data).encode())
    atomic.write_bytes(out_dir / "study.json", (json.dumps(
        data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
    return readme

