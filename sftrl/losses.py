"""Token-level losses shared by SFT, evaluation and GRPO.

Alignment convention (the data pipeline's): `loss_mask_BxL[b, t] = 1` when token t is trained on.
The logits at position t predict token t + 1, so token t is scored by the logits at t - 1 and the
first token of a row is never scored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """-log p(target) per position, in float32 (logsumexp form: no [B, L, V] log-softmax)."""
    logits = logits_BxLxV.astype(jnp.float32)
    target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit_BxL


def next_token_nll(
    logits_BxLxV: jax.Array, tokens_BxL: jax.Array, loss_mask_BxL: jax.Array
) -> jax.Array:
    """Masked NLL of each token given its prefix, aligned with `tokens` ([B, L]; column 0 is 0)."""
    nll_BxLm1 = token_nll(logits_BxLxV[:, :-1], tokens_BxL[:, 1:])
    nll_BxLm1 = nll_BxLm1 * loss_mask_BxL[:, 1:].astype(jnp.float32)
    return jnp.pad(nll_BxLm1, ((0, 0), (1, 0)))
