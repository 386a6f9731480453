"""The GRPO stage: on-policy first update, sharded == unsharded updates, resume == uninterrupted,
dynamic sampling refill, the rollout arrays' alignment, and (issue 23) the trainer against numpy
references of the published formulas: Dr. GRPO's constant normaliser, grad_accum, overlong
filtering, KL modes, TIS, temperature != 1."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sftrl import config_lib
from sftrl.losses import PolicyLossConfig
from sftrl.sampling import Samples
from sftrl.sharding import Layout, make_mesh, shard_batch, single_device_layout
from sftrl.train import grpo as grpo_lib
from sftrl.train.grpo import GRPOTrainer
from sftrl.train.grpo_step import make_grpo_update, rollout_arrays

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMALL = [
    "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
    "model.head_dim=16", "rl.num_steps=4", "rl.prompts_per_step=4", "rl.group_size=4",
    "rl.max_new_tokens=12", "rl.evals=()", "rl.save_every=2", "rl.lr=1e-3",
    "rl.tensorboard=False", "checkpoint.async_save=False", "rl.updates_per_rollout=2",
]


def _config(*extra: str):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_lib.apply_overrides(module.get_config(), [*SMALL, *extra])
    config.stage = "rl"
    config_lib.validate(config, num_devices=8)
    return config


def _token_reward(self, samples: Samples, answers):
    """A reward that depends on what was sampled (so the rollout RNG matters): the share of
    response tokens with an even id."""
    t = samples.tokens.shape[-1]
    valid = np.arange(t)[None, None, :] < samples.lengths[..., None]
    even = ((samples.tokens % 2 == 0) & valid).sum(-1) / np.maximum(samples.lengths, 1)
    return even.astype(np.float32), even > 0.5


@pytest.fixture
def token_reward(monkeypatch):
    monkeypatch.setattr(GRPOTrainer, "_score", _token_reward)


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_first_update_is_on_policy_and_logs_everything(tmp_path, token_reward):
    trainer = GRPOTrainer(_config("rl.num_steps=1", "rl.updates_per_rollout=1"), tmp_path,
                          single_device_layout())
    summary = trainer.train()
    (row,) = _rows(tmp_path)
    assert row["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert row["clip_fraction"] == 0.0
    assert row["mismatch_trainer_sampler"] < 1e-4  # sampler and trainer agree
    assert row["grad_norm"] > 0 and np.isfinite(row["loss"])
    for key in ("reward_mean", "reward_std", "accuracy", "response_length", "truncation_rate",
                "entropy", "kl", "groups_dropped_share", "time/generation_s", "time/reward_s",
                "time/update_s", "generation_tokens_per_s", "update_tokens_per_s"):
        assert key in row, key
    assert summary["checkpoints"] == [1]


def test_every_rl_evaluator_the_config_admits_is_built():
    """rl.evals names exactly what the trainer builds: nothing validates and then does nothing."""
    assert set(grpo_lib.EVALUATORS) == set(config_lib.RL_EVALS)


def test_passk_runs_through_the_evaluator_runner_and_is_logged(tmp_path):
    config = _config("rl.num_steps=1", "rl.updates_per_rollout=1", "rl.evals=('passk',)",
                     "rl.eval_prompts=2", "rl.eval_samples=2", "rl.max_new_tokens=4")
    summary = GRPOTrainer(config, tmp_path, single_device_layout()).train()
    evals = [r for r in _rows(tmp_path) if "passk/test/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 1]  # the starting point, then the last step
    for row in evals:
        assert {"passk/test/pass@2", "time/eval_passk_s"} <= set(row)
        assert row["passk/mean/pass@1"] == row["passk/test/pass@1"]  # one benchmark
        assert 0.0 <= row["passk/test/pass@1"] <= row["passk/test/pass@2"] <= 1.0
    assert summary["passk/test/pass@1"] == evals[-1]["passk/test/pass@1"]
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert index["1"]["evaluated_with"] == ["passk"]


def test_resume_equals_uninterrupted(tmp_path, token_reward, monkeypatch):
    GRPOTrainer(_config(), tmp_path / "full", single_device_layout()).train()

    original = GRPOTrainer.step

    def dying(self, state, step):
        if step == 3:
            raise KeyboardInterrupt("killed")
        return original(self, state, step)

    monkeypatch.setattr(GRPOTrainer, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        GRPOTrainer(_config(), tmp_path / "killed", single_device_layout()).train()
    monkeypatch.setattr(GRPOTrainer, "step", original)
    resumed = GRPOTrainer(_config(), tmp_path / "killed", single_device_layout())
    assert resumed.setup.start_step == 2
    resumed.train()

    a = GRPOTrainer(_config(), tmp_path / "full", single_device_layout()).setup
    b = GRPOTrainer(_config(), tmp_path / "killed", single_device_layout()).setup
    assert a.start_step == b.start_step == 4
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for ra, rb in zip(_rows(tmp_path / "full"), _rows(tmp_path / "killed"), strict=True):
        for key in ("reward_mean", "loss", "grad_norm", "response_length"):
            assert ra[key] == rb[key], key


def test_dynamic_sampling_drops_all_equal_groups_and_refills(tmp_path, monkeypatch):
    calls = []

    def score(self, samples, answers):
        calls.append(len(answers))
        p, g, _ = samples.tokens.shape
        rewards = np.zeros((p, g), np.float32)
        if len(calls) > 1:  # the first round is all-equal: every group is dropped
            rewards[:, 0] = 1.0
        return rewards, rewards > 0

    monkeypatch.setattr(GRPOTrainer, "_score", score)
    trainer = GRPOTrainer(_config("rl.num_steps=1", "rl.dynamic_sampling=True"), tmp_path,
                          single_device_layout())
    trainer.train()
    (row,) = _rows(tmp_path)
    assert len(calls) == 2
    assert row["groups_dropped_share"] == 0.5
    assert row["groups_masked"] == 0.0


def test_rollout_arrays_alignment():
    prompts = [[5, 6, 7], [8]]
    tokens = np.array([[[1, 2, 9], [3, 9, 0]], [[4, 4, 4], [9, 0, 0]]], np.int32)
    logprobs = -np.arange(12, dtype=np.float32).reshape(2, 2, 3) / 10
    # the trainer's sampler log-probs are those of the untruncated policy at T, not `logprobs`
    samples = Samples(tokens=tokens, logprobs=logprobs - 5.0, model_logprobs=logprobs - 9.0,
                      policy_logprobs=logprobs,
                      lengths=np.array([[3, 2], [3, 1]]), finished=np.array([[1, 1], [0, 1]],
                                                                              bool))
    arrays = rollout_arrays(prompts, samples, pad_id=0)
    lp = 32  # the prompt part is padded to a multiple of 32 (one compiled update)
    assert arrays["tokens"].shape == (4, lp + 3)
    assert arrays["tokens"].tolist()[1][lp - 3:] == [5, 6, 7, 3, 9, 0]
    assert arrays["tokens"].tolist()[2][lp - 3:] == [0, 0, 8, 4, 4, 4]
    assert arrays["attention_mask"].tolist()[3][lp - 3:] == [0, 0, 1, 1, 0, 0]
    assert arrays["attention_mask"][:, : lp - 3].sum() == 0
    assert arrays["loss_mask"].tolist()[3][lp - 3:] == [0, 0, 0, 1, 0, 0]
    np.testing.assert_allclose(arrays["sampler_logp"][1, lp:], [-0.3, -0.4, 0.0])


def test_sharded_update_equals_unsharded():
    """Compared through SGD with lr=1, so the parameter change is the gradient: Adam's first
    step is lr * sign(g), which turns a rounding difference in a near-zero gradient into a
    full-size difference (the ill-conditioning that made test_sft_step fail by machine)."""
    import optax

    config = _config()
    from sftrl.models.transformer import build_model, param_shardings
    from sftrl.train import state as state_lib

    rng = np.random.default_rng(0)
    b, length = 16, 24
    batch = dict(
        tokens=rng.integers(5, 500, (b, length)).astype(np.int32),
        attention_mask=np.ones((b, length), np.int32),
        loss_mask=(np.arange(length)[None] >= 10).repeat(b, 0).astype(np.int32),
        advantages=rng.normal(size=b).astype(np.float32),
        old_logp=np.zeros((b, length), np.float32),
        sampler_logp=np.zeros((b, length), np.float32),
    )
    results = []
    for layout in (single_device_layout(), Layout(make_mesh(data=2, fsdp=2, tensor=2))):
        model = build_model(config_lib.model_config(config), layout, seed=0)
        tx = optax.sgd(1.0)
        loss_config = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
        update = make_grpo_update(model.module, tx, optax.constant_schedule(1.0), loss_config,
                                  temperature=1.0, grad_accum=2)

        def create(p, tx=tx):
            return state_lib.create_train_state(p, tx, 0)

        shape = jax.eval_shape(create, model.params)
        shardings = state_lib.state_shardings(shape, param_shardings(model.module, layout),
                                              layout.sharding(()))
        state = jax.jit(create, out_shardings=shardings)(model.params)
        # old_logp: the current policy's, so the first update is on-policy
        from sftrl.train.grpo_step import make_logprob_fn

        logp, _ = jax.jit(make_logprob_fn(model.module, 1.0))(
            state.params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["attention_mask"]))
        batch["old_logp"] = np.asarray(logp)
        before = np.asarray(state.params["lm_head"], np.float64)
        state, metrics = jax.jit(update)(state, shard_batch(batch, layout))
        results.append(({k: float(v) for k, v in metrics.items()},
                        before - np.asarray(state.params["lm_head"])))
    (m1, g1), (m8, g8) = results
    for key in ("loss", "grad_norm", "clip_count", "token_count"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-6)
    # float32 sums over the same tokens in another order: a few hundred ulps of the largest term
    assert np.max(np.abs(g1)) > 0
    np.testing.assert_allclose(g1, g8, rtol=0, atol=1e-4 * np.max(np.abs(g1)))
    assert m1["ratio_sum"] == pytest.approx(m1["token_count"], rel=1e-5)


def test_rollout_seed_is_distinct_and_stable():
    seeds = {grpo_lib.rollout_seed(0, s, r) for s in range(50) for r in range(3)}
    assert len(seeds) == 150
    assert grpo_lib.rollout_seed(0, 7, 1) == grpo_lib.rollout_seed(0, 7, 1)


def test_grpo_learns_a_simple_reward(tmp_path, token_reward):
    """The whole loop improves what it is rewarded for (here: even token ids)."""
    trainer = GRPOTrainer(
        _config("rl.num_steps=10", "rl.prompts_per_step=8", "rl.group_size=8",
                "rl.max_new_tokens=16", "rl.updates_per_rollout=1", "rl.save_every=100",
                "rl.lr=3e-3"),
        tmp_path, single_device_layout())
    trainer.train()
    rewards = [r["reward_mean"] for r in _rows(tmp_path)]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.05, rewards


# ---------------------------------------------------------------------------------- issue 23


def _np_group_advantages(rewards_PxG, valid_PxG, normalize_std, eps=1e-6):
    """DeepSeekMath eq. 3 / Dr. GRPO over the valid samples of each group, written per group."""
    out = np.zeros(rewards_PxG.shape, np.float64)
    for p in range(rewards_PxG.shape[0]):
        vals = rewards_PxG[p][valid_PxG[p]].astype(np.float64)
        if len(vals) < 2 or vals.max() == vals.min():
            continue
        centered = rewards_PxG[p].astype(np.float64) - vals.mean()
        out[p] = np.where(valid_PxG[p], centered / (vals.std() + eps) if normalize_std
                          else centered, 0.0)
    return out


def _np_k3(logp, ref):
    log_r = ref.astype(np.float64) - logp
    return np.exp(log_r) - log_r - 1.0


def _record(trainer):
    """Wraps the trainer's rollouts and jitted updates: [(rollout)], [(host batch, metrics)]."""
    rollouts, updates = [], []
    rollout, jit_update = trainer.rollout, trainer._jit_update

    def recording_rollout(state, step):
        rollouts.append(rollout(state, step))
        return rollouts[-1]

    def recording_jit_update(batch):
        fn = jit_update(batch)

        def run(state, placed):
            state, metrics = fn(state, placed)
            updates.append(({k: np.asarray(v) for k, v in batch.items()},
                            {k: float(v) for k, v in jax.device_get(metrics).items()}))
            return state, metrics

        return run

    trainer.rollout, trainer._jit_update = recording_rollout, recording_jit_update
    return rollouts, updates


def test_config_issue_23_values():
    with pytest.raises(config_lib.ConfigError, match=r"^rl\.temperature: must be > 0"):
        _config("rl.temperature=0.0")
    with pytest.raises(config_lib.ConfigError, match=r"^rl\.std_ddof"):
        _config("rl.std_ddof=2")
    with pytest.raises(config_lib.ConfigError, match=r"^rl\.max_tokens_for_norm"):
        _config("rl.max_tokens_for_norm=64")  # token-mean has no budget
    # a KL estimator with coefficient 0 is a measurement, not an error (see the trainer test)
    _config("rl.kl_estimator=k3", "rl.kl_coef=0.0")
    drgrpo = _config("rl.aggregation=seq-mean-token-sum")
    assert config_lib.policy_loss_config(drgrpo.rl, PolicyLossConfig).max_tokens_for_norm == 12
    custom = _config("rl.aggregation=seq-mean-token-sum", "rl.max_tokens_for_norm=40")
    assert config_lib.policy_loss_config(custom.rl, PolicyLossConfig).max_tokens_for_norm == 40


def _tiny_state(config, tx):
    from sftrl.models.transformer import build_model
    from sftrl.train import state as state_lib

    model = build_model(config_lib.model_config(config), single_device_layout(), seed=0)
    return model, state_lib.create_train_state(model.params, tx, 0)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-sum"])
def test_grad_accum_1_and_4_give_the_same_gradient(aggregation):
    """DAPO's token mean (and Dr. GRPO's rows x budget) over the whole mini-batch, whatever the
    micro-batching. SGD with lr 1, so the parameter change is minus the gradient."""
    from sftrl.train.grpo_step import make_logprob_fn

    config = _config("model.num_layers=1", f"rl.aggregation={aggregation}")
    loss_config = config_lib.policy_loss_config(config.rl, PolicyLossConfig)
    tx = optax.sgd(1.0)
    model, state = _tiny_state(config, tx)
    rng = np.random.default_rng(0)
    b, length, start = 8, 20, 8
    # very different reply lengths (one empty), so per-micro-batch normalising would differ
    lengths = np.array([12, 1, 3, 0, 12, 2, 7, 1])
    cols = np.arange(length)[None] - start
    loss_mask = ((cols >= 0) & (cols < lengths[:, None])).astype(np.int32)
    batch = dict(tokens=rng.integers(5, 500, (b, length)).astype(np.int32),
                 attention_mask=np.ones((b, length), np.int32), loss_mask=loss_mask,
                 advantages=rng.normal(size=b).astype(np.float32))
    logp, _ = jax.jit(make_logprob_fn(model.module, 1.0))(
        state.params, jnp.asarray(batch["tokens"]), jnp.asarray(batch["attention_mask"]))
    batch["old_logp"] = np.asarray(logp)  # on-policy: ratio 1, the loss is -A aggregated
    deltas, losses = [], []
    for grad_accum in (1, 4):
        update = make_grpo_update(model.module, tx, lambda step: 1.0, loss_config,
                                  temperature=1.0, grad_accum=grad_accum)
        new, metrics = jax.jit(update)(state, batch)
        losses.append(float(metrics["loss"]))
        deltas.append(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b),
                                   new.params, state.params))
    adv_tokens = float((batch["advantages"] * lengths).sum())
    norm = lengths.sum() if aggregation == "token-mean" else b * config.rl.max_new_tokens
    for loss in losses:
        assert loss == pytest.approx(-adv_tokens / norm, rel=1e-5, abs=1e-7)
    for one, four in zip(jax.tree.leaves(deltas[0]), jax.tree.leaves(deltas[1]), strict=True):
        scale = max(float(np.abs(one).max()), 1e-12)
        np.testing.assert_allclose(four, one, atol=1e-4 * scale, rtol=0)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(deltas[0])) > 0


def test_sampler_and_trainer_log_probs_agree_at_temperature_0_7_with_top_p():
    """The ratio / TIS compare like with like: the sampler's log-probs of the untruncated policy
    at T equal the trainer's on the same tokens, also when top-p cut what was sampled from."""
    from sftrl.models.transformer import build_model
    from sftrl.sampling import generate
    from sftrl.train.grpo_step import make_logprob_fn

    config = _config("model.num_layers=1")
    model = build_model(config_lib.model_config(config), single_device_layout(), seed=0)
    prompts = [[5, 6, 7, 8], [9, 10]]
    samples = generate(model, prompts, num_samples=2, max_new_tokens=6, temperature=0.7,
                       top_p=0.8, seed=3, progress=False)
    arrays = rollout_arrays(prompts, samples, pad_id=0)
    logp, _ = jax.jit(make_logprob_fn(model.module, 0.7))(
        model.params, jnp.asarray(arrays["tokens"]), jnp.asarray(arrays["attention_mask"]))
    mask = arrays["loss_mask"] > 0
    np.testing.assert_allclose(np.asarray(logp)[mask], arrays["sampler_logp"][mask], atol=1e-4)
    # ... and numpy's log_softmax(logits / 0.7) of the first drawn token
    logits = np.asarray(model(np.asarray([prompts[0]], np.int32)), np.float64)[0, -1] / 0.7
    want = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    np.testing.assert_allclose(samples.policy_logprobs[0, :, 0],
                               want[samples.tokens[0, :, 0]], atol=1e-4)
    # the renormalised top-p log-probs are another distribution (what the fix stopped using)
    assert np.all(samples.logprobs[0, :, 0] > samples.policy_logprobs[0, :, 0] + 1e-3)


def test_overlong_filtering_leaves_truncated_samples_out_of_group_stats_and_keep(
        tmp_path, monkeypatch):
    """3 finished correct + 1 truncated wrong: with filtering the group has nothing to learn
    (dropped); a group's truncated sample changes neither its mean nor its std."""
    def score(self, samples, answers):
        p = samples.tokens.shape[0]
        rewards = np.tile(np.array([1.0, 0.0, 0.0, 1.0], np.float32), (p, 1))
        rewards[0] = [1.0, 1.0, 1.0, 0.0]
        return rewards, rewards > 0

    original = GRPOTrainer._sample

    def sample(self, state, prompt_ids, seed):  # the last sample of every group is truncated
        s = original(self, state, prompt_ids, seed)
        finished = np.ones_like(s.finished)
        finished[:, -1] = False
        lengths = np.where(finished, np.minimum(s.lengths, 5), s.tokens.shape[-1])
        return Samples(s.tokens, s.logprobs, s.model_logprobs, s.policy_logprobs,
                       lengths.astype(np.int32), finished)

    monkeypatch.setattr(GRPOTrainer, "_score", score)
    monkeypatch.setattr(GRPOTrainer, "_sample", sample)
    trainer = GRPOTrainer(_config("rl.num_steps=1", "rl.updates_per_rollout=1",
                                  "rl.dynamic_sampling=True", "rl.filter_truncated=True"),
                          tmp_path, single_device_layout())
    rollouts, updates = _record(trainer)
    trainer.train()
    (row,) = _rows(tmp_path)
    assert row["groups_dropped_share"] == 2 / 8  # group 0 of both rounds
    (ro,) = rollouts
    (batch, _), = updates
    want = _np_group_advantages(ro["scores"], ro["samples"].finished, normalize_std=True)
    np.testing.assert_allclose(batch["advantages"].reshape(4, 4), want, atol=1e-5)
    # [1, 0, 0 | truncated 1]: mean 1/3 and std sqrt(2)/3 over the finished three only
    np.testing.assert_allclose(want[0], [2 ** 0.5, -(0.5 ** 0.5), -(0.5 ** 0.5), 0.0], atol=1e-5)
    assert batch["loss_mask"].reshape(4, 4, -1)[:, -1].sum() == 0


def test_trainer_kl_in_reward_without_std_and_tis_match_numpy(tmp_path, token_reward):
    trainer = GRPOTrainer(
        _config("rl.num_steps=2", "rl.normalize_std=False", "rl.kl_estimator=k3",
                "rl.kl_coef=10.0", "rl.kl_mode=reward", "rl.tis_cap=0.9", "rl.lr=1e-2"),
        tmp_path, single_device_layout())
    rollouts, updates = _record(trainer)
    trainer.train()
    # step 2 (the reference is the start, so step 1's KL is 0): two mini-batches of 8 rows
    ro = rollouts[1]
    batch = {k: np.concatenate([updates[2][0][k], updates[3][0][k]]) for k in updates[2][0]}
    mask = batch["loss_mask"] > 0
    kl_seq = (_np_k3(batch["old_logp"], batch["ref_logp"]) * mask).sum(1).reshape(4, 4)
    assert kl_seq.max() > 1e-4
    valid = np.ones((4, 4), bool)
    want = _np_group_advantages(ro["scores"] - 10.0 * kl_seq, valid, normalize_std=False)
    np.testing.assert_allclose(batch["advantages"].reshape(4, 4), want, atol=2e-5)
    without_kl = _np_group_advantages(ro["scores"], valid, normalize_std=False)
    assert np.abs(want - without_kl).max() > 1e-3
    for mb, metrics in updates:
        on = mb["loss_mask"] > 0
        weights = np.minimum(np.exp(mb["old_logp"][on] - mb["sampler_logp"][on]), 0.9)
        assert metrics["tis_weight_sum"] == pytest.approx(weights.sum(), rel=1e-5)
        assert metrics["tis_clip_count"] == on.sum()  # sampler == trainer: every weight capped
        assert "kl_sum" in metrics  # measured, but not in the loss
        assert metrics["loss"] == pytest.approx(metrics["pg_loss_sum"] / on.sum(), rel=1e-5)
    for mb, metrics in (updates[0], updates[2]):  # on-policy: pg = -0.9 A per token
        on_policy = -0.9 * (mb["advantages"] * (mb["loss_mask"] > 0).sum(1)).sum()
        assert metrics["pg_loss_sum"] == pytest.approx(on_policy, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kl_coef", [0.1, 0.0])
def test_trainer_kl_in_loss_and_a_ratio_off_1_after_the_first_mini_batch(tmp_path, token_reward,
                                                                         kl_coef):
    """updates_per_rollout = 2: the second mini-batch is off-policy (ratio != 1, KL to the start
    > 0). kl_coef = 0 with k3 used to crash at the first update; now it measures only."""
    trainer = GRPOTrainer(
        _config("rl.num_steps=1", "rl.kl_estimator=k3", f"rl.kl_coef={kl_coef}",
                "rl.kl_mode=loss", "rl.lr=1e-2"),
        tmp_path, single_device_layout())
    _, updates = _record(trainer)
    trainer.train()
    (_, first), (_, second) = updates
    assert first["ratio_sum"] / first["token_count"] == pytest.approx(1.0, abs=1e-5)
    assert first["kl_sum"] < 1e-6
    assert abs(second["ratio_sum"] / second["token_count"] - 1.0) > 1e-4
    assert second["kl_sum"] > 1e-6
    for metrics in (first, second):  # token-mean of the clipped surrogate plus kl_coef * k3
        assert metrics["loss"] == pytest.approx(
            (metrics["pg_loss_sum"] + kl_coef * metrics["kl_sum"]) / metrics["token_count"],
            rel=1e-4, abs=1e-7)
    (row,) = _rows(tmp_path)
    assert np.isfinite(row["kl_loss_term_mean"]) and row["kl_loss_term_mean"] > 0
