"""Reading a sweep directory: run states, eval records, checkpoints joined to their RL evals.

What `python -m sftrl.launch` leaves in the sweep directory (see `sftrl.study`) becomes one `Row`
per SFT checkpoint, and each row one JSON-able checkpoint record (`checkpoint_record`), the
input of the findings. Every malformed input is a `StudyError` that names the file and field.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl import rewards
from sftrl.eval import passk, sample_store
from sftrl.eval import record as eval_record
from sftrl.eval.record import EvalRecord

STATUS_FILE = "sweep.json"
PREDICT_RUN = "predict"
# Shifts of the guessing control: each answer is scored against that many other prompts' golds.
CONTROL_SHIFTS = 8

class StudyError(ValueError):
    """An input the study cannot use; the message names the file and the field."""



def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


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
    data = read_json(path)
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


def run_config(run_dir: Path) -> dict[str, Any]:
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict):
        raise StudyError(f"{run_dir / 'config.json'}: expected a JSON object")
    return config


def _optional_int(config: dict[str, Any], field: str, where: str) -> int | None:
    """A run config's int at the dotted `field`; None where it (or a section above it) is
    absent or null."""
    value: Any = config
    for key in field.split("."):
        value = (value or {}).get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{where}: field '{field}' is {value!r}, not an int")
    return value


def _epochs(config: dict[str, Any], where: str) -> int | None:
    return _optional_int(config, "sft.num_epochs", where)


def _data_size(config: dict[str, Any], where: str) -> int | None:
    """The synthetic data set's size from a run's config; None for file-based data."""
    if (config.get("data") or {}).get("source", "synthetic") != "synthetic":
        return None
    return _optional_int(config, "data.synthetic.size", where)


def _sft_steps(run_dir: Path, variant: str) -> int:
    path = run_dir / "pipeline.json"
    steps = read_json(path)
    entry = steps.get(f"{variant}/sft") if isinstance(steps, dict) else None
    value = entry.get("final_step") if isinstance(entry, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"{path}: field '{variant}/sft.final_step' must be an int, "
                         f"got {value!r}")
    return value


def load_run(sweep_dir: Path, status: RunStatus) -> list[Row]:
    """The checkpoints of one finished run: SFT evals joined to their RL evals."""
    run_dir = sweep_dir / status.name
    config = run_config(run_dir)
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


def _params(model: dict[str, Any]) -> int | None:
    """Llama-family parameter count from config.json's model section."""
    try:
        e, f, v = model["hidden_size"], model["intermediate_size"], model["vocab_size"]
        h, kv, layers = model["num_heads"], model["num_kv_heads"], model["num_layers"]
        d = model.get("head_dim") or e // h
        per_layer = e * h * d * 2 + 2 * e * kv * d + 3 * e * f + 2 * e
        return v * e * (1 if model.get("tie_embeddings") else 2) + layers * per_layer + e
    except (KeyError, TypeError):
        return None


def setup(sweep_dir: Path, rows: Sequence[Row]) -> dict[str, Any]:
    """This study's scale, for comparison with the paper's (whose models are 8B and 12B): the
    first finished run's model, RL budget and evaluation, and every run's data size."""
    finished = [r for r in rows if r.sft is not None]
    first = finished[0]
    config = run_config(sweep_dir / first.run)
    model = config.get("model") or {}
    n, prompts, _ = first.sft.sizes[0]
    return {
        "model_type": model.get("model_type"), "hidden_size": model.get("hidden_size"),
        "num_layers": model.get("num_layers"), "params": _params(model),
        "checkpoints": len(finished), "rows": len(rows),
        "datasets": len({r.dataset for r in finished}),
        # A sweep may vary the data size too, so every run's size counts, not the first's.
        "data_sizes": sorted({r.data_size for r in finished if r.data_size is not None}),
        "rl_steps": (config.get("rl") or {}).get("num_steps"),
        "benchmarks": sorted(first.sft.record.benchmarks), "samples": n, "prompts": prompts,
    }


def _curve(result: EvalResult | None) -> dict[str, float] | None:
    return None if result is None else {str(k): v for k, v in result.curve.items()}


def checkpoint_record(row: Row, control: dict[int, float] | None) -> dict[str, Any]:
    """One row as the findings and the report read it (the `checkpoints` of study.json)."""
    return {
        "run": row.run, "checkpoint": row.checkpoint, "group": row.group,
        "dataset": row.dataset, "data_size": row.data_size, "epochs": row.epochs,
        "sft_steps": row.sft_steps, "missing": row.missing, "seconds": row.seconds,
        "seconds_estimated": row.seconds_estimated,
        "generalization_loss": row.sft.record.generalization_loss if row.sft else None,
        "sft_pass@k": _curve(row.sft), "rl_pass@k": _curve(row.rl),
        "sft_pass@k_control": (None if control is None else
                               {str(k): v for k, v in control.items()}),
        "gain": row.gain, "gain_se": row.gain_se,
        "rl_se": row.rl.sampling_se() if row.rl else None,
    }
