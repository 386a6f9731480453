"""One checkpoint's raw proxy data: per-example held-out NLL and per-prompt verdict counts.

The model is loaded in the eval stage's way (train layout for the held-out loss, resharded to the
sampling layout for generation), then dropped before the next checkpoint, so memory holds one
model. Samples go through the eval stage's resumable `evaluate_benchmark` (one durable row per
prompt), so a killed run resumes mid-benchmark; the checkpoint's result file is written
atomically at the end, and a checkpoint with a result file is not loaded again.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from sftrl import atomic, config_lib
from sftrl.data.prompts import format_prompt
from sftrl.data.sft import heldout_batches
from sftrl.eval.benchmarks import SamplingSpec, evaluate_benchmark
from sftrl.eval.heldout import HeldoutEvaluator
from sftrl.eval.sample_store import read_rows
from sftrl.models import checkpoint as hf_checkpoint
from sftrl.models.transformer import Model, Transformer
from sftrl.rank.inputs import Benchmark, Checkpoint
from sftrl.sharding import SAMPLING_RULES, Layout

log = logging.getLogger(__name__)

_EVALUATORS: dict[Transformer, HeldoutEvaluator] = {}


def load_model(ck: Checkpoint, layout: Layout, dtype: str, attention: str) -> Model:
    compute = config_lib.resolve_dtype(dtype)
    if ck.kind == "hf":
        model, _ = hf_checkpoint.load_hf(ck.path, dtype=compute, mesh=layout,
                                         attention=attention)
        return model
    from sftrl.train import common

    assert ck.run_config is not None and ck.step is not None
    # The run saved float32 master params; compute in the requested dtype, as the eval stage.
    module = Transformer(ck.arch, dtype=compute, param_dtype=jnp.float32, layout=layout,
                         remat="none", attention=attention)
    params, _ = common.restore_params(ck.run_config, ck.path, module, layout, ck.step,
                                      section="sft")
    return Model(module, params)


def heldout_counts(model: Model, ck: Checkpoint, *, batch_size: int,
                   max_length: int) -> tuple[list[float], list[int]]:
    """Per held-out example, in file order: the NLL sum and the number of scored tokens.

    One example per row (no packing), so row order is file order and the same for every
    checkpoint whatever its tokenizer: the bootstrap pairs examples across checkpoints by it.
    """
    assert ck.heldout is not None
    batches = heldout_batches(ck.heldout, ck.tokenizer, batch_size=batch_size,
                              max_length=max_length, packing=False, overlong="truncate",
                              shard_index=jax.process_index(), shard_count=jax.process_count())
    evaluator = _EVALUATORS.get(model.module)
    if evaluator is None:
        _EVALUATORS.clear()
        evaluator = _EVALUATORS[model.module] = HeldoutEvaluator(model, batches)
    # One evaluator per architecture: its jitted step takes params, so the next checkpoint of
    # the group reuses the compiled forward; only the batches (this tokenizer's) change.
    evaluator.batches = batches
    sums, counts = evaluator.example_sums(model.params)
    keys = sorted(counts)
    if len(keys) != len(ck.heldout.record_ids):
        raise RuntimeError(f"{ck.name}: scored {len(keys)} held-out examples, expected "
                           f"{len(ck.heldout.record_ids)}")
    return [sums[k] for k in keys], [counts[k] for k in keys]


def benchmark_counts(store: Path, records: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    by_id = {row["id"]: row for row in read_rows(store)}
    rows = [by_id[r["id"]] for r in records]
    return [len(r["correct"]) for r in rows], [sum(r["correct"]) for r in rows]


def score_checkpoint(
    ck: Checkpoint, benchmarks: list[Benchmark], *, workdir: Path, layout: Layout,
    spec: SamplingSpec, settings: Any, fingerprint: dict[str, Any],
    on_prompt: Callable[[str], None],
) -> dict[str, Any]:
    """Scores one checkpoint and writes `<workdir>/results/<name>.json`; returns its content."""
    timing: dict[str, float] = {"tokenize_s": ck.tokenize_s}
    start = t0 = time.perf_counter()
    model = load_model(ck, layout, settings.dtype, settings.attention)
    jax.block_until_ready(model.params)
    timing["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums, counts = heldout_counts(model, ck, batch_size=settings.heldout_batch_size,
                                  max_length=settings.max_length)
    timing["heldout_s"] = time.perf_counter() - t0
    log.info("%s: held-out loss %.4f over %d tokens of %d examples", ck.name,
             sum(sums) / sum(counts), sum(counts), len(counts))
    sampler = model.reshard(Layout(layout.mesh, SAMPLING_RULES))
    del model  # one copy of the weights, in the sampling layout, from here on
    results: dict[str, Any] = {}
    for key in ("generation_s", "verification_s", "bookkeeping_s"):
        timing[key] = 0.0
    for bench in benchmarks:
        store = workdir / "samples" / ck.name / f"{bench.name}.jsonl"

        def render(record: dict[str, Any], template: str = bench.template) -> str:
            return format_prompt(record["problem"], template)

        summary = evaluate_benchmark(
            sampler, ck.tokenizer, bench.records, name=bench.name, store_path=store,
            spec=spec, format_prompt=render, progress=False,
            on_prompt_done=lambda row, name=bench.name: on_prompt(name))
        for key, value in summary.pop("timing").items():
            timing[key] += value
        n, c = benchmark_counts(store, bench.records)
        results[bench.name] = {"summary": summary, "n": n, "c": c}
    del sampler
    gc.collect()  # the next checkpoint loads into free memory: one model at a time
    timing["total_s"] = time.perf_counter() - start + ck.tokenize_s
    record = {
        "checkpoint": ck.name, "fingerprint": fingerprint,
        "heldout": {"nll_sums": sums, "token_counts": counts},
        "benchmarks": results, "timing": timing,
    }
    path = workdir / "results" / f"{ck.name}.json"
    atomic.write_text(path, json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return record
