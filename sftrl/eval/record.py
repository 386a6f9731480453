"""The per-checkpoint eval record, `<workdir>/eval/<ckpt>.json`: its one reader and one writer.

The eval stage writes it (`sftrl.eval.benchmarks.evaluate_checkpoint` through `write`); the
predictor, the report, the studies and the pipeline read it through `read` / `read_dir` /
`parse`. The format on disk (JSON, keys sorted)::

    {
      "checkpoint": "sft-math-ep2",      # unique id within the inputs
      "group": "llama-1b",               # base model; candidates are compared within a group
      "dataset": "math",                 # SFT data set id
      "stage": "sft" | "rl",
      "sft_checkpoint": "sft-math-ep2",  # required when stage == "rl": where the RL run began
      "generalization_loss": 1.23,       # held-out loss (nats/token); absent without held-out
      "benchmarks": {"<name>": {"n": 256, "num_prompts": 500, "pass@1": 0.31,
                                "pass@k": {"1": 0.31, "2": 0.40, ..., "256": 0.83},
                                "pass@k_ci": {...}, "maj@k": {...}, ...}},
      "metrics": {"heldout/loss": 1.23, ...},      # numbers only
      "mean_over_benchmarks": {...}, "sampling": {...},
      "<extra>": 0.5                     # any other top-level field is kept as written
    }

Files written by hand or by older versions may lack fields the writer always writes. The reader
checks the type of every field present, and a consumer names the fields it needs (`require=` /
`EvalRecord.require`): `stage`, `group`, `dataset`, `generalization_loss` at the top, and
`pass@1`, `pass@k`, `n`, `num_prompts` per benchmark (`pass@1` is the `"pass@1"` field or
`pass@k["1"]`). Every problem is one `EvalRecordError` (a `UserError`: `sftrl: error: ...`,
exit status 2) naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from sftrl import atomic
from sftrl.errors import UserError

STAGES = ("sft", "rl")
_TOP_FIELDS = ("stage", "group", "dataset", "generalization_loss")
_BENCHMARK_FIELDS = ("pass@1", "pass@k", "n", "num_prompts")
# What `write` always writes: a record the writer accepts satisfies every consumer's `require`.
WRITTEN = ("stage", "group", "dataset", "pass@1", "pass@k", "n", "num_prompts")
_KNOWN = ("checkpoint", "stage", "group", "dataset", "sft_checkpoint", "generalization_loss",
          "benchmarks", "metrics")


class EvalRecordError(UserError):
    """An eval record that cannot be used; the message names the file and the field."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any, where: str, field: str) -> float:
    if not _is_number(value) or not math.isfinite(value):
        raise EvalRecordError(f"{where}: field {field!r} is {value!r}, not a finite number")
    return float(value)


def _positive_int(value: Any, where: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvalRecordError(f"{where}: field {field!r} must be a positive int, got {value!r}")
    return value


def _text(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise EvalRecordError(f"{where}: field {field!r} must be a non-empty string, "
                              f"got {value!r}")
    return value


def _check_require(fields: Iterable[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    unknown = [f for f in fields if f not in _TOP_FIELDS + _BENCHMARK_FIELDS]
    if unknown:  # a caller's typo, not the file's fault
        raise ValueError(f"unknown eval-record field(s) to require: {unknown}")
    return fields


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's scores. `fields` is the entry as written (CIs, maj@k, extrapolation,
    ...: what the report shows); the typed attributes are its checked numbers."""

    name: str
    pass_at_k: dict[int, float]  # the 'pass@k' field, sorted by k; {} when absent
    pass_at_1: float | None  # the 'pass@1' field
    n: int | None  # samples per prompt
    num_prompts: int | None
    fields: dict[str, Any]

    @property
    def curve(self) -> dict[int, float]:
        """pass@k by k, pass@1 from the 'pass@1' field where there is one (it is the plain mean
        of c/n; pass@k['1'] is the same estimate through the general formula)."""
        curve = dict(self.pass_at_k)
        if self.pass_at_1 is not None:
            curve[1] = self.pass_at_1
        return dict(sorted(curve.items()))

    @property
    def pass1(self) -> float | None:
        return self.curve.get(1)


def _benchmark(name: str, entry: Any, where: str) -> BenchmarkResult:
    where = f"{where}: benchmarks.{name}"
    if not isinstance(entry, dict):
        raise EvalRecordError(f"{where}: expected an object")
    curve: dict[int, float] = {}
    if "pass@k" in entry:
        raw = entry["pass@k"]
        if not isinstance(raw, dict) or not raw:
            raise EvalRecordError(f"{where}: field 'pass@k' must be a non-empty object")
        for k, v in raw.items():
            if not str(k).isdigit() or int(k) < 1:
                raise EvalRecordError(f"{where}: field 'pass@k' has key {k!r}, not a positive "
                                      "integer")
            curve[int(k)] = _finite(v, where, f"pass@k[{k}]")
    pass1 = _finite(entry["pass@1"], where, "pass@1") if "pass@1" in entry else None
    n = _positive_int(entry["n"], where, "n") if "n" in entry else None
    prompts = (_positive_int(entry["num_prompts"], where, "num_prompts")
               if "num_prompts" in entry else None)
    return BenchmarkResult(name, dict(sorted(curve.items())), pass1, n, prompts, dict(entry))


@dataclasses.dataclass(frozen=True)
class EvalRecord:
    """One checkpoint's eval record (see the module docstring); `source` is where it was read
    from, for messages."""

    checkpoint: str
    benchmarks: dict[str, BenchmarkResult]
    stage: str | None = None
    group: str | None = None
    dataset: str | None = None
    sft_checkpoint: str | None = None
    generalization_loss: float | None = None
    metrics: dict[str, float] | None = None
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)  # other top-level fields
    source: str = dataclasses.field(default="", compare=False)

    def require(self, *fields: str) -> EvalRecord:
        """`self`, or an error naming the file and the first of `fields` it lacks."""
        for field in _check_require(fields):
            if field in _TOP_FIELDS:
                if getattr(self, field) is None:
                    raise EvalRecordError(f"{self.source}: field {field!r} missing")
                continue
            for bench in self.benchmarks.values():
                value = {"pass@1": bench.pass1, "pass@k": bench.pass_at_k or None,
                         "n": bench.n, "num_prompts": bench.num_prompts}[field]
                if value is None:
                    raise EvalRecordError(f"{self.source}: benchmarks.{bench.name}: field "
                                          f"{field!r} missing")
        return self

    def mean_curve(self, benchmarks: Sequence[str] | None = None, *,
                   as_written: bool = False) -> dict[int, float]:
        """pass@k averaged over `benchmarks` (default: all), for the ks they all report.

        Each benchmark's `curve` (pass@1 from its 'pass@1' field), or with `as_written` its
        'pass@k' field alone."""
        names = sorted(self.benchmarks) if benchmarks is None else list(benchmarks)
        curves = [self.benchmarks[name].pass_at_k if as_written else self.benchmarks[name].curve
                  for name in names]
        ks = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        return {k: float(np.mean([c[k] for c in curves])) for k in ks}

    def numbers(self) -> dict[str, float]:
        """Every top-level number and every metric, by name (the predictor's extra proxies)."""
        out = {k: float(v) for k, v in self.extras.items() if _is_number(v)}
        if self.generalization_loss is not None:
            out["generalization_loss"] = self.generalization_loss
        out.update(self.metrics or {})
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {**self.extras, "checkpoint": self.checkpoint,
                                "benchmarks": {n: dict(b.fields)
                                               for n, b in self.benchmarks.items()}}
        for key in ("stage", "group", "dataset", "sft_checkpoint", "generalization_loss",
                    "metrics"):
            value = getattr(self, key)
            if value is not None:
                data[key] = dict(value) if isinstance(value, dict) else value
        return data


def parse(data: Any, where: str, require: Iterable[str] = ()) -> EvalRecord:
    """The record in `data` (a decoded JSON object) from `where` (a file name, for messages)."""
    if not isinstance(data, dict):
        raise EvalRecordError(f"{where}: expected a JSON object")
    checkpoint = _text(data.get("checkpoint"), where, "checkpoint")
    stage = data.get("stage")
    if stage is not None and stage not in STAGES:
        raise EvalRecordError(f"{where}: field 'stage' must be 'sft' or 'rl', got {stage!r}")
    group, dataset = (None if data.get(key) is None else _text(data[key], where, key)
                      for key in ("group", "dataset"))
    parent = data.get("sft_checkpoint")
    if stage == "rl" and parent is None:
        raise EvalRecordError(f"{where}: field 'sft_checkpoint' is required when stage is 'rl'")
    if parent is not None:
        _text(parent, where, "sft_checkpoint")
    loss = data.get("generalization_loss")
    if loss is not None:
        loss = _finite(loss, where, "generalization_loss")
    metrics = data.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise EvalRecordError(f"{where}: field 'metrics' must be an object of numbers")
        metrics = {str(k): _finite(v, where, f"metrics.{k}") for k, v in metrics.items()}
    extras = {k: v for k, v in data.items() if k not in _KNOWN}
    for key, value in extras.items():
        if _is_number(value):
            _finite(value, where, key)
    benches = data.get("benchmarks")
    if not isinstance(benches, dict) or not benches:
        raise EvalRecordError(f"{where}: field 'benchmarks' must be a non-empty object")
    record = EvalRecord(
        checkpoint, {name: _benchmark(name, entry, where) for name, entry in benches.items()},
        stage, group, dataset, parent, loss, metrics, extras, where)
    return record.require(*require)


def _load(path: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EvalRecordError(f"{path}: no such file") from None
    except UnicodeDecodeError as error:
        raise EvalRecordError(f"{path}: not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise EvalRecordError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def read(path: str | os.PathLike[str], require: Iterable[str] = ()) -> EvalRecord:
    """The record in the file `path` (see `parse`)."""
    return parse(_load(atomic.to_path(path)), str(path), require)


def read_dir(directories: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             require: Iterable[str] = ()) -> list[EvalRecord]:
    """Every `*.json` in `directories` (in order, each sorted by name); a checkpoint name that
    two files share is an error (names are unique within the inputs)."""
    dirs = ([directories] if isinstance(directories, str | os.PathLike)
            else list(directories))
    require = _check_require(require)
    out: list[EvalRecord] = []
    seen: dict[str, str] = {}
    for path in (p for d in dirs for p in sorted(atomic.to_path(d).glob("*.json"))):
        record = read(path, require)
        if record.checkpoint in seen:
            raise EvalRecordError(f"{path}: field 'checkpoint': {record.checkpoint!r} is also "
                                  f"the checkpoint of {seen[record.checkpoint]}")
        seen[record.checkpoint] = str(path)
        out.append(record)
    return out


def write(path: str | os.PathLike[str], record: EvalRecord) -> None:
    """Writes `record` to `path` atomically, after checking that it has every field the writer
    promises (`WRITTEN`): what is written is what every reader accepts."""
    data = record.to_json()
    parse(data, str(path), WRITTEN)
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def check_header(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The identifying fields a writer is given (group, dataset, stage, sft_checkpoint),
    checked as `write` will check them, so that a bad one fails before any sampling."""
    unknown = sorted(set(meta) - {"group", "dataset", "stage", "sft_checkpoint"})
    if unknown:
        raise EvalRecordError(f"{where}: unknown field(s) {unknown}")
    # the header's checks are parse's; a stand-in for the scores that are not there yet
    probe = {**meta, "checkpoint": "probe", "benchmarks": {"probe": {}}}
    parse(probe, where, ("stage", "group", "dataset"))
    return dict(meta)
