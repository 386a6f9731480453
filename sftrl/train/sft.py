"""The SFT stage: a readable loop around the pure `sft_step` (see `sft_step.py`).

One iteration: next batch from the resumable pipeline -> placed on the mesh -> jitted step.
Every `log_every` steps the metrics go to `metrics.jsonl`/TensorBoard; every `eval_every` the
configured evaluators run on the live sharded state; every `save_every` (and at the end) an orbax
checkpoint is written holding the train state *and* the data iterator's position, so killing the
process anywhere and re-running the same command ends with the parameters an uninterrupted run
would have (bit-identical on CPU).

Non-finite losses are caught one step late (the check reads the previous step's metrics while the
next step runs, so the host never stalls the device), always before a checkpoint is written: a
save happens only after every step up to it was checked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from sftrl import atomic, config_lib
from sftrl.data import sources
from sftrl.data.sft import SFTDataConfig, SFTPipeline, heldout_batches
from sftrl.data.sft_stream import StreamingSFTPipeline, merge_states
from sftrl.data.shards import resolve_num_shards
from sftrl.data.tokenizer import Tokenizer, load_tokenizer
from sftrl.eval.evaluators import Evaluator, HeldoutLossEvaluator
from sftrl.eval.heldout import HeldoutEvaluator
from sftrl.models.transformer import Model
from sftrl.optim import (
    OptimizerConfig,
    OptimizerConfigError,
    check_run_length,
    learning_rate,
    make_optimizer,
)
from sftrl.sharding import Layout, shard_batch
from sftrl.train import common
from sftrl.train import state as state_lib
from sftrl.train.metrics_log import peak_flops_per_device, training_flops_per_token
from sftrl.train.progress import ProgressLog
from sftrl.train.sft_step import BATCH_FIELDS, jit_sft_step, make_sft_step

log = logging.getLogger(__name__)

def data_config(config: ml_collections.ConfigDict) -> SFTDataConfig:
    return SFTDataConfig(
        batch_size=config.sft.batch_size,
        max_length=config.data.max_length,
        packing=config.data.packing,
        shuffle=True,
        seed=config.seed,
        # a step budget repeats the data as often as needed; otherwise num_epochs passes
        num_epochs=None if config.sft.num_steps else config.sft.num_epochs,
        overlong=config.data.overlong,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )


def _heldout_evaluator(config: ml_collections.ConfigDict, model: Model, tokenizer: Tokenizer,
                       heldout: list[dict[str, Any]]) -> Evaluator:
    return HeldoutLossEvaluator(HeldoutEvaluator(
        model,
        heldout_batches(heldout, tokenizer, batch_size=config.sft.heldout_batch_size,
                        max_length=config.data.max_length,
                        shard_index=jax.process_index(), shard_count=jax.process_count()),
    ))


# sft.evals name -> its builder; exactly config_lib.SFT_EVALS (tests/test_sft.py checks)
EVALUATORS: dict[str, Callable[..., Evaluator]] = {"heldout": _heldout_evaluator}


def build_evaluators(
    config: ml_collections.ConfigDict, model: Model, tokenizer: Tokenizer,
    heldout: list[dict[str, Any]],
) -> dict[str, Evaluator]:
    """One evaluator per name in sft.evals (validation admits only EVALUATORS' names)."""
    return {name: EVALUATORS[name](config, model, tokenizer, heldout)
            for name in config.sft.evals}


def _host_metrics(raw: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(raw).items()}


class SFTTrainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, layout: Layout):
        self.config = config
        self.workdir = atomic.as_path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.tokenizer = load_tokenizer(sources.tokenizer_path(config))
        self.streaming = sources.streams_files(config.data)
        self.splits = (sources.streamed_splits(config.data) if self.streaming
                       else sources.sft_splits(config.data))
        self.model = common.load_model(config, layout)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(
                f"data.tokenizer: {self.tokenizer.vocab_size} tokens do not fit "
                f"model.vocab_size {self.model.config.vocab_size}"
            )
        self.pipeline: SFTPipeline | StreamingSFTPipeline
        if self.streaming:
            self.pipeline = StreamingSFTPipeline(
                sources.file_source(config.data), self.tokenizer, data_config(config),
                num_shards=resolve_num_shards(config.data.shards, jax.process_count()))
            # each process counts its own shards; the run is as long as the shortest stream
            self.total_steps = config.sft.num_steps or (
                min(_gather_json(self.pipeline.num_batches)))
        else:
            self.pipeline = SFTPipeline(self.splits.train, self.tokenizer, data_config(config))
            self.total_steps = config.sft.num_steps or self.pipeline.num_batches
        if not self.total_steps:
            raise ValueError("sft.num_steps: the data gives no batch; lower sft.batch_size")
        opt_config = OptimizerConfig.from_config(config.sft, self.total_steps)
        try:  # before any step: a decay longer than the run the epochs give
            check_run_length(opt_config)
        except OptimizerConfigError as e:
            raise config_lib.ConfigError(f"sft.{e}") from e
        self.tx = make_optimizer(opt_config)
        self.schedule = learning_rate(opt_config)
        self.evaluators = build_evaluators(config, self.model, self.tokenizer, self.splits.heldout)
        step_fn = make_sft_step(
            self.model.module, self.tx, self.schedule,
            normalization=config.sft.loss_normalization, grad_accum=config.sft.grad_accum,
            loss_chunk=config.sft.loss_chunk,
        )
        self.checkpointer, self.index, self.setup, self.writer = common.start_run(
            config, self.workdir, self.model, self.tx, layout, self.pipeline, "pipeline",
            tensorboard=config.sft.tensorboard, prefix="sft/",
        )
        self.step_fn = jit_sft_step(step_fn, self.setup.shardings, layout)
        arch = self.model.config
        self.flops_per_token = training_flops_per_token(
            arch.num_params(), arch.num_layers, arch.hidden_size, config.data.max_length
        )

    # --- the loop -------------------------------------------------------------------------------

    def evaluate(self, state: state_lib.TrainState, step: int) -> dict[str, float]:
        return common.run_evaluators(self.evaluators, state, step, self.writer)

    def data_state(self) -> dict[str, Any]:
        """The data position a checkpoint stores; streamed: every process's shards joined."""
        if self.streaming:
            return merge_states(_gather_json(self.pipeline.get_state()))
        return self.pipeline.get_state()

    def save(self, step: int, state: state_lib.TrainState, evals: dict[str, float]) -> None:
        self.checkpointer.save(step, state, {"pipeline": self.data_state()}, force=True)
        self.index.record(step, saved=True, evaluated_with=sorted(self.evaluators),
                          metrics={k: v for k, v in evals.items() if not k.startswith("time/")})

    def train(self) -> dict[str, Any]:
        config = self.config.sft
        state = self.setup.state
        step = self.setup.start_step
        if step >= self.total_steps:
            log.info("SFT already finished at step %d", step)
            return self._summary(step, {})
        pending: tuple[int, dict[str, Any], Any] | None = None
        window: list[dict[str, float]] = []
        window_start = time.perf_counter()
        last_evals: dict[str, float] = {}
        if step == 0 and self.evaluators:
            last_evals = self.evaluate(state, 0)  # the starting point of the held-out curve
        progress = tqdm.tqdm(total=self.total_steps, initial=step, desc="sft", unit="step",
                             disable=None)
        progress_log = ProgressLog("sft", self.total_steps, step)
        try:
            while step < self.total_steps:
                try:
                    batch = next(self.pipeline)
                except StopIteration:
                    # the last partial batch was dropped: finish (evaluate, save) at this step
                    log.info("data exhausted at step %d of %d", step, self.total_steps)
                    self.total_steps = step
                    if pending is not None:
                        window.append(self._check(*pending))
                        pending = None
                    if window:
                        self.writer.write(step, self._summarise(
                            window, time.perf_counter() - window_start))
                    if step > self.setup.start_step:
                        last_evals = self.evaluate(state, step)
                        self.save(step, state, last_evals)
                    break
                example_ids = batch.get("example_ids")
                placed = shard_batch({k: v for k, v in batch.items() if k in BATCH_FIELDS},
                                     self.layout)
                state, raw = self.step_fn(state, placed)
                step += 1
                if pending is not None:
                    window.append(self._check(*pending))
                pending = (step, raw, example_ids)
                boundary = (step % config.log_every == 0 or step == self.total_steps
                            or _due(step, config.eval_every) or _due(step, config.save_every))
                if boundary:
                    window.append(self._check(*pending))
                    pending = None
                if step % config.log_every == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    summary = self._summarise(window, elapsed)
                    self.writer.write(step, summary)
                    progress.set_postfix(loss=f"{window[-1]['loss']:.4f}")
                    progress_log.log(step, {"loss": summary["loss"],
                                            "tokens/s": summary["tokens_per_s"]})
                    window, window_start = [], time.perf_counter()
                if _due(step, config.eval_every) or step == self.total_steps:
                    last_evals = self.evaluate(state, step)
                if _due(step, config.save_every) or step == self.total_steps:
                    self.save(step, state, last_evals)
                progress.update(1)
        finally:
            progress.close()
            self.checkpointer.wait()
        summary = self._summary(step, last_evals)
        self.writer.close()
        self.checkpointer.close()
        return summary

    def _check(self, step: int, raw: dict[str, Any], example_ids: Any) -> dict[str, float]:
        metrics = _host_metrics(raw)
        metrics["loss"] = metrics["loss_sum"]
        common.check_finite(step, metrics, _ids_for_message(example_ids), self.workdir)
        return metrics

    def _summarise(self, window: list[dict[str, float]], elapsed: float) -> dict[str, float]:
        tokens = sum(m["tokens"] for m in window)
        out = {
            "loss": float(np.mean([m["loss"] for m in window])),
            "nll_per_token": sum(m["nll_sum"] for m in window) / max(tokens, 1.0),
            "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
            "lr": window[-1]["lr"],
            "tokens": tokens,
            "sequences": sum(m["sequences"] for m in window),
        }
        rows = self.config.sft.batch_size * self.config.data.max_length * len(window)
        out["tokens_per_s"] = rows / max(elapsed, 1e-9)  # all positions computed, incl. padding
        out["trained_tokens_per_s"] = tokens / max(elapsed, 1e-9)
        peak = peak_flops_per_device()
        if peak:
            out["mfu"] = out["tokens_per_s"] * self.flops_per_token / (peak * jax.device_count())
        stats = getattr(self.pipeline, "stats", None) or {}
        for key, value in stats.items():
            if isinstance(value, int | float):
                out[f"data/{key}"] = float(value)
        return out

    def _summary(self, step: int, evals: dict[str, float]) -> dict[str, Any]:
        return {
            "stage": "sft",
            "dataset": self.splits.name,
            "final_step": step,
            "total_steps": self.total_steps,
            "checkpoints": self.checkpointer.all_steps(),
            **{k: v for k, v in evals.items() if not k.startswith("time/")},
        }


def _gather_json(obj: Any) -> list[Any]:
    """`obj` (JSON-serialisable) from every process, in process order (a collective: every
    process calls it at the same point)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int64)))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(buf))
    return [json.loads(bytes(row[:int(n)]).decode())
            for row, n in zip(gathered, sizes.reshape(-1), strict=True)]


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _ids_for_message(example_ids: Any) -> list[int]:
    """The batch's record indices (the pipeline pads example_ids with -1)."""
    if example_ids is None:
        return []
    return [i for i in np.asarray(example_ids).reshape(-1).tolist() if i != -1]
