"""Shared-prefix decode attention: reference vs numpy, interpret-mode Pallas vs reference (split-KV
included), merge, the split plan, GPU/TPU lowerings and (on an accelerator) the compiled kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sftrl.kernels import decode_attention as da


def _rand(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def _naive(q, k, v, lengths, sm_scale=None):
    """float64 numpy: q [P,K,R,D], k/v [P,K,S,D] -> out [P,K,R,D], natural lse [P,K,R]."""
    q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
    P, K, R, D = q.shape
    scale = 1.0 / np.sqrt(D) if sm_scale is None else sm_scale
    out = np.zeros((P, K, R, D))
    lse = np.full((P, K, R), -np.inf)
    for p in range(P):
        n = int(min(max(int(lengths[p]), 0), k.shape[2]))
        if n == 0:
            continue
        s = np.einsum("krd,ksd->krs", q[p], k[p, :, :n]) * scale
        m = s.max(-1, keepdims=True)
        e = np.exp(s - m)
        out[p] = np.einsum("krs,ksd->krd", e / e.sum(-1, keepdims=True), v[p, :, :n])
        lse[p] = (m + np.log(e.sum(-1, keepdims=True)))[..., 0]
    return out, lse


def _assert_lse(lse, want, atol):
    lse = np.asarray(lse)
    assert lse.dtype == np.float32
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(lse[fin], want[fin], atol=atol, rtol=atol)


def test_reference_matches_numpy_gqa_decode():
    """Per-sample GQA decode over the prefix, stacked as R = N * G rows per (prompt, kv head)."""
    rng = np.random.default_rng(0)
    P, N, K, G, S, D = 3, 2, 2, 4, 40, 16
    q_PxNxHxD = _rand(rng, (P, N, K * G, D))
    k, v = _rand(rng, (P, K, S, D)), _rand(rng, (P, K, S, D))
    lengths = np.array([0, 17, S], np.int32)
    # row r of kv head h: sample r // G, query head h * G + r % G
    q = q_PxNxHxD.reshape(P, N, K, G, D).transpose(0, 2, 1, 3, 4).reshape(P, K, N * G, D)
    out, lse = da.prefix_decode_attention_reference(q, k, v, jnp.asarray(lengths))
    # independent per-sample, per-head dense attention in float64
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q_PxNxHxD, k, v))
    for p in range(P):
        for n in range(N):
            for h in range(K * G):
                row = n * G + h % G
                L = lengths[p]
                if L == 0:
                    assert np.all(np.asarray(out[p, h // G, row]) == 0)
                    assert np.isneginf(lse[p, h // G, row])
                    continue
                s = kn[p, h // G, :L] @ qn[p, n, h] / np.sqrt(D)
                w = np.exp(s - s.max())
                np.testing.assert_allclose(out[p, h // G, row], w @ vn[p, h // G, :L] / w.sum(),
                                           atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(lse[p, h // G, row], s.max() + np.log(w.sum()),
                                           atol=1e-5, rtol=1e-5)
    # and the vectorised numpy helper the other tests use agrees, with a custom scale too
    want, want_lse = _naive(q, k, v, lengths, sm_scale=0.3)
    out, lse = da.prefix_decode_attention_reference(q, k, v, jnp.asarray(lengths), sm_scale=0.3)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
    _assert_lse(lse, want_lse, 1e-5)


# (G, D, N, S, block_kv, block_rows, lengths, dtype); R = N * G; default (auto) splits. Small R,
# padding and several row blocks with explicit splits are in SPLIT_CASES below.
CASES = [
    (1, 64, 1, 200, 128, None, [0, 131, 200], jnp.float32),      # R=1, S % block_kv != 0
    (8, 64, 16, 70, 32, None, [70, 1, 45], jnp.float32),          # R=128, one row block
    (8, 64, 3, 80, 32, 16, [0, 80, 33], jnp.bfloat16),            # R=24 over 2 row blocks
    (8, 64, 64, 40, 16, None, [23, 40], jnp.float32),             # R=512: 4 row blocks of 128
]


@pytest.mark.parametrize("G,D,N,S,block_kv,block_rows,lengths,dtype", CASES)
def test_interpret_matches_reference(G, D, N, S, block_kv, block_rows, lengths, dtype):
    rng = np.random.default_rng(G * 1000 + N)
    P, K = len(lengths), 2
    q = _rand(rng, (P, K, N * G, D), dtype)
    k, v = _rand(rng, (P, K, S, D), dtype), _rand(rng, (P, K, S, D), dtype)
    lengths = jnp.asarray(lengths, jnp.int32)
    bs = da.BlockSizes(block_kv=block_kv, block_rows=block_rows)
    out, lse = da.prefix_decode_attention(q, k, v, lengths, block_sizes=bs, impl="interpret")
    ref, ref_lse = da.prefix_decode_attention_reference(q, k, v, lengths)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == q.shape[:3]
    assert not np.isnan(np.asarray(out, np.float32)).any() and not np.isnan(lse).any()
    if dtype == jnp.float32:
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
        _assert_lse(lse, np.asarray(ref_lse), 1e-5)
    else:  # bf16 inputs: the kernel rounds the probabilities to bf16 before the PV matmul
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                                   atol=2e-2, rtol=2e-2)
        _assert_lse(lse, np.asarray(ref_lse), 1e-3)
        want, want_lse = _naive(q, k, v, np.asarray(lengths))
        np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=2e-2, rtol=2e-2)
        _assert_lse(lse, want_lse, 1e-3)
    zero = np.asarray(lengths) == 0
    assert np.all(np.asarray(out, np.float32)[zero] == 0)


# (G, D, N, S, block_kv, block_rows, splits, want_splits, lengths, dtype); splits None = auto.
# Lengths: 0, inside the first split, not a multiple of block_kv, the whole prefix.
SPLIT_CASES = [
    (1, 64, 1, 200, 16, None, 2, 2, [0, 5, 131, 200], jnp.float32),    # GQA 1, N=1, S % bkv
    (4, 128, 3, 100, 16, None, 3, 3, [37, 0, 100, 15], jnp.float32),   # D 128, R=12 padded
    (8, 64, 8, 96, 16, None, 7, 6, [96, 1, 50, 0], jnp.bfloat16),      # 7 -> 6 ranges of 1
    (4, 64, 4, 200, 16, None, None, 5, [200, 0, 17, 9], jnp.float32),  # auto: 6 -> 5
    (4, 64, 4, 256, 16, None, None, 4, [256, 3, 0, 100], jnp.bfloat16),  # auto, bf16: 4
    (1, 128, 64, 72, 16, None, 2, 2, [72, 0, 40], jnp.bfloat16),       # N=64, R=64
    (8, 64, 2, 50, 16, None, 7, 4, [49, 3], jnp.float32),              # capped at 4 kv blocks
    (4, 64, 6, 96, 32, 8, 3, 3, [96, 31, 0], jnp.float32),             # 3 row blocks x 3 splits
    (4, 64, 16, 130, 32, None, None, 1, [130, 33, 0], jnp.float32),    # auto keeps 1 (R=64)
]


@pytest.mark.parametrize("G,D,N,S,block_kv,block_rows,splits,want_splits,lengths,dtype",
                         SPLIT_CASES)
def test_interpret_split_kv_matches_reference_and_numpy(G, D, N, S, block_kv, block_rows, splits,
                                                        want_splits, lengths, dtype):
    rng = np.random.default_rng(S * 10 + N)
    P, K = len(lengths), 2
    q = _rand(rng, (P, K, N * G, D), dtype)
    k, v = _rand(rng, (P, K, S, D), dtype), _rand(rng, (P, K, S, D), dtype)
    bs = da.BlockSizes(block_kv=block_kv, block_rows=block_rows, num_splits=splits)
    assert da.num_splits_for(q.shape, S, dtype, bs, "interpret") == want_splits
    lens = jnp.asarray(lengths, jnp.int32)
    out, lse = da.prefix_decode_attention(q, k, v, lens, block_sizes=bs, impl="interpret")
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == q.shape[:3] and lse.dtype == jnp.float32
    got = np.asarray(out, np.float32)
    assert not np.isnan(got).any() and not np.isnan(np.asarray(lse)).any()
    ref, ref_lse = da.prefix_decode_attention_reference(q, k, v, lens)
    want, want_lse = _naive(q, k, v, np.asarray(lengths))
    tol = 1e-5 if dtype == jnp.float32 else 2e-2  # bf16: probabilities rounded before PV
    np.testing.assert_allclose(got, np.asarray(ref, np.float32), atol=tol, rtol=tol)
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    lse_tol = 1e-5 if dtype == jnp.float32 else 1e-3
    _assert_lse(lse, np.asarray(ref_lse), lse_tol)
    _assert_lse(lse, want_lse, lse_tol)
    zero = np.asarray(lengths) == 0
    assert np.all(got[zero] == 0) and np.all(np.isneginf(np.asarray(lse)[zero]))


def test_split_plan_rule():
    """The auto rule of BlockSizes.num_splits, and explicit values capped / evened out."""
    plan = da._split_plan
    # explicit: capped at the kv blocks; equal ranges of ceil(blocks / splits)
    assert plan(1, 20, 16, 2, da.BlockSizes(num_splits=7), "gpu") == (7, 3)
    assert plan(1, 16, 16, 2, da.BlockSizes(num_splits=7), "gpu") == (6, 3)
    assert plan(1, 3, 16, 2, da.BlockSizes(num_splits=64), "gpu") == (3, 1)
    assert plan(1000, 16, 16, 2, da.BlockSizes(num_splits=1), "gpu") == (1, 16)
    assert plan(1, 16, 16, 2, da.BlockSizes(num_splits=5), "tpu") == (4, 4)
    # auto on TPU: never split
    assert plan(1, 64, 16, 2, da.BlockSizes(), "tpu") == (1, 64)
    # auto on GPU (132 SMs assumed off-GPU), bf16, K=8, G=4, D=128, S=2048, block_kv=128:
    def auto(P, N, S=2048, dtype=jnp.bfloat16, sms_backend="interpret"):
        return da.num_splits_for((P, 8, N * 4, 128), S, dtype, da.BlockSizes(), sms_backend)

    assert auto(1, 16) == 8     # 8 programs: want 33, 16 blocks // 2 = 8, traffic 8
    assert auto(1, 4) == 8      # R=16: capped by length (2 blocks per split)
    assert auto(8, 64) == 2     # 128 programs: want 3; traffic 2048 * 2 // (8 * 256) = 2
    assert auto(2, 256) == 1    # R_pad=1024: the partials would outweigh the split's gain
    assert auto(64, 16) == 1    # 512 programs already fill the GPU
    assert auto(1, 32, S=256) == 1  # 2 kv blocks: no split shorter than 2 blocks
    assert auto(1, 32, S=4096, dtype=jnp.float32) == 16  # traffic: 4096 * 4 // (8 * 128)
    assert auto(1, 16, sms_backend="tpu") == 1
    with pytest.raises(ValueError, match="backend"):
        da.num_splits_for((1, 8, 4, 128), 64, jnp.float32, None, "cuda")
    with pytest.raises(ValueError, match="q_shape"):
        da.num_splits_for((8, 4, 128), 64, jnp.float32, None, "gpu")


def test_interpret_tpu_grid_spec_and_jit_dynamic_lengths():
    """The TPU code path (scalar-prefetched lengths) runs in the interpreter; lengths are traced."""
    rng = np.random.default_rng(1)
    P, K, R, S, D = 3, 2, 8, 300, 64
    q, k, v = _rand(rng, (P, K, R, D)), _rand(rng, (P, K, S, D)), _rand(rng, (P, K, S, D))
    lengths = jnp.asarray([0, 129, 300], jnp.int32)
    ref, ref_lse = da.prefix_decode_attention_reference(q, k, v, lengths)
    for splits in (1, 3):  # 3 kv blocks of 128; split 2 is past the ragged lengths 0 and 129
        out, lse = da._pallas_prefix_attention(
            q, k, v, lengths, sm_scale=1 / 8,
            block_sizes=da.BlockSizes(block_kv=128, num_splits=splits), backend="tpu",
            interpret=True)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
        _assert_lse(lse, np.asarray(ref_lse), 1e-5)

    fn = jax.jit(lambda lengths: da.prefix_decode_attention(
        q, k, v, lengths, block_sizes=da.BlockSizes(block_kv=64), impl="interpret"))
    for lens in ([5, 0, 64], [300, 299, 1]):
        lens = jnp.asarray(lens, jnp.int32)
        out, lse = fn(lens)
        ref, ref_lse = da.prefix_decode_attention_reference(q, k, v, lens)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
        _assert_lse(lse, np.asarray(ref_lse), 1e-5)


def test_auto_is_reference_on_cpu():
    rng = np.random.default_rng(2)
    q, k = _rand(rng, (1, 1, 2, 8)), _rand(rng, (1, 1, 5, 8))
    lengths = jnp.asarray([3], jnp.int32)
    out, lse = da.prefix_decode_attention(q, k, k, lengths)
    ref, ref_lse = da.prefix_decode_attention_reference(q, k, k, lengths)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(lse, ref_lse)


@pytest.mark.parametrize("impl", ["reference", "interpret"])
def test_merge_prefix_and_suffix_equals_full_attention(impl):
    """attention over [prefix ∪ suffix] == merge(prefix part, per-sample suffix part)."""
    rng = np.random.default_rng(3)
    P, N, K, G, S, T, D = 3, 3, 2, 2, 40, 24, 32
    R = N * G
    q = _rand(rng, (P, K, R, D))
    k, v = _rand(rng, (P, K, S, D)), _rand(rng, (P, K, S, D))
    ks, vs = _rand(rng, (P * N, K, T, D)), _rand(rng, (P * N, K, T, D))  # per-sample suffix
    prefix_len = np.array([0, 33, S], np.int32)                   # an empty prefix
    suffix_len = np.array([5, 0, T, 0, 1, 17, 0, 9, T], np.int32)  # empty suffixes; p0/n1 empty
    bs = da.BlockSizes(block_kv=16)
    pre, pre_lse = da.prefix_decode_attention(q, k, v, jnp.asarray(prefix_len), impl=impl,
                                              block_sizes=bs)
    # suffix: each sample is its own "prompt" with its G query rows of kv head k
    q_s = q.reshape(P, K, N, G, D).transpose(0, 2, 1, 3, 4).reshape(P * N, K, G, D)
    suf, suf_lse = da.prefix_decode_attention_reference(q_s, ks, vs, jnp.asarray(suffix_len))
    suf = suf.reshape(P, N, K, G, D).transpose(0, 2, 1, 3, 4).reshape(P, K, R, D)
    suf_lse = suf_lse.reshape(P, N, K, G).transpose(0, 2, 1, 3).reshape(P, K, R)
    out, lse = da.merge_attention(pre, pre_lse, suf, suf_lse)
    assert not np.isnan(out).any() and not np.isnan(lse).any()

    # dense float64 attention over the concatenated valid keys of each sample
    qn = np.asarray(q, np.float64)
    kn, vn, ksn, vsn = (np.asarray(x, np.float64) for x in (k, v, ks, vs))
    for p in range(P):
        for n in range(N):
            b = p * N + n
            keys = np.concatenate([kn[p, :, :prefix_len[p]], ksn[b, :, :suffix_len[b]]], axis=1)
            vals = np.concatenate([vn[p, :, :prefix_len[p]], vsn[b, :, :suffix_len[b]]], axis=1)
            rows = slice(n * G, (n + 1) * G)
            if keys.shape[1] == 0:  # both empty: the merge identity
                assert np.all(np.asarray(out[p, :, rows]) == 0)
                assert np.all(np.isneginf(lse[p, :, rows]))
                continue
            s = np.einsum("kgd,ksd->kgs", qn[p, :, rows], keys) / np.sqrt(D)
            m = s.max(-1, keepdims=True)
            e = np.exp(s - m)
            want = np.einsum("kgs,ksd->kgd", e / e.sum(-1, keepdims=True), vals)
            np.testing.assert_allclose(out[p, :, rows], want, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(lse[p, :, rows], (m + np.log(e.sum(-1, keepdims=True)))
                                       [..., 0], atol=1e-5, rtol=1e-5)


def test_merge_with_empty_part_is_identity():
    rng = np.random.default_rng(4)
    out_a = _rand(rng, (2, 3, 8))
    lse_a = _rand(rng, (2, 3))
    empty_out, empty_lse = jnp.zeros_like(out_a), jnp.full((2, 3), -jnp.inf)
    for args in ((out_a, lse_a, empty_out, empty_lse), (empty_out, empty_lse, out_a, lse_a)):
        out, lse = da.merge_attention(*args)
        np.testing.assert_allclose(out, out_a, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(lse, lse_a, atol=1e-6, rtol=1e-6)
    out, lse = da.merge_attention(empty_out, empty_lse, empty_out, empty_lse)
    assert np.all(np.asarray(out) == 0) and np.all(np.isneginf(lse))


def test_errors_are_named():
    rng = np.random.default_rng(5)
    q, k = _rand(rng, (2, 2, 4, 16)), _rand(rng, (2, 2, 32, 16))
    lengths = jnp.asarray([3, 4], jnp.int32)
    f = da.prefix_decode_attention
    with pytest.raises(ValueError, match="impl"):
        f(q, k, k, lengths, impl="cuda")
    with pytest.raises(ValueError, match=r"^q "):
        f(q[0], k, k, lengths)
    with pytest.raises(ValueError, match=r"^k "):
        f(q, k[..., :8], k[..., :8], lengths)
    with pytest.raises(ValueError, match=r"^v "):
        f(q, k, k[:, :, :8], lengths)
    with pytest.raises(ValueError, match="lengths"):
        f(q, k, k, lengths[:1])
    with pytest.raises(ValueError, match="lengths"):
        f(q, k, k, lengths.astype(jnp.float32))
    with pytest.raises(ValueError, match="k and v"):
        f(q, k, k.astype(jnp.bfloat16), lengths)
    with pytest.raises(ValueError, match=r"^q "):
        f(q.astype(jnp.int32), k, k, lengths)
    with pytest.raises(ValueError, match="sm_scale"):
        f(q, k, k, lengths, sm_scale=float("nan"))
    with pytest.raises(ValueError, match="block_sizes"):
        f(q, k, k, lengths, block_sizes={"block_kv": 16}, impl="interpret")
    with pytest.raises(ValueError, match="impl='pallas'"):
        f(q, k, k, lengths, impl="pallas")
    with pytest.raises(ValueError, match=r"BlockSizes\.block_kv"):
        da.BlockSizes(block_kv=0)
    with pytest.raises(ValueError, match=r"BlockSizes\.block_rows"):
        da.BlockSizes(block_rows=-8)
    with pytest.raises(ValueError, match=r"BlockSizes\.num_warps"):
        da.BlockSizes(num_warps=0)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"BlockSizes\.num_splits"):
            da.BlockSizes(num_splits=bad)
    # backend constraints of the compiled lowerings, checked before lowering
    with pytest.raises(ValueError, match=r"BlockSizes\.block_kv.*GPU"):
        da._validate_blocks(48, 16, 64, "gpu")
    with pytest.raises(ValueError, match=r"BlockSizes\.block_rows.*GPU"):
        da._validate_blocks(32, 8, 64, "gpu")
    with pytest.raises(ValueError, match=r"head dim D.*GPU"):
        da._validate_blocks(32, 16, 96, "gpu")
    with pytest.raises(ValueError, match=r"BlockSizes\.block_kv.*TPU"):
        da._validate_blocks(64, 8, 64, "tpu")
    with pytest.raises(ValueError, match=r"BlockSizes\.block_rows.*TPU"):
        da._validate_blocks(128, 12, 64, "tpu")
    da._validate_blocks(128, 16, 128, "gpu")
    da._validate_blocks(128, 8, 96, "tpu")
    with pytest.raises(ValueError, match="out_a and out_b"):
        da.merge_attention(q, q[..., 0], q[:1], q[:1, ..., 0])
    with pytest.raises(ValueError, match="lse_a and lse_b"):
        da.merge_attention(q, q[..., 0], q, q)


def test_block_rows_auto():
    bs = da.BlockSizes()
    assert [bs.rows_for(r) for r in (1, 12, 16, 17, 64, 128, 512)] == [16, 16, 16, 32, 64, 128,
                                                                       128]
    assert da.BlockSizes(block_rows=8).rows_for(512) == 8


def test_lengths_outside_range_are_clamped():
    """A length above S means the whole prefix, a negative one none (custom sm_scale too)."""
    rng = np.random.default_rng(6)
    P, K, R, S, D = 2, 1, 4, 20, 16
    q, k, v = _rand(rng, (P, K, R, D)), _rand(rng, (P, K, S, D)), _rand(rng, (P, K, S, D))
    bs = da.BlockSizes(block_kv=16)
    out, lse = da.prefix_decode_attention(q, k, v, jnp.asarray([99, -3], jnp.int32),
                                          block_sizes=bs, impl="interpret", sm_scale=0.3)
    ref, ref_lse = da.prefix_decode_attention_reference(q, k, v, jnp.asarray([S, 0], jnp.int32),
                                                        sm_scale=0.3)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    _assert_lse(lse, np.asarray(ref_lse), 1e-5)


# (R, S, D, dtype, num_splits, splits used on GPU, on TPU)
LOWERING_CASES = [(1, 200, 64, jnp.float32, None, 1, 1),      # 2 kv blocks: auto keeps 1
                  (512, 1000, 128, jnp.bfloat16, None, 1, 1),  # auto: traffic cap on GPU
                  (16, 1000, 128, jnp.bfloat16, None, 4, 1),   # auto: 4 on GPU, 1 on TPU
                  (16, 1000, 128, jnp.bfloat16, 3, 3, 3),
                  (8, 300, 64, jnp.float32, 1, 1, 1)]


@pytest.mark.parametrize("R,S,D,dtype,splits,gpu_splits,tpu_splits", LOWERING_CASES)
def test_gpu_and_tpu_lowerings_trace(R, S, D, dtype, splits, gpu_splits, tpu_splits):
    """The Triton and Mosaic code paths lower to their custom calls (no GPU/TPU needed).

    This runs the Pallas -> Triton IR and Pallas -> Mosaic MLIR lowerings on this CPU via
    jax.export; it does not run the Triton or Mosaic compilers, nor the kernel itself.
    """
    from jax import export

    P, K = 2, 2
    args = (jax.ShapeDtypeStruct((P, K, R, D), dtype),
            jax.ShapeDtypeStruct((P, K, S, D), dtype),
            jax.ShapeDtypeStruct((P, K, S, D), dtype),
            jax.ShapeDtypeStruct((P,), jnp.int32))
    triton_ok = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    for backend, platform, target in (("gpu", "cuda", "__gpu$xla.gpu.triton"),
                                      ("tpu", "tpu", "tpu_custom_call")):
        def f(q, k, v, lengths, backend=backend):
            return da._pallas_prefix_attention(q, k, v, lengths, sm_scale=D ** -0.5,
                                               block_sizes=da.BlockSizes(num_splits=splits),
                                               backend=backend, interpret=False)

        exported = export.export(jax.jit(f), platforms=[platform],
                                 disabled_checks=[triton_ok])(*args)
        assert [a.shape for a in exported.out_avals] == [(P, K, R, D), (P, K, R)]
        mlir = exported.mlir_module()
        assert target in mlir
        used = gpu_splits if backend == "gpu" else tpu_splits
        assert da.num_splits_for((P, K, R, D), S, dtype, da.BlockSizes(num_splits=splits),
                                 backend) == used
        # the kernel's outputs carry the split axis: [P, K, splits, R_pad, D] and its lse
        r_pad = -(-R // da.BlockSizes().rows_for(R)) * da.BlockSizes().rows_for(R)
        lanes = 128 if backend == "tpu" else 1
        assert f"tensor<{P}x{K}x{used}x{r_pad}x{lanes}xf32>" in mlir


def test_benchmark_script_runs_on_cpu(tmp_path):
    import json

    from scripts import load_benchmark

    module = load_benchmark("decode_attention")
    rows = module.main(["--prompts=1", "--kv-heads=2", "--samples=2", "--group=2", "--prefix=64",
                        "--dim=16", "--iters=2", "--warmup=1", f"--out={tmp_path}"])
    assert json.loads((tmp_path / "decode_attention.json").read_text()) == rows
    assert [r["impl"] for r in rows] == ["reference"] and rows[0]["gb_per_s"] > 0
    assert (tmp_path / "decode_attention.md").read_text().startswith("| impl |")


ACCELERATOR = jax.default_backend() in ("gpu", "tpu")


@pytest.mark.skipif(not ACCELERATOR, reason="the compiled kernel needs a GPU or TPU")
@pytest.mark.parametrize("splits", [None, 3])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("N,G,S,D", [(1, 1, 128, 64), (16, 4, 1000, 128), (64, 8, 2048, 128),
                                     (7, 4, 300, 64)])
def test_compiled_kernel_matches_float64_on_accelerator(dtype, N, G, S, D, splits):
    """The Triton / Mosaic build (not the interpreter) on ragged prefixes, empty ones included;
    the default (auto) split plan and a forced 3-way split."""
    rng = np.random.default_rng(N * S + D)
    P, K = 3, 2
    q = _rand(rng, (P, K, N * G, D), dtype)
    k, v = _rand(rng, (P, K, S, D), dtype), _rand(rng, (P, K, S, D), dtype)
    lengths = np.array([0, S // 3 + 1, S], np.int32)
    block_kv = 128 if jax.default_backend() == "tpu" else 64
    bs = da.BlockSizes(block_kv=block_kv, num_splits=splits)
    out, lse = jax.jit(lambda *a: da.prefix_decode_attention(
        *a, block_sizes=bs, impl="pallas"))(q, k, v, jnp.asarray(lengths))
    want_out, want_lse = _naive(q, k, v, lengths)
    # bf16 probabilities before the PV product (as flash attention); TF32 dots for float32
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-3
    got = np.asarray(out, np.float64)
    assert np.all(np.isfinite(got))
    assert np.linalg.norm(got - want_out) <= tol * np.linalg.norm(want_out)
    np.testing.assert_array_equal(got[0], 0.0)  # the empty prefix
    _assert_lse(lse, want_lse, atol=tol)
