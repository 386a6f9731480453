"""The RL stage: GRPO with verifiable math rewards, from an SFT checkpoint.

Each step: P prompts from the resumable prompt pipeline -> G samples each with the shared-prefix
sampler, run on the *same* params (resharded to the sampling rules, no FSDP gather per decode
step) -> rewards by `sftrl.rewards` (the eval verifier) -> optional overlong shaping, KL-in-reward
and dynamic sampling (groups with all-equal rewards are dropped and refilled from more prompts)
-> group advantages -> the trainer's log-probs of the batch (the PPO "old" policy; its difference
from the sampler's log-probs is the measured train/inference mismatch) -> one or more jitted,
sharded policy updates over mini-batches.

Resume: the checkpoint holds the train state and the prompt pipeline's position, and every
rollout's sampling seed is derived from (config.seed, step), so a killed run re-run with the same
command continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from sftrl import atomic, config_lib, rewards
from sftrl.data import sources
from sftrl.data.prompts import PromptDataConfig, PromptPipeline, format_prompt
from sftrl.data.tokenizer import Tokenizer, load_tokenizer
from sftrl.eval.benchmarks import SamplingSpec
from sftrl.eval.evaluators import Evaluator, PassAtKEvaluator
from sftrl.losses import (
    PolicyLossConfig,
    dynamic_sampling_keep,
    group_advantages,
    kl_estimate,
    overlong_penalty,
)
from sftrl.models.transformer import Model
from sftrl.optim import (
    OptimizerConfig,
    OptimizerConfigError,
    check_run_length,
    learning_rate,
    make_optimizer,
)
from sftrl.sampling import Samples, generate, make_sampler_params
from sftrl.sharding import SAMPLING_RULES, Layout, shard_batch
from sftrl.train import common
from sftrl.train import state as state_lib
from sftrl.train.grpo_step import (
    ROLLOUT_FIELDS,
    jit_logprobs,
    make_grpo_update,
    make_logprob_fn,
    rollout_arrays,
)
from sftrl.train.progress import ProgressLog
from sftrl.train.sft_step import jit_step_for

log = logging.getLogger(__name__)


def _passk_evaluator(config: ml_collections.ConfigDict, model: Model, tokenizer: Tokenizer
                     ) -> Evaluator:
    """pass@k of the policy on the first rl.eval_prompts synthetic test prompts."""
    rl = config.rl
    test = sources.synthetic_test_records(config.data)
    return PassAtKEvaluator(
        model, tokenizer, {"test": test[: rl.eval_prompts]},
        spec=SamplingSpec(num_samples=rl.eval_samples, max_new_tokens=rl.max_new_tokens,
                          temperature=rl.temperature, seed=config.seed),
        format_prompt=lambda record: format_prompt(record["problem"], rl.prompt_template),
    )


# rl.evals name -> its builder; exactly config_lib.RL_EVALS (tests/test_grpo.py checks)
EVALUATORS: dict[str, Callable[..., Evaluator]] = {"passk": _passk_evaluator}


def rollout_seed(seed: int, step: int, round_: int = 0) -> int:
    """A distinct, reproducible sampling seed per (run seed, step, refill round)."""
    return int(np.random.SeedSequence([seed, step, round_]).generate_state(1)[0])


def rl_records(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    if config.rl.prompt_source == "synthetic":
        return sources.synthetic_rl_records(config.data)
    if config.rl.prompt_source == "math_train":
        from sftrl.data.benchmarks import load_benchmark

        return load_benchmark("math_train")
    from sftrl.data.builders import read_rl_file

    records: list[dict[str, Any]] = []
    for path in config.rl.prompt_files:
        records += read_rl_file(path)
    return records


def initial_params_source(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """('workdir', path) | ('hf', path) | ('config', '') for where the policy starts."""
    if config.rl.init_workdir:
        return "workdir", config.rl.init_workdir
    if config.rl.init_hf_path:
        return "hf", config.rl.init_hf_path
    return "config", ""


def load_policy(config: ml_collections.ConfigDict, layout: Layout) -> Model:
    kind, path = initial_params_source(config)
    if kind == "hf":
        return common.load_model(config, layout, hf_path=path)
    if kind == "workdir":
        module = common.training_module(config, layout)
        params, _ = common.restore_params(config, atomic.as_path(path), module, layout,
                                          config.rl.init_step or None)
        return Model(module, params)
    model = common.load_model(config, layout)
    if not config.model.hf_path:
        log.warning("rl: no rl.init_workdir / rl.init_hf_path / model.hf_path; GRPO starts from "
                    "randomly initialised weights")
    return model


class GRPOTrainer:
    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, layout: Layout):
        self.config = config
        self.rl = config.rl
        self.workdir = atomic.as_path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.sampling_layout = Layout(layout.mesh, SAMPLING_RULES)
        self.tokenizer: Tokenizer = load_tokenizer(sources.tokenizer_path(config))
        self.model = load_policy(config, layout)
        # No remat for sampling: nothing is differentiated, and under nn.remat the decode
        # step's static cache metadata (the suffix window) would be traced (it fails to trace).
        self.sampling_module = self.model.module.clone(layout=self.sampling_layout,
                                                       remat="none")
        self._sampler_params = make_sampler_params(self.sampling_module)
        self.stop_ids = tuple(self.tokenizer.stop_ids)
        self.records = rl_records(config)
        if not self.records:
            raise ValueError("rl: the RL prompt set is empty")
        self.prompts = PromptPipeline(
            self.records, self.tokenizer,
            PromptDataConfig(
                batch_size=self.rl.prompts_per_step, template=self.rl.prompt_template,
                seed=config.seed, shard_index=jax.process_index(),
                shard_count=jax.process_count(),
            ),
            source="rl prompts",
        )
        opt = OptimizerConfig.from_config(
            self.rl, self.rl.num_steps * self.rl.updates_per_rollout * self.rl.ppo_epochs
        )
        try:
            check_run_length(opt)
        except OptimizerConfigError as e:
            raise config_lib.ConfigError(f"rl.{e}") from e
        self.tx = make_optimizer(opt)
        self.loss_config = config_lib.policy_loss_config(self.rl, PolicyLossConfig)
        # The reference policy is the starting point, kept whenever a KL estimator is chosen:
        # with kl_coef = 0 the KL is measured and logged but adds nothing to loss or reward.
        self.ref_params = None
        if self.rl.kl_estimator != "none":
            self.ref_params = jax.tree.map(jnp.copy, self.model.params)
        self.checkpointer, self.index, self.setup, self.writer = common.start_run(
            config, self.workdir, self.model, self.tx, layout, self.prompts, "prompts",
            tensorboard=self.rl.tensorboard, prefix="rl/",
        )
        update = make_grpo_update(
            self.model.module, self.tx, learning_rate(opt), self.loss_config,
            temperature=self.rl.temperature, grad_accum=self.rl.grad_accum,
            logprob_chunk=self.rl.logprob_chunk,
        )
        self._update_cache: dict[tuple, Any] = {}
        self._sampler: Model | None = None
        self._update = update
        self._logprob_fn = make_logprob_fn(self.model.module, self.rl.temperature,
                                           self.rl.logprob_chunk, self.rl.logprob_rows)
        self._logprob_jits: dict[tuple[int, ...], Any] = {}
        # one evaluator per name in rl.evals (validation admits only EVALUATORS' names)
        self.evaluators = {name: EVALUATORS[name](config, self.model, self.tokenizer)
                           for name in self.rl.evals}

    # --- one rollout ----------------------------------------------------------------------------

    def _sample(self, state: state_lib.TrainState, prompt_ids: list[list[int]], seed: int
                ) -> Samples:
        # One Model object for the whole run, its params swapped each step: the sampler's
        # compiled steps are cached per Model, so a new one would recompile every rollout.
        params = self._sampler_params(state.params)
        if self._sampler is None:
            self._sampler = Model(self.sampling_module, params)
        self._sampler.params = params
        return generate(
            self._sampler, prompt_ids, num_samples=self.rl.group_size,
            max_new_tokens=self.rl.max_new_tokens, temperature=self.rl.temperature,
            top_p=self.rl.top_p, top_k=self.rl.top_k, stop_ids=self.stop_ids, seed=seed,
            pad_id=self.tokenizer.pad_id, max_kv_tokens=self.rl.max_kv_tokens or None,
            share_prefix=self.rl.share_prefix, progress=False,
        )

    def _score(self, samples: Samples, answers: list[str]) -> tuple[np.ndarray, np.ndarray]:
        p, g, _ = samples.tokens.shape
        texts = []
        for i in range(p):
            for j in range(g):
                ids = [t for t in samples.sequence(i, j) if t not in self.stop_ids]
                texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        pairs = [(text, answers[i // g]) for i, text in enumerate(texts)]
        verdicts = rewards.verify_batch(pairs)  # once: the rewards derive from the verdicts
        scores = rewards.rewards_from_verdicts(texts, verdicts,
                                               format_bonus=self.rl.format_bonus)
        return (np.asarray(scores, np.float32).reshape(p, g),
                np.asarray(verdicts, bool).reshape(p, g))

    def rollout(self, state: state_lib.TrainState, step: int) -> dict[str, Any]:
        """Samples, rewards and kept groups for one step (refilling when groups are dropped)."""
        want = self.rl.prompts_per_step
        rounds: list[dict[str, Any]] = []  # per round: prompt ids and per-group arrays
        kept: list[tuple[int, int]] = []  # (round, group) of the learnable groups
        dropped = total_groups = 0
        gen_s = reward_s = 0.0
        for round_ in range(1 + (self.rl.max_refill_rounds if self.rl.dynamic_sampling else 0)):
            batch = next(self.prompts)
            start = time.perf_counter()
            samples = self._sample(state, batch["ids"], rollout_seed(self.config.seed, step,
                                                                      round_))
            gen_s += time.perf_counter() - start
            start = time.perf_counter()
            scores, correct = self._score(samples, batch["answers"])
            reward_s += time.perf_counter() - start
            # With overlong filtering a truncated sample is not part of its group: a group whose
            # finished samples all agree teaches nothing, whatever its truncated ones scored.
            valid = jnp.asarray(samples.finished) if self.rl.filter_truncated else None
            keep = (np.asarray(dynamic_sampling_keep(jnp.asarray(scores), valid))
                    if self.rl.dynamic_sampling else np.ones(len(scores), bool))
            rounds.append(dict(ids=batch["ids"], scores=scores, correct=correct,
                               **{f.name: getattr(samples, f.name)
                                  for f in dataclasses.fields(Samples)}))
            total_groups += len(scores)
            dropped += int((~keep).sum())
            kept += [(round_, i) for i in np.flatnonzero(keep)]
            if len(kept) >= want:
                break
        # Too few learnable groups even after refills: pad with the last round's groups, their
        # loss masked out (fixed shapes: no recompilation), so the step still runs.
        used = kept[:want]
        masked = [False] * len(used)
        last = len(rounds) - 1
        while len(used) < want:
            used.append((last, (len(used) - len(kept)) % len(rounds[last]["scores"])))
            masked.append(True)

        def stack(field: str) -> np.ndarray:
            return np.stack([rounds[r][field][i] for r, i in used])

        return dict(
            prompt_ids=[rounds[r]["ids"][i] for r, i in used],
            samples=Samples(**{f.name: stack(f.name) for f in dataclasses.fields(Samples)}),
            scores=stack("scores"),
            correct=stack("correct"),
            group_masked=np.asarray(masked),
            dropped=dropped, total_groups=total_groups, generation_s=gen_s, reward_s=reward_s,
        )

    # --- one step -------------------------------------------------------------------------------

    def _logprobs(self, params: Any, tokens: jax.Array, attention_mask: jax.Array):
        shape = tuple(tokens.shape)
        if shape not in self._logprob_jits:
            self._logprob_jits[shape] = jit_logprobs(self._logprob_fn, self.setup.shardings.params,
                                                     self.layout, shape)
        return self._logprob_jits[shape](params, tokens, attention_mask)

    def _jit_update(self, batch: dict[str, np.ndarray]):
        key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if key not in self._update_cache:
            self._update_cache[key] = jit_step_for(self._update, self.setup.shardings,
                                                   self.layout, batch)
        return self._update_cache[key]

    def step(self, state: state_lib.TrainState, step: int):
        rl = self.rl
        ro = self.rollout(state, step)
        samples: Samples = ro["samples"]
        p, g, _ = samples.tokens.shape
        arrays = rollout_arrays(ro["prompt_ids"], samples, self.tokenizer.pad_id)
        rewards_pg = ro["scores"].astype(np.float32)
        if rl.overlong_buffer > 0:
            rewards_pg = rewards_pg + np.asarray(overlong_penalty(
                jnp.asarray(samples.lengths), max_length=rl.max_new_tokens,
                buffer=rl.overlong_buffer, penalty=rl.overlong_penalty))
        start = time.perf_counter()
        placed = shard_batch({k: arrays[k] for k in ("tokens", "attention_mask")}, self.layout)
        old_logp, _ = self._logprobs(state.params, placed["tokens"], placed["attention_mask"])
        arrays["old_logp"] = np.asarray(jax.device_get(old_logp), np.float32)
        kl_seq = np.zeros((p * g,), np.float32)
        if self.ref_params is not None:
            ref_logp, _ = self._logprobs(self.ref_params, placed["tokens"],
                                         placed["attention_mask"])
            arrays["ref_logp"] = np.asarray(jax.device_get(ref_logp), np.float32)
            kl_tok = np.asarray(kl_estimate(jnp.asarray(arrays["old_logp"]),
                                            jnp.asarray(arrays["ref_logp"]), rl.kl_estimator))
            kl_seq = (kl_tok * arrays["loss_mask"]).sum(axis=1)
            if rl.kl_mode == "reward" and rl.kl_coef > 0:
                rewards_pg = rewards_pg - rl.kl_coef * kl_seq.reshape(p, g)
        # Overlong filtering (DAPO): truncated samples leave the group statistics too, else a
        # group of finished-correct and truncated-wrong samples would reward finishing itself.
        valid = jnp.asarray(samples.finished) if rl.filter_truncated else None
        advantages = np.asarray(group_advantages(jnp.asarray(rewards_pg),
                                                 normalize_std=rl.normalize_std,
                                                 valid_PxG=valid, ddof=rl.std_ddof))
        arrays["advantages"] = advantages.reshape(p * g).astype(np.float32)
        loss_mask = arrays["loss_mask"]
        row_keep = np.repeat(~ro["group_masked"], g)
        if rl.filter_truncated:
            row_keep &= samples.finished.reshape(p * g)
        arrays["loss_mask"] = loss_mask * row_keep[:, None].astype(np.int32)

        sums: dict[str, float] = {}
        n_updates = 0
        order = np.arange(p * g)
        minis = np.array_split(order, rl.updates_per_rollout)
        for _ in range(rl.ppo_epochs):
            for rows in minis:
                mb = {k: arrays[k][rows] for k in ROLLOUT_FIELDS if k in arrays}
                fn = self._jit_update(mb)
                state, metrics = fn(state, shard_batch(mb, self.layout))
                host = {k: float(v) for k, v in jax.device_get(metrics).items()}
                common.check_finite(step, host, [f"prompt rows {rows[:4].tolist()}..."],
                                    self.workdir)
                n_updates += 1
                for k, v in host.items():
                    sums[k] = sums.get(k, 0.0) + v
        update_s = time.perf_counter() - start

        resp_tokens = float(loss_mask.sum())
        metrics = {
            "reward_mean": float(ro["scores"].mean()),
            "reward_std": float(ro["scores"].std()),
            "accuracy": float(ro["correct"].mean()),
            "response_length": float(samples.lengths.mean()),
            "truncation_rate": float((~samples.finished).mean()),
            "groups_dropped_share": ro["dropped"] / max(ro["total_groups"], 1),
            "groups_masked": float(ro["group_masked"].sum()),
            "learnable_groups_share": float(np.mean(
                [0 < c.sum() < len(c) for c in ro["correct"]])),
            "loss": sums["loss"] / n_updates,
            "grad_norm": sums["grad_norm"] / n_updates,
            "lr": sums["lr"] / n_updates,
            "entropy": sums["entropy_sum"] / max(sums.get("token_count", 0.0), 1.0),
            "kl": float(kl_seq.sum()) / max(resp_tokens, 1.0),
            "mismatch_trainer_sampler": float(
                np.abs(arrays["old_logp"] - arrays["sampler_logp"])[loss_mask > 0].mean()
            ) if resp_tokens else 0.0,
            "time/generation_s": ro["generation_s"],
            "time/reward_s": ro["reward_s"],
            "time/update_s": update_s,
            "generation_tokens_per_s": float(samples.lengths.sum()) / max(ro["generation_s"],
                                                                        1e-9),
            "update_tokens_per_s": n_updates * p * g * arrays["tokens"].shape[1]
            / rl.updates_per_rollout / max(update_s, 1e-9),
        }
        tokens = max(sums.get("token_count", 0.0), 1.0)
        for key, name in (("clip_count", "clip_fraction"), ("clip_low_count", "clip_low_fraction"),
                          ("clip_high_count", "clip_high_fraction"), ("ratio_sum", "ratio_mean"),
                          ("kl_sum", "kl_loss_term_mean"), ("mismatch_sum", "mismatch_mean"),
                          ("mismatch_k3_sum", "mismatch_k3_mean"),
                          ("tis_weight_sum", "tis_weight_mean"),
                          ("tis_clip_count", "tis_clip_fraction")):
            if key in sums:
                metrics[name] = sums[key] / tokens
        return state, metrics

    # --- the loop -------------------------------------------------------------------------------

    def evaluate(self, state: state_lib.TrainState, step: int) -> dict[str, float]:
        return common.run_evaluators(self.evaluators, state, step, self.writer)

    def train(self) -> dict[str, Any]:
        rl = self.rl
        state, step = self.setup.state, self.setup.start_step
        last_evals: dict[str, float] = {}
        if step == 0 and self.evaluators:
            last_evals = self.evaluate(state, 0)
        progress = tqdm.tqdm(total=rl.num_steps, initial=step, desc="grpo", unit="step",
                             disable=None)
        progress_log = ProgressLog("grpo", rl.num_steps, step)
        try:
            while step < rl.num_steps:
                state, metrics = self.step(state, step)
                step += 1
                if step % rl.log_every == 0 or step == rl.num_steps:
                    self.writer.write(step, metrics)
                    progress_log.log(step, {
                        "loss": metrics["loss"], "reward": metrics["reward_mean"],
                        "accuracy": metrics["accuracy"],
                        "tokens/s": metrics["generation_tokens_per_s"]})
                progress.set_postfix(acc=f"{metrics['accuracy']:.3f}",
                                     reward=f"{metrics['reward_mean']:.3f}")
                progress.update(1)
                if (rl.eval_every and step % rl.eval_every == 0) or step == rl.num_steps:
                    last_evals = self.evaluate(state, step)
                if (rl.save_every and step % rl.save_every == 0) or step == rl.num_steps:
                    self.checkpointer.save(step, state, {"prompts": self.prompts.get_state()},
                                           force=True)
                    self.index.record(step, saved=True, evaluated_with=sorted(self.evaluators),
                                      metrics={k: v for k, v in last_evals.items()
                                               if not k.startswith("time/")})
        finally:
            progress.close()
            self.checkpointer.wait()
        summary = {
            "stage": "rl", "final_step": step, "checkpoints": self.checkpointer.all_steps(),
            **{k: v for k, v in last_evals.items() if not k.startswith("time/")},
        }
        self.writer.close()
        self.checkpointer.close()
        return summary
