"""The GRPO stage: on-policy first update, sharded == unsharded updates, resume == uninterrupted,
dynamic sampling refill, and the rollout arrays' alignment."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sftrl import config_lib
from sftrl.losses import PolicyLossConfig
from sftrl.sampling import Samples
from sftrl.sharding import Layout, make_mesh, shard_batch, single_device_layout
from sftrl.train import grpo as grpo_lib
from sftrl.train.grpo import GRPOTrainer
from sftrl.train.grpo_step import make_grpo_update, rollout_arrays
from sftrl.train.optim import OptimizerConfig, learning_rate, make_optimizer

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
    samples = Samples(tokens=tokens, logprobs=logprobs, model_logprobs=logprobs,
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
        opt = OptimizerConfig(lr=1e-3, total_steps=2)
        tx = make_optimizer(opt)
        loss_config = PolicyLossConfig(clip_low=0.2, clip_high=0.28)
        update = make_grpo_update(model.module, tx, learning_rate(opt), loss_config,
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
        state, metrics = jax.jit(update)(state, shard_batch(batch, layout))
        results.append(({k: float(v) for k, v in metrics.items()},
                        np.asarray(state.params["lm_head"])))
    (m1, p1), (m8, p8) = results
    for key in ("loss", "grad_norm", "clip_count", "token_count"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(p1, p8, atol=1e-6)
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
