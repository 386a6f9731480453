"""Every attention the model computes, in one place: plain softmax attention (the reference and
the path of short or cached queries), training self-attention without stored probabilities (a
flash-style custom VJP in plain JAX, or the fused `jax.nn.dot_product_attention`, cuDNN on GPU),
and the shared-prefix decode step (the Pallas kernels of `sftrl/kernels/decode_attention.py` for the
prefix, merged with each sample's own suffix). `transformer.Attention` projects q, k, v and calls
these; nothing else computes attention scores.

Why a custom VJP: differentiating the plain softmax attention keeps every layer's float32
probabilities ([B, H, L, L]) for the backward pass, or (under remat) recomputes the whole forward.
`flash_attention` keeps only the output and the per-row log-sum-exp; the backward pass recomputes
each query block's probabilities from them (FlashAttention-2's recipe, Dao 2023, Alg. 2).

Blocking: queries in blocks of `block_q`, each against the keys up to its block's end only, so the
upper triangle (every key a block skips is causally masked) is never formed. A block sees its
whole key prefix at once, so its softmax is exact in one pass: no online rescaling, which on CPU
costs more elementwise passes than it saves; the float32 tile is bounded by block_q x L per head.

Masks are given as the dense boolean [B, L, S] mask the model builds (causal, padding, packed
segments, sliding window all folded in). In `flash_attention` a query row with no visible key
outputs 0 (`dot_product_attention` gives a uniform average); such rows are padding and carry no
loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from sftrl import target
from sftrl.sharding import Layout

# Names of the custom VJP's residuals: a remat policy that saves these (see
# `transformer.REMAT_POLICIES`) keeps the attention forward from running again in the backward.
RESIDUAL_NAMES = ("attention_out", "attention_lse")
ATTENTION_IMPLS = ("auto", "flash", "cudnn", "xla", "reference")
_MASKED = float(np.finfo(np.float32).min)  # finite: a fully masked row gives uniform, not NaN


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


def _scores(
    q_BxNxKxGxD: jax.Array, k_BxSxKxD: jax.Array, mask_BxNxS: jax.Array,
    masked: float = -jnp.inf,
) -> jax.Array:
    """Masked, scaled float32 scores [B, K, G, N, S]; masked entries are `masked`."""
    d = q_BxNxKxGxD.shape[-1]
    s = jnp.einsum("bnkgd,bskd->bkgns", q_BxNxKxGxD, k_BxSxKxD,
                   preferred_element_type=jnp.float32) * (d**-0.5)
    return jnp.where(mask_BxNxS[:, None, None], s, masked)


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
    PV product (as `dot_product_attention`).
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


def dot_product_attention(
    q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array, mask_BxLxS: jax.Array
) -> jax.Array:
    """Grouped-query attention, scores and softmax in float32."""
    b, l, h, d = q_BxLxHxD.shape
    q_BxLxKxGxD = _grouped(q_BxLxHxD, k_BxSxKxD.shape[2])
    scores_BxKxGxLxS = _scores(q_BxLxKxGxD, k_BxSxKxD, mask_BxLxS, _MASKED)
    probs = jax.nn.softmax(scores_BxKxGxLxS, axis=-1).astype(v_BxSxKxD.dtype)
    out_BxLxKxGxD = jnp.einsum("bkgls,bskd->blkgd", probs, v_BxSxKxD)
    return out_BxLxKxGxD.reshape(b, l, h, d)


# 128: on CPU (125M model, L = 2048) 20% less attention work than 256 (less of the masked
# upper triangle computed, tiles nearer the caches), and no slower at L = 512.
CAUSAL_BLOCK = 128


def causal_attention(
    q_BxLxHxD: jax.Array, k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array, mask_BxLxS: jax.Array,
    *, impl: str = "flash",
) -> jax.Array:
    """Self-attention over one sequence whose mask is causal (no cache).

    impl (see ATTENTION_IMPLS; "auto" is resolved by the Transformer, here it means
    "flash"): "flash" = `flash_attention` in query blocks of CAUSAL_BLOCK (custom VJP,
    no probabilities kept); "cudnn"/"xla" = `jax.nn.dot_product_attention` (unpacked, unwindowed
    batches only); "reference" = plain softmax attention, queries in blocks of CAUSAL_BLOCK,
    each against the keys up to the end of its block only.

    Exact (every key a block skips is masked anyway) and it skips the upper triangle's scores:
    at L = 2048 and blocks of 128 it computes ~53% of the L x L scores.
    """
    if impl == "cudnn" and (q_BxLxHxD.shape[1] % 2 or k_BxLxKxD.shape[1] % 2):
        impl = "flash"  # cuDNN's backward with a mask (bias) needs even lengths; ours does not
    if impl in ("flash", "auto"):
        return flash_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask_BxLxS, block_q=CAUSAL_BLOCK)
    if impl in ("cudnn", "xla"):
        return fused_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask_BxLxS, impl)
    if impl != "reference":
        raise ValueError(f"unknown attention implementation {impl!r}")
    l = q_BxLxHxD.shape[1]
    if l < 2 * CAUSAL_BLOCK:
        return dot_product_attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask_BxLxS)
    outs = []
    for start in range(0, l, CAUSAL_BLOCK):
        end = min(start + CAUSAL_BLOCK, l)
        outs.append(dot_product_attention(
            q_BxLxHxD[:, start:end], k_BxLxKxD[:, :end], v_BxLxKxD[:, :end],
            mask_BxLxS[:, start:end, :end],
        ))
    return jnp.concatenate(outs, axis=1)


def query_blocked_attention(
    q_BxLxHxD: jax.Array, k_BxSxKxD: jax.Array, v_BxSxKxD: jax.Array, mask_BxLxS: jax.Array
) -> jax.Array:
    """Attention of L queries against a cache of S keys, queries in blocks of CAUSAL_BLOCK.

    Exact; it bounds the float32 scores to CAUSAL_BLOCK x S per block: a prefill of 64 prompts
    of 2048 tokens into a cache would otherwise form 69 GB of scores with Llama-3-8B's heads.
    The blocks run in a loop (`lax.map`), not as separate ops: XLA merges dots that share an
    operand, which on CPU fused the blocks of a 64 x 2048 prefill back into one 27 GB buffer.
    """
    b, l, h, d = q_BxLxHxD.shape
    if l < 2 * CAUSAL_BLOCK:
        return dot_product_attention(q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxLxS)
    blocks = -(-l // CAUSAL_BLOCK)
    pad = blocks * CAUSAL_BLOCK - l  # padded query rows see no key; they are cut off below
    q_NxBxCxHxD = jnp.pad(q_BxLxHxD, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(
        b, blocks, CAUSAL_BLOCK, h, d).swapaxes(0, 1)
    mask_NxBxCxS = jnp.pad(mask_BxLxS, ((0, 0), (0, pad), (0, 0))).reshape(
        b, blocks, CAUSAL_BLOCK, mask_BxLxS.shape[-1]).swapaxes(0, 1)
    out_NxBxCxHxD = jax.lax.map(
        lambda block: dot_product_attention(block[0], k_BxSxKxD, v_BxSxKxD, block[1]),
        (q_NxBxCxHxD, mask_NxBxCxS),
    )
    return out_NxBxCxHxD.swapaxes(0, 1).reshape(b, blocks * CAUSAL_BLOCK, h, d)[:, :l]


def shared_prefix_attention(
    q_BxLxHxD: jax.Array,
    k_BxLxKxD: jax.Array,
    v_BxLxKxD: jax.Array,
    layer_cache: tuple[jax.Array, ...],
    cache_meta: tuple[jax.Array, jax.Array, int | None, jax.Array],
    layout: Layout | None = None,
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """One decode step for B = P*N rows: prefix part (read once per prompt) + own suffix part,
    merged by log-sum-exp.

    layer_cache is (this layer's prefix k, v [P, K, S, D], the suffix k, v of ALL layers
    [L, P, N, K, T, D]); cache_meta is (prefix lengths [P], suffix slot, the static suffix
    window (see SharedPrefixCache.suffix_window), this layer's index).
    The new token's k/v is written into the stacked suffix in place and the stacked suffix is
    returned: it travels through the layer scan as carry, never copied whole.
    """
    # Imported here, not at the top: only decoding needs Pallas.
    from sftrl.kernels.decode_attention import merge_attention, prefix_decode_attention

    prefix_k, prefix_v, suffix_k_all, suffix_v_all = layer_cache
    prefix_lengths_P, suffix_end, window, layer = cache_meta
    p, kv_heads, _, d = prefix_k.shape[0], prefix_k.shape[1], prefix_k.shape[2], prefix_k.shape[3]
    n, t = suffix_k_all.shape[2], suffix_k_all.shape[4]
    if window is not None:
        if not 1 <= window <= t:
            raise ValueError(f"suffix_window {window} is outside [1, {t}]")
        t = window
    h = q_BxLxHxD.shape[2]
    g = h // kv_heads
    if q_BxLxHxD.shape[1] != 1:
        raise ValueError("the shared-prefix cache decodes one token per sample at a time")
    zero = jnp.zeros((), jnp.int32)
    start = (layer, zero, zero, zero, suffix_end, zero)
    suffix_k_all = jax.lax.dynamic_update_slice(
        suffix_k_all,
        k_BxLxKxD.reshape(1, p, n, kv_heads, 1, d).astype(suffix_k_all.dtype), start,
    )
    suffix_v_all = jax.lax.dynamic_update_slice(
        suffix_v_all,
        v_BxLxKxD.reshape(1, p, n, kv_heads, 1, d).astype(suffix_v_all.dtype), start,
    )
    # This layer's suffix, first t slots only: one slice, so only they are read.
    window_shape = (1, p, n, kv_heads, t, d)
    suffix_k = jax.lax.dynamic_slice(suffix_k_all, (layer, *[zero] * 5), window_shape)[0]
    suffix_v = jax.lax.dynamic_slice(suffix_v_all, (layer, *[zero] * 5), window_shape)[0]
    q_PxNxKxGxD = q_BxLxHxD.reshape(p, n, kv_heads, g, d)
    # The N samples x G heads of one kv head are the query rows of one prefix stream.
    q_PxKxRxD = jnp.transpose(q_PxNxKxGxD, (0, 2, 1, 3, 4)).reshape(p, kv_heads, n * g, d)
    attend = functools.partial(prefix_decode_attention, backend=target.platform())
    if layout is not None and layout.mesh.size > 1:
        attend = _per_shard(attend, layout, q_PxKxRxD.shape)
    out_pre, lse_pre = attend(
        q_PxKxRxD, prefix_k.astype(q_PxKxRxD.dtype), prefix_v.astype(q_PxKxRxD.dtype),
        prefix_lengths_P,
    )
    scores_PxNxKxGxT = jnp.einsum(
        "pnkgd,pnktd->pnkgt", q_PxNxKxGxD, suffix_k.astype(q_PxNxKxGxD.dtype),
        preferred_element_type=jnp.float32,
    ) * (d**-0.5)
    valid_T = jnp.arange(t) <= suffix_end
    scores_PxNxKxGxT = jnp.where(valid_T, scores_PxNxKxGxT, -jnp.inf)
    lse_suf = jax.nn.logsumexp(scores_PxNxKxGxT, axis=-1)
    probs = jnp.exp(scores_PxNxKxGxT - lse_suf[..., None])
    out_suf = jnp.einsum("pnkgt,pnktd->pnkgd", probs, suffix_v.astype(jnp.float32))

    def rows(x: jax.Array) -> jax.Array:  # [P, N, K, G, ...] -> [P, K, N*G, ...]
        x = jnp.moveaxis(x, 2, 1)
        return x.reshape(p, kv_heads, n * g, *x.shape[4:])

    out, _ = merge_attention(out_pre.astype(jnp.float32), lse_pre, rows(out_suf), rows(lse_suf))
    out_PxNxKxGxD = jnp.moveaxis(out.reshape(p, kv_heads, n, g, d), 1, 2)
    return out_PxNxKxGxD.reshape(p * n, 1, h, d), (prefix_k, prefix_v, suffix_k_all, suffix_v_all)


def _per_shard(attend: Callable, layout: Layout, q_shape: tuple[int, ...]) -> Callable:
    """`attend(q, k, v, lengths)` run per device on its prompts and kv heads (a shard_map).

    Prompts and kv heads are independent in the prefix attention, and XLA cannot partition a
    Pallas (Mosaic) kernel itself: under a multi-device mesh it refuses to compile it. The split
    is the activations' (prompts over the batch axes, kv heads over 'tensor'); a dimension the
    mesh does not divide stays whole (every device then computes it, as the rest of the step).
    """
    spec = tuple(layout.spec(("activation_batch", "activation_kv_heads", None, None), q_shape))
    spec = spec + (None,) * (4 - len(spec))
    q_spec = PartitionSpec(*spec)
    return jax.shard_map(
        attend, mesh=layout.mesh, in_specs=(q_spec, q_spec, q_spec, PartitionSpec(spec[0])),
        out_specs=(q_spec, PartitionSpec(*spec[:3])), check_vma=False)
