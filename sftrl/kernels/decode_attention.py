"""Shared-prefix decode attention: the prefix half of a Hydragen / cascade decode step.

When sampling N completions per prompt (large-k pass@k, GRPO groups), every sample of prompt
``p`` attends to the same prompt prefix, prefilled once. With grouped-query attention (H query
heads, K kv heads, G = H / K query heads per kv head), all N samples x G query heads that share kv
head ``k`` of prompt ``p`` see *identical* prefix keys and values. We therefore stack them as
R = N * G query rows and attend them together against one stream of prefix blocks:

    q:       [P, K, R, D]   R = N * G rows (row r = sample r // G, query head k * G + r % G,
                            or any order the caller likes; rows are independent)
    k, v:    [P, K, S, D]   kv-head-major, so each (p, k) prefix stream is contiguous in memory
                            and no transpose is needed per step
    lengths: [P] int32      valid prefix length of each prompt (keys at positions >= length
                            are masked; lengths are dynamic, shapes are static)

The Pallas grid is (P, K, splits, row-blocks). The kv blocks of each (p, k) prefix stream are
cut into ``splits`` contiguous ranges (split-KV, flash-decoding); each program loops over its
range in ``block_kv`` chunks with an online softmax, clipped to the prompt's length, and writes a
float32 partial output and its lse. The wrapper merges the splits exactly by log-sum-exp weights
(as ``merge_attention`` does); a split wholly past the length writes out = 0, lse = -inf, the
merge identity. Splitting is what fills a GPU: without it the grid is only P * K * row-blocks
programs (16 for one prompt with 8 kv heads), each walking the whole prefix serially; see
``BlockSizes.num_splits`` for the auto rule (1 on TPU). A (p, k) prefix stream is read once per
row block; with ``block_rows >= R`` (the default picks that up to 128 rows) it is read exactly
once per prompt per step instead of N times, turning N matrix-vector products into one
matrix-matrix product. Since decode is bandwidth bound, that is the whole point. (Row blocks are
the innermost grid axis, so consecutive programs share one kv range: on TPU the K/V block index
does not change across it and the pipeline does not re-fetch; on GPU they hit in L2.)

Each call returns the output *and* the log-sum-exp (natural log, float32) of the scores,

    lse[r] = log sum_{j < length} exp(s[r, j]),   out[r] = sum_j exp(s[r, j] - lse[r]) v[j].

Attention over a disjoint union of key sets A and B (here: the shared prefix and the per-sample
suffix generated so far) is then recovered exactly by ``merge_attention``:

    lse = logaddexp(lse_a, lse_b),   out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b.

An empty key set (length 0) gives out = 0 and lse = -inf, which is the identity of that merge,
so a prompt with no prefix merges to exactly the suffix result (and never to NaN).

Implementations (``impl``): "reference" (plain JAX), "pallas" (compiled; Triton lowering on GPU,
Mosaic on TPU), "interpret" (the same Pallas kernel run by the Pallas interpreter, for CPU
tests), and "auto" (pallas on gpu/tpu, reference elsewhere). Scores and softmax statistics are
float32 whatever the input dtype; the output is cast to q's dtype. Lengths are clamped to [0, S].

Notes and caveats
  * The kernel uses natural exp/log throughout (no exp2 trick), so its lse needs no conversion.
  * Each program holds its whole (p, k) prefix stream as one block ([S_pad, D]; on GPU that is
    just a pointer, on TPU it is DMA'd to VMEM, double-buffered, once per (p, k) whatever the
    splits): for long prefixes on TPU raise the scoped VMEM limit or shorten S. Only the valid
    blocks of a program's own range are computed on (and, on GPU, loaded); on TPU the whole
    stream is copied in.
  * With splits > 1 the partials cost P * K * splits * R_pad * D * 4 bytes written and read
    back (the auto rule keeps that under half the K/V bytes) plus a small XLA merge.
  * S not a multiple of block_kv costs a padded copy of K and V per call; R not a multiple of the
    row block pads q (cheap). Allocate the prefix cache with S a multiple of block_kv.
  * On GPU, float32 inputs go through Triton's dot, which uses TF32 unless
    `jax_default_matmul_precision` asks for more; bfloat16 inputs are unaffected. The kernel
    rounds the probabilities to the value dtype before the PV matmul (as flash attention does).
  * On TPU the lse is written lane-dense (broadcast over 128 lanes) and sliced in the wrapper.
  * Forward only (decode): no custom VJP is defined.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.typing import DTypeLike

__all__ = [
    "BlockSizes",
    "merge_attention",
    "num_splits_for",
    "prefix_decode_attention",
    "prefix_decode_attention_reference",
]

_IMPLS = ("auto", "reference", "pallas", "interpret")
# Finite "minus infinity" for masked scores inside the kernel: exp(_MASK - m) == 0 without ever
# forming inf - inf.
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)
_MAX_AUTO_ROWS = 128
# Auto split rule (GPU, interpreter): aim for this many programs per SM (so a wave's tail and
# short ragged prompts still leave every SM busy), with at least this many kv blocks per split.
_PROGRAMS_PER_SM = 2
_MIN_BLOCKS_PER_SPLIT = 2
# SMs assumed when the device does not say, and always in the interpreter (an H100 SXM's 132), so
# CPU tests exercise the plan a GPU would pick.
_DEFAULT_SMS = 132


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the Pallas kernel.

    block_kv: prefix positions per online-softmax step. The prefix is padded up to a multiple
        of it (a copy of K/V per call: allocate the prefix cache with S a multiple of block_kv to
        avoid it). GPU (Triton) needs a power of two >= 16; TPU (Mosaic) a multiple of 128.
    block_rows: query rows per program; R is padded up to a multiple and sliced off. ``None``
        picks the next power of two >= max(R, 16), capped at 128, so that usually a single row
        block covers all N * G rows and the prefix is read once. GPU needs a power of two >= 16;
        TPU a multiple of 8.
    num_splits: how many contiguous ranges of kv blocks each (p, k) prefix stream is cut into
        (flash-decoding); each range is its own program writing a float32 partial output and lse,
        merged exactly afterwards. 1 disables splitting. ``None`` (auto):
          * GPU and interpreter: min(ceil(2 * SMs / (P * K * row blocks)),
            kv blocks // 2, S_pad * itemsize // (8 * R_pad)), at least 1; i.e. enough programs
            for two per SM, every split at least 2 kv blocks long, and the float32 partials of
            all R_pad rows (written, then read by the merge) at most half the stream's K/V bytes.
            SMs is the device's count (132 if unknown, and always 132 in the interpreter). On an
            H200 (bf16, K=8, G=4, D=128; benchmarks/decode_attention.py, host-timed medians)
            this took P=1, N=64, S=8192 from 0.59-0.72 to 0.15 ms (8 splits) and P=8, N=64,
            S=2048 from 0.215 to 0.19 ms (2 splits).
          * TPU: 1. A TensorCore walks the grid sequentially, so splitting buys no parallelism
            there (megacore already shards P and K); it would only add the merge.
        An explicit value is capped at the number of kv blocks; ranges of equal length
        (ceil(kv blocks / splits) blocks) may leave fewer splits than asked.
    num_warps, num_stages: Triton compiler parameters (GPU only; ignored elsewhere).
    """

    block_kv: int = 128
    block_rows: int | None = None
    num_warps: int = 4
    num_stages: int = 2
    num_splits: int | None = None

    def __post_init__(self):
        for name in ("block_kv", "num_warps", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BlockSizes.{name} must be a positive int, got {value!r}")
        rows = self.block_rows
        if rows is not None and (not isinstance(rows, int) or isinstance(rows, bool) or rows <= 0):
            raise ValueError(f"BlockSizes.block_rows must be a positive int or None, got {rows!r}")
        splits = self.num_splits
        if splits is not None and (not isinstance(splits, int) or isinstance(splits, bool)
                                   or splits <= 0):
            raise ValueError(
                f"BlockSizes.num_splits must be a positive int or None, got {splits!r}")

    def rows_for(self, num_rows: int) -> int:
        if self.block_rows is not None:
            return self.block_rows
        return min(_MAX_AUTO_ROWS, max(16, 1 << max(0, num_rows - 1).bit_length()))


# ------------------------------------------------------------------------------------------------
# validation


def _validate(q, k, v, lengths, sm_scale):
    if q.ndim != 4:
        raise ValueError(f"q must be [P, K, R, D], got shape {q.shape}")
    if k.ndim != 4:
        raise ValueError(f"k must be [P, K, S, D], got shape {k.shape}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {k.shape}, got {v.shape}")
    P, K, _, D = q.shape
    if k.shape[0] != P or k.shape[1] != K or k.shape[3] != D:
        raise ValueError(
            f"k must be [P={P}, K={K}, S, D={D}] to match q {q.shape}, got shape {k.shape}")
    if lengths.shape != (P,):
        raise ValueError(f"lengths must have shape (P,) = ({P},), got {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"lengths must be an integer array, got dtype {lengths.dtype}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be a floating array, got dtype {x.dtype}")
    if k.dtype != v.dtype:
        raise ValueError(f"k and v must share a dtype, got k {k.dtype} and v {v.dtype}")
    if D == 0 or k.shape[2] == 0:
        raise ValueError(f"k must have a non-empty S and D, got shape {k.shape}")
    if sm_scale is None:
        return 1.0 / math.sqrt(D)
    if not isinstance(sm_scale, numbers.Real) or not math.isfinite(sm_scale):
        raise ValueError(f"sm_scale must be a finite python number or None, got {sm_scale!r}")
    return float(sm_scale)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _validate_blocks(block_kv: int, block_rows: int, head_dim: int, backend: str) -> None:
    if backend == "gpu":
        for name, value in (("block_kv", block_kv), ("block_rows", block_rows)):
            if not _is_pow2(value) or value < 16:
                raise ValueError(
                    f"BlockSizes.{name} must be a power of two >= 16 on GPU, got {value}")
        if not _is_pow2(head_dim):
            raise ValueError(f"head dim D must be a power of two on GPU, got {head_dim}")
    elif backend == "tpu":
        if block_kv % 128:
            raise ValueError(
                f"BlockSizes.block_kv must be a multiple of 128 on TPU, got {block_kv}")
        if block_rows % 8:
            raise ValueError(
                f"BlockSizes.block_rows must be a multiple of 8 on TPU, got {block_rows}")


# ------------------------------------------------------------------------------------------------
# reference


def prefix_decode_attention_reference(q_PxKxRxD, k_PxKxSxD, v_PxKxSxD, lengths_P, *,
                                      sm_scale=None):
    """Plain-JAX shared-prefix attention; returns (out [P,K,R,D] q.dtype, lse [P,K,R] f32)."""
    q, k, v = q_PxKxRxD, k_PxKxSxD, v_PxKxSxD
    lengths = jnp.asarray(lengths_P)
    scale = _validate(q, k, v, lengths, sm_scale)
    S = k.shape[2]
    scores = jnp.einsum("pkrd,pksd->pkrs", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    valid = jnp.arange(S)[None, :] < jnp.clip(lengths, 0, S)[:, None]  # [P, S]
    valid = valid[:, None, None, :]
    scores = jnp.where(valid, scores, -jnp.inf)
    m = jnp.max(scores, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(valid, jnp.exp(scores - m_safe), 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("pkrs,pksd->pkrd", p, v.astype(jnp.float32))
    empty = l == 0.0
    out = out / jnp.where(empty, 1.0, l)
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(jnp.where(empty, 1.0, l)))[..., 0]
    return out.astype(q.dtype), lse.astype(jnp.float32)


def merge_attention(out_a, lse_a, out_b, lse_b):
    """Merges two attentions over disjoint key sets: returns (out like out_a, lse float32).

    ``out_*`` are [..., D] and ``lse_*`` the matching [...] natural-log sum-exp. An empty part
    (lse = -inf, out = 0) is the identity; both empty gives out = 0, lse = -inf.
    """
    if out_a.shape != out_b.shape:
        raise ValueError(f"out_a and out_b must share a shape, got {out_a.shape} and {out_b.shape}")
    if lse_a.shape != lse_b.shape or lse_a.shape != out_a.shape[:-1]:
        raise ValueError(
            f"lse_a and lse_b must both have shape {out_a.shape[:-1]}, got {lse_a.shape} and "
            f"{lse_b.shape}")
    lse_a = lse_a.astype(jnp.float32)
    lse_b = lse_b.astype(jnp.float32)
    lse = jnp.logaddexp(lse_a, lse_b)
    finite = jnp.isfinite(lse)
    lse_safe = jnp.where(finite, lse, 0.0)
    w_a = jnp.where(finite, jnp.exp(lse_a - lse_safe), 0.0)[..., None]
    w_b = jnp.where(finite, jnp.exp(lse_b - lse_safe), 0.0)[..., None]
    out = w_a * out_a.astype(jnp.float32) + w_b * out_b.astype(jnp.float32)
    return out.astype(out_a.dtype), lse


# ------------------------------------------------------------------------------------------------
# splitting the prefix


def _num_sms(backend: str) -> int:
    if backend == "gpu":
        count = getattr(jax.devices()[0], "core_count", None)
        if isinstance(count, int) and count > 0:
            return count
    return _DEFAULT_SMS


def _split_plan(num_programs: int, num_kv_blocks: int, rows: int, itemsize: int,
                block_sizes: BlockSizes, backend: str) -> tuple[int, int]:
    """(splits, kv blocks per split) for one call; see ``BlockSizes.num_splits`` for the rule."""
    splits = block_sizes.num_splits
    if splits is None:
        if backend == "tpu":
            splits = 1
        else:
            want = pl.cdiv(_PROGRAMS_PER_SM * _num_sms(backend), num_programs)
            by_length = num_kv_blocks // _MIN_BLOCKS_PER_SPLIT
            # float32 partials of all (padded) rows, written and read back by the merge: at most
            # half the K/V bytes of the stream
            by_traffic = num_kv_blocks * block_sizes.block_kv * itemsize // (8 * rows)
            splits = min(want, by_length, by_traffic)
    splits = max(1, min(splits, num_kv_blocks))
    per_split = pl.cdiv(num_kv_blocks, splits)
    # Equal contiguous ranges; rounding up the range may leave fewer, never empty-by-shape, splits.
    return pl.cdiv(num_kv_blocks, per_split), per_split


def num_splits_for(q_shape: tuple[int, ...], kv_len: int, dtype: DTypeLike,
                   block_sizes: BlockSizes | None = None, backend: str | None = None) -> int:
    """The number of KV splits the Pallas kernel uses for q [P, K, R, D] over S = kv_len keys
    of ``dtype`` (K/V's dtype).

    ``backend`` is "gpu", "tpu" or "interpret" (default: this process's backend, with CPU read as
    "interpret"). Benchmarks report it; the kernel computes the same plan internally.
    """
    if block_sizes is None:
        block_sizes = BlockSizes()
    if backend is None:
        backend = jax.default_backend()
        backend = backend if backend in ("gpu", "tpu") else "interpret"
    if backend not in ("gpu", "tpu", "interpret"):
        raise ValueError(f"backend must be 'gpu', 'tpu' or 'interpret', got {backend!r}")
    if len(q_shape) != 4 or kv_len <= 0:
        raise ValueError(
            f"q_shape must be [P, K, R, D] and kv_len positive, got {q_shape} and {kv_len}")
    P, K, R, _ = q_shape
    block_rows = block_sizes.rows_for(R)
    row_blocks = pl.cdiv(R, block_rows)
    num_programs = max(1, P * K * row_blocks)
    num_kv_blocks = pl.cdiv(kv_len, block_sizes.block_kv)
    splits, _ = _split_plan(num_programs, num_kv_blocks, max(1, row_blocks) * block_rows,
                            jnp.dtype(dtype).itemsize, block_sizes, backend)
    return splits


def _merge_splits(out_parts, lse_parts):
    """Exact log-sum-exp combination over axis 2 of [P, K, C, R, D] / [P, K, C, R] partials."""
    m = jnp.max(lse_parts, axis=2, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.exp(lse_parts - m_safe)  # an empty split (lse = -inf) weighs exactly 0
    total = jnp.sum(w, axis=2, keepdims=True)
    empty = total == 0.0
    total_safe = jnp.where(empty, 1.0, total)
    out = jnp.sum(w[..., None] * out_parts, axis=2) / total_safe[:, :, 0, :, None]
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(total_safe))[:, :, 0]
    return out, lse


# ------------------------------------------------------------------------------------------------
# Pallas kernel


def _kernel(len_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, sm_scale, block_kv, num_kv_blocks,
            blocks_per_split, scalar_prefetch):
    # q_ref/o_ref: [block_rows, D]; k_ref/v_ref: [S_pad, D] (one (p, k) prefix stream);
    # lse_ref: [block_rows, lanes] (the row's lse broadcast over `lanes`: 1, or 128 on TPU);
    # len_ref: lengths [P] in SMEM (TPU) or this prompt's scalar (GPU, interpreter).
    # Grid (P, K, splits, row blocks): this program covers kv blocks [first, first + per split).
    length = len_ref[pl.program_id(0)] if scalar_prefetch else len_ref[()]
    length = jnp.clip(length, 0, num_kv_blocks * block_kv)
    first = pl.program_id(2) * blocks_per_split
    block_rows, head_dim = q_ref.shape
    q = q_ref[...]

    def body(i, carry):
        acc, m_prev, l_prev = carry
        start = pl.multiple_of(i * block_kv, block_kv)
        k = k_ref[pl.ds(start, block_kv), :]
        v = v_ref[pl.ds(start, block_kv), :]
        s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32) * sm_scale  # [rows, kv]
        pos = start + jax.lax.broadcasted_iota(jnp.int32, (block_rows, block_kv), 1)
        s = jnp.where(pos < length, s, _MASK_VALUE)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        correction = jnp.exp(m_prev - m_next)
        p = jnp.exp(s - m_next)
        l_next = correction * l_prev + jnp.sum(p, axis=1, keepdims=True)
        pv = jax.lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32)
        return correction * acc + pv, m_next, l_next

    init = (jnp.zeros((block_rows, head_dim), jnp.float32),
            jnp.full((block_rows, 1), _MASK_VALUE, jnp.float32),
            jnp.zeros((block_rows, 1), jnp.float32))
    # Only blocks holding at least one valid key are visited, so every visited block sets a real
    # running max for every row; a split wholly past the length (or a prompt with length 0)
    # visits none and keeps l == 0, i.e. writes the merge identity out = 0, lse = -inf.
    last = jnp.minimum(jnp.minimum(first + blocks_per_split, num_kv_blocks),
                       pl.cdiv(length, block_kv))
    acc, m, l = jax.lax.fori_loop(first, jnp.maximum(first, last), body, init)
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    o_ref[...] = (acc / l_safe).astype(o_ref.dtype)
    lse = jnp.where(empty, -jnp.inf, m + jnp.log(l_safe))
    lse_ref[...] = jnp.broadcast_to(lse, lse_ref.shape)


def _pallas_prefix_attention(q, k, v, lengths, *, sm_scale, block_sizes, backend, interpret):
    P, K, R, D = q.shape
    S = k.shape[2]
    if P * K * R == 0:  # nothing to launch
        return jnp.zeros(q.shape, q.dtype), jnp.full((P, K, R), -jnp.inf, jnp.float32)
    block_kv = block_sizes.block_kv
    block_rows = block_sizes.rows_for(R)
    _validate_blocks(block_kv, block_rows, D, backend)
    s_pad = pl.cdiv(S, block_kv) * block_kv
    r_pad = pl.cdiv(R, block_rows) * block_rows
    num_kv_blocks = s_pad // block_kv
    splits, blocks_per_split = _split_plan(P * K * (r_pad // block_rows), num_kv_blocks,
                                           r_pad, k.dtype.itemsize, block_sizes, backend)
    if s_pad != S:
        pad = ((0, 0), (0, 0), (0, s_pad - S), (0, 0))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    if r_pad != R:
        q = jnp.pad(q, ((0, 0), (0, 0), (0, r_pad - R), (0, 0)))
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, S)
    # Row blocks innermost: consecutive programs share one kv range (no TPU re-fetch, GPU L2 hits).
    grid = (P, K, splits, r_pad // block_rows)
    scalar_prefetch = backend == "tpu"
    kernel = functools.partial(_kernel, sm_scale=sm_scale, block_kv=block_kv,
                               num_kv_blocks=num_kv_blocks, blocks_per_split=blocks_per_split,
                               scalar_prefetch=scalar_prefetch)
    sq = pl.squeezed
    # TPU keeps the lse lane-dense (broadcast over 128 lanes, as Mosaic's own flash attention
    # stores its softmax statistics); elsewhere a trailing 1.
    lanes = 128 if backend == "tpu" else 1
    # One split writes the final output directly; several write float32 partials to merge.
    out_dtype = q.dtype if splits == 1 else jnp.float32
    out_shape = (jax.ShapeDtypeStruct((P, K, splits, r_pad, D), out_dtype),
                 jax.ShapeDtypeStruct((P, K, splits, r_pad, lanes), jnp.float32))
    if scalar_prefetch:  # TPU: lengths live in SMEM; index maps receive the prefetched ref
        from jax.experimental.pallas import tpu as pltpu

        def q_map(p, h, c, r, _lengths):
            return (p, h, r, 0)

        def out_map(p, h, c, r, _lengths):
            return (p, h, c, r, 0)

        # The whole (p, k) stream is one block whose index ignores the split and row axes: it is
        # DMA'd once per (p, k), and each split computes on its own range of it.
        def kv_map(p, h, c, r, _lengths):
            return (p, h, 0, 0)

        grid_spec = pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=grid,
            in_specs=[pl.BlockSpec((sq, sq, block_rows, D), q_map),
                      pl.BlockSpec((sq, sq, s_pad, D), kv_map),
                      pl.BlockSpec((sq, sq, s_pad, D), kv_map)],
            out_specs=[pl.BlockSpec((sq, sq, sq, block_rows, D), out_map),
                       pl.BlockSpec((sq, sq, sq, block_rows, lanes), out_map)],
        )
        # Only P and K are "parallel" (megacore may shard them): sharding the split or row axis
        # would make both cores fetch the same stream.
        compiler_params = None if interpret else pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary", "arbitrary"))
        call = pl.pallas_call(kernel, out_shape=out_shape, grid_spec=grid_spec,
                              compiler_params=compiler_params, interpret=interpret)
    else:  # GPU (Triton) and the generic interpreter: this prompt's length as a scalar block
        def q_map(p, h, c, r):
            return (p, h, r, 0)

        def out_map(p, h, c, r):
            return (p, h, c, r, 0)

        def kv_map(p, h, c, r):
            return (p, h, 0, 0)

        compiler_params = None
        if backend == "gpu" and not interpret:
            from jax.experimental.pallas import triton as plgpu

            compiler_params = plgpu.CompilerParams(num_warps=block_sizes.num_warps,
                                                   num_stages=block_sizes.num_stages)
        call = pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=grid,
            in_specs=[pl.BlockSpec((sq,), lambda p, h, c, r: (p,)),
                      pl.BlockSpec((sq, sq, block_rows, D), q_map),
                      pl.BlockSpec((sq, sq, s_pad, D), kv_map),
                      pl.BlockSpec((sq, sq, s_pad, D), kv_map)],
            out_specs=[pl.BlockSpec((sq, sq, sq, block_rows, D), out_map),
                       pl.BlockSpec((sq, sq, sq, block_rows, lanes), out_map)],
            compiler_params=compiler_params,
            interpret=interpret,
        )
    out, lse = call(lengths, q, k, v)
    out, lse = out[:, :, :, :R], lse[:, :, :, :R, 0]
    if splits == 1:
        return out[:, :, 0], lse[:, :, 0]
    out, lse = _merge_splits(out, lse)
    return out.astype(q.dtype), lse


def prefix_decode_attention(q_PxKxRxD, k_PxKxSxD, v_PxKxSxD, lengths_P, *, sm_scale=None,
                            block_sizes: BlockSizes | None = None, impl: str = "auto",
                            backend: str | None = None):
    """Attention of R stacked query rows per (prompt, kv head) over that prompt's shared prefix.

    Returns (out [P, K, R, D] in q's dtype, lse [P, K, R] float32 natural log); prompts with
    length 0 give out = 0, lse = -inf. See the module docstring for layout and merging.
    ``backend`` is the platform compiled for ("cpu", "gpu", "tpu"; default: this process's
    backend): ahead-of-time compilation for a TPU on a CPU host passes "tpu".
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if block_sizes is None:
        block_sizes = BlockSizes()
    elif not isinstance(block_sizes, BlockSizes):
        raise ValueError(f"block_sizes must be a BlockSizes or None, got {type(block_sizes)}")
    q, k, v = q_PxKxRxD, k_PxKxSxD, v_PxKxSxD
    lengths = jnp.asarray(lengths_P)
    scale = _validate(q, k, v, lengths, sm_scale)
    backend = jax.default_backend() if backend is None else backend
    if impl == "auto":
        impl = "pallas" if backend in ("gpu", "tpu") else "reference"
    if impl == "reference":
        return prefix_decode_attention_reference(q, k, v, lengths, sm_scale=scale)
    if impl == "pallas":
        if backend not in ("gpu", "tpu"):
            raise ValueError(
                f"impl='pallas' needs a gpu or tpu backend, got {backend!r}; use 'interpret'")
        return _pallas_prefix_attention(q, k, v, lengths, sm_scale=scale, block_sizes=block_sizes,
                                        backend=backend, interpret=False)
    return _pallas_prefix_attention(q, k, v, lengths, sm_scale=scale, block_sizes=block_sizes,
                                    backend="interpret", interpret=True)
