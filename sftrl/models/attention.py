"""Training self-attention without stored probabilities: a flash-style custom VJP in plain JAX,
and the fused `jax.nn.dot_product_attention` (cuDNN on GPU) for the cases it can express.

Why a custom VJP: differentiating the plain softmax attention keeps every layer's float32
probabilities ([B, H, L, L]) for the backward pass, or (under remat) recomputes the whole forward.
`flash_attention` keeps only the output and the per-row log-sum-exp; the backward pass recomputes
each query block's probabilities from them (FlashAttention-2's recipe, Dao 2023, Alg. 2).

Blocking: queries in blocks of `block_q`, each against the keys up to its block's end only, so the
upper triangle (every key a block skips is causally masked) is never formed. A block sees its
whole key prefix at once, so its softmax is exact in one pass: no online rescaling, which on CPU
costs more elementwise passes than it saves; the float32 tile is bounded by block_q x L per head.

Masks are given as the dense boolean [B, L, S] mask the model builds (causal, padding, packed
segments, sliding window all folded in). A query row with no visible key outputs 0 (the plain
softmax would give a uniform average); such rows are padding and carry no loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from sftrl import target

# Names of the custom VJP's residuals: a remat policy that saves these (see
# `transformer.REMAT_POLICIES`) keeps the attention forward from running again in the backward.
RESIDUAL_NAMES = ("attention_out", "attention_lse")
ATTENTION_IMPLS = ("auto", "flash", "cudnn", "xla", "reference")


class AttentionImplError(ValueError):
    """An unknown attention implementation name."""


def resolve_impl(impl: str, dtype: jnp.dtype, *, packed: bool, sliding: bool) -> str:
    """The implementation a training forward uses.

    "auto" takes cuDNN's fused kernel on GPU for half-precision activations (its only dtypes) and
    ours everywhere else. cuDNN (through `jax.nn.dot_product_attention`) cannot express packed
    segments or our sliding window without a dense bias, so those batches use ours.
    """
    if impl not in ATTENTION_IMPLS:
        raise AttentionImplError(
            f"attention implementation must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}"
        )
    if impl in ("cudnn", "xla") and (packed or sliding):
        return "flash"
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if target.platform() == "gpu" and half and not packed and not sliding:
        return "cudnn"
    return "flash"


def fused_attention(
    q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array, mask_BxLxS: jax.Array,
    implementation: str,
) -> jax.Array:
    """`jax.nn.dot_product_attention` with is_causal (so cuDNN skips the upper triangle) and the
    model's own mask.

    cuDNN takes a mask only as a bias of the full [T, S] extent (a [B, 1, 1, S] key-padding row is
    refused), so the dense mask goes in as [B, 1, L, S], shared by the heads: one bf16 bias per
    step, a small read next to the attention itself, and exact for left or right padding. XLA
    broadcasts, so it gets just the key-padding row, which with is_causal is the whole mask of an
    unpacked, unwindowed batch (`resolve_impl` sends the others to flash).
    """
    return jax.nn.dot_product_attention(
        q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask=fused_mask(mask_BxLxS, implementation),
        is_causal=True, implementation=implementation,
    )


def fused_mask(mask_BxLxS: jax.Array, implementation: str) -> jax.Array:
    """The 4-d mask `fused_attention` hands to `jax.nn.dot_product_attention`."""
    if implementation == "cudnn":
        return mask_BxLxS[:, None]
    return mask_BxLxS[:, -1][:, None, None, :]


def _blocks(length: int, block_q: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_q, length)) for start in range(0, length, block_q)]


def _scores(q_BxNxKxGxD: jax.Array, k_BxSxKxD: jax.Array, mask_BxNxS: jax.Array) -> jax.Array:
    """Masked, scaled float32 scores [B, K, G, N, S]; masked entries are -inf."""
    d = q_BxNxKxGxD.shape[-1]
    s = jnp.einsum("bnkgd,bskd->bkgns", q_BxNxKxGxD, k_BxSxKxD,
                   preferred_element_type=jnp.float32) * (d**-0.5)
    return jnp.where(mask_BxNxS[:, None, None], s, -jnp.inf)


def _grouped(x_BxNxHxD: jax.Array, kv_heads: int) -> jax.Array:
    b, n, h, d = x_BxNxHxD.shape
    return x_BxNxHxD.reshape(b, n, kv_heads, h // kv_heads, d)


def _forward(q, k, v, mask, block_q):
    b, length, h, d = q.shape
    kv_heads = k.shape[2]
    outs, lses = [], []
    for start, end in _blocks(length, block_q):
        s = _scores(_grouped(q[:, start:end], kv_heads), k[:, :end], mask[:, start:end, :end])
        row_max = jnp.max(s, axis=-1, keepdims=True)
        row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # rows with no visible key
        p = jnp.exp(s - row_max)
        total = jnp.sum(p, axis=-1, keepdims=True)
        probs = (p / jnp.where(total > 0, total, 1.0)).astype(v.dtype)
        out = jnp.einsum("bkgns,bskd->bnkgd", probs, v[:, :end])
        outs.append(out.reshape(b, end - start, h, d))
        lses.append((row_max + jnp.log(total))[..., 0])  # [B, K, G, N]; -inf for empty rows
    out = checkpoint_name(jnp.concatenate(outs, axis=1), RESIDUAL_NAMES[0])
    lse = checkpoint_name(jnp.concatenate(lses, axis=-1), RESIDUAL_NAMES[1])
    return out, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, mask, block_q):
    return _forward(q, k, v, mask, block_q)[0]


def _flash_fwd(q, k, v, mask, block_q):
    out, lse = _forward(q, k, v, mask, block_q)
    return out, (q, k, v, mask, out, lse)


def _flash_bwd(block_q, residuals, dout):
    q, k, v, mask, out, lse = residuals
    b, length, h, d = q.shape
    kv_heads = k.shape[2]
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)  # empty rows: every p is exp(-inf) = 0 anyway
    dk = jnp.zeros(k.shape, jnp.float32)
    dv = jnp.zeros(v.shape, jnp.float32)
    dqs = []
    for start, end in _blocks(length, block_q):
        q_blk = _grouped(q[:, start:end], kv_heads)
        do_blk = _grouped(dout[:, start:end], kv_heads)
        k_pre, v_pre = k[:, :end], v[:, :end]
        s = _scores(q_blk, k_pre, mask[:, start:end, :end])
        p = jnp.exp(s - lse[..., start:end, None])
        # delta = rowsum(dO * O): the softmax Jacobian's correction term per query row
        delta = jnp.einsum("bnkgd,bnkgd->bkgn", do_blk.astype(jnp.float32),
                           _grouped(out[:, start:end], kv_heads).astype(jnp.float32))
        dv = dv.at[:, :end].add(jnp.einsum("bkgns,bnkgd->bskd", p.astype(v.dtype), do_blk,
                                           preferred_element_type=jnp.float32))
        dp = jnp.einsum("bnkgd,bskd->bkgns", do_blk, v_pre, preferred_element_type=jnp.float32)
        ds = (p * (dp - delta[..., None]) * (d**-0.5)).astype(q.dtype)
        dq = jnp.einsum("bkgns,bskd->bnkgd", ds, k_pre, preferred_element_type=jnp.float32)
        dqs.append(dq.reshape(b, end - start, h, d))
        dk = dk.at[:, :end].add(jnp.einsum("bkgns,bnkgd->bskd", ds, q_blk,
                                           preferred_element_type=jnp.float32))
    dq = jnp.concatenate(dqs, axis=1)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(
    q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array, mask_BxLxS: jax.Array,
    *, block_q: int = 256,
) -> jax.Array:
    """Causal self-attention (keys at the queries' positions, S = L) with grouped-query heads.

    mask_BxLxS must be causal (no key after its query); any extra masking (padding, segments,
    window) is honoured. Scores and softmax in float32, probabilities cast to v's dtype for the
    PV product (as `transformer.dot_product_attention`).
    """
    b, length, h, _ = q_BxLxHxD.shape
    if k_BxLxKxD.shape[1] != length or mask_BxLxS.shape != (b, length, length):
        raise ValueError(
            f"flash_attention is self-attention: q {q_BxLxHxD.shape}, k {k_BxLxKxD.shape}, "
            f"mask {mask_BxLxS.shape}"
        )
    if h % k_BxLxKxD.shape[2]:
        raise ValueError(f"{h} query heads are not a multiple of {k_BxLxKxD.shape[2]} kv heads")
    if block_q < 1:
        raise ValueError(f"block_q must be >= 1, got {block_q}")
    return _flash(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask_BxLxS.astype(bool), int(block_q))
