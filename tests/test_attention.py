"""Training attention: flash (custom VJP) and jax.nn's fused call against plain softmax attention,
forward and gradients, on the masks the model builds (causal, padding, packed, window, GQA)."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from sftrl.models import attention, transformer
from sftrl.models.attention import (
    AttentionImplError,
    flash_attention,
    fused_attention,
    fused_mask,
    resolve_impl,
)
from sftrl.models.model_config import ModelConfig
from sftrl.sharding import single_device_layout

B, L, H, K, D = 3, 45, 4, 2, 8


def _qkv(seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((B, L, h, D)), dtype) for h in (H, K, K))


def _mask(kind: str, seed: int = 0) -> np.ndarray:
    """[B, L, L] masks as `Transformer` builds them (causal AND the extra structure)."""
    rng = np.random.default_rng(seed)
    causal = np.tril(np.ones((L, L), bool))[None].repeat(B, 0)
    valid = np.ones((B, L), bool)
    if kind == "right_pad":
        for row in range(B):
            valid[row, rng.integers(L // 2, L):] = False
        return causal & valid[:, None, :]
    if kind == "left_pad":  # the first query rows see no key at all
        for row in range(B):
            valid[row, : rng.integers(1, L // 2)] = False
        return causal & valid[:, None, :]
    if kind == "packed":  # 1-4 segments per row, trailing padding (segment 0), one empty row
        seg = np.zeros((B, L), np.int32)
        for row in range(B - 1):
            cuts = np.sort(rng.choice(np.arange(1, L - 3), rng.integers(0, 4), replace=False))
            seg[row, : L - 3] = np.searchsorted(cuts, np.arange(L - 3), side="right") + 1
        return causal & (seg[:, :, None] == seg[:, None, :]) & (seg != 0)[:, None, :]
    if kind == "window":
        idx = np.arange(L)
        return causal & (idx[:, None] - idx[None, :] < 7)[None]
    assert kind == "causal"
    return causal


def _loss(attend, mask: np.ndarray, seed: int):
    """A weighted sum of the outputs on rows that see at least one key (the others are padding:
    plain softmax gives them a uniform average, flash gives 0)."""
    rows = mask.any(-1)
    w = np.random.default_rng(seed + 100).standard_normal((B, L, H, D)) * rows[:, :, None, None]
    w = jnp.asarray(w, jnp.float32)

    def loss(q, k, v):
        return jnp.sum(attend(q, k, v, jnp.asarray(mask)).astype(jnp.float32) * w)

    return loss


@pytest.mark.parametrize(("kind", "block_q"), [
    ("causal", 16), ("right_pad", 64), ("left_pad", 8), ("packed", 16), ("packed", 64),
    ("window", 16),
])
def test_flash_equals_reference_forward_and_gradients(kind, block_q):
    mask = _mask(kind, seed=block_q)
    q, k, v = _qkv(block_q)
    rows = mask.any(-1)
    want = np.asarray(attention.dot_product_attention(q, k, v, jnp.asarray(mask)))
    got = np.asarray(flash_attention(q, k, v, jnp.asarray(mask), block_q=block_q))
    np.testing.assert_allclose(got[rows], want[rows], atol=2e-6, rtol=1e-5)
    assert (got[~rows] == 0).all()  # rows with no visible key are exactly 0, not NaN

    ref_grads = jax.grad(_loss(attention.dot_product_attention, mask, 0), (0, 1, 2))(q, k, v)
    flash = _loss(lambda *a: flash_attention(*a, block_q=block_q), mask, 0)
    grads = jax.jit(jax.grad(flash, (0, 1, 2)))(q, k, v)
    for name, got_g, want_g in zip("qkv", grads, ref_grads, strict=True):
        assert np.isfinite(np.asarray(got_g)).all(), name
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), atol=5e-6, rtol=1e-4,
                                   err_msg=f"d{name}")


def test_flash_bfloat16_close_to_float32():
    mask = _mask("packed", 3)
    rows = mask.any(-1)
    q, k, v = _qkv(5)
    want = np.asarray(flash_attention(q, k, v, jnp.asarray(mask), block_q=16))
    lo = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got = flash_attention(*lo, jnp.asarray(mask), block_q=16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32)[rows], want[rows], atol=5e-2)
    grads = jax.grad(lambda *a: jnp.sum(flash_attention(*a, jnp.asarray(mask), block_q=16)
                                        .astype(jnp.float32)), (0, 1, 2))(*lo)
    assert all(g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()
               for g in grads)


@pytest.mark.parametrize("mask_for", ["xla", "cudnn"])
@pytest.mark.parametrize("kind", ["causal", "right_pad", "left_pad"])
def test_jax_nn_xla_path_equals_ours(kind, mask_for):
    """jax.nn's call with is_causal and the mask `fused_attention` builds for each implementation
    (a key-padding row for XLA, the dense [B, 1, L, S] mask for cuDNN), run with "xla" on CPU:
    exactly our mask on rows that see a key."""
    mask = _mask(kind, 7)
    rows = mask.any(-1)
    q, k, v = _qkv(7)

    def attend(q, k, v, m):
        return jax.nn.dot_product_attention(q, k, v, mask=fused_mask(m, mask_for), is_causal=True,
                                            implementation="xla")

    want = np.asarray(attention.dot_product_attention(q, k, v, jnp.asarray(mask)))
    got = np.asarray(attend(q, k, v, jnp.asarray(mask)))
    np.testing.assert_allclose(got[rows], want[rows], atol=2e-6, rtol=1e-5)
    ref_grads = jax.grad(_loss(attention.dot_product_attention, mask, 1), (0, 1, 2))(q, k, v)
    grads = jax.grad(_loss(attend, mask, 1), (0, 1, 2))(q, k, v)
    for got_g, want_g in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), atol=5e-6, rtol=1e-4)
    if mask_for == "xla":
        got = np.asarray(fused_attention(q, k, v, jnp.asarray(mask), "xla"))
        np.testing.assert_allclose(got[rows], want[rows], atol=2e-6, rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("kind", ["causal", "right_pad", "left_pad"])
def test_cudnn_equals_reference_on_gpu(kind):
    """The cuDNN kernel itself (bf16) against float32 reference attention, outputs and grads."""
    even = L - L % 2  # cuDNN's backward with a mask needs even lengths
    mask = _mask(kind, 3)[:, :even, :even]
    rows = mask.any(-1)
    q, k, v = (jnp.pad(x[:, :even], ((0, 0), (0, 0), (0, 0), (0, 64 - D))) for x in _qkv(3))
    lo = tuple(x.astype(jnp.bfloat16) for x in (q, k, v))
    want = np.asarray(attention.dot_product_attention(q, k, v, jnp.asarray(mask)))
    got = np.asarray(fused_attention(*lo, jnp.asarray(mask), "cudnn"), np.float32)
    np.testing.assert_allclose(got[rows], want[rows], atol=3e-2, rtol=3e-2)

    def loss(attend, dtype):
        w = jnp.asarray(np.random.default_rng(5).standard_normal((B, even, H, 64)) *
                        rows[:, :, None, None], jnp.float32)
        return lambda *a: jnp.sum(attend(*(x.astype(dtype) for x in a), jnp.asarray(mask))
                                  .astype(jnp.float32) * w)

    ref = jax.grad(loss(attention.dot_product_attention, jnp.float32), (0, 1, 2))(q, k, v)
    got_g = jax.grad(loss(lambda *a: fused_attention(*a, "cudnn"), jnp.bfloat16), (0, 1, 2))(
        q, k, v)
    for g, r in zip(got_g, ref, strict=True):
        scale = float(jnp.max(jnp.abs(r)))
        assert float(jnp.max(jnp.abs(g.astype(jnp.float32) - r))) < 0.05 * scale


def test_cudnn_odd_length_falls_back_to_flash(monkeypatch):
    """cuDNN refuses odd lengths with a mask in training: such a batch goes through flash."""
    calls = []
    monkeypatch.setattr(attention, "fused_attention", lambda *a: calls.append("fused"))
    monkeypatch.setattr(attention, "flash_attention",
                        lambda *a, **kw: calls.append("flash"))
    q, k, v = _qkv(0)
    mask = jnp.asarray(_mask("causal"))
    attention.causal_attention(q, k, v, mask, impl="cudnn")  # L = 45
    attention.causal_attention(q[:, :44], k[:, :44], v[:, :44], mask[:, :44, :44], impl="cudnn")
    assert calls == ["flash", "fused"]


def test_resolve_impl_and_errors():
    on_gpu = jax.default_backend() == "gpu"
    assert resolve_impl("auto", jnp.float32, packed=False, sliding=False) == "flash"
    assert resolve_impl("auto", jnp.bfloat16, packed=False, sliding=False) == (
        "cudnn" if on_gpu else "flash")
    # cuDNN through jax.nn cannot express packed segments or our window: ours takes them
    assert resolve_impl("cudnn", jnp.bfloat16, packed=True, sliding=False) == "flash"
    assert resolve_impl("xla", jnp.float32, packed=False, sliding=True) == "flash"
    assert resolve_impl("xla", jnp.float32, packed=False, sliding=False) == "xla"
    assert resolve_impl("reference", jnp.float32, packed=True, sliding=True) == "reference"
    with pytest.raises(AttentionImplError, match="one of auto, flash"):
        resolve_impl("splash", jnp.float32, packed=False, sliding=False)
    q, k, v = _qkv(0)
    with pytest.raises(ValueError, match="self-attention"):
        flash_attention(q, k[:, :5], v[:, :5], jnp.ones((B, L, 5), bool))
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(q, k, v, jnp.asarray(_mask("causal")), block_q=0)


CFG = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=256)


def test_model_attention_impls_agree(monkeypatch):
    """Whole-model logits and parameter gradients against the plain blocked reference: flash on
    a packed batch, jax.nn's xla call on a right-padded one (the shape the GPU's cuDNN takes)."""
    monkeypatch.setattr(attention, "CAUSAL_BLOCK", 16)
    model = transformer.build_model(CFG, single_device_layout(), seed=0)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 64, (2, 40)), jnp.int32)
    mask = np.ones((2, 40), bool)
    mask[1, 29:] = False
    segments = np.ones((2, 40), np.int32)
    segments[0, 17:] = 2
    segments[1, 33:] = 0
    cases = (("flash", dict(segment_ids_BxL=jnp.asarray(segments)), segments != 0),
             ("xla", dict(attention_mask_BxL=jnp.asarray(mask)), mask))
    for impl, kwargs, valid in cases:
        results = []
        for name in ("reference", impl):
            module = model.module.clone(attention=name)

            def loss(params, module=module, kwargs=kwargs, valid=valid):
                logits, _ = module.apply({"params": params}, tokens, **kwargs)
                return jnp.sum(jnp.where(valid[..., None], logits, 0.0) ** 2), logits

            (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(model.params)
            results.append((np.asarray(logits)[valid], grads))
        np.testing.assert_allclose(results[1][0], results[0][0], atol=2e-5, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1]),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-3)


def _count_dots(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "dot_general"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count_dots(sub)
    return count


def test_remat_policy_keeps_flash_residuals():
    """Under "dots_no_batch" the flash forward is not run again in the backward pass: the
    policy saves its named output and log-sum-exp."""
    mask = jnp.asarray(_mask("causal"))
    q, k, v = _qkv(0)
    w = jnp.ones((D, D), jnp.float32)

    def block(q, k, v):  # a projection (saveable dot) feeding the attention
        return jnp.sum(flash_attention(q @ w, k, v, mask, block_q=16) ** 2)

    def dots(policy) -> int:
        fn = jax.checkpoint(block, policy=policy)
        return _count_dots(jax.make_jaxpr(jax.grad(fn, (0, 1, 2)))(q, k, v).jaxpr)

    plain = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    ours = transformer.REMAT_POLICIES["dots_no_batch"]
    blocks = -(-L // 16)
    # the attention forward has 2 dots per query block: recomputed under the plain policy only
    assert dots(plain) - dots(ours) == 2 * blocks
