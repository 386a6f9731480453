"""The Llama-family decoder (Llama 3, Mistral-NeMo, Qwen3) in Flax linen.

Why linen and not NNX: parameters are a plain pytree of arrays, so the jitted steps take and return
them with explicit `in_shardings`/`out_shardings`, orbax saves them as they are, Hugging Face
names map onto dictionary paths one to one, and `nn.scan` + `nn.remat` over the layers keep
compile time flat in depth (the MaxText recipe). Logical axis names on every parameter and
activation are resolved to the mesh by `sftrl.sharding`.

Numerics follow transformers: RMSNorm and softmax in float32, RoPE tables in float32 (non-
interleaved halves), logits returned in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sftrl.models.attention import (
    RESIDUAL_NAMES,
    causal_attention,
    query_blocked_attention,
    resolve_impl,
    shared_prefix_attention,
)
from sftrl.models.kv_cache import KVCache, SharedPrefixCache
from sftrl.models.model_config import ModelConfig
from sftrl.sharding import Layout

Params = Any
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    # also saves flash attention's output and log-sum-exp (its custom VJP's residuals): without
    # them the backward pass would run the attention forward again
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(*RESIDUAL_NAMES),
    ),
}


def _init_normal(stddev: float = 0.02):
    return nn.initializers.normal(stddev)


class _Sharded(nn.Module):
    """Base with the knobs every block shares."""

    config: ModelConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    layout: Layout | None = None
    # Training self-attention: a name in attention.ATTENTION_IMPLS; Transformer resolves "auto"
    # per call (cuDNN on GPU for unpacked half-precision batches, else flash) for its layers.
    attention: str = "auto"

    def constrain(self, x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        return x if self.layout is None else self.layout.constrain(x, axes)

    def dense(self, name: str, x: jax.Array, out: int, axes: tuple[str, str]) -> jax.Array:
        kernel = self.param(
            name, nn.with_logical_partitioning(_init_normal(), axes),
            (x.shape[-1], out), self.param_dtype,
        )
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


class RMSNorm(nn.Module):
    eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],), self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


def rope_tables(config: ModelConfig, positions_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos/sin [B, L, D] in float32 for the given positions."""
    inv_freq = jnp.asarray(config.rope_inv_freq())
    freqs_BxLxD2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
    emb_BxLxD = jnp.concatenate([freqs_BxLxD2, freqs_BxLxD2], axis=-1)
    return jnp.cos(emb_BxLxD), jnp.sin(emb_BxLxD)


def apply_rope(x_BxLxHxD: jax.Array, cos_BxLxD: jax.Array, sin_BxLxD: jax.Array) -> jax.Array:
    half = x_BxLxHxD.shape[-1] // 2
    x1, x2 = x_BxLxHxD[..., :half], x_BxLxHxD[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos = cos_BxLxD[:, :, None, :].astype(x_BxLxHxD.dtype)
    sin = sin_BxLxD[:, :, None, :].astype(x_BxLxHxD.dtype)
    return x_BxLxHxD * cos + rotated * sin


class Attention(_Sharded):
    @nn.compact
    def __call__(
        self,
        x_BxLxE: jax.Array,
        cos_sin: tuple[jax.Array, jax.Array],
        mask_BxLxS: jax.Array,
        layer_cache: tuple[jax.Array, jax.Array] | None,
        cache_end: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        b, l, _ = x_BxLxE.shape
        q = self.dense("q_proj", x_BxLxE, c.num_heads * c.head_dim, ("embed", "q_heads"))
        k = self.dense("k_proj", x_BxLxE, c.num_kv_heads * c.head_dim, ("embed", "kv_heads"))
        v = self.dense("v_proj", x_BxLxE, c.num_kv_heads * c.head_dim, ("embed", "kv_heads"))
        q_BxLxHxD = q.reshape(b, l, c.num_heads, c.head_dim)
        k_BxLxKxD = k.reshape(b, l, c.num_kv_heads, c.head_dim)
        v_BxLxKxD = v.reshape(b, l, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            norm = functools.partial(
                RMSNorm, c.rms_norm_eps, self.dtype, self.param_dtype, "head_dim"
            )
            q_BxLxHxD = norm(name="q_norm")(q_BxLxHxD)
            k_BxLxKxD = norm(name="k_norm")(k_BxLxKxD)
        q_BxLxHxD = apply_rope(q_BxLxHxD, *cos_sin)
        k_BxLxKxD = apply_rope(k_BxLxKxD, *cos_sin)
        q_BxLxHxD = self.constrain(
            q_BxLxHxD,
            ("activation_batch", "activation_length", "activation_heads", None),
        )
        if layer_cache is not None and len(layer_cache) == 4:
            out_BxLxHxD, new_cache = shared_prefix_attention(
                q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, layer_cache, cache_end, self.layout
            )
            out = out_BxLxHxD.astype(self.dtype).reshape(b, l, c.num_heads * c.head_dim)
            return self.dense("o_proj", out, c.hidden_size, ("q_heads", "embed")), new_cache
        new_cache = None
        if layer_cache is None:
            k_BxSxKxD, v_BxSxKxD = k_BxLxKxD, v_BxLxKxD
        else:
            k_cache, v_cache = layer_cache
            start = (0, cache_end, 0, 0)
            k_BxSxKxD = jax.lax.dynamic_update_slice(
                k_cache, k_BxLxKxD.astype(k_cache.dtype), start
            )
            v_BxSxKxD = jax.lax.dynamic_update_slice(
                v_cache, v_BxLxKxD.astype(v_cache.dtype), start
            )
            new_cache = (k_BxSxKxD, v_BxSxKxD)
        if layer_cache is None:
            out_BxLxHxD = causal_attention(
                q_BxLxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxLxS, impl=self.attention
            )
        else:
            out_BxLxHxD = query_blocked_attention(
                q_BxLxHxD, k_BxSxKxD.astype(self.dtype), v_BxSxKxD.astype(self.dtype), mask_BxLxS
            )
        out = out_BxLxHxD.reshape(b, l, c.num_heads * c.head_dim)
        return self.dense("o_proj", out, c.hidden_size, ("q_heads", "embed")), new_cache


class Mlp(_Sharded):
    @nn.compact
    def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
        c = self.config
        gate_BxLxF = self.dense("gate_proj", x_BxLxE, c.intermediate_size, ("embed", "mlp"))
        up_BxLxF = self.dense("up_proj", x_BxLxE, c.intermediate_size, ("embed", "mlp"))
        h_BxLxF = self.constrain(
            jax.nn.silu(gate_BxLxF) * up_BxLxF,
            ("activation_batch", "activation_length", "activation_mlp"),
        )
        return self.dense("down_proj", h_BxLxF, c.hidden_size, ("mlp", "embed"))


class DecoderLayer(_Sharded):
    @nn.compact
    def __call__(
        self,
        x_BxLxE: jax.Array,
        layer_cache: tuple[jax.Array, jax.Array] | None,
        cos_sin: tuple[jax.Array, jax.Array],
        mask_BxLxS: jax.Array,
        cache_end: jax.Array | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype, layout=self.layout,
                  attention=self.attention)
        norm = functools.partial(RMSNorm, c.rms_norm_eps, self.dtype, self.param_dtype)
        attn_out, new_cache = Attention(**kw, name="attn")(
            norm(name="input_norm")(x_BxLxE), cos_sin, mask_BxLxS, layer_cache, cache_end
        )
        x_BxLxE = x_BxLxE + attn_out
        x_BxLxE = x_BxLxE + Mlp(**kw, name="mlp")(norm(name="post_attn_norm")(x_BxLxE))
        x_BxLxE = self.constrain(
            x_BxLxE, ("activation_batch", "activation_length", "activation_embed")
        )
        return x_BxLxE, new_cache


class _SharedPrefixLayer(DecoderLayer):
    """DecoderLayer for a shared-prefix decode step, scanned with the stacked suffix in the carry.

    Scanned inputs are this layer's prefix k, v and its index; the carry is (x, suffix k, suffix
    v of all layers), updated in place. Same parameters (names and shapes) as DecoderLayer.
    """

    def __call__(  # type: ignore[override]
        self,
        carry: tuple[jax.Array, jax.Array, jax.Array],
        scanned: tuple[jax.Array, jax.Array, jax.Array],
        cos_sin: tuple[jax.Array, jax.Array],
        mask_BxLxS: jax.Array,
        cache_meta: tuple[jax.Array, jax.Array, int | None],
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        x_BxLxE, suffix_k, suffix_v = carry
        prefix_k, prefix_v, layer = scanned
        x_BxLxE, new_cache = super().__call__(
            x_BxLxE, (prefix_k, prefix_v, suffix_k, suffix_v), cos_sin, mask_BxLxS,
            (*cache_meta, layer),
        )
        _, _, suffix_k, suffix_v = new_cache
        return (x_BxLxE, suffix_k, suffix_v), None


def segment_positions(segment_ids_BxL: jax.Array) -> jax.Array:
    """Positions that restart at 0 at the start of each packed segment."""
    idx = jnp.broadcast_to(jnp.arange(segment_ids_BxL.shape[1]), segment_ids_BxL.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids_BxL[:, :1], bool),
         segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]],
        axis=1,
    )
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx


class Transformer(_Sharded):
    """Decoder-only LM. `remat` is a key of REMAT_POLICIES."""

    remat: str = "none"
    # Layers as a Python loop over separately stored weights ("layer_0", ...; see
    # `unstack_layers`) instead of a scan over the stacked "layers": a scan slices every weight
    # out of the stack at each step, and on GPU XLA copies each slice before its cuBLAS gemm (an
    # H200 profile of the 8B decode step: 40% of device time in those copies). For decoding.
    unrolled_layers: bool = False

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        *,
        positions_BxL: jax.Array | None = None,
        attention_mask_BxL: jax.Array | None = None,
        segment_ids_BxL: jax.Array | None = None,
        cache: KVCache | SharedPrefixCache | None = None,
        logit_positions_B: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> tuple[jax.Array, KVCache | SharedPrefixCache | None]:
        """Logits [B, L, V] in float32, and the updated cache when one is given.

        attention_mask_BxL: 1 for real tokens, 0 for padding (left or right).
        segment_ids_BxL: packed batches; tokens attend within their segment; 0 marks padding.
        cache: decode incrementally; the new tokens go to slots [cache.end, cache.end + L).
        logit_positions_B: only the logits at these positions, [B, 1, V]. A prefill needs just
            the last prompt token's: full [B, L, V] float32 logits of a 64 x 2048 prefill with a
            128k vocabulary would take 67 GB.
        return_hidden: return the final-normed hidden states [B, L, E] (model dtype) instead of
            logits; the caller applies `lm_head_kernel` (e.g. fused with the loss, chunked, so
            the [B, L, V] float32 logits are never kept whole for the backward pass).
        """
        c = self.config
        b, l = tokens_BxL.shape
        if segment_ids_BxL is not None and cache is not None:
            raise ValueError("segment_ids (packed batches) cannot be combined with a KV cache")
        if attention_mask_BxL is None:
            attention_mask_BxL = (
                jnp.ones((b, l), bool) if segment_ids_BxL is None else segment_ids_BxL != 0
            )
        attention_mask_BxL = attention_mask_BxL.astype(bool)

        shared = isinstance(cache, SharedPrefixCache)
        if shared and (positions_BxL is None or c.sliding_window is not None):
            raise ValueError(
                "the shared-prefix cache needs explicit positions and no sliding window"
            )
        q_slots = jnp.arange(l) + (0 if cache is None or shared else cache.end)
        if shared:
            key_valid_BxS = attention_mask_BxL
            k_slots = q_slots
        elif cache is None:
            key_valid_BxS = attention_mask_BxL
            k_slots = jnp.arange(l)
        else:
            key_valid_BxS = jax.lax.dynamic_update_slice(
                cache.valid_BxS, attention_mask_BxL, (0, cache.end)
            )
            k_slots = jnp.arange(cache.max_length)
        mask_BxLxS = (k_slots[None, :] <= q_slots[:, None])[None] & key_valid_BxS[:, None, :]
        if c.sliding_window is not None:
            mask_BxLxS &= (q_slots[:, None] - k_slots[None, :] < c.sliding_window)[None]
        if segment_ids_BxL is not None:
            mask_BxLxS &= segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]

        if positions_BxL is None:
            if cache is not None:
                positions_BxL = cache.next_positions(attention_mask_BxL)
            elif segment_ids_BxL is not None:
                positions_BxL = segment_positions(segment_ids_BxL)
            else:
                positions_BxL = jnp.maximum(jnp.cumsum(attention_mask_BxL, axis=1) - 1, 0)
        cos_sin = rope_tables(c, positions_BxL)

        embedding = self.param(
            "embed", nn.with_logical_partitioning(_init_normal(), ("vocab", "embed")),
            (c.vocab_size, c.hidden_size), self.param_dtype,
        )
        x_BxLxE = jnp.take(embedding, tokens_BxL, axis=0).astype(self.dtype)
        x_BxLxE = self.constrain(
            x_BxLxE, ("activation_batch", "activation_length", "activation_embed")
        )

        attention_impl = resolve_impl(
            self.attention, self.dtype, packed=segment_ids_BxL is not None,
            sliding=c.sliding_window is not None,
        )
        layer_cls: Any = _SharedPrefixLayer if shared else DecoderLayer
        policy = REMAT_POLICIES[self.remat]
        if self.remat != "none":
            layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=False)
        layer_kw: dict[str, Any] = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype,
                                        layout=self.layout, attention=attention_impl)
        carry: Any = x_BxLxE
        if shared:
            carry = (x_BxLxE, cache.suffix_k_LxPxNxKxTxD, cache.suffix_v_LxPxNxKxTxD)
            layer_caches = (cache.prefix_k_LxPxKxSxD, cache.prefix_v_LxPxKxSxD,
                            jnp.arange(c.num_layers, dtype=jnp.int32))
            cache_meta = (cache.prefix_lengths_P, cache.suffix_end, cache.suffix_window)
        else:
            layer_caches = None if cache is None else (cache.k_LxBxSxKxD, cache.v_LxBxSxKxD)
            cache_meta = None if cache is None else cache.end
        if self.unrolled_layers:
            carry, new_layer_caches = self._unrolled(layer_cls, layer_kw, carry, layer_caches,
                                                     cos_sin, mask_BxLxS, cache_meta)
        else:
            layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(**layer_kw, name="layers")
            carry, new_layer_caches = layers(carry, layer_caches, cos_sin, mask_BxLxS,
                                             cache_meta)
        if shared:
            x_BxLxE, suffix_k, suffix_v = carry
        else:
            x_BxLxE = carry
        x_BxLxE = RMSNorm(c.rms_norm_eps, self.dtype, self.param_dtype, name="final_norm")(x_BxLxE)
        if logit_positions_B is not None:
            x_BxLxE = jnp.take_along_axis(
                x_BxLxE, logit_positions_B.astype(jnp.int32)[:, None, None], axis=1)

        if return_hidden:
            logits_BxLxV = x_BxLxE
        elif c.tie_embeddings:
            logits_BxLxV = jnp.dot(x_BxLxE, embedding.astype(self.dtype).T)
        else:
            logits_BxLxV = self.dense("lm_head", x_BxLxE, c.vocab_size, ("embed", "vocab"))
        if not return_hidden:
            logits_BxLxV = self.constrain(
                logits_BxLxV.astype(jnp.float32),
                ("activation_batch", "activation_length", "activation_vocab"),
            )
        new_cache = None
        if shared:
            new_cache = cache.replace(
                suffix_k_LxPxNxKxTxD=suffix_k, suffix_v_LxPxNxKxTxD=suffix_v,
                suffix_end=cache.suffix_end + 1,
            )
        elif cache is not None:
            k, v = new_layer_caches
            new_cache = KVCache(k, v, key_valid_BxS, cache.end + l)
        return logits_BxLxV, new_cache

    def _unrolled(self, layer_cls: Any, layer_kw: dict[str, Any], carry: Any,
                  layer_caches: Any, cos_sin: Any, mask_BxLxS: jax.Array,
                  cache_meta: Any) -> tuple[Any, Any]:
        """The scan's computation as a loop: layer i gets slice i of the scanned inputs."""
        outputs = []
        for i in range(self.config.num_layers):
            scanned = None if layer_caches is None else jax.tree.map(
                lambda a, i=i: a[i], layer_caches)
            carry, out = layer_cls(**layer_kw, name=f"layer_{i}")(
                carry, scanned, cos_sin, mask_BxLxS, cache_meta)
            outputs.append(out)
        if outputs[0] is None:
            return carry, None
        return carry, jax.tree.map(lambda *a: jnp.stack(a), *outputs)


def unstack_layers(params: Params, num_layers: int) -> Params:
    """Params of a scanned Transformer ("layers", stacked on axis 0) as those of one with
    `unrolled_layers=True` ("layer_0" ... separate arrays). Run it under jit: it copies the
    layer weights once, so the copy costs one pass over them per call, not one per decode step."""
    if "layers" not in params:
        raise ValueError(f"params have no stacked 'layers' to unstack (keys: {sorted(params)})")
    out = {key: value for key, value in params.items() if key != "layers"}
    for i in range(num_layers):
        out[f"layer_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def lm_head_kernel(config: ModelConfig, params: Params) -> jax.Array:
    """The LM head as an [E, V] matrix (the tied embedding transposed, or `lm_head`): what a
    caller of `Transformer(..., return_hidden=True)` multiplies the hidden states by."""
    return params["embed"].T if config.tie_embeddings else params["lm_head"]


# --- parameters and a callable model ------------------------------------------------------------


def abstract_params(module: Transformer) -> tuple[Params, Params]:
    """(shapes, logical PartitionSpecs) of the params tree, from one abstract init trace."""
    abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return nn.meta.unbox(abstract)["params"], nn.get_partition_spec(abstract)["params"]


def param_shardings(module: Transformer, layout: Layout) -> Params:
    return layout.tree_shardings(*reversed(abstract_params(module)))


def init_params(module: Transformer, seed: int | jax.Array, layout: Layout) -> Params:
    """Random parameters created directly in their shards (no host copy)."""
    rng = jax.random.key(seed) if isinstance(seed, int) else seed

    def init(rng: jax.Array) -> Params:
        variables = module.init(rng, jnp.zeros((1, 1), jnp.int32))
        return nn.meta.unbox(variables)["params"]

    return jax.jit(init, out_shardings=param_shardings(module, layout))(rng)


@dataclasses.dataclass
class Model:
    """A module bound to its (sharded) parameters: `model(tokens, attention_mask=...)` -> logits."""

    module: Transformer
    params: Params

    @property
    def config(self) -> ModelConfig:
        return self.module.config

    @functools.cached_property
    def _forward(self) -> Callable[..., jax.Array]:
        def forward(params, tokens, attention_mask, positions, segment_ids):
            logits, _ = self.module.apply(
                {"params": params}, tokens, attention_mask_BxL=attention_mask,
                positions_BxL=positions, segment_ids_BxL=segment_ids,
            )
            return logits

        return jax.jit(forward)

    @functools.cached_property
    def _forward_with_cache(self) -> Callable[..., tuple[jax.Array, KVCache]]:
        def forward(params, tokens, attention_mask, positions, cache):
            return self.module.apply(
                {"params": params}, tokens, attention_mask_BxL=attention_mask,
                positions_BxL=positions, cache=cache,
            )

        return jax.jit(forward, donate_argnums=(4,))

    def _batch(self, x: Any) -> jax.Array | None:
        if x is None:
            return None
        x = jnp.asarray(x)
        layout = self.module.layout
        if layout is None or x.ndim != 2:
            return x
        return jax.device_put(x, layout.sharding(("activation_batch", None), x.shape))

    def __call__(
        self,
        tokens_BxL: Any,
        attention_mask: Any = None,
        *,
        positions: Any = None,
        segment_ids: Any = None,
    ) -> jax.Array:
        tokens_BxL = self._check_tokens(tokens_BxL)
        for name, value in (("attention_mask", attention_mask), ("positions", positions),
                            ("segment_ids", segment_ids)):
            if value is not None and np.shape(value) != tokens_BxL.shape:
                raise ValueError(
                    f"{name} must have the tokens' shape {tokens_BxL.shape}, "
                    f"got {np.shape(value)}"
                )
        return self._forward(
            self.params, self._batch(tokens_BxL), self._batch(attention_mask),
            self._batch(positions), self._batch(segment_ids),
        )

    def _check_tokens(self, tokens_BxL: Any) -> jax.Array:
        """Shape check always; range check for host arrays (a device array would need a sync).

        Out-of-range ids would otherwise be clamped silently by the embedding gather.
        """
        if not isinstance(tokens_BxL, jax.Array):
            host = np.asarray(tokens_BxL)
            if host.size and (host.min() < 0 or host.max() >= self.config.vocab_size):
                raise ValueError(
                    f"token ids must be in [0, {self.config.vocab_size}), got "
                    f"[{host.min()}, {host.max()}]"
                )
        tokens_BxL = jnp.asarray(tokens_BxL)
        if tokens_BxL.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens_BxL.shape}")
        if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers, got {tokens_BxL.dtype}")
        return tokens_BxL

    def reshard(self, layout: Layout) -> Model:
        """The same weights on another mesh or rules table (e.g. TRAIN_RULES -> SAMPLING_RULES)."""
        module = self.module.clone(layout=layout)
        return Model(module, jax.device_put(self.params, param_shardings(module, layout)))

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        return KVCache.init(
            self.config, batch_size, max_length, self.module.dtype, self.module.layout
        )

    def step(
        self, tokens_BxL: Any, cache: KVCache, attention_mask: Any = None, positions: Any = None
    ) -> tuple[jax.Array, KVCache]:
        """Prefill (L > 1) or decode (L = 1) against `cache`; the cache passed in is consumed."""
        tokens_BxL = self._check_tokens(tokens_BxL)
        if tokens_BxL.shape[0] != cache.valid_BxS.shape[0]:
            raise ValueError(
                f"tokens have batch {tokens_BxL.shape[0]}, the cache {cache.valid_BxS.shape[0]}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones(tokens_BxL.shape, bool)
        return self._forward_with_cache(
            self.params, self._batch(tokens_BxL), self._batch(attention_mask),
            self._batch(positions), cache,
        )


def build_model(
    config: ModelConfig,
    layout: Layout,
    *,
    seed: int = 0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    remat: str = "none",
    attention: str = "auto",
) -> Model:
    """A randomly initialised model, sharded per `layout`."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {remat!r}")
    module = Transformer(config, dtype=dtype, param_dtype=param_dtype, layout=layout, remat=remat,
                         attention=attention)
    return Model(module, init_params(module, seed, layout))
