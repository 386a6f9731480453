"""GRPO policy-loss pieces of `sftrl.losses` against independent numpy references.

The references below are written loop-by-loop from the papers' formulas (not vectorised like the
implementation), so a shared mistake in broadcasting or masking would not cancel out.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sftrl import losses
from sftrl.losses import (
    PolicyLossConfig,
    PolicyLossConfigError,
    dynamic_sampling_keep,
    group_advantages,
    kl_estimate,
    overlong_penalty,
    policy_logprobs,
    policy_loss,
    truncated_importance_weights,
)

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


# ---------------------------------------------------------------------------------- references


def ref_group_advantages(rewards, normalize_std=True, eps=1e-6, valid=None, ddof=0):
    rewards = np.asarray(rewards, np.float64)
    valid = np.ones_like(rewards, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros_like(rewards)
    for p in range(rewards.shape[0]):
        vals = [rewards[p, g] for g in range(rewards.shape[1]) if valid[p, g]]
        if len(vals) == 0 or max(vals) == min(vals):
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - ddof))
        for g in range(rewards.shape[1]):
            if valid[p, g]:
                a = rewards[p, g] - mean
                out[p, g] = a / (std + eps) if normalize_std else a
    return out


def ref_kl(logp, ref, estimator):
    if estimator == "k1":
        return logp - ref
    # verl's low_var_kl: log-ratio clamped to +-20, the estimate to +-10
    log_ratio = np.clip(ref - logp, -20.0, 20.0)  # log pi_ref / pi
    return np.clip(np.exp(log_ratio) - log_ratio - 1.0, -10.0, 10.0)


def ref_overlong(length, max_length, buffer, penalty):
    if length <= max_length - buffer:
        return 0.0
    if length <= max_length:
        return -penalty * (length - (max_length - buffer)) / buffer
    return -penalty


def ref_policy_loss(logp, old, adv, mask, cfg, ref=None, sampler=None):
    """Per-token PPO/GRPO loss from the paper formulas, then the chosen aggregation."""
    B, T = logp.shape
    token = np.zeros((B, T))
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            r = math.exp(logp[b, t] - old[b, t])
            clipped = min(max(r, 1 - cfg.clip_low), 1 + cfg.clip_high)
            loss = -min(r * adv[b], clipped * adv[b])
            if cfg.tis_cap is not None:
                loss *= min(math.exp(old[b, t] - sampler[b, t]), cfg.tis_cap)
            if cfg.kl_estimator != "none" and cfg.kl_mode == "loss":
                loss += cfg.kl_coef * ref_kl(logp[b, t], ref[b, t], cfg.kl_estimator)
            token[b, t] = loss
    lengths = [int(mask[b].sum()) for b in range(B)]
    nonempty = [b for b in range(B) if lengths[b] > 0]
    if not nonempty:
        return 0.0
    if cfg.aggregation == "token-mean":
        return token.sum() / sum(lengths)
    if cfg.aggregation == "seq-mean-token-mean":
        return sum(token[b].sum() / lengths[b] for b in nonempty) / len(nonempty)
    # Dr. GRPO / TRL: every row counts, each with the generation budget C
    budget = cfg.max_tokens_for_norm or T
    return token.sum() / (B * budget)


def ref_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# ---------------------------------------------------------------------------------- fixtures


def make_batch(seed: int = 0, B: int = 6, T: int = 7):
    """Mixed lengths (one empty row), advantages of both signs, ratios on both sides of the clip."""
    rng = np.random.default_rng(seed)
    lengths = np.array([7, 5, 3, 1, 0, 6])[:B]
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    old = rng.uniform(-3.0, -0.1, (B, T))
    logp = old + rng.uniform(-0.8, 0.8, (B, T))  # ratios in [0.45, 2.2]: both clip sides hit
    ref = old + rng.normal(0.0, 0.3, (B, T))
    sampler = old + rng.normal(0.0, 0.4, (B, T))
    adv = np.array([1.3, -0.7, 0.4, -1.1, 0.9, -0.2])[:B]
    return logp, old, adv, mask, ref, sampler


def as_jnp(*arrays, dtype=jnp.float32):
    return [jnp.asarray(a, dtype) for a in arrays]


# ---------------------------------------------------------------------------------- advantages


def test_group_advantages_matches_reference_mixed_groups():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 2.0, -1.0, 0.25], [3.0, 3.0, 3.0, 3.0]])
    for normalize in (True, False):
        got = group_advantages(jnp.asarray(rewards), normalize_std=normalize)
        np.testing.assert_allclose(got, ref_group_advantages(rewards, normalize), atol=1e-5)
    # A normalized group has mean 0 and (population) std ~1.
    got = np.asarray(group_advantages(jnp.asarray(rewards)))
    np.testing.assert_allclose(got[:2].mean(1), 0.0, atol=1e-6)
    np.testing.assert_allclose(got[:2].std(1), 1.0, atol=1e-4)


def test_group_advantages_all_equal_and_single_sample_are_exact_zeros():
    # The float32 mean of seven 0.3s is off by ~3e-8: a naive (r - mean) / (std + eps) gives
    # ~0.03, not 0.
    rewards = jnp.array([[0.3] * 7, [0.7] * 7, [7.0] * 7, [0.0] * 7])
    out = group_advantages(rewards)
    assert np.all(np.asarray(out) == 0.0)
    single = group_advantages(jnp.array([[1.0], [0.0], [0.3]]))
    assert single.shape == (3, 1)
    assert np.all(np.asarray(single) == 0.0)


def test_group_advantages_valid_mask_and_all_truncated_group():
    rewards = np.array([[1.0, 0.0, 0.5, 1.0], [1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    valid = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    got = np.asarray(group_advantages(jnp.asarray(rewards), valid_PxG=jnp.asarray(valid)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref_group_advantages(rewards, True, 1e-6, valid), atol=1e-5)
    assert np.all(got[1] == 0.0) and np.all(got[2] == 0.0)  # all truncated; one valid sample
    assert got[0, 2] == 0.0  # the filtered sample carries no signal


def test_group_advantages_rejects_bad_shapes():
    with pytest.raises(ValueError, match="rewards_PxG"):
        group_advantages(jnp.ones(4))
    with pytest.raises(ValueError, match="valid_PxG"):
        group_advantages(jnp.ones((2, 3)), valid_PxG=jnp.ones((3, 2), bool))


def test_dynamic_sampling_keep():
    rewards = jnp.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.2, 0.2, 0.3]])
    keep = dynamic_sampling_keep(rewards)
    assert keep.dtype == jnp.bool_
    np.testing.assert_array_equal(keep, [False, False, True, True])
    np.testing.assert_array_equal(dynamic_sampling_keep(jnp.array([[1.0], [0.0]])), [False, False])
    # Only valid samples count: the 0 of row 0 is filtered out, leaving an all-1 group.
    valid = jnp.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], bool)
    np.testing.assert_array_equal(
        dynamic_sampling_keep(jnp.array([[1.0, 1.0, 0.0], *rewards[1:]]), valid),
        [False, False, True, True],
    )


# ---------------------------------------------------------------------------------- overlong


def test_overlong_penalty_matches_reference():
    lengths = np.array([0, 10, 12, 13, 15, 16, 17, 100])
    got = overlong_penalty(jnp.asarray(lengths), max_length=16, buffer=4, penalty=1.5)
    want = [ref_overlong(n, 16, 4, 1.5) for n in lengths]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[1] == 0.0 and got[-1] == -1.5 and got[5] == -1.5
    step = overlong_penalty(jnp.asarray(lengths), max_length=16, buffer=0, penalty=1.0)
    np.testing.assert_array_equal(step, [0, 0, 0, 0, 0, 0, -1, -1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_length": 0, "buffer": 0, "penalty": 1.0}, "max_length"),
        ({"max_length": 8, "buffer": 9, "penalty": 1.0}, "buffer"),
        ({"max_length": 8, "buffer": -1, "penalty": 1.0}, "buffer"),
        ({"max_length": 8, "buffer": 2, "penalty": -1.0}, "penalty"),
    ],
)
def test_overlong_penalty_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        overlong_penalty(jnp.arange(3), **kwargs)


# ---------------------------------------------------------------------------------- KL, TIS


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimate_matches_reference(estimator):
    logp, _, _, _, ref, _ = make_batch()
    got = kl_estimate(*as_jnp(logp, ref), estimator)
    np.testing.assert_allclose(got, ref_kl(logp, ref, estimator), rtol=1e-5, atol=1e-6)


def test_kl_estimators_are_unbiased_for_exact_samples_and_k3_nonnegative():
    rng = np.random.default_rng(3)
    # Logits scaled so that no token is e^2.4 times likelier under ref: k3 is unbiased only
    # below its clamp (10, verl's), which such a token would reach.
    logp_V = ref_log_softmax(rng.normal(size=11) * 0.6)
    ref_V = ref_log_softmax(rng.normal(size=11) * 0.6)
    assert np.max(ref_V - logp_V) < 2.4
    exact_kl = float(np.sum(np.exp(logp_V) * (logp_V - ref_V)))
    # Every token of the vocabulary "sampled" with its exact probability: E_pi[k] = KL(pi || ref).
    for estimator in ("k1", "k3"):
        per_token = np.asarray(kl_estimate(*as_jnp(logp_V, ref_V), estimator), np.float64)
        np.testing.assert_allclose(np.sum(np.exp(logp_V) * per_token), exact_kl, rtol=1e-5)
    # Monte Carlo from pi as well, within a few standard errors.
    samples = rng.choice(11, size=20000, p=np.exp(logp_V) / np.exp(logp_V).sum())
    k1 = np.asarray(kl_estimate(*as_jnp(logp_V[samples], ref_V[samples]), "k1"))
    assert abs(k1.mean() - exact_kl) < 4 * k1.std() / math.sqrt(k1.size)
    k3 = np.asarray(kl_estimate(*as_jnp(rng.normal(size=500), rng.normal(size=500) * 3), "k3"))
    assert np.all(k3 >= 0.0)


def test_kl_estimate_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="k2"):
        kl_estimate(jnp.zeros(2), jnp.zeros(2), "k2")


def test_truncated_importance_weights():
    _, old, _, _, _, sampler = make_batch()
    got = truncated_importance_weights(*as_jnp(old, sampler), cap=1.2)
    want = np.minimum(np.exp(old - sampler), 1.2)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.any(want == 1.2) and np.any(want < 1.0)
    grad = jax.grad(lambda x: truncated_importance_weights(x, jnp.zeros(3), 5.0).sum())
    np.testing.assert_array_equal(grad(jnp.array([0.1, -0.2, 0.3])), 0.0)
    with pytest.raises(ValueError, match="cap"):
        truncated_importance_weights(jnp.zeros(2), jnp.zeros(2), 0.0)


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip_low": -0.1}, "clip_low"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"clip_high": -0.2}, "clip_high"),
        ({"aggregation": "seq-mean"}, "aggregation"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"kl_estimator": "k3", "kl_coef": -1.0}, "kl_coef"),
        ({"kl_coef": 0.1}, "kl_coef"),  # a KL weight without an estimator
        ({"kl_mode": "advantage"}, "kl_mode"),
        ({"tis_cap": 0.0}, "tis_cap"),
        ({"aggregation": "seq-mean-token-sum", "max_tokens_for_norm": 0}, "max_tokens_for_norm"),
        ({"aggregation": "seq-mean-token-sum", "max_tokens_for_norm": 2.5}, "max_tokens_for_norm"),
        ({"max_tokens_for_norm": 64}, "max_tokens_for_norm"),  # token-mean has no such divisor
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(PolicyLossConfigError, match=rf"PolicyLossConfig\.{field}\b"):
        PolicyLossConfig(**kwargs)
    assert issubclass(PolicyLossConfigError, ValueError)


# ---------------------------------------------------------------------------------- policy loss


CONFIGS = [
    PolicyLossConfig(aggregation=agg, kl_estimator=kl, kl_coef=0.05 if kl != "none" else 0.0)
    for agg in AGGREGATIONS
    for kl in ("none", "k1", "k3")
] + [
    PolicyLossConfig(clip_high=0.28, tis_cap=1.5),
    PolicyLossConfig(aggregation="seq-mean-token-sum", max_tokens_for_norm=16, tis_cap=2.0),
    PolicyLossConfig(
        aggregation="seq-mean-token-mean",
        kl_estimator="k3",
        kl_coef=0.1,
        clip_low=0.1,
        clip_high=0.3,
        tis_cap=1.2,
    ),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_policy_loss_matches_reference(cfg):
    logp, old, adv, mask, ref, sampler = make_batch()
    loss, metrics = policy_loss(
        *as_jnp(logp, old, adv, mask),
        cfg,
        ref_logp_BxT=jnp.asarray(ref, jnp.float32),
        sampler_logp_BxT=jnp.asarray(sampler, jnp.float32),
    )
    lp, od, a, m, rf, sp = as_jnp_to_np(logp, old, adv, mask, ref, sampler)
    want = ref_policy_loss(lp, od, a, m, cfg, ref=rf, sampler=sp)
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)

    # Metrics are raw sums / counts over the masked tokens.
    on = mask > 0
    ratio = np.exp(lp - od)
    adv_bt = np.broadcast_to(adv[:, None], mask.shape)
    assert float(metrics["token_count"]) == on.sum()
    assert float(metrics["seq_count"]) == 5  # one row of the batch is empty
    np.testing.assert_allclose(float(metrics["ratio_sum"]), ratio[on].sum(), rtol=1e-5)
    high = on & (adv_bt > 0) & (ratio > 1 + cfg.clip_high)
    low = on & (adv_bt < 0) & (ratio < 1 - cfg.clip_low)
    assert high.sum() > 0 and low.sum() > 0, "the fixture must hit both clip sides"
    assert float(metrics["clip_high_count"]) == high.sum()
    assert float(metrics["clip_low_count"]) == low.sum()
    assert float(metrics["clip_count"]) == high.sum() + low.sum()
    np.testing.assert_allclose(float(metrics["advantage_sum"]), adv_bt[on].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["mismatch_sum"]), np.abs(od - sp)[on].sum(), rtol=1e-5)
    np.testing.assert_allclose(
        float(metrics["mismatch_k3_sum"]), ref_kl(sp, od, "k3")[on].sum(), rtol=1e-4
    )
    if cfg.kl_estimator != "none":
        np.testing.assert_allclose(
            float(metrics["kl_sum"]),
            ref_kl(lp, rf, cfg.kl_estimator)[on].sum(),
            rtol=1e-4,
            atol=1e-5,
        )
    else:
        assert "kl_sum" not in metrics
    if cfg.tis_cap is not None:
        w = np.minimum(np.exp(od - sp), cfg.tis_cap)
        np.testing.assert_allclose(float(metrics["tis_weight_sum"]), w[on].sum(), rtol=1e-5)
        assert float(metrics["tis_clip_count"]) == (on & (np.exp(od - sp) > cfg.tis_cap)).sum()
    assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())


def as_jnp_to_np(*arrays):
    """The float32 values the implementation sees, in float64 for the reference."""
    return [np.asarray(jnp.asarray(a, jnp.float32), np.float64) for a in arrays]


def test_policy_loss_both_clip_sides_and_clip_higher():
    # Tokens: (A>0, ratio 1.5) clipped high; (A<0, ratio 0.5) clipped low; (A>0, ratio 0.5) and
    # (A<0, ratio 1.5) are not clipped (min picks the unclipped, more pessimistic branch);
    # (A>0, ratio 1.25) is clipped at 0.2 but not with clip-higher 0.28.
    log_ratio = np.log([[1.5, 0.5, 1.25], [0.5, 1.5, 1.0]])
    old = np.full((2, 3), -1.0)
    logp = old + log_ratio
    adv = np.array([1.0, -1.0])
    mask = np.ones((2, 3))
    for clip_high, clipped_high in ((0.2, 2), (0.28, 1)):
        cfg = PolicyLossConfig(clip_low=0.2, clip_high=clip_high)

        def loss_fn(lp, cfg=cfg):
            return policy_loss(lp, *as_jnp(old, adv, mask), cfg)

        (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(
            jnp.asarray(logp, jnp.float32)
        )
        assert float(metrics["clip_high_count"]) == clipped_high
        assert float(metrics["clip_low_count"]) == 1
        want = ref_policy_loss(*as_jnp_to_np(logp, old, adv, mask), cfg)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)
        grad = np.asarray(grad)
        assert grad[0, 0] == 0.0 and grad[1, 0] == 0.0  # clipped: no gradient
        # Unclipped: d(-ratio A / N)/d logp = -A ratio / N.
        np.testing.assert_allclose(grad[0, 1], -1.0 * 0.5 / 6, rtol=1e-5)
        np.testing.assert_allclose(grad[1, 1], 1.0 * 1.5 / 6, rtol=1e-5)
        assert (grad[0, 2] == 0.0) == (clip_high == 0.2)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_on_policy_gradient_is_reinforce(aggregation):
    logp, _, adv, mask, _, _ = make_batch(seed=1)
    cfg = PolicyLossConfig(aggregation=aggregation)
    lp, a, m = as_jnp(logp, adv, mask)

    def loss_fn(x):  # the same array as logp and old_logp: one update per batch
        return policy_loss(x, x, a, m, cfg)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(lp)
    assert float(metrics["clip_count"]) == 0
    assert float(metrics["ratio_sum"]) == float(metrics["token_count"])
    lengths = mask.sum(1)
    seqs = (lengths > 0).sum()
    if aggregation == "token-mean":
        norm = np.full_like(lengths, mask.sum())
    elif aggregation == "seq-mean-token-mean":
        norm = seqs * np.maximum(lengths, 1)
    else:
        norm = np.full_like(lengths, mask.shape[0] * mask.shape[1])
    want = -adv[:, None] * mask / norm[:, None]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-8)
    # On-policy, the surrogate's value is -A aggregated (ratio = 1).
    np.testing.assert_allclose(float(loss), float((want * 1.0).sum()), rtol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        PolicyLossConfig(aggregation="token-mean", kl_estimator="k3", kl_coef=0.2, tis_cap=1.3),
        PolicyLossConfig(
            aggregation="seq-mean-token-mean", kl_estimator="k1", kl_coef=0.1, clip_high=0.28
        ),
        PolicyLossConfig(
            aggregation="seq-mean-token-sum",
            kl_estimator="k3",
            kl_coef=0.3,
            max_tokens_for_norm=9,
            tis_cap=2.0,
        ),
    ],
    ids=str,
)
def test_policy_loss_gradient_matches_finite_differences(cfg):
    logp, old, adv, mask, ref, sampler = make_batch(seed=2)
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (old, adv, mask)]
        kw = {
            "ref_logp_BxT": jnp.asarray(ref, jnp.float64),
            "sampler_logp_BxT": jnp.asarray(sampler, jnp.float64),
        }

        def f(x):
            return policy_loss(x, *args, cfg, **kw)[0]

        x0 = jnp.asarray(logp, jnp.float64)
        grad = np.asarray(jax.grad(f)(x0))
        assert grad.dtype == np.float64
        # Stay clear of the clip kinks so the central difference is of a smooth function.
        ratio = np.exp(logp - old)
        assert np.min(np.abs(ratio - (1 + cfg.clip_high))) > 1e-3
        assert np.min(np.abs(ratio - (1 - cfg.clip_low))) > 1e-3
        h = 1e-6
        fd = np.zeros_like(logp)
        f_jit = jax.jit(f)
        for b, t in np.ndindex(*logp.shape):
            e = np.zeros_like(logp)
            e[b, t] = h
            fd[b, t] = (float(f_jit(x0 + e)) - float(f_jit(x0 - e))) / (2 * h)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert np.all(grad[mask == 0] == 0.0)
    assert np.any(grad[mask > 0] != 0.0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_masked_batch_gives_zero_loss_and_gradient(aggregation):
    B, T = 3, 4
    # Garbage (huge log-ratios) at masked positions must not leak inf/NaN into loss or gradient.
    logp = jnp.full((B, T), 500.0)
    old = jnp.full((B, T), -500.0)
    cfg = PolicyLossConfig(aggregation=aggregation, kl_estimator="k3", kl_coef=0.1, tis_cap=2.0)
    kw = {"ref_logp_BxT": jnp.full((B, T), 400.0), "sampler_logp_BxT": jnp.full((B, T), -900.0)}

    def loss_fn(x):
        return policy_loss(x, old, jnp.array([1.0, -1.0, 2.0]), jnp.zeros((B, T)), cfg, **kw)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)
    assert all(float(v) == 0.0 for v in metrics.values())


def test_masked_garbage_does_not_change_a_partly_masked_batch():
    logp, old, adv, mask, ref, sampler = make_batch(seed=4)
    cfg = PolicyLossConfig(kl_estimator="k3", kl_coef=0.1, tis_cap=2.0)
    noisy = [
        np.where(mask > 0, x, s)
        for x, s in zip((logp, old, ref, sampler), (800.0, -800.0, 900.0, -900.0), strict=True)
    ]

    def run(lp, od, rf, sp):
        return jax.value_and_grad(
            lambda x: policy_loss(
                x,
                *as_jnp(od, adv, mask),
                cfg,
                ref_logp_BxT=jnp.asarray(rf, jnp.float32),
                sampler_logp_BxT=jnp.asarray(sp, jnp.float32),
            )[0]
        )(jnp.asarray(lp, jnp.float32))

    clean_loss, clean_grad = run(logp, old, ref, sampler)
    noisy_loss, noisy_grad = run(*noisy)
    assert np.isfinite(float(noisy_loss)) and np.all(np.isfinite(noisy_grad))
    np.testing.assert_allclose(float(noisy_loss), float(clean_loss), rtol=1e-6)
    np.testing.assert_allclose(noisy_grad, clean_grad, rtol=1e-6)


def test_kl_reward_mode_logs_but_does_not_add_kl():
    logp, old, adv, mask, ref, _ = make_batch(seed=5)
    base = PolicyLossConfig(kl_estimator="k3", kl_coef=0.5)
    in_loss, m_loss = policy_loss(
        *as_jnp(logp, old, adv, mask), base, ref_logp_BxT=jnp.asarray(ref, jnp.float32)
    )
    as_reward, m_reward = policy_loss(
        *as_jnp(logp, old, adv, mask),
        dataclasses.replace(base, kl_mode="reward"),
        ref_logp_BxT=jnp.asarray(ref, jnp.float32),
    )
    no_kl, _ = policy_loss(*as_jnp(logp, old, adv, mask), PolicyLossConfig())
    np.testing.assert_allclose(float(as_reward), float(no_kl), rtol=1e-6)
    np.testing.assert_allclose(float(m_reward["kl_sum"]), float(m_loss["kl_sum"]), rtol=1e-6)
    np.testing.assert_allclose(
        float(in_loss) - float(no_kl), 0.5 * float(m_loss["kl_sum"]) / mask.sum(), rtol=1e-4
    )


def test_policy_loss_jits_and_rejects_missing_inputs_and_bad_shapes():
    logp, old, adv, mask, ref, sampler = make_batch()
    cfg = PolicyLossConfig(kl_estimator="k3", kl_coef=0.1, tis_cap=2.0)
    args = as_jnp(logp, old, adv, mask)
    kw = {
        "ref_logp_BxT": jnp.asarray(ref, jnp.float32),
        "sampler_logp_BxT": jnp.asarray(sampler, jnp.float32),
    }
    eager, _ = policy_loss(*args, cfg, **kw)
    jitted, _ = jax.jit(policy_loss, static_argnames="config")(*args, config=cfg, **kw)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)
    with pytest.raises(ValueError, match="ref_logp_BxT"):
        policy_loss(*args, cfg, sampler_logp_BxT=kw["sampler_logp_BxT"])
    with pytest.raises(ValueError, match="sampler_logp_BxT"):
        policy_loss(*args, cfg, ref_logp_BxT=kw["ref_logp_BxT"])
    with pytest.raises(ValueError, match="advantages_B"):
        policy_loss(args[0], args[1], args[2][:2], args[3], PolicyLossConfig())
    with pytest.raises(ValueError, match="mask_BxT"):
        policy_loss(args[0], args[1], args[2], args[3][:, :2], PolicyLossConfig())


# ---------------------------------------------------------------------------------- logprobs


def test_policy_logprobs_match_log_softmax_gather_and_entropy():
    rng = np.random.default_rng(6)
    B, L, V = 3, 5, 13
    logits = rng.normal(0.0, 3.0, (B, L, V))
    tokens = rng.integers(0, V, (B, L))
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 1e-5)):
        x = jnp.asarray(logits, dtype)
        logp, entropy = jax.jit(policy_logprobs)(x, jnp.asarray(tokens))
        assert logp.dtype == jnp.float32 and entropy.dtype == jnp.float32
        logsm = ref_log_softmax(np.asarray(x.astype(jnp.float32)))
        want_logp = np.zeros((B, L))
        want_ent = np.zeros((B, L))
        for b, t in np.ndindex(B, L - 1):
            want_logp[b, t + 1] = logsm[b, t, tokens[b, t + 1]]
            want_ent[b, t + 1] = -np.sum(np.exp(logsm[b, t]) * logsm[b, t])
        np.testing.assert_allclose(logp, want_logp, rtol=tol, atol=tol)
        np.testing.assert_allclose(entropy, want_ent, rtol=tol, atol=tol)
    # Same alignment and values as the SFT loss: -logp == next_token_nll with a full mask.
    nll = losses.next_token_nll(
        jnp.asarray(logits, jnp.float32), jnp.asarray(tokens), jnp.ones((B, L))
    )
    np.testing.assert_allclose(-np.asarray(logp_f32(logits, tokens)), nll, rtol=1e-5, atol=1e-6)
    # Uniform logits: entropy log V everywhere but column 0.
    _, ent = policy_logprobs(jnp.zeros((1, 4, V)), jnp.zeros((1, 4), jnp.int32))
    np.testing.assert_allclose(ent, [[0.0] + [math.log(V)] * 3], rtol=1e-6)


def logp_f32(logits, tokens):
    return policy_logprobs(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens))[0]


# ---------------------------------------------------------------------------------- issue 23


def test_group_advantages_sample_std_with_ddof_1():
    rewards = np.array([[1.0, 0.0, 0.5, 1.0], [1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]])
    valid = np.array([[1, 1, 0, 1], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    for v in (None, valid):
        got = group_advantages(jnp.asarray(rewards), ddof=1,
                               valid_PxG=None if v is None else jnp.asarray(v))
        np.testing.assert_allclose(got, ref_group_advantages(rewards, True, 1e-6, v, ddof=1),
                                   atol=1e-5)
    # torch.std / np.std(ddof=1) of a full group: the TRL / verl definition
    row = rewards[2]
    np.testing.assert_allclose(np.asarray(group_advantages(jnp.asarray(rewards), ddof=1))[2],
                               (row - row.mean()) / (row.std(ddof=1) + 1e-6), atol=1e-5)
    with pytest.raises(ValueError, match="ddof"):
        group_advantages(jnp.asarray(rewards), ddof=2)


def test_k3_and_the_ratio_are_clamped_like_verl():
    # log(ref / pi) = 50: unclamped k3 is e^50; verl clamps log r to 20 and k3 to 10
    assert float(kl_estimate(jnp.zeros(1), jnp.full(1, 50.0), "k3")[0]) == 10.0
    assert float(kl_estimate(jnp.zeros(1), jnp.full(1, -50.0), "k3")[0]) == 10.0
    np.testing.assert_allclose(float(kl_estimate(jnp.zeros(1), jnp.full(1, 1.5), "k3")[0]),
                               math.exp(1.5) - 1.5 - 1.0, rtol=1e-6)
    logp = jnp.array([[100.0, -100.0]])
    old = jnp.zeros((1, 2))
    adv = jnp.array([-1.0])
    cfg = PolicyLossConfig(kl_estimator="k3", kl_coef=0.1)

    def loss_fn(x):
        return policy_loss(x, old, adv, jnp.ones((1, 2)), cfg, ref_logp_BxT=old)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(logp)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(metrics["ratio_sum"]), math.exp(20) + math.exp(-20),
                               rtol=1e-5)
    assert float(metrics["kl_sum"]) == 20.0


def test_a_kl_estimator_with_zero_coefficient_measures_but_adds_nothing():
    logp, old, adv, mask, ref, _ = make_batch(seed=7)
    args = as_jnp(logp, old, adv, mask)
    plain, _ = policy_loss(*args, PolicyLossConfig())
    zero = PolicyLossConfig(kl_estimator="k3", kl_coef=0.0)
    without_ref, _ = policy_loss(*args, zero)  # no reference needed when nothing is added
    with_ref, metrics = policy_loss(*args, zero, ref_logp_BxT=jnp.asarray(ref, jnp.float32))
    assert float(without_ref) == float(with_ref) == float(plain)
    want = sum(ref_kl(logp[b, t], ref[b, t], "k3") for b in range(mask.shape[0])
               for t in range(mask.shape[1]) if mask[b, t])
    np.testing.assert_allclose(float(metrics["kl_sum"]), want, rtol=1e-5)


def test_dr_grpo_normaliser_is_rows_times_budget_whatever_the_width():
    """Dr. GRPO (TRL: B * max_completion_length): the same replies padded to other widths, and
    rows without any token, do not change the per-row divisor."""
    rng = np.random.default_rng(8)
    cfg = PolicyLossConfig(aggregation="seq-mean-token-sum", max_tokens_for_norm=16)
    for width, lengths in ((7, [7, 5, 3, 0]), (24, [2, 9, 0, 0]), (40, [1, 1, 1, 30])):
        rows = len(lengths)
        mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.float32)
        logp = rng.uniform(-3, -0.1, (rows, width))
        adv = rng.normal(size=rows)
        loss, _ = policy_loss(*as_jnp(logp, logp, adv, mask), cfg)  # on-policy: ratio 1
        want = -sum(adv[b] * lengths[b] for b in range(rows)) / (rows * 16)
        np.testing.assert_allclose(float(loss), want, rtol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batch_losses_sum_to_the_whole_batch_loss(aggregation):
    logp, old, adv, mask, ref, sampler = make_batch(seed=9)
    cfg = PolicyLossConfig(aggregation=aggregation, kl_estimator="k3", kl_coef=0.1, tis_cap=1.5)
    whole = ref_policy_loss(logp, old, adv, mask, cfg, ref, sampler)
    norm = losses.loss_normalizer(jnp.asarray(mask), aggregation)
    parts = []
    for rows in ([0, 2, 4], [1, 3, 5]):
        x = [a[rows] for a in (logp, old, adv, mask, ref, sampler)]
        part, _ = policy_loss(*as_jnp(*x[:4]), cfg, ref_logp_BxT=jnp.asarray(x[4], jnp.float32),
                              sampler_logp_BxT=jnp.asarray(x[5], jnp.float32), normalizer=norm)
        parts.append(float(part))
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-5)
