"""Key/value cache for incremental decoding.

Slots are shared across the batch: `end` counts the slots written so far, and every forward pass
with a cache writes its L new tokens at slots [end, end + L). Rows of a left-padded batch keep
their padding slots, marked invalid in `valid_BxS`, so a row's RoPE position (its count of valid
tokens) may differ from its slot index.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sftrl.models.model_config import ModelConfig
from sftrl.sharding import Layout

CACHE_AXES = ("layers", "activation_batch", "cache_length", "activation_kv_heads", None)


@flax.struct.dataclass
class KVCache:
    k_LxBxSxKxD: jax.Array
    v_LxBxSxKxD: jax.Array
    valid_BxS: jax.Array  # bool: slot holds a real (non-padding) token
    end: jax.Array  # int32 scalar: slots written so far

    @classmethod
    def init(
        cls,
        config: ModelConfig,
        batch_size: int,
        max_length: int,
        dtype: jnp.dtype = jnp.float32,
        layout: Layout | None = None,
    ) -> KVCache:
        shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_dim)
        k = jnp.zeros(shape, dtype)
        v = jnp.zeros(shape, dtype)
        valid = jnp.zeros((batch_size, max_length), bool)
        if layout is not None:
            kv_sharding = layout.sharding(CACHE_AXES, shape)
            k = jax.device_put(k, kv_sharding)
            v = jax.device_put(v, kv_sharding)
            valid = jax.device_put(
                valid, layout.sharding(("activation_batch", "cache_length"), valid.shape)
            )
        return cls(k, v, valid, jnp.zeros((), jnp.int32))

    @property
    def max_length(self) -> int:
        return self.valid_BxS.shape[1]

    def next_positions(self, attention_mask_BxL: jax.Array) -> jax.Array:
        """RoPE positions of the next tokens: each row continues from its count of valid tokens."""
        seen_B = jnp.sum(self.valid_BxS, axis=1, dtype=jnp.int32)
        mask = attention_mask_BxL.astype(jnp.int32)
        return jnp.maximum(seen_B[:, None] + jnp.cumsum(mask, axis=1) - 1, 0)


@flax.struct.dataclass
class SharedPrefixCache:
    """Decode cache for N samples per prompt that share the prompt's KV.

    The prefix (the prompt, prefilled once) is stored kv-head-major, [L, P, K, S, D], so each
    (prompt, kv head) stream is contiguous for the decode kernel and no transpose happens per
    step; its valid length per prompt is `prefix_lengths_P` (prompts are right-padded). Each
    sample's own tokens go to the suffix, [L, P, N, K, T, D], at slot `suffix_end` (shared by all
    samples: they advance in lockstep). The suffix is kv-head-major too: the suffix scores and
    values are then batched matrix products over (p, n, k) with no transpose of the suffix.

    A decode step reads the prefix and updates the suffix in place: the layer scan carries the
    stacked suffix and writes one slot per layer into it (passing it through the scan as
    inputs and outputs would copy all of it, GBs at Llama-3-8B shapes, every step).
    """

    prefix_k_LxPxKxSxD: jax.Array
    prefix_v_LxPxKxSxD: jax.Array
    prefix_lengths_P: jax.Array  # int32
    suffix_k_LxPxNxKxTxD: jax.Array
    suffix_v_LxPxNxKxTxD: jax.Array
    suffix_end: jax.Array  # int32 scalar: suffix slots written
    # Static: a step attends to suffix slots [0, suffix_window) only (None: all T). Slots from
    # suffix_end on are empty, so a window past suffix_end gives the same attention while reading
    # window/T of the suffix, which at large k is most of a step's memory traffic; the caller
    # keeps suffix_end < suffix_window and buckets the window to bound recompilation.
    suffix_window: int | None = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def from_prefill(
        cls, cache: KVCache, prefix_lengths_P: jax.Array, num_samples: int, max_new_tokens: int
    ) -> SharedPrefixCache:
        """The prefilled KVCache of right-padded prompts, turned into the shared layout once."""
        k = jnp.transpose(cache.k_LxBxSxKxD, (0, 1, 3, 2, 4))
        v = jnp.transpose(cache.v_LxBxSxKxD, (0, 1, 3, 2, 4))
        layers, prompts, _, heads, dim = cache.k_LxBxSxKxD.shape
        suffix_shape = (layers, prompts, num_samples, heads, max_new_tokens, dim)
        dtype = cache.k_LxBxSxKxD.dtype
        return cls(k, v, jnp.asarray(prefix_lengths_P, jnp.int32),
                   jnp.zeros(suffix_shape, dtype), jnp.zeros(suffix_shape, dtype),
                   jnp.zeros((), jnp.int32))
