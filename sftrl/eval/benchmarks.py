"""Benchmark evaluation: sample n responses per prompt, verify them, score pass@k; resumable.

`evaluate_benchmark` turns benchmark records `{"id", "problem", "answer"}` into prompts (the
caller's `format_prompt` and the tokenizer's `encode_prompt`), samples `spec.num_samples`
responses per prompt with `sampling.generate`, scores them with the RL reward's verifier
(`rewards.verify_batch`, docs/design.md "rewards are the eval verifier") and stores one row
per prompt in a `SampleStore` (a local file appended row by row, or on an object store one part
file per wave, consolidated into the same file at the end). `evaluate_checkpoint` does that for
several benchmarks and writes `<workdir>/eval/<ckpt>.json` through `sftrl.eval.record` (the eval
record's one writer). The work dir may be any `etils.epath` path (`gs://...`).

Several processes (a multi-host mesh): every process samples every wave (the sampler's
collectives need them all) and holds the rows; process 0 alone writes the samples, spec and
eval files, so each is written once. The processes first check that they read the same stored
prompts (a run directory one of them cannot see would otherwise hang a collective).

Resuming: prompts already in the store are not regenerated. Each prompt's random stream is keyed
by (spec.seed, a hash of its record id), not by its position in a batch, so the samples of a
prompt do not depend on which other prompts share its wave or on whether the run was interrupted:
a resumed run writes the same rows as an uninterrupted one. The sampling spec is written beside
the samples file (`<benchmark>.spec.json`); resuming with a different spec is an error rather
than a file that mixes two distributions.

Token entropy: `mean_token_entropy` is the mean over generated tokens of -log q(token), q the
distribution actually sampled from (temperature, top-k, top-p applied). Each term is an unbiased
one-sample estimate of that step's entropy under q, so the mean estimates the sampling policy's
per-token entropy (0 for greedy). It is not the model's entropy at temperature 1 unless the
spec samples at temperature 1 without truncation.

Timing: `generation_s` is prompt encoding, sampling and detokenisation; `verification_s` is
answer extraction and verification; `bookkeeping_s` is everything else (store writes, fsyncs,
metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from sftrl import atomic, rewards, sampling
from sftrl.eval import passk
from sftrl.eval import record as record_lib
from sftrl.eval.sample_store import SampleStore, rows_in_order
from sftrl.models.transformer import Model

log = logging.getLogger(__name__)

EXTRAPOLATE_TO = 1024
_ENTROPY_DIGITS = 6  # stored per response; rounding keeps the file stable across batchings


class BenchmarkError(ValueError):
    """Bad benchmark input or a samples file that does not match the run; names the culprit."""


class Tokenizer(Protocol):
    """What the runner needs from the project's tokenizer (sftrl.data.tokenizer)."""

    stop_ids: Sequence[int]
    pad_id: int

    def encode_prompt(self, messages_or_problem: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class BatchVerifier(Protocol):
    """`rewards.Verifier` or anything with its `verify_batch`."""

    def verify_batch(self, pairs: Any, *, config: Any = ..., progress: bool = ...) -> list[bool]:
        ...


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """How a benchmark is sampled. `prompts_per_wave` prompts are generated together;
    `max_kv_tokens` additionally bounds one generate call's cache (see sampling.generate)."""

    num_samples: int = 256
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    prompts_per_wave: int = 8
    max_kv_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_new_tokens", "prompts_per_wave"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BenchmarkError(f"SamplingSpec.{name} must be a positive int, got {value!r}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise BenchmarkError(
                f"SamplingSpec: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                f"{self.temperature}, {self.top_p}, {self.top_k}")

    def sample_fields(self) -> dict[str, Any]:
        """The fields that decide the samples (not how they are batched)."""
        fields = dataclasses.asdict(self)
        del fields["prompts_per_wave"], fields["max_kv_tokens"]
        return fields


def prompt_key(record_id: str) -> int:
    """The prompt's id in the sampler's key derivation: a stable 31-bit hash of its record id."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF  # the sampler folds in an int32


def check_records(records: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, str]]:
    """Records as {"id", "problem", "answer"} strings; errors name the record and field."""
    out: list[dict[str, str]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        where = f"benchmark {name!r} record {index}"
        if not isinstance(record, Mapping):
            raise BenchmarkError(f"{where}: expected a mapping, got {type(record).__name__}")
        clean = {}
        for field in ("id", "problem", "answer"):
            value = record.get(field)
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if numeric and field != "problem":
                value = str(value)  # numeric ids and answers are common in benchmark files
            if not isinstance(value, str) or not value:
                raise BenchmarkError(f"{where}: field {field!r} must be a non-empty string, "
                                     f"got {value!r}")
            clean[field] = value
        if clean["id"] in seen:
            raise BenchmarkError(f"{where}: field 'id': {clean['id']!r} repeats record "
                                 f"{seen[clean['id']]}")
        seen[clean["id"]] = index
        out.append({**record, **clean})
    if not out:
        raise BenchmarkError(f"benchmark {name!r} has no records")
    return out


def extraction_preset(name: str) -> str:
    return name if name in rewards.PRESETS else "default"


@dataclasses.dataclass
class Timing:
    generation_s: float = 0.0
    verification_s: float = 0.0
    bookkeeping_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def sample_rows(
    model: Model,
    tokenizer: Tokenizer,
    records: Sequence[dict[str, Any]],
    *,
    name: str,
    spec: SamplingSpec,
    format_prompt: Callable[[dict[str, Any]], Any],
    verifier: BatchVerifier | None = None,
    timing: Timing | None = None,
    progress: bool = False,
):
    """Yields one scored row per record (in order), a wave of `spec.prompts_per_wave` at a time.

    Used by `evaluate_benchmark` (which stores the rows) and the in-training PassAtKEvaluator.
    """
    timing = timing if timing is not None else Timing()
    verify = verifier.verify_batch if verifier is not None else rewards.verify_batch
    preset = extraction_preset(name)
    for start in range(0, len(records), spec.prompts_per_wave):
        wave = records[start : start + spec.prompts_per_wave]
        t0 = time.perf_counter()
        prompts = []
        for record in wave:
            ids = list(tokenizer.encode_prompt(format_prompt(record)))
            if not ids:
                raise BenchmarkError(f"benchmark {name!r} record {record['id']!r}: empty prompt")
            prompts.append(ids)
        n = spec.num_samples
        keys = np.array([prompt_key(r["id"]) for r in wave], np.int64)
        out = sampling.generate(
            model, prompts, num_samples=n, max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature, top_p=spec.top_p, top_k=spec.top_k,
            stop_ids=list(tokenizer.stop_ids), seed=spec.seed, pad_id=tokenizer.pad_id,
            max_kv_tokens=spec.max_kv_tokens, progress=progress,
            # Keys by record id, not by position in this wave: see the module docstring.
            _key_ids=(keys, np.zeros(len(wave), np.int64)),
        )
        texts = [[tokenizer.decode(out.sequence(p, i), skip_special_tokens=True)
                  for i in range(n)] for p in range(len(wave))]
        t1 = time.perf_counter()
        pairs = [(text, r["answer"]) for r, row in zip(wave, texts, strict=True) for text in row]
        verdicts = verify(pairs, config=preset, progress=False)
        if len(verdicts) != len(pairs):
            raise BenchmarkError(f"verifier returned {len(verdicts)} verdicts for {len(pairs)}")
        extracted = [rewards.extract_answer(text, preset) for text, _ in pairs]
        t2 = time.perf_counter()
        timing.generation_s += t1 - t0
        timing.verification_s += t2 - t1
        for p, record in enumerate(wave):
            lengths = out.lengths[p]
            # -log q summed over each response's own tokens (positions past its end hold 0)
            neg_logp = -out.logprobs[p].astype(np.float64).sum(axis=-1)
            yield {
                "id": record["id"],
                "problem": record["problem"],
                "answer": record["answer"],
                "responses": texts[p],
                "num_tokens": [int(x) for x in lengths],
                "finished": [bool(x) for x in out.finished[p]],
                "correct": [bool(v) for v in verdicts[p * n : (p + 1) * n]],
                "extracted": extracted[p * n : (p + 1) * n],
                "entropy": [round(float(s / max(int(t), 1)), _ENTROPY_DIGITS)
                            for s, t in zip(neg_logp, lengths, strict=True)],
            }


def _write_spec(path: Any, name: str, spec: SamplingSpec, *, write: bool = True) -> None:
    """Pins the spec beside a samples file; a resume with a different one is an error.
    `write=False` (processes other than 0) only checks."""
    fields = {"benchmark": name, **spec.sample_fields()}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise BenchmarkError(f"{path}: not valid JSON ({error})") from None
        changed = sorted(k for k in fields.keys() | old.keys() if old.get(k) != fields.get(k))
        if changed:
            was = {k: old.get(k) for k in changed}
            now = {k: fields.get(k) for k in changed}
            raise BenchmarkError(
                f"{path}: field(s) {changed} differ from this run ({was} vs {now}); "
                "use another store path or delete the samples to resample")
        return
    if write:
        atomic.write_json(path, fields)


def _is_writer() -> bool:
    return jax.process_index() == 0


def _same_on_every_process(store_path: Any, done: Sequence[bool]) -> None:
    """Multi-host: every process must resume the same prompts, else the sampler's collectives
    would wait forever for a wave another process skips."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    seen = np.asarray(multihost_utils.process_allgather(np.asarray(done, np.int32)))
    differ = [i for i in range(len(seen)) if not np.array_equal(seen[i], seen[0])]
    if differ:
        raise BenchmarkError(
            f"{store_path}: process(es) {differ} find other stored prompts than process 0; "
            "every process must see the run directory (one shared disk or bucket)")


def _barrier(name: str) -> None:
    """Multi-host: wait until every process got here (before process 0 rewrites or writes what
    the others read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def evaluate_benchmark(
    model: Model,
    tokenizer: Tokenizer,
    records: Sequence[Mapping[str, Any]],
    *,
    name: str,
    store_path: str | os.PathLike[str],
    spec: SamplingSpec,
    format_prompt: Callable[[dict[str, Any]], Any] | None = None,
    verifier: BatchVerifier | None = None,
    progress: bool = True,
    on_prompt_done: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Samples, verifies and stores every record not yet in `store_path`; returns the scores.

    format_prompt(record) gives what `tokenizer.encode_prompt` takes (default: the problem).
    on_prompt_done(row) runs after each row is durable (progress hooks; tests kill runs there):
    on a local disk as each row is appended, on an object store once its wave's part is written.
    """
    clean = check_records(records, name)
    store_path = atomic.to_path(store_path)
    writer = _is_writer()
    timing = Timing()
    t0 = time.perf_counter()
    with SampleStore(store_path, writer=writer) as store:
        _write_spec(store_path.with_suffix(".spec.json"), name, spec, write=writer)
        wanted = {r["id"] for r in clean}
        stray = sorted(store.done_ids() - wanted)
        if stray:
            raise BenchmarkError(f"{store_path}: field 'id': stored ids {stray[:5]} are not "
                                 f"records of benchmark {name!r}")
        by_id = {r["id"]: r for r in clean}
        for number, row in enumerate(store.rows(), start=1):
            for field in ("problem", "answer"):  # a changed record makes stored verdicts stale
                if row[field] != by_id[row["id"]][field]:
                    raise BenchmarkError(
                        f"{store_path}:{number}: field {field!r} of {row['id']!r} differs from "
                        f"the benchmark record ({row[field]!r} vs {by_id[row['id']][field]!r})")
            if len(row["responses"]) != spec.num_samples:
                raise BenchmarkError(f"{store_path}:{number}: field 'responses' has "
                                     f"{len(row['responses'])} samples, spec {spec.num_samples}")
        done_ids = store.done_ids()
        _same_on_every_process(store_path, [r["id"] in done_ids for r in clean])
        pending = [r for r in clean if r["id"] not in done_ids]
        if len(pending) < len(clean):
            log.info("%s: resuming, %d of %d prompts already stored", store_path,
                     len(clean) - len(pending), len(clean))
        timing.bookkeeping_s += time.perf_counter() - t0
        rows = sample_rows(model, tokenizer, pending, name=name, spec=spec,
                           format_prompt=format_prompt or (lambda r: r["problem"]),
                           verifier=verifier, timing=timing, progress=progress)
        # A line in the log every eighth of the work: tqdm stays silent when the output is not a
        # terminal (a launcher's launch.log), and a large-k evaluation can take an hour.
        every = max(1, len(pending) // 8)
        stored = 0
        for sampled, row in enumerate(rows, start=1):
            t = time.perf_counter()
            durable = store.append(row)
            if sampled % spec.prompts_per_wave == 0 or sampled == len(pending):
                durable += store.flush()  # a wave's end: its part, on an object store
            timing.bookkeeping_s += time.perf_counter() - t
            for row_done in durable:
                stored += 1
                if stored % every == 0 or stored == len(pending):
                    log.info("%s: %d of %d prompts stored (%.0f s so far)", store_path,
                             len(clean) - len(pending) + stored, len(clean),
                             time.perf_counter() - t0)
                if on_prompt_done is not None:
                    on_prompt_done(row_done)
        t = time.perf_counter()
        _barrier(f"sftrl samples {store_path}")  # every process has read the parts
        store.consolidate()
        ordered = rows_in_order(store, [r["id"] for r in clean])
    result = summarize(ordered, seed=spec.seed)
    timing.bookkeeping_s += time.perf_counter() - t
    result["timing"] = timing.as_dict()
    return result


def _extrapolation(n_P: np.ndarray, c_P: np.ndarray) -> dict[str, Any]:
    n = int(n_P.min())
    ks = [k for k in (2 ** p for p in range(1, 11)) if n < k <= EXTRAPOLATE_TO]
    try:
        fit = passk.fit_beta_binomial(n_P, c_P)
    except ValueError as error:  # all-wrong or all-right: nothing to fit
        return {"fitted": False, "reason": str(error)}
    out = {
        "fitted": True,
        "model": "beta-binomial",
        "pass@k": {str(k): float(fit.pass_at_k(k)) for k in ks},
        **fit.to_json(),
    }
    numbers = [v for v in (*out["pass@k"].values(), fit.alpha, fit.beta, fit.log_likelihood,
                           fit.max_abs_error)]
    if not all(np.isfinite(numbers)):
        return {"fitted": False, "reason": f"the fit did not converge to finite values: {fit}"}
    return out


def summarize(rows: Sequence[Mapping[str, Any]], *, seed: int = 0,
              maj_draws: int = 64) -> dict[str, Any]:
    """Benchmark scores from stored rows (see the module docstring and predict's schema)."""
    if not rows:
        raise BenchmarkError("no rows to summarize")
    n_P = np.array([len(r["correct"]) for r in rows])
    c_P = np.array([sum(r["correct"]) for r in rows])
    n = int(n_P.min())
    curve = passk.pass_at_k_curve(n_P, c_P, passk.curve_ks(n), seed=seed)
    answers = [[None if a is None else rewards.normalize_answer(a) for a in r["extracted"]]
                for r in rows]
    correct = [r["correct"] for r in rows]
    maj = {str(k): passk.majority_at_k(answers, correct, k, num_draws=maj_draws, seed=seed)
           for k in curve.ks}
    tokens = np.concatenate([np.asarray(r["num_tokens"], np.float64) for r in rows])
    finished = np.concatenate([np.asarray(r["finished"], bool) for r in rows])
    has_entropy = all(r.get("entropy") is not None for r in rows)
    entropy = None
    if has_entropy:
        per_response = np.concatenate([np.asarray(r["entropy"], np.float64) for r in rows])
        entropy = float((per_response * tokens).sum() / max(tokens.sum(), 1.0))
    return {
        "n": n,
        "num_prompts": len(rows),
        "pass@1": float(np.mean(c_P / n_P)),
        "pass@k": {str(k): float(m) for k, m in zip(curve.ks, curve.mean, strict=True)},
        "pass@k_ci": {str(k): [float(lo), float(hi)]
                      for k, lo, hi in zip(curve.ks, curve.ci_low, curve.ci_high, strict=True)},
        "ci_confidence": curve.confidence,
        "maj@k": maj,
        "learnable_fraction": curve.learnable_share,
        "mean_response_tokens": float(tokens.mean()),
        "truncation_rate": float(1.0 - finished.mean()),
        "mean_token_entropy": entropy,
        "extrapolation": _extrapolation(n_P, c_P),
    }


def evaluate_checkpoint(
    model: Model,
    tokenizer: Tokenizer,
    benchmarks: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    workdir: str | os.PathLike[str],
    ckpt_name: str,
    spec: SamplingSpec,
    meta: Mapping[str, Any],
    format_prompt: Callable[[dict[str, Any]], Any] | None = None,
    heldout_metrics: Mapping[str, float] | None = None,
    verifier: BatchVerifier | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Every benchmark of one checkpoint; writes `<workdir>/eval/<ckpt_name>.json` atomically.

    meta: group, dataset, stage ("sft" | "rl") and, for RL, sft_checkpoint (sftrl.eval.record).
    heldout_metrics: HeldoutEvaluator.run output; its "heldout/loss" is the
    generalization_loss, and every entry goes to "metrics".
    """
    if not benchmarks:
        raise BenchmarkError(f"evaluate_checkpoint({ckpt_name!r}): no benchmarks")
    if not ckpt_name or "/" in ckpt_name or ckpt_name.startswith("."):
        raise BenchmarkError(f"evaluate_checkpoint: bad ckpt_name {ckpt_name!r}")
    header = record_lib.check_header(meta, f"evaluate_checkpoint({ckpt_name!r}) meta")
    workdir = atomic.to_path(workdir)
    results = {}
    for name, records in benchmarks.items():
        results[name] = evaluate_benchmark(
            model, tokenizer, records, name=name,
            store_path=workdir / "samples" / ckpt_name / f"{name}.jsonl", spec=spec,
            format_prompt=format_prompt, verifier=verifier, progress=progress)
    common = set.intersection(*(set(r["pass@k"]) for r in results.values()))
    ks = sorted(common, key=int)
    record: dict[str, Any] = {"checkpoint": ckpt_name, **header}
    metrics = {k: float(v) for k, v in (heldout_metrics or {}).items()}
    if "heldout/loss" in metrics:
        record["generalization_loss"] = metrics["heldout/loss"]
    record["benchmarks"] = results
    # Nested, so predict does not read it as one more proxy (it averages pass@k itself).
    record["mean_over_benchmarks"] = {
        "pass@1": float(np.mean([r["pass@1"] for r in results.values()])),
        "pass@k": {k: float(np.mean([r["pass@k"][k] for r in results.values()])) for k in ks},
    }
    record["metrics"] = metrics
    record["sampling"] = dataclasses.asdict(spec)
    path = workdir / "eval" / f"{ckpt_name}.json"
    parsed = record_lib.parse(record, str(path))
    if _is_writer():
        record_lib.write(path, parsed)
        log.info("wrote %s", path)
    _barrier(f"sftrl eval {path}")  # on return, every process can read the file
    return record
