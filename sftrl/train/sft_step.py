"""The pure SFT update: `sft_step(state, batch) -> (state, metrics)`, jitted with shardings.

Loss: masked next-token NLL of the response tokens (`sftrl.losses.head_weighted_nll`), normalised
either per token over the whole global batch ("token": every trained token weighs the same) or
per sequence ("sequence": each example's mean token NLL, averaged over examples; packed rows count
each segment as an example). Gradient accumulation splits the global batch into micro-batches
inside the step (`lax.scan`); the normalisers are computed from the whole batch first, so the
update equals the one-big-batch update up to float summation order.

The LM head is fused with the loss (`sftrl.losses.head_weighted_nll`): the model returns its final
hidden states and the head + NLL run `loss_chunk` positions at a time, so the [B, L, V] float32
logits (and their softmax and gradient) are never kept whole.

Metrics are raw sums and counts (reduced once, on the host): `loss_sum` (weighted like the loss,
so `loss = loss_sum`), `nll_sum` and `tokens` (token-weighted NLL), `sequences`, `grad_norm`,
`lr`, `finite` (1.0 when loss and gradients are finite).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sftrl.losses import head_weighted_nll
from sftrl.models.transformer import Transformer, lm_head_kernel
from sftrl.sharding import Layout
from sftrl.train.state import TrainState

NORMALIZATIONS = ("token", "sequence")
BATCH_FIELDS = ("tokens", "loss_mask", "attention_mask", "segment_ids", "positions")


def _scored(batch: Mapping[str, jax.Array]) -> jax.Array:
    """Float mask of the tokens that are scored (a prediction exists: never column 0)."""
    mask = batch["loss_mask"].astype(jnp.float32)
    if "segment_ids" in batch:
        seg = batch["segment_ids"]
        # a segment's first token would be "predicted" by the previous example's last one
        starts = jnp.pad(seg[:, 1:] != seg[:, :-1], ((0, 0), (1, 0)), constant_values=True)
        mask = mask * (seg != 0) * ~starts
    if "attention_mask" in batch:
        mask = mask * batch["attention_mask"].astype(jnp.float32)
    return mask.at[:, 0].set(0.0)


def _segments(batch: Mapping[str, jax.Array]) -> jax.Array:
    if "segment_ids" in batch:
        return batch["segment_ids"].astype(jnp.int32)
    return jnp.ones(batch["tokens"].shape, jnp.int32)


def token_weights(batch: Mapping[str, jax.Array], normalization: str) -> jax.Array:
    """Per-token loss weights [B, L] for the whole global batch; they sum to 1 (or 0 if empty)."""
    scored = _scored(batch)
    if normalization == "token":
        return scored / jnp.maximum(scored.sum(), 1.0)
    b, length = scored.shape
    # one id per (row, segment): per-example token counts without a Python loop over examples
    ids = (jnp.arange(b)[:, None] * (length + 1) + _segments(batch)).reshape(-1)
    counts = jax.ops.segment_sum(scored.reshape(-1), ids, num_segments=b * (length + 1))
    per_token_count = counts[ids].reshape(b, length)
    num_examples = jnp.sum(counts > 0)
    return scored / jnp.maximum(per_token_count, 1.0) / jnp.maximum(num_examples, 1)


def _split_micro(x: jax.Array, accum: int) -> jax.Array:
    """[B, ...] -> [accum, B/accum, ...] taking rows i, i+accum, ... into micro-batch i.

    Interleaving keeps each device's contiguous block of rows on that device: no data moves.
    """
    b = x.shape[0]
    return jnp.swapaxes(x.reshape(b // accum, accum, *x.shape[1:]), 0, 1)


def make_sft_step(
    module: Transformer,
    tx: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    *,
    normalization: str = "token",
    grad_accum: int = 1,
    loss_chunk: int = 512,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step; `jit_sft_step` adds the shardings."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if grad_accum < 1:
        raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    if loss_chunk < 1:
        raise ValueError(f"loss_chunk must be >= 1, got {loss_chunk}")

    def shift(x: jax.Array) -> jax.Array:
        """Column t holds token t + 1's value: what the hidden state at t predicts."""
        return jnp.pad(x[:, 1:], ((0, 0), (0, 1)))

    def loss_fn(params: Any, micro: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        hidden_BxLxE, _ = module.apply(
            {"params": params}, micro["tokens"],
            attention_mask_BxL=micro.get("attention_mask"),
            positions_BxL=micro.get("positions"),
            segment_ids_BxL=micro.get("segment_ids"),
            return_hidden=True,
        )
        head_ExV = lm_head_kernel(module.config, params).astype(module.dtype)
        loss, nll_BxL = head_weighted_nll(
            hidden_BxLxE, head_ExV, shift(micro["tokens"]), shift(micro["weights"]),
            chunk=loss_chunk,
        )
        return loss, jnp.sum(nll_BxL * shift(micro["scored"]))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        if batch["tokens"].shape[0] % grad_accum:
            raise ValueError(
                f"batch size {batch['tokens'].shape[0]} is not divisible by grad_accum "
                f"{grad_accum}"
            )
        batch = {k: v for k, v in batch.items() if k in BATCH_FIELDS}
        scored = _scored(batch)
        full = {**batch, "scored": scored, "weights": token_weights(batch, normalization)}
        if grad_accum == 1:
            (loss, nll_sum), grads = grad_fn(state.params, full)
        else:
            micro_batches = jax.tree.map(lambda x: _split_micro(x, grad_accum), full)

            def accumulate(carry, micro):
                (loss, nll), grads = grad_fn(state.params, micro)
                total_loss, total_nll, total_grads = carry
                return (total_loss + loss, total_nll + nll,
                        jax.tree.map(jnp.add, total_grads, grads)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            (loss, nll_sum, grads), _ = jax.lax.scan(
                accumulate, (jnp.zeros(()), jnp.zeros(()), zeros), micro_batches
            )
        grad_norm = optax.global_norm(grads)
        new_state = state.apply_gradients(grads, tx)
        sequences = jnp.sum(jnp.any(scored > 0, axis=1)) if "segment_ids" not in batch else (
            _count_segments(batch["segment_ids"], scored))
        metrics = {
            "loss_sum": loss,
            "nll_sum": nll_sum,
            "tokens": jnp.sum(scored),
            "sequences": sequences.astype(jnp.float32),
            "grad_norm": grad_norm,
            "lr": jnp.asarray(learning_rate(state.step), jnp.float32),
            "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32),
        }
        return new_state, metrics

    return step


def _count_segments(segment_ids: jax.Array, scored: jax.Array) -> jax.Array:
    """Number of (row, segment) pairs with at least one scored token."""
    b, length = segment_ids.shape
    ids = (jnp.arange(b)[:, None] * (length + 1) + segment_ids).reshape(-1)
    counts = jax.ops.segment_sum(scored.reshape(-1), ids, num_segments=b * (length + 1))
    return jnp.sum(counts > 0)


def batch_shardings(layout: Layout, batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: layout.sharding(("activation_batch", None), v.shape) for k, v in batch.items()}


def jit_step_for(
    step: Callable, state_shardings: Any, layout: Layout, batch: Mapping[str, Any], *,
    donate: bool = True,
) -> Any:
    """`step(state, batch)` jitted for batches shaped like `batch` (arrays or
    `jax.ShapeDtypeStruct`s): the train state's shardings in and out, the batch split by rows,
    metrics replicated. The result can be `.lower()`ed on abstract inputs (`sftrl.plan`)."""
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings(layout, batch)),
        out_shardings=(state_shardings, layout.sharding(())),
        donate_argnums=(0,) if donate else (),
    )


def jit_sft_step(
    step: Callable, state_shardings: Any, layout: Layout, *, donate: bool = True
) -> Callable:
    """`step` jitted with the train state's shardings in and out, the batch split by rows
    (one `jit_step_for` per batch shape)."""
    cache: dict[tuple, Callable] = {}

    def call(state: TrainState, batch: dict[str, jax.Array]):
        key = tuple(sorted((k, v.shape) for k, v in batch.items()))
        if key not in cache:
            cache[key] = jit_step_for(step, state_shardings, layout, batch, donate=donate)
        return cache[key](state, batch)

    return call
