"""The decoder on a mesh: sharded == unsharded, KV-cache decode == forward, remat, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from sftrl import sharding
from sftrl.models.model_config import ModelConfig, ModelConfigError, RopeScaling
from sftrl.models.transformer import build_model

CONFIGS = {
    "llama3": ModelConfig(
        "llama", 97, 64, 2, 4, 2, 16, 96, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16),
    ),
    "mistral": ModelConfig("mistral", 97, 64, 2, 8, 4, 24, 96, rope_theta=1e6),
    "qwen3": ModelConfig("qwen3", 97, 64, 2, 8, 4, 16, 96, qk_norm=True, tie_embeddings=True),
}
MESHES = [(1, 8, 1), (2, 2, 2), (1, 2, 4), (8, 1, 1), (1, 1, 8)]


def _batch(b: int = 8, length: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 97, (b, length))
    mask = np.ones((b, length), bool)
    for row, cols in ((1, slice(0, 5)), (3, slice(0, 11)), (5, slice(15, None))):
        if row < b:
            mask[row, cols] = False
    return tokens, mask


@pytest.fixture(scope="module", params=list(CONFIGS))
def reference(request):
    config = CONFIGS[request.param]
    model = build_model(config, sharding.single_device_layout(), seed=1)
    tokens, mask = _batch()
    return config, model, tokens, mask, np.asarray(model(tokens, mask))


@pytest.mark.parametrize("mesh_shape", MESHES)
def test_sharded_forward_equals_unsharded(reference, mesh_shape):
    config, single, tokens, mask, expected = reference
    layout = sharding.Layout(sharding.make_mesh(*mesh_shape))
    model = build_model(config, layout, seed=1)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if mesh_shape[1] > 1 or mesh_shape[2] > 1:  # the weights really are split
        assert any(
            x.sharding.spec != PartitionSpec() for x in jax.tree.leaves(model.params)
        )
    logits = model(tokens, mask)
    assert logits.shape == (8, 20, 97) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits)[mask], expected[mask], atol=2e-5, rtol=0)


def _decode_all(model, tokens, mask, prefill):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + 4)
    logits, cache = model.step(tokens[:, :prefill], cache, mask[:, :prefill])
    pieces = [logits]
    for i in range(prefill, tokens.shape[1]):
        logits, cache = model.step(tokens[:, i: i + 1], cache, mask[:, i: i + 1])
        pieces.append(logits)
    return np.asarray(jnp.concatenate(pieces, axis=1)), cache


@pytest.mark.parametrize("prefill", [1, 12])
def test_kv_cache_decode_equals_forward(reference, prefill):
    _, model, tokens, mask, expected = reference
    decoded, cache = _decode_all(model, tokens, mask, prefill)
    np.testing.assert_allclose(decoded[mask], expected[mask], atol=2e-5, rtol=0)
    assert int(cache.end) == tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(cache.valid_BxS)[:, : tokens.shape[1]], mask)


def test_kv_cache_decode_on_a_mesh(reference):
    config, _, tokens, mask, expected = reference
    layout = sharding.Layout(sharding.make_mesh(2, 1, 4), sharding.SAMPLING_RULES)
    model = build_model(config, layout, seed=1)
    decoded, cache = _decode_all(model, tokens, mask, 7)
    np.testing.assert_allclose(decoded[mask], expected[mask], atol=2e-5, rtol=0)
    assert cache.k_LxBxSxKxD.sharding.spec[1] == "data"


def test_reshard_to_sampling_rules_keeps_logits_and_drops_fsdp():
    mesh = sharding.make_mesh(1, 4, 2)
    train = build_model(CONFIGS["qwen3"], sharding.Layout(mesh, sharding.TRAIN_RULES))
    assert any("fsdp" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(train.params))
    sample = train.reshard(sharding.Layout(mesh, sharding.SAMPLING_RULES))
    for leaf in jax.tree.leaves(sample.params):
        assert "fsdp" not in str(leaf.sharding.spec)
    tokens, mask = _batch()
    np.testing.assert_allclose(np.asarray(sample(tokens, mask)), np.asarray(train(tokens, mask)),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_logits_and_gradients(policy):
    config = CONFIGS["llama3"]
    layout = sharding.single_device_layout()
    plain = build_model(config, layout, seed=2)
    remat = build_model(config, layout, seed=2, remat=policy)
    tokens, mask = _batch(2, 12)

    def loss(model):
        def f(params):
            logits, _ = model.module.apply({"params": params}, tokens, attention_mask_BxL=mask)
            return jnp.mean(jax.nn.logsumexp(logits, axis=-1))
        return jax.jit(jax.grad(f))(model.params)

    np.testing.assert_allclose(np.asarray(remat(tokens, mask)), np.asarray(plain(tokens, mask)),
                               atol=1e-6, rtol=0)
    for a, b in zip(jax.tree.leaves(loss(remat)), jax.tree.leaves(loss(plain)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_bad_inputs_fail_with_a_clear_error(reference):
    _, model, tokens, mask, _ = reference
    with pytest.raises(ValueError, match=r"tokens must be \[batch, length\]"):
        model(tokens[0])
    with pytest.raises(ValueError, match="attention_mask must have the tokens' shape"):
        model(tokens, mask[:, :5])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 97\), got \[0, 97\]"):
        model(np.where(mask, tokens, 97))
    with pytest.raises(ValueError, match="tokens must be integers"):
        model(tokens.astype(np.float32))
    with pytest.raises(ValueError, match="tokens have batch 8, the cache 2"):
        model.step(tokens, model.init_cache(2, 32))
    with pytest.raises(ValueError, match="remat must be one of"):
        build_model(CONFIGS["llama3"], sharding.single_device_layout(), remat="sometimes")


def test_model_config_errors():
    with pytest.raises(ModelConfigError, match=r"num_heads .* multiple of num_kv_heads"):
        ModelConfig("llama", 10, 16, 1, 3, 2, 8, 16)
    with pytest.raises(ModelConfigError, match="model_type 'gpt2'"):
        ModelConfig("gpt2", 10, 16, 1, 2, 2, 8, 16)
    with pytest.raises(ModelConfigError, match="vocab_size must be a positive integer"):
        ModelConfig("llama", 0, 16, 1, 2, 2, 8, 16)


def test_mesh_errors():
    with pytest.raises(sharding.MeshError, match="fsdp=3 x tensor=1 = 3 devices, but 8 are"):
        sharding.make_mesh(1, 3, 1)
    with pytest.raises(sharding.MeshError, match="not divisible"):
        sharding.make_mesh(3, -1, 1)
    with pytest.raises(sharding.MeshError, match="only one mesh axis may be -1"):
        sharding.make_mesh(-1, -1, 1)
    mesh = sharding.make_mesh(2, -1, 2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_logical_rules_resolution():
    mesh = sharding.make_mesh(2, 2, 2)
    rules = sharding.TRAIN_RULES
    spec = sharding.logical_to_spec(("embed", "mlp"), rules, mesh)
    assert spec == PartitionSpec("fsdp", "tensor")
    # batch takes data+fsdp; embed then cannot reuse fsdp in the same array
    assert sharding.logical_to_spec(("activation_batch", "embed"), rules, mesh) == PartitionSpec(
        ("data", "fsdp")
    )
    # a dimension the mesh does not divide is replicated instead of failing
    assert sharding.logical_to_spec(("embed", "kv_heads"), rules, mesh, (64, 3)) == PartitionSpec(
        "fsdp"
    )
    with pytest.raises(KeyError, match="no rule"):
        sharding.logical_to_spec(("nonsense",), rules, mesh)


def test_shard_batch_splits_rows_over_data_axes():
    layout = sharding.Layout(sharding.make_mesh(2, 2, 2))
    batch = {"tokens": np.arange(8 * 6).reshape(8, 6), "weights": np.ones(8, np.float32)}
    placed = sharding.shard_batch(batch, layout)
    assert placed["tokens"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {s.data.shape for s in placed["tokens"].addressable_shards} == {(2, 6)}
    np.testing.assert_array_equal(np.asarray(placed["tokens"]), batch["tokens"])
    np.testing.assert_array_equal(np.asarray(placed["weights"]), batch["weights"])


# A tiny model whose positions reach past several attention blocks.
_LONG_CFG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=64,
                        max_position_embeddings=1024)


def test_block_causal_attention_equals_full(monkeypatch):
    """Long sequences take the blocked causal path; valid positions match the one-block path."""
    from sftrl.models import attention, transformer
    from sftrl.sharding import single_device_layout

    model = transformer.build_model(_LONG_CFG, single_device_layout(), seed=0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, (2, 600)).astype(np.int32)
    segments = np.ones((2, 600), np.int32)
    segments[0, 300:] = 2  # packed: two examples in row 0
    segments[1, 550:] = 0  # padding at the end of row 1
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 128)
    blocked = np.asarray(model(tokens, segment_ids=segments))
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 4096)
    model = transformer.Model(model.module, model.params)  # a fresh jit cache
    full = np.asarray(model(tokens, segment_ids=segments))
    valid = segments != 0
    np.testing.assert_allclose(blocked[valid], full[valid], atol=2e-5, rtol=1e-5)


def test_cached_prefill_in_query_blocks_and_last_logits_only(monkeypatch):
    """A long prefill into a cache takes the query-blocked path and matches the cache-free
    forward; logit_positions_B returns exactly those positions' logits."""
    from sftrl.models import attention, transformer
    from sftrl.sharding import single_device_layout

    model = transformer.build_model(_LONG_CFG, single_device_layout(), seed=0)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 64, (2, 300)).astype(np.int32)
    mask = np.ones((2, 300), bool)
    mask[1, 250:] = False  # right padding in row 1
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 64)
    full = np.asarray(model(tokens, attention_mask=mask))
    cache = model.init_cache(2, 300)
    cached, _ = model.module.apply({"params": model.params}, jnp.asarray(tokens),
                                   attention_mask_BxL=jnp.asarray(mask), cache=cache)
    np.testing.assert_allclose(np.asarray(cached)[mask], full[mask], atol=2e-5, rtol=1e-5)
    last = np.array([299, 249])
    picked, _ = model.module.apply({"params": model.params}, jnp.asarray(tokens),
                                   attention_mask_BxL=jnp.asarray(mask), cache=cache,
                                   logit_positions_B=jnp.asarray(last))
    assert picked.shape == (2, 1, 64)
    np.testing.assert_allclose(np.asarray(picked)[:, 0], full[[0, 1], last], atol=2e-5,
                               rtol=1e-5)
