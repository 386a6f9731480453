"""The 'predict' stage: rank a group's SFT checkpoints by their predicted post-RL result.

Reads (no environment variables):
  * ``<workdir>/eval/*.json``: per-checkpoint eval results (schema in ``sftrl.eval.predict``),
    and the same from every run directory of the sweep named by ``config.predict.workdirs``;
  * ``<workdir>/predict_inputs.csv`` or ``<workdir>/predict_inputs.json``: a flat table of
    results from elsewhere (same docstring), used in addition to the eval files.
Writes ``<workdir>/report/predictor.json`` (every number), ``predictor.md`` (the tables) and,
when matplotlib is importable, ``scatter_<group>.png``; each file atomically, by process 0 only.
Every path (the workdir, ``predict.workdirs``, ``predict.inputs``) may be any ``etils.epath``
path (``gs://bucket/...``).

Options come from ``config.predict`` (keys: k, proxies, benchmarks, per_benchmark,
calibration_sizes, max_subsets, n_permutations, n_bootstrap, confidence; ``inputs`` names one
more flat table to read); the seed is ``config.seed``.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl import atomic

log = logging.getLogger(__name__)

FLAT_INPUTS = ("predict_inputs.csv", "predict_inputs.json")


def options_from_config(config: Any) -> Any:
    from sftrl.eval import predict

    section = config.get("predict") if hasattr(config, "get") else None
    kwargs: dict[str, Any] = {"seed": int(config.get("seed", 0)) if hasattr(config, "get")
                              else 0}
    if section is not None:
        for field in ("k", "per_benchmark", "max_subsets", "n_permutations", "n_bootstrap",
                      "confidence"):
            if section.get(field) is not None:
                kwargs[field] = section.get(field)
        for field in ("proxies", "benchmarks", "calibration_sizes"):
            if section.get(field) is not None:
                kwargs[field] = tuple(section.get(field))
    return predict.Options(**kwargs)


def _glob_dirs(pattern: str) -> list[Any]:
    """The directories `pattern` matches: a local glob, or for a URI (gs://b/sweep/run*) the
    epath glob of its wildcard part under the longest plain prefix."""
    if not atomic.is_remote(pattern):
        return sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_dir())
    parts = pattern.split("/")
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    base = atomic.to_path("/".join(parts[:first]))
    found = base.glob("/".join(parts[first:])) if first < len(parts) else [base]
    return sorted(p for p in found if p.is_dir())


def _same_dir_key(path: Any) -> str:
    return str(path) if atomic.is_remote(path) else str(Path(path).resolve())


def sweep_workdirs(workdir: Any, patterns: Sequence[str]) -> list[Any]:
    """The stage's own workdir plus the sweep's run directories named by `patterns` (globs)."""
    from sftrl.eval import predict

    dirs = [workdir]
    for pattern in patterns:
        matches = _glob_dirs(str(pattern))
        if not matches:
            raise predict.PredictError(f"predict.workdirs: {pattern!r} matches no directory")
        dirs += [d for d in matches if _same_dir_key(d) not in {_same_dir_key(x) for x in dirs}]
    return dirs


def load_inputs(
    workdir: Any, options: Any, extra_table: str = "", workdirs: Sequence[str] = ()
) -> list[Any]:
    """Candidates from the runs' eval files and flat results tables (see module docstring)."""
    from sftrl.eval import predict

    workdir = atomic.to_path(workdir)
    eval_dirs = [d / "eval" for d in sweep_workdirs(workdir, workdirs) if (d / "eval").is_dir()]
    candidates = predict.load_eval_dir(eval_dirs, options.benchmarks) if eval_dirs else []
    for name in FLAT_INPUTS:
        if (workdir / name).is_file():
            candidates += predict.load_flat(workdir / name)
    if extra_table:
        if not atomic.to_path(extra_table).is_file():
            raise predict.PredictError(f"predict.inputs: no such file {extra_table}")
        candidates += predict.load_flat(extra_table)
    seen: dict[str, str] = {}
    for c in candidates:
        if c.checkpoint in seen:
            raise predict.PredictError(f"{c.source}: checkpoint {c.checkpoint!r} also in "
                                       f"{seen[c.checkpoint]}")
        seen[c.checkpoint] = c.source
    if not candidates:
        raise predict.PredictError(f"no predictor inputs in {workdir}: expected eval/*.json or "
                                   f"one of {', '.join(FLAT_INPUTS)}")
    return candidates


def run(config: Any, workdir: Any, layout: Any = None) -> dict[str, Any]:
    """Score the proxies, predict unlabeled checkpoints, write the report; headline numbers."""
    import jax

    from sftrl.eval import predict

    del layout  # pure numpy: no mesh needed
    workdir = atomic.to_path(workdir)
    options = options_from_config(config)
    section = config.get("predict") or {}
    candidates = load_inputs(
        workdir, options, section.get("inputs", ""), section.get("workdirs", ())
    )
    report = predict.evaluate(candidates, options)
    summary = workdir / "report" / "predictor.md"
    if jax.process_index() == 0:  # every process computes the same report; one writes it
        summary = predict.write_report(report, workdir / "report")["summary"]
    headline: dict[str, Any] = {"report": str(summary), "groups": {}}
    for group, g in report["groups"].items():
        per_proxy = g["scores"]["instance"][predict.OUTCOME]
        pred = g["prediction"]
        top = pred["candidates"][0]["checkpoint"] if pred["candidates"] else None
        headline["groups"][group] = {
            "n_candidates": g["n_candidates"],
            "n_labeled": g["n_labeled"],
            "spearman": {n: s["spearman"]["rho"] for n, s in per_proxy.items() if "error" not in s},
            "prediction_proxy": pred["proxy"],
            "top_unlabeled": top,
        }
        log.info("group %s: %d candidates, %d with RL results, predict with %s, top %s",
                 group, g["n_candidates"], g["n_labeled"], pred["proxy"], top)
    return headline
