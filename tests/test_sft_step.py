"""The pure SFT step: loss/gradient vs a direct computation, accumulation, sharding, NaN metric,
and the chunked LM head + NLL it uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sftrl.losses import head_weighted_nll, token_nll
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import build_model, lm_head_kernel, param_shardings
from sftrl.optim import OptimizerConfig, OptimizerConfigError, decay_mask, make_optimizer
from sftrl.sharding import Layout, make_mesh, shard_batch, single_device_layout
from sftrl.train import state as state_lib
from sftrl.train.sft_step import jit_sft_step, make_sft_step, token_weights

CFG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=128)


def _packed_batch(seed: int = 0, b: int = 8, length: int = 16) -> dict[str, np.ndarray]:
    """Rows of 1-3 packed examples with prompt (mask 0) and response (mask 1) parts, padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, (b, length)).astype(np.int32)
    segment_ids = np.zeros((b, length), np.int32)
    positions = np.zeros((b, length), np.int32)
    loss_mask = np.zeros((b, length), np.int32)
    for row in range(b):
        at = 0
        for seg in range(1, rng.integers(1, 4) + 1):
            n = int(rng.integers(3, 7))
            if at + n > length:
                break
            segment_ids[row, at:at + n] = seg
            positions[row, at:at + n] = np.arange(n)
            prompt = int(rng.integers(1, n - 1))
            loss_mask[row, at + prompt:at + n] = 1
            at += n
    return dict(tokens=tokens, loss_mask=loss_mask, segment_ids=segment_ids, positions=positions)


def _direct_loss(model, params, batch, normalization):
    """Each example separately, unpacked, as plain numpy sums."""
    total, per_example = 0.0, []
    count = 0
    for row in range(batch["tokens"].shape[0]):
        for seg in np.unique(batch["segment_ids"][row]):
            if seg == 0:
                continue
            cols = np.nonzero(batch["segment_ids"][row] == seg)[0]
            toks = batch["tokens"][row, cols][None]
            logits, _ = model.module.apply({"params": params}, jnp.asarray(toks))
            logp = jax.nn.log_softmax(logits[0].astype(jnp.float32), -1)
            nll = -logp[np.arange(len(cols) - 1), toks[0, 1:]]
            mask = batch["loss_mask"][row, cols][1:].astype(np.float32)
            if mask.sum() == 0:
                continue
            total = total + jnp.sum(nll * mask)
            count += mask.sum()
            per_example.append(jnp.sum(nll * mask) / mask.sum())
    if normalization == "token":
        return total / count
    return sum(per_example) / len(per_example)


@pytest.mark.parametrize(("normalization", "loss_chunk"), [("token", 512), ("sequence", 5)])
def test_loss_and_gradient_match_direct_computation(normalization, loss_chunk):
    """loss_chunk 5 splits the 16 positions into 4 chunks (the last one padded)."""
    layout = single_device_layout()
    model = build_model(CFG, layout, seed=1)
    batch = _packed_batch()
    tx = optax.sgd(1.0)
    step = make_sft_step(model.module, tx, optax.constant_schedule(1.0),
                         normalization=normalization, loss_chunk=loss_chunk)
    state = state_lib.create_train_state(model.params, tx, seed=0)
    new_state, metrics = jax.jit(step)(state, {k: jnp.asarray(v) for k, v in batch.items()})

    expected, grads = jax.value_and_grad(
        lambda p: _direct_loss(model, p, batch, normalization))(model.params)
    np.testing.assert_allclose(float(metrics["loss_sum"]), float(expected), rtol=1e-5)
    # SGD with lr 1: params move by exactly -grad (gradient clipping is not in this tx)
    moved = jax.tree.map(lambda a, b: a - b, model.params, new_state.params)
    for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-6, rtol=1e-4)
    assert int(new_state.step) == 1
    assert float(metrics["finite"]) == 1.0
    scored = batch["loss_mask"][:, 1:] * (batch["segment_ids"][:, 1:] != 0)
    assert float(metrics["tokens"]) == scored.sum()


def test_token_weights_sum_to_one_and_skip_first_column():
    batch = {k: jnp.asarray(v) for k, v in _packed_batch(3).items()}
    for normalization in ("token", "sequence"):
        w = np.asarray(token_weights(batch, normalization))
        assert w[:, 0].sum() == 0
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
        assert (w[np.asarray(batch["loss_mask"]) == 0] == 0).all()


def test_gradient_accumulation_equals_one_batch():
    """grad_accum=4 gives the gradient of one batch of the same examples.

    Compared through plain SGD with lr=1, so the parameter change *is* the gradient. Adam would
    divide by sqrt(v) and turn a rounding difference in a near-zero gradient into a full-size
    update difference, which made this test pass or fail by CPU instruction set.
    """
    layout = single_device_layout()
    model = build_model(CFG, layout, seed=2)
    batch = {k: jnp.asarray(v) for k, v in _packed_batch(5).items()}
    tx = optax.sgd(1.0)
    results = []
    for accum in (1, 4):
        step = make_sft_step(model.module, tx, optax.constant_schedule(1.0), grad_accum=accum,
                             normalization="sequence")
        state = state_lib.create_train_state(model.params, tx, seed=0)
        new_state, metrics = jax.jit(step)(state, batch)
        grads = jax.tree.map(lambda old, new: np.asarray(old, np.float64) - np.asarray(new),
                             model.params, new_state.params)
        results.append((grads, float(metrics["loss_sum"])))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[0][0]), jax.tree.leaves(results[1][0]), strict=True):
        # Both are float32 sums over the same tokens in another order (one sum vs four partial
        # sums): the rounding error is a few hundred ulps of the largest term at most, so the
        # tolerance scales with the leaf's largest gradient, not with each element.
        scale = max(float(np.max(np.abs(a))), 1e-12)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)
        assert np.max(np.abs(a)) > 0  # the comparison is not vacuous


def _run_steps(layout: Layout, batches, seed=3):
    model = build_model(CFG, layout, seed=seed)
    opt = OptimizerConfig(lr=3e-3, warmup_steps=1, total_steps=len(batches), weight_decay=0.1)
    tx = make_optimizer(opt)

    def create(p):
        return state_lib.create_train_state(p, tx, 0)

    shape = jax.eval_shape(create, model.params)
    shardings = state_lib.state_shardings(shape, param_shardings(model.module, layout),
                                          layout.sharding(()))
    state = jax.jit(create, out_shardings=shardings)(model.params)
    from sftrl.optim import learning_rate

    step = jit_sft_step(make_sft_step(model.module, tx, learning_rate(opt)), shardings, layout)
    losses = []
    for batch in batches:
        state, metrics = step(state, shard_batch(batch, layout))
        losses.append(float(metrics["loss_sum"]))
    return state, losses


def test_sharded_equals_unsharded_and_loss_drops():
    batches = [_packed_batch(0)] * 6
    _, single = _run_steps(single_device_layout(), batches)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sharded_state, sharded = _run_steps(Layout(mesh), batches)
    np.testing.assert_allclose(single, sharded, rtol=2e-4)
    assert single[-1] < single[0] - 0.1  # the same batch six times: it is learned
    # FSDP + tensor sharding is real: the embedding is split across devices
    assert len(sharded_state.params["embed"].sharding.device_set) == 8
    assert not sharded_state.params["embed"].sharding.is_fully_replicated


def test_non_finite_loss_is_flagged():
    layout = single_device_layout()
    model = build_model(CFG, layout, seed=4)
    params = jax.tree.map(lambda x: x, model.params)
    params["lm_head"] = params["lm_head"].at[0, 0].set(jnp.nan)
    tx = optax.adam(1e-3)
    step = make_sft_step(model.module, tx, optax.constant_schedule(1e-3))
    state = state_lib.create_train_state(params, tx, seed=0)
    _, metrics = jax.jit(step)(state, {k: jnp.asarray(v) for k, v in _packed_batch().items()})
    assert float(metrics["finite"]) == 0.0


def test_decay_mask_and_optimizer_validation():
    model = build_model(CFG, single_device_layout(), seed=0)
    mask = decay_mask(model.params, OptimizerConfig())
    assert mask["embed"] is False and mask["final_norm"]["scale"] is False
    assert mask["layers"]["attn"]["q_proj"] is True and mask["lm_head"] is True
    mask = decay_mask(model.params, OptimizerConfig(decay_norms=True, decay_embeddings=True))
    assert mask["embed"] is True and mask["layers"]["input_norm"]["scale"] is True
    with pytest.raises(OptimizerConfigError, match="schedule"):
        OptimizerConfig(schedule="exp")
    with pytest.raises(OptimizerConfigError, match="lr"):
        OptimizerConfig(lr=0.0)


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_head_weighted_nll_equals_unfused_loss_and_gradients(chunk):
    rng = np.random.default_rng(chunk)
    hidden = jnp.asarray(rng.standard_normal((3, 16, 8)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((8, 40)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 40, (3, 16)), jnp.int32)
    weights = jnp.asarray(rng.random((3, 16)) * (rng.random((3, 16)) > 0.3), jnp.float32)

    def unfused(h, w, wt):
        return jnp.sum(token_nll(h @ w, targets) * wt)

    def fused(h, w, wt):
        return head_weighted_nll(h, w, targets, wt, chunk=chunk)[0]

    loss, nll = head_weighted_nll(hidden, head, targets, weights, chunk=chunk)
    np.testing.assert_allclose(float(loss), float(unfused(hidden, head, weights)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(nll), np.asarray(token_nll(hidden @ head, targets)),
                               rtol=1e-6, atol=1e-6)
    want = jax.grad(unfused, (0, 1, 2))(hidden, head, weights)
    got = jax.jit(jax.grad(fused, (0, 1, 2)))(hidden, head, weights)
    for name, a, b in zip(("hidden", "head", "weights"), got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=1e-5,
                                   err_msg=name)
    # the cotangent scales the stored gradients (a loss multiplied by 3 has 3x the gradient)
    g3 = jax.grad(lambda h: 3.0 * fused(h, head, weights))(hidden)
    np.testing.assert_allclose(np.asarray(g3), 3 * np.asarray(got[0]), rtol=1e-6)


def test_head_weighted_nll_bfloat16_and_errors():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((2, 9, 8)), jnp.bfloat16)
    head = jnp.asarray(rng.standard_normal((8, 40)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 40, (2, 9)), jnp.int32)
    weights = jnp.ones((2, 9), jnp.float32)
    loss, nll = head_weighted_nll(hidden, head, targets, weights, chunk=4)
    assert loss.dtype == jnp.float32 and nll.dtype == jnp.float32
    want = jnp.sum(token_nll(jnp.dot(hidden, head.astype(jnp.bfloat16),
                                     preferred_element_type=jnp.float32), targets))
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    grads = jax.grad(lambda h, w: head_weighted_nll(h, w, targets, weights, chunk=4)[0],
                     (0, 1))(hidden, head)
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32
    with pytest.raises(ValueError, match="hidden \\[B, L, E\\] and head \\[E, V\\]"):
        head_weighted_nll(hidden, head.T, targets, weights)
    with pytest.raises(ValueError, match="targets"):
        head_weighted_nll(hidden, head, targets[:, :3], weights)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        head_weighted_nll(hidden, head, targets, weights, chunk=0)
    model = build_model(CFG, single_device_layout(), seed=0)
    with pytest.raises(ValueError, match="loss_chunk must be >= 1"):
        make_sft_step(model.module, optax.sgd(1.0), optax.constant_schedule(1.0), loss_chunk=0)


def test_return_hidden_times_head_is_the_logits():
    model = build_model(CFG, single_device_layout(), seed=5)
    tokens = jnp.asarray(_packed_batch(1)["tokens"])
    logits, _ = model.module.apply({"params": model.params}, tokens)
    hidden, _ = model.module.apply({"params": model.params}, tokens, return_hidden=True)
    assert hidden.shape == (*tokens.shape, CFG.hidden_size)
    np.testing.assert_allclose(np.asarray(hidden @ lm_head_kernel(CFG, model.params)),
                               np.asarray(logits), atol=1e-5, rtol=1e-5)
