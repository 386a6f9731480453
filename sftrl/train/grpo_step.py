"""The pure GRPO pieces: rollout arrays, log-probs of a batch, and the jitted policy update.

A rollout batch has one row per (prompt, sample): the prompt left-padded to the longest prompt,
then the response right-padded to max_new_tokens, so every response token sits at a fixed column
offset and positions come from the attention mask. Log-prob arrays are aligned with the tokens
(column t holds log p(token t | tokens < t); column 0 is 0), like `sftrl.losses.next_token_nll`.

The policy being optimised is the model at the sampling temperature (logits / T), untruncated,
and the sampler's log-probs kept for the batch are of that same distribution
(`Samples.policy_logprobs`), so on the first update the trainer's log-probs equal the sampler's up
to numerics. The measured mismatch and the truncated importance weights (rl.tis_cap) therefore
see only the numerical train/inference difference. A top-p / top-k cut is a bias of the sampling
that they do not correct (the cut tokens are never sampled, so no weight on the sampled ones can
restore them); it is a property of the chosen rl.top_p / rl.top_k, not of the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sftrl.losses import (
    PolicyLossConfig,
    chunked_policy_logprobs,
    loss_normalizer,
    policy_logprobs,
    policy_loss,
)
from sftrl.models.transformer import Transformer, lm_head_kernel
from sftrl.sampling import Samples
from sftrl.train.state import TrainState

PROMPT_BUCKET = 32
ROLLOUT_FIELDS = ("tokens", "attention_mask", "loss_mask", "sampler_logp", "advantages",
                  "old_logp", "ref_logp")


def rollout_arrays(prompts: Sequence[Sequence[int]], samples: Samples, pad_id: int
                   ) -> dict[str, np.ndarray]:
    """[P*G, Lp + T] tokens / masks / sampler log-probs for a rollout (rows prompt-major)."""
    p, g, t_max = samples.tokens.shape
    # Widths rounded up to a bucket so that batches of different lengths share one compiled
    # update; the response part is cut to the longest response, not max_new_tokens.
    lp = _round_up(max(len(x) for x in prompts))
    t = min(t_max, _round_up(int(samples.lengths.max(initial=1))))
    b, length = p * g, lp + t
    tokens = np.full((b, length), pad_id, np.int32)
    attention = np.zeros((b, length), np.int32)
    loss_mask = np.zeros((b, length), np.int32)
    sampler_logp = np.zeros((b, length), np.float32)
    lengths = samples.lengths.reshape(b)
    response_cols = np.arange(t)[None, :] < lengths[:, None]
    for i, prompt in enumerate(prompts):
        rows = slice(i * g, (i + 1) * g)
        tokens[rows, lp - len(prompt):lp] = np.asarray(prompt, np.int32)
        attention[rows, lp - len(prompt):lp] = 1
    tokens[:, lp:] = np.where(response_cols, samples.tokens[:, :, :t].reshape(b, t), pad_id)
    attention[:, lp:] = response_cols
    loss_mask[:, lp:] = response_cols
    sampler_logp[:, lp:] = np.where(response_cols,
                                    samples.policy_logprobs[:, :, :t].reshape(b, t), 0.0)
    return dict(tokens=tokens, attention_mask=attention, loss_mask=loss_mask,
                sampler_logp=sampler_logp)


def _round_up(width: int) -> int:
    return -(-width // PROMPT_BUCKET) * PROMPT_BUCKET


def make_logprob_fn(module: Transformer, temperature: float, chunk: int | None = 512,
                    rows: int = 0) -> Callable:
    """(params, tokens, attention_mask) -> (logp [B, L], entropy [B, L]) at the temperature.

    The LM head runs `chunk` positions at a time with float32 logits per chunk
    (`chunked_policy_logprobs`): the whole [B, L, V] float32 logits of a rollout batch are most
    of the old-log-prob pass's memory at paper scale. chunk=None: the unchunked reference.

    rows > 0 (and dividing B): the batch goes through the model `rows` rows at a time, in one
    program (`lax.map`), so the activations of one micro-batch are live, not the rollout's
    (at paper scale a 1024 x 4608 rollout's hidden states alone exceed a small slice). The
    micro-batches interleave rows (micro-batch i holds rows i, i + n, i + 2n, ...), so each one
    is spread over the batch shards like the whole batch and no row moves between devices.
    """
    scale = 1.0 / temperature if temperature > 0 else 1.0

    def whole(params: Any, tokens: jax.Array, attention_mask: jax.Array):
        if chunk is None:
            logits, _ = module.apply({"params": params}, tokens,
                                     attention_mask_BxL=attention_mask)
            return policy_logprobs(logits.astype(jnp.float32) * scale, tokens)
        hidden, _ = module.apply({"params": params}, tokens, attention_mask_BxL=attention_mask,
                                 return_hidden=True)
        head = lm_head_kernel(module.config, params).astype(module.dtype)
        return chunked_policy_logprobs(hidden, head, tokens, scale=scale, chunk=chunk)

    def logprobs(params: Any, tokens: jax.Array, attention_mask: jax.Array):
        b, length = tokens.shape
        if not rows or rows >= b:
            return whole(params, tokens, attention_mask)
        if b % rows:
            raise ValueError(f"rl.logprob_rows: {rows} does not divide the {b} rollout rows")
        n = b // rows

        def split(x: jax.Array) -> jax.Array:  # [B, L] -> [n, rows, L]; row j*n + i -> [i, j]
            return x.reshape(rows, n, length).swapaxes(0, 1)

        logp, entropy = jax.lax.map(lambda xs: whole(params, *xs),
                                    (split(tokens), split(attention_mask)))
        return (logp.swapaxes(0, 1).reshape(b, length),
                entropy.swapaxes(0, 1).reshape(b, length))

    return logprobs


def make_grpo_update(
    module: Transformer,
    tx: optax.GradientTransformation,
    learning_rate: optax.Schedule,
    loss_config: PolicyLossConfig,
    *,
    temperature: float,
    grad_accum: int = 1,
    logprob_chunk: int | None = 512,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """`grpo_update(state, minibatch) -> (state, metrics)`: one optimizer step on a mini-batch.

    The loss normaliser (token count, sequence count or Dr. GRPO's rows x budget) is computed
    once on the whole mini-batch; with grad_accum > 1 each micro-batch's loss is its share of
    the mini-batch loss (its sum over that one normaliser), and the shares and their gradients
    are summed, so the update equals the grad_accum = 1 update (DAPO's token mean over the whole
    batch) up to float rounding. Metrics stay raw sums.
    """
    logprob_fn = make_logprob_fn(module, temperature, logprob_chunk)

    def loss_fn(params: Any, mb: dict[str, jax.Array], normalizer: jax.Array):
        logp, entropy = logprob_fn(params, mb["tokens"], mb["attention_mask"])
        loss, metrics = policy_loss(
            logp, mb["old_logp"], mb["advantages"], mb["loss_mask"], loss_config,
            ref_logp_BxT=mb.get("ref_logp"), sampler_logp_BxT=mb.get("sampler_logp"),
            normalizer=normalizer,
        )
        mask = mb["loss_mask"].astype(jnp.float32)
        metrics = dict(metrics)
        metrics["entropy_sum"] = jnp.sum(entropy * mask)
        metrics["logp_abs_diff_old_sum"] = jnp.sum(jnp.abs(logp - mb["old_logp"]) * mask)
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def update(state: TrainState, mb: dict[str, jax.Array]):
        mb = {k: v for k, v in mb.items() if k in ROLLOUT_FIELDS}
        normalizer = loss_normalizer(mb["loss_mask"], loss_config.aggregation,
                                     loss_config.max_tokens_for_norm)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, mb, normalizer)
        else:
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum,
                                                 *x.shape[1:]), 0, 1), mb)

            def accumulate(carry, m):
                (loss, metrics), grads = grad_fn(state.params, m, normalizer)
                c_loss, c_metrics, c_grads = carry
                return (c_loss + loss, jax.tree.map(jnp.add, c_metrics, metrics),
                        jax.tree.map(jnp.add, c_grads, grads)), None

            first = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda x: x[0], micro),
                                   normalizer)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)
            (loss, metrics, grads), _ = jax.lax.scan(
                accumulate, (zeros[0][0], zeros[0][1], zeros[1]), micro
            )
        grad_norm = optax.global_norm(grads)
        new_state = state.apply_gradients(grads, tx)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": jnp.asarray(learning_rate(state.step), jnp.float32),
            "finite": (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32),
        }
        return new_state, metrics

    return update


def jit_logprobs(logprob_fn: Callable, param_shardings: Any, layout: Any,
                 shape: tuple[int, int]) -> Any:
    """`logprob_fn(params, tokens, attention_mask)` for [B, L] = `shape` batches, jitted with
    the params' shardings and the rows split over the batch axes (in and out, as
    `shard_batch` places them), so it can be `.lower()`ed on abstract inputs."""
    rows = layout.sharding(("activation_batch", None), shape)
    return jax.jit(logprob_fn, in_shardings=(param_shardings, rows, rows),
                   out_shardings=(rows, rows))
