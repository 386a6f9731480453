"""The trainer's chunked GRPO log-probs against an unchunked float32 reference (numpy, float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sftrl.losses import chunked_policy_logprobs
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import build_model
from sftrl.sharding import single_device_layout
from sftrl.train.grpo_step import make_logprob_fn

TINY = ModelConfig(model_type="llama", vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                   num_kv_heads=2, head_dim=8, intermediate_size=64, rope_theta=10000.0,
                   rms_norm_eps=1e-5, max_position_embeddings=64)


def _reference(logits_BxLxV: np.ndarray, tokens_BxL: np.ndarray, scale: float):
    """log p(token t | < t) and entropy from float64 log-softmax; column 0 is 0."""
    z = logits_BxLxV.astype(np.float64) * scale
    z = z - z.max(axis=-1, keepdims=True)
    logp_all = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    b, length = tokens_BxL.shape
    logp = np.zeros((b, length))
    entropy = np.zeros((b, length))
    for t in range(1, length):
        logp[:, t] = logp_all[np.arange(b), t - 1, tokens_BxL[:, t]]
        entropy[:, t] = -(np.exp(logp_all[:, t - 1]) * logp_all[:, t - 1]).sum(axis=-1)
    return logp, entropy


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])
def test_chunked_equals_unchunked_float32_reference(chunk):
    rng = np.random.default_rng(0)
    b, length, e, v = 3, 13, 16, 97
    hidden = rng.normal(size=(b, length, e)).astype(np.float32)
    head = rng.normal(size=(e, v)).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, length)).astype(np.int32)
    logp, entropy = chunked_policy_logprobs(jnp.asarray(hidden), jnp.asarray(head),
                                            jnp.asarray(tokens), scale=1 / 0.7, chunk=chunk)
    ref_logp, ref_entropy = _reference(hidden @ head, tokens, 1 / 0.7)
    np.testing.assert_allclose(np.asarray(logp), ref_logp, atol=2e-5, rtol=1e-5)
    # entropy = lse - E[z] cancels in float32 (a metric, computed as `policy_logprobs` does)
    np.testing.assert_allclose(np.asarray(entropy), ref_entropy, atol=1e-4, rtol=1e-5)


def test_model_logprobs_and_gradient_match_unchunked():
    """The tiny model's trainer log-probs (chunked) and their parameter gradient equal those of
    plain float32 logits from the model's own head (autodiff of a jnp log-softmax)."""
    model = build_model(TINY, single_device_layout(), seed=1)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, TINY.vocab_size, size=(2, 11)), jnp.int32)
    mask = jnp.ones((2, 11), jnp.int32).at[1, :3].set(0)
    weights = jnp.asarray(rng.normal(size=(2, 11)), jnp.float32)
    temperature = 0.8
    chunked = make_logprob_fn(model.module, temperature, chunk=4)

    def reference(params):
        logits, _ = model.module.apply({"params": params}, tokens, attention_mask_BxL=mask)
        logp_all = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
        picked = jnp.take_along_axis(logp_all[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return jnp.pad(picked, ((0, 0), (1, 0)))

    logp, _ = chunked(model.params, tokens, mask)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(reference(model.params)),
                               atol=1e-5, rtol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(chunked(p, tokens, mask)[0] * weights))(model.params)
    ref_grads = jax.grad(lambda p: jnp.sum(reference(p) * weights))(model.params)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        scale = float(jnp.max(jnp.abs(want))) or 1.0
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale + 1e-7,
                                   rtol=1e-4)


def test_bf16_hidden_logits_are_not_rounded_to_bf16():
    """With bf16 hidden states and head, the logits are accumulated and kept in float32: the
    log-probs equal the float64 reference of the same bf16 inputs, far closer than bf16-rounded
    logits (the model's unchunked path) would be."""
    rng = np.random.default_rng(2)
    b, length, e, v = 2, 9, 64, 4096
    hidden = jnp.asarray(rng.normal(size=(b, length, e)), jnp.bfloat16)
    head = jnp.asarray(rng.normal(size=(e, v)) / 4, jnp.bfloat16)
    tokens = jnp.asarray(rng.integers(0, v, size=(b, length)), jnp.int32)
    logp, _ = chunked_policy_logprobs(hidden, head, tokens, chunk=4)
    exact = np.asarray(hidden, np.float64) @ np.asarray(head, np.float64)
    ref_logp, _ = _reference(exact, np.asarray(tokens), 1.0)
    rounded = np.asarray(jnp.asarray(exact, jnp.bfloat16), np.float64)
    rounded_logp, _ = _reference(rounded, np.asarray(tokens), 1.0)
    err = np.abs(np.asarray(logp) - ref_logp).max()
    assert err < 1e-4, err
    assert err < np.abs(rounded_logp - ref_logp).max() / 10


def test_row_micro_batches_equal_the_whole_batch_on_a_sharded_mesh():
    """rl.logprob_rows: the rollout through the model a few rows at a time (interleaved, in one
    program, rows split over 8 fake devices) gives the log-probs and entropies of the plain
    float32 logits of the whole batch at once."""
    from sftrl.sharding import TRAIN_RULES, Layout, make_mesh, shard_batch
    from sftrl.train.grpo_step import jit_logprobs

    layout = Layout(make_mesh(1, 8, 1), TRAIN_RULES)
    model = build_model(TINY, layout, seed=2)
    rng = np.random.default_rng(2)
    b, length = 32, 9
    tokens = rng.integers(0, TINY.vocab_size, size=(b, length)).astype(np.int32)
    mask = np.ones((b, length), np.int32)
    mask[::3, :2] = 0  # left padding on some rows, so rows differ in what they see
    logits, _ = model.module.apply({"params": model.params}, jnp.asarray(tokens),
                                   attention_mask_BxL=jnp.asarray(mask))
    want_logp, want_entropy = _reference(np.asarray(logits, np.float32), tokens, 1.0)
    shardings = jax.tree.map(lambda x: x.sharding, model.params)
    placed = shard_batch({"tokens": tokens, "attention_mask": mask}, layout)
    for rows in (0, 8, 16):
        fn = jit_logprobs(make_logprob_fn(model.module, 1.0, chunk=4, rows=rows), shardings,
                          layout, (b, length))
        logp, entropy = fn(model.params, placed["tokens"], placed["attention_mask"])
        np.testing.assert_allclose(np.asarray(logp), want_logp, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(entropy), want_entropy, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="logprob_rows: 12"):
        make_logprob_fn(model.module, 1.0, rows=12)(model.params, jnp.asarray(tokens),
                                                     jnp.asarray(mask))
