"""The predictor's report for the study: the sweep's predict run, checked against the eval files.

A report that does not describe the finished checkpoints (stale, or the predict run unfinished)
is refused; with `allow_partial` the predictor (`sftrl.eval.predict`) is re-run over them here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sftrl.eval import predict
from sftrl.study.sweep import (
    PREDICT_RUN,
    STATUS_FILE,
    Row,
    RunStatus,
    StudyError,
    read_json,
    run_config,
)

PREDICTOR_JSON = Path("report") / "predictor.json"
# Two numbers of the report and the eval files closer than this are the same number.
_TOL = 1e-9


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
    from sftrl.stages import predict as predict_stage

    options = predict_stage.options_from_config(run_config(config_dir))
    candidates = _candidates(done, options.benchmarks)
    problem = ""
    if statuses.get(PREDICT_RUN) is None or statuses[PREDICT_RUN].state != "done":
        problem = f"the {PREDICT_RUN!r} run is not done in {sweep_dir / STATUS_FILE}"
    elif not path.is_file():
        problem = f"{path}: no such file"
    else:
        report = read_json(path)
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
