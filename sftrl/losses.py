"""Token-level losses shared by SFT, evaluation and GRPO (NLL, GRPO policy loss, KL estimators).
Each GRPO option's paper and formula: docs/design.md, "GRPO variants".

Alignment convention (the data pipeline's): `loss_mask_BxL[b, t] = 1` when token t is trained on.
The logits at position t predict token t + 1, so token t is scored by the logits at t - 1 and the
first token of a row is never scored.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NoReturn

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


# --------------------------------------------------------------------------------------------------
# LM head fused with the weighted NLL: no [B, L, V] logits kept for the backward pass.
#
# The loss is linear in its cotangent, so the forward pass computes, chunk by chunk along the
# sequence, the logits, the NLL and already the gradients w.r.t. the hidden states and the head
# (softmax - onehot, weighted); the backward pass only scales them. Same FLOPs as the unfused
# head + loss, no recomputation, and the float32 logits live one chunk at a time (at B=2, L=2048,
# V=32000 the unfused logits, their softmax and their gradient are 0.5 GB each).
# --------------------------------------------------------------------------------------------------


def _head_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """[B, L, ...] -> [L/chunk, B, chunk, ...], zero-padded along L."""
    b, length = x.shape[:2]
    n = -(-length // chunk)
    pad = [(0, 0), (0, n * chunk - length)] + [(0, 0)] * (x.ndim - 2)
    x = jnp.pad(x, pad).reshape(b, n, chunk, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _head_unchunk(x: jax.Array, length: int) -> jax.Array:
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _head_nll_forward(hidden_BxLxE, head_ExV, targets_BxL, weights_BxL, chunk):
    length = hidden_BxLxE.shape[1]

    def one_chunk(grad_head_ExV, xs):
        h_BxCxE, t_BxC, w_BxC = xs
        logits = jnp.dot(h_BxCxE, head_ExV, preferred_element_type=jnp.float32)
        lse_BxC = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
        nll_BxC = lse_BxC - target_logit
        # d(sum w * nll) / d logits = w * (softmax - onehot(target))
        grad_logits = jnp.exp(logits - lse_BxC[..., None])
        grad_logits = grad_logits.at[
            jnp.arange(t_BxC.shape[0])[:, None], jnp.arange(t_BxC.shape[1])[None], t_BxC
        ].add(-1.0)
        grad_logits = (grad_logits * w_BxC[..., None]).astype(h_BxCxE.dtype)
        grad_h = jnp.dot(grad_logits, head_ExV.T, preferred_element_type=jnp.float32)
        grad_head_ExV = grad_head_ExV + jnp.einsum(
            "bce,bcv->ev", h_BxCxE, grad_logits, preferred_element_type=jnp.float32
        )
        return grad_head_ExV, (nll_BxC, grad_h.astype(h_BxCxE.dtype))

    xs = (_head_chunks(hidden_BxLxE, chunk), _head_chunks(targets_BxL, chunk),
          _head_chunks(weights_BxL.astype(jnp.float32), chunk))
    grad_head, (nll, grad_hidden) = jax.lax.scan(
        one_chunk, jnp.zeros(head_ExV.shape, jnp.float32), xs
    )
    nll_BxL = _head_unchunk(nll, length)
    loss = jnp.sum(nll_BxL * weights_BxL.astype(jnp.float32))
    return loss, nll_BxL, _head_unchunk(grad_hidden, length), grad_head.astype(head_ExV.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _head_nll(hidden_BxLxE, head_ExV, targets_BxL, weights_BxL, chunk):
    loss, nll_BxL, _, _ = _head_nll_forward(hidden_BxLxE, head_ExV, targets_BxL, weights_BxL,
                                            chunk)
    return loss, nll_BxL


def _head_nll_fwd(hidden_BxLxE, head_ExV, targets_BxL, weights_BxL, chunk):
    loss, nll_BxL, grad_hidden, grad_head = _head_nll_forward(
        hidden_BxLxE, head_ExV, targets_BxL, weights_BxL, chunk)
    return (loss, nll_BxL), (grad_hidden, grad_head, nll_BxL.astype(weights_BxL.dtype))


def _head_nll_bwd(chunk, residuals, cotangents):
    del chunk
    grad_hidden, grad_head, nll_BxL = residuals
    g_loss, _ = cotangents  # nll_BxL is for metrics: the public wrapper stops its gradient
    return (grad_hidden * g_loss.astype(grad_hidden.dtype),
            grad_head * g_loss.astype(grad_head.dtype),
            None,
            nll_BxL * g_loss.astype(nll_BxL.dtype))


_head_nll.defvjp(_head_nll_fwd, _head_nll_bwd)


def head_weighted_nll(
    hidden_BxLxE: jax.Array,
    head_ExV: jax.Array,
    targets_BxL: jax.Array,
    weights_BxL: jax.Array,
    *,
    chunk: int = 512,
) -> tuple[jax.Array, jax.Array]:
    """(sum_t weights[t] * -log softmax(hidden[t] @ head)[targets[t]], that NLL per position).

    Equals `token_nll(hidden @ head, targets)` weighted and summed, with float32 logits (matmul
    accumulated in float32 from the inputs' dtype), but the [B, L, V] logits are never formed
    whole: positions go through the head `chunk` at a time. Gradients flow to hidden, head and
    weights through the loss; the per-position NLL is returned without gradient (metrics).
    Position t is scored against targets[t] (shift the tokens before calling: see `sft_step`).
    """
    if hidden_BxLxE.ndim != 3 or head_ExV.ndim != 2 or head_ExV.shape[0] != hidden_BxLxE.shape[2]:
        raise ValueError(
            f"head_weighted_nll: hidden [B, L, E] and head [E, V] expected, got "
            f"{hidden_BxLxE.shape} and {head_ExV.shape}"
        )
    if targets_BxL.shape != hidden_BxLxE.shape[:2] or weights_BxL.shape != targets_BxL.shape:
        raise ValueError(
            f"head_weighted_nll: targets {targets_BxL.shape} and weights {weights_BxL.shape} "
            f"must be the hidden states' [B, L] {hidden_BxLxE.shape[:2]}"
        )
    if chunk < 1:
        raise ValueError(f"head_weighted_nll: chunk must be >= 1, got {chunk}")
    chunk = min(int(chunk), hidden_BxLxE.shape[1])
    loss, nll_BxL = _head_nll(hidden_BxLxE, head_ExV.astype(hidden_BxLxE.dtype),
                              targets_BxL.astype(jnp.int32), weights_BxL, chunk)
    return loss, jax.lax.stop_gradient(nll_BxL)


# --------------------------------------------------------------------------------------------------
# GRPO policy loss.
#
# Shapes: P prompts, G samples per prompt (a group), B = P * G sequences, T tokens per sequence
# (the same [B, T] alignment as `tokens_BxL` above: column t holds quantities of token t).
# Every function is pure jnp (jit-able; string and integer options are static Python values checked
# at trace time). Floating inputs are promoted to at least float32, so bfloat16 log-probs are
# computed in float32 and float64 inputs (gradient checks) stay float64.
# --------------------------------------------------------------------------------------------------

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
KL_ESTIMATORS = ("none", "k1", "k3")
KL_MODES = ("loss", "reward")
STD_DDOFS = (0, 1)
# verl's bounds (core_algos.py): a log-ratio beyond +-20 is a broken sample, not a signal, and
# exp of it overflows float32 on the way to a clipped (constant) branch anyway; k3 is capped at
# 10 per token so that one such token cannot dominate the KL term of a whole batch.
LOG_RATIO_CLAMP = 20.0
K3_CLAMP = 10.0


class PolicyLossConfigError(ValueError):
    """A GRPO loss option is out of range; the message names the field."""


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _masked_group_stats(
    rewards_PxG: jax.Array, valid_PxG: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(rewards, valid as float, per-group valid count, per-group masked mean), [P, 1] stats."""
    rewards = _float(rewards_PxG)
    if rewards.ndim != 2:
        raise ValueError(f"rewards_PxG: expected a [P, G] array, got shape {rewards.shape}")
    if valid_PxG is None:
        valid = jnp.ones_like(rewards)
    else:
        if jnp.shape(valid_PxG) != rewards.shape:
            raise ValueError(
                f"valid_PxG: shape {jnp.shape(valid_PxG)} differs from rewards {rewards.shape}"
            )
        valid = jnp.asarray(valid_PxG).astype(rewards.dtype)
    count_Px1 = valid.sum(axis=1, keepdims=True)
    mean_Px1 = (rewards * valid).sum(axis=1, keepdims=True) / jnp.maximum(count_Px1, 1.0)
    return rewards, valid, count_Px1, mean_Px1


def _group_all_equal(rewards: jax.Array, valid: jax.Array) -> jax.Array:
    """[P, 1] bool: the valid rewards of the group span no range (also true for <= 1 valid)."""
    is_valid = valid > 0
    hi = jnp.where(is_valid, rewards, -jnp.inf).max(axis=1, keepdims=True)
    lo = jnp.where(is_valid, rewards, jnp.inf).min(axis=1, keepdims=True)
    return ~(hi > lo)


def group_advantages(
    rewards_PxG: jax.Array,
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
    valid_PxG: jax.Array | None = None,
    ddof: int = 0,
) -> jax.Array:
    """Group-relative advantages, [P, G] (GRPO: Shao et al. 2024, "DeepSeekMath", eq. 3 / §4.1.2).

        A_i = (r_i - mean_j r_j) / (std_j r_j + eps)    if normalize_std
        A_i =  r_i - mean_j r_j                          otherwise (Dr. GRPO: Liu et al. 2025)

    The mean and std run over the valid samples of each group only (`valid_PxG`, e.g. DAPO's
    overlong filtering drops truncated samples); invalid samples get advantage 0. The std divides
    by (n - ddof): ddof = 0 is the population std (our default, unchanged), ddof = 1 the sample
    std that TRL and verl use (torch.std); the two differ by sqrt(n / (n - 1)) per group, which
    only matters across groups with different valid counts (overlong filtering). A group with
    fewer than two valid samples is all-equal and gets 0 either way, so ddof = 1 never divides
    by zero.
    Groups whose valid rewards are all equal (including G = 1 and groups with no valid sample) get
    exactly 0: rounding in the mean would otherwise leave ~1e-8 residues that the division by
    (0 + eps) blows up to O(0.01).
    """
    if eps < 0:
        raise ValueError(f"group_advantages: eps must be >= 0, got {eps}")
    if ddof not in STD_DDOFS:
        raise ValueError(f"group_advantages: ddof must be one of {STD_DDOFS}, got {ddof!r}")
    rewards, valid, count_Px1, mean_Px1 = _masked_group_stats(rewards_PxG, valid_PxG)
    centered = (rewards - mean_Px1) * valid
    if normalize_std:
        var_Px1 = (centered**2).sum(axis=1, keepdims=True) / jnp.maximum(count_Px1 - ddof, 1.0)
        centered = centered / (jnp.sqrt(var_Px1) + eps)
    return jnp.where(_group_all_equal(rewards, valid), 0.0, centered).astype(rewards.dtype)


def dynamic_sampling_keep(rewards_PxG: jax.Array, valid_PxG: jax.Array | None = None) -> jax.Array:
    """[P] bool: keep a group whose (valid) rewards are not all equal (DAPO: Yu et al. 2025, §3.2).

    An all-correct or all-wrong group has zero advantage everywhere and only dilutes the batch, so
    DAPO over-samples and drops such groups. A group with G = 1, or with fewer than two valid
    samples, is never kept (its advantages are 0 by construction).
    """
    rewards, valid, _, _ = _masked_group_stats(rewards_PxG, valid_PxG)
    return ~_group_all_equal(rewards, valid)[:, 0]


def overlong_penalty(
    lengths_B: jax.Array, *, max_length: int, buffer: int, penalty: float
) -> jax.Array:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), a reward term per sequence, [B].

        0                                      if len <= max_length - buffer
        -penalty * (len - (max - buffer)) / buffer   if max_length - buffer < len <= max_length
        -penalty                               if len > max_length

    DAPO's paper uses penalty = 1. With buffer = 0 the ramp degenerates to a step at max_length.
    """
    if max_length <= 0:
        raise ValueError(f"overlong_penalty: max_length must be > 0, got {max_length}")
    if not 0 <= buffer <= max_length:
        raise ValueError(f"overlong_penalty: buffer must be in [0, max_length], got {buffer}")
    if penalty < 0:
        raise ValueError(f"overlong_penalty: penalty must be >= 0, got {penalty}")
    lengths = jnp.asarray(lengths_B).astype(jnp.float32)
    start = float(max_length - buffer)
    fraction = jnp.clip((lengths - start) / max(buffer, 1), 0.0, 1.0)
    fraction = jnp.where(lengths > max_length, 1.0, fraction)
    return -penalty * fraction


def kl_estimate(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(pi || ref) from tokens sampled from pi (Schulman 2020,
    "Approximating KL divergence"). With log r = ref_logp - logp:

        "k1": -log r = logp - ref_logp            (unbiased, can be negative, high variance)
        "k3": (r - 1) - log r                     (unbiased, always >= 0, GRPO's eq. 4 choice)

    k3 is computed like verl's "low_var_kl": log r clamped to +-LOG_RATIO_CLAMP before the exp and
    the estimate clamped to <= K3_CLAMP (there, the gradient is 0). k1 needs no exp and no clamp.

    Note: as a *loss* term, k1's gradient w.r.t. logp is 1 per token, whose expectation under pi
    is 0; it pulls nothing toward ref. Use k1 in "reward" mode or use k3 in the loss.
    """
    logp, ref = _float(logp_BxT), _float(ref_logp_BxT)
    if estimator == "k1":
        return logp - ref
    if estimator == "k3":
        log_r = jnp.clip(ref - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return jnp.clip(jnp.exp(log_r) - log_r - 1.0, -K3_CLAMP, K3_CLAMP)
    raise ValueError(f"kl_estimate: estimator must be one of ('k1', 'k3'), got {estimator!r}")


def truncated_importance_weights(
    trainer_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, cap: float
) -> jax.Array:
    """Truncated importance sampling weights, min(pi_trainer / pi_sampler, cap), no gradient
    (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training").

    The sampler (a fast inference engine, other kernels, other precision) and the trainer assign
    different probabilities to the same sampled tokens; reweighting the policy gradient by this
    ratio corrects that numerical mismatch, and truncating at `cap` bounds the variance. Both
    log-probs must be of the same distribution (the model at the sampling temperature, untruncated:
    `Samples.policy_logprobs`). A top-p / top-k cut is not something these weights can correct:
    the cut tokens are never sampled, so no weight on the sampled ones restores their share of
    the gradient, and weighting by the renormalised probabilities would only shrink every token's
    weight by the kept mass.
    """
    if not cap > 0:
        raise ValueError(f"truncated_importance_weights: cap must be > 0, got {cap}")
    log_w = _float(trainer_logp_BxT) - _float(sampler_logp_BxT)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w), cap))


@dataclass(frozen=True)
class PolicyLossConfig:
    """Options of `policy_loss`.

    clip_low, clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high]; DAPO's clip-higher
        decouples them (e.g. 0.2 / 0.28) so low-probability tokens can grow.
    aggregation: how per-token losses become one scalar (see `aggregate_token_losses`).
    kl_estimator: "none", "k1" or "k3" (see `kl_estimate`); kl_coef its weight (beta). An
        estimator with kl_coef = 0 only measures the KL (logged, no term in loss or reward).
    kl_mode: "loss" adds kl_coef * kl per token to the loss; "reward" leaves the loss alone (the
        caller subtracts kl_coef * KL from the rewards); the KL is logged either way.
    tis_cap: when set, the policy-gradient term of each token is multiplied by
        min(pi_old / pi_sampler, tis_cap) (needs sampler log-probs).
    max_tokens_for_norm: the per-row generation budget C of "seq-mean-token-sum" (Dr. GRPO
        divides the token sum by the constant B * C, TRL's B * max_completion_length; the GRPO
        trainer passes rl.max_new_tokens). None uses the padded width T of the batch, which is
        only constant when batches are padded to the budget.
    """

    clip_low: float = 0.2
    clip_high: float = 0.2
    aggregation: str = "token-mean"
    kl_estimator: str = "none"
    kl_coef: float = 0.0
    kl_mode: str = "loss"
    tis_cap: float | None = None
    max_tokens_for_norm: int | None = None

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> NoReturn:
            raise PolicyLossConfigError(
                f"PolicyLossConfig.{field}: {why}, got {getattr(self, field)!r}"
            )

        if not 0.0 <= self.clip_low < 1.0:
            fail("clip_low", "must be in [0, 1) (the ratio's lower bound is 1 - clip_low > 0)")
        if not self.clip_high >= 0.0:
            fail("clip_high", "must be >= 0")
        if self.aggregation not in AGGREGATIONS:
            fail("aggregation", f"must be one of {AGGREGATIONS}")
        if self.kl_estimator not in KL_ESTIMATORS:
            fail("kl_estimator", f"must be one of {KL_ESTIMATORS}")
        if not self.kl_coef >= 0.0:
            fail("kl_coef", "must be >= 0")
        if self.kl_coef > 0.0 and self.kl_estimator == "none":
            fail("kl_coef", "is > 0 but kl_estimator is 'none'")
        if self.kl_mode not in KL_MODES:
            fail("kl_mode", f"must be one of {KL_MODES}")
        if self.tis_cap is not None and not self.tis_cap > 0.0:
            fail("tis_cap", "must be None or > 0")
        if self.max_tokens_for_norm is not None:
            if isinstance(self.max_tokens_for_norm, bool) or not isinstance(
                self.max_tokens_for_norm, int
            ):
                fail("max_tokens_for_norm", "must be None or an int")
            if self.max_tokens_for_norm <= 0:
                fail("max_tokens_for_norm", "must be > 0")
            if self.aggregation != "seq-mean-token-sum":
                fail("max_tokens_for_norm", "only applies to aggregation='seq-mean-token-sum'")


def loss_normalizer(
    mask_BxT: jax.Array, aggregation: str, max_tokens_for_norm: int | None = None
) -> jax.Array:
    """The divisor that `aggregate_token_losses` applies to a batch (see there), a scalar.

    Computed on a whole mini-batch and passed to each of its micro-batches, it makes the sum of
    the micro-batch losses equal the mini-batch loss exactly (gradient accumulation).
    """
    mask = (jnp.asarray(mask_BxT) > 0).astype(jnp.float32)
    tokens_B = mask.sum(axis=-1)
    if aggregation == "token-mean":
        return jnp.maximum(tokens_B.sum(), 1.0)
    if aggregation == "seq-mean-token-mean":
        return jnp.maximum((tokens_B > 0).sum().astype(jnp.float32), 1.0)
    if aggregation == "seq-mean-token-sum":
        budget = max_tokens_for_norm if max_tokens_for_norm is not None else mask.shape[-1]
        return jnp.asarray(float(mask.shape[0] * budget), jnp.float32)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def aggregate_token_losses(
    loss_BxT: jax.Array,
    mask_BxT: jax.Array,
    aggregation: str,
    max_tokens_for_norm: int | None = None,
    normalizer: jax.Array | None = None,
) -> jax.Array:
    """One scalar from per-token losses. With m the mask, n_b = sum_t m_bt, S the number of
    sequences with n_b > 0 and B the number of rows:

        "token-mean"          sum_bt m l / sum_b n_b          (DAPO token-level loss, Yu et al.)
        "seq-mean-token-mean" 1/S sum_b (sum_t m l / n_b)     (GRPO, Shao et al. 2024)
        "seq-mean-token-sum"  sum_bt m l / (B C)              (Dr. GRPO, Liu et al. 2025; TRL)

    with C = max_tokens_for_norm (the generation budget), or the padded width T when None. Dr.
    GRPO's divisor is a constant of the run: all-masked rows (dropped groups, filtered samples)
    count in B, so no batch's content changes the loss scale. The divisor (the denominator
    above) is `loss_normalizer(mask, ...)` unless `normalizer` is given: pass the whole
    mini-batch's to each micro-batch so that the micro-batch losses sum to the mini-batch loss.
    An all-masked batch gives 0 (and zero gradients).
    """
    masked = jnp.where(mask_BxT > 0, loss_BxT, 0.0)
    if normalizer is None:
        normalizer = loss_normalizer(mask_BxT, aggregation, max_tokens_for_norm)
    normalizer = jnp.asarray(normalizer, loss_BxT.dtype)
    if aggregation in ("token-mean", "seq-mean-token-sum"):
        return masked.sum() / normalizer
    if aggregation == "seq-mean-token-mean":
        tokens_B = (mask_BxT > 0).astype(loss_BxT.dtype).sum(axis=-1)
        return (masked.sum(axis=-1) / jnp.maximum(tokens_B, 1.0)).sum() / normalizer
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def policy_loss(
    logp_BxT: jax.Array,
    old_logp_BxT: jax.Array,
    advantages_B: jax.Array,
    mask_BxT: jax.Array,
    config: PolicyLossConfig,
    *,
    ref_logp_BxT: jax.Array | None = None,
    sampler_logp_BxT: jax.Array | None = None,
    normalizer: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GRPO / DAPO / Dr. GRPO policy loss and its metrics.

    Per token, with ratio = exp(clamp(logp - old_logp, +-LOG_RATIO_CLAMP)) (verl's bound) and A
    the sequence's advantage (PPO clipped surrogate, Schulman et al. 2017, as used by GRPO eq. 3):

        pg_t = -min(ratio A, clip(ratio, 1 - clip_low, 1 + clip_high) A)
        pg_t *= min(exp(old_logp - sampler_logp), tis_cap)    if tis_cap (pi_old is the trainer's
                                                               log-prob of the sampled tokens)
        l_t  = pg_t + kl_coef * kl_t                           if kl_mode == "loss", kl_coef > 0

    then `aggregate_token_losses(l, mask, config.aggregation, ..., normalizer)` (pass the whole
    mini-batch's `loss_normalizer` when this batch is one micro-batch of it). Only `logp_BxT`
    carries gradient; old, reference and sampler log-probs and the advantages are
    stop-gradient'ed here, so passing the same array as logp and old_logp (one update per batch)
    gives the REINFORCE gradient -A m_t / normaliser. The clipped branch is selected explicitly
    (not by jnp.minimum, which splits the gradient on ties), so exactly on a clip boundary the
    gradient is the unclipped one.
    Masked positions are zeroed before any exp, so garbage there cannot produce inf/NaN.

    Metrics (raw sums and counts over masked tokens, reduced once outside; "per token" means
    divide by token_count, "per sequence" by seq_count):
        token_count, seq_count (sequences with >= 1 token), pg_loss_sum (sum of pg_t),
        ratio_sum, clip_low_count (A < 0, ratio < 1 - clip_low), clip_high_count (A > 0,
        ratio > 1 + clip_high), clip_count (their sum: tokens whose gradient the clip zeroes),
        advantage_sum (token-weighted), kl_sum (when ref_logp_BxT is given and an estimator set);
        with sampler_logp_BxT: mismatch_sum (|old_logp - sampler_logp|), mismatch_k3_sum (k3
        estimate of KL(sampler || trainer)); with tis_cap: tis_weight_sum, tis_clip_count
        (tokens whose weight hit the cap).
    """
    if logp_BxT.ndim != 2:
        raise ValueError(f"policy_loss: logp_BxT must be [B, T], got shape {logp_BxT.shape}")
    for name, other in (
        ("old_logp_BxT", old_logp_BxT),
        ("mask_BxT", mask_BxT),
        ("ref_logp_BxT", ref_logp_BxT),
        ("sampler_logp_BxT", sampler_logp_BxT),
    ):
        if other is not None and jnp.shape(other) != logp_BxT.shape:
            raise ValueError(
                f"policy_loss: {name} shape {jnp.shape(other)} != logp_BxT {logp_BxT.shape}"
            )
    if jnp.shape(advantages_B) != logp_BxT.shape[:1]:
        raise ValueError(
            f"policy_loss: advantages_B shape {jnp.shape(advantages_B)} != ({logp_BxT.shape[0]},)"
        )
    use_kl = config.kl_estimator != "none"
    kl_in_loss = use_kl and config.kl_mode == "loss" and config.kl_coef > 0
    if kl_in_loss and ref_logp_BxT is None:
        raise ValueError(
            "policy_loss: config.kl_estimator is set with kl_mode='loss' but ref_logp_BxT is None"
        )
    if config.tis_cap is not None and sampler_logp_BxT is None:
        raise ValueError("policy_loss: config.tis_cap is set but sampler_logp_BxT is None")

    on = mask_BxT > 0
    mask = on.astype(jnp.promote_types(_float(logp_BxT).dtype, jnp.float32))
    dtype = mask.dtype

    def masked_input(x: jax.Array, grad: bool = False) -> jax.Array:
        x = jnp.where(on, _float(x).astype(dtype), 0.0)
        return x if grad else jax.lax.stop_gradient(x)

    logp = masked_input(logp_BxT, grad=True)
    old_logp = masked_input(old_logp_BxT)
    adv_Bx1 = jax.lax.stop_gradient(_float(advantages_B).astype(dtype))[:, None]

    ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_low, 1.0 + config.clip_high)
    clip_high = on & (adv_Bx1 > 0) & (ratio > 1.0 + config.clip_high)
    clip_low = on & (adv_Bx1 < 0) & (ratio < 1.0 - config.clip_low)
    # min(ratio A, clipped A) picks the clipped (constant) branch exactly on these tokens.
    pg = -jnp.where(clip_high | clip_low, jax.lax.stop_gradient(clipped_ratio), ratio) * adv_Bx1

    metrics: dict[str, jax.Array] = {}
    if sampler_logp_BxT is not None:
        sampler_logp = masked_input(sampler_logp_BxT)
        metrics["mismatch_sum"] = (jnp.abs(old_logp - sampler_logp) * mask).sum()
        metrics["mismatch_k3_sum"] = (kl_estimate(sampler_logp, old_logp, "k3") * mask).sum()
        if config.tis_cap is not None:
            weights = truncated_importance_weights(old_logp, sampler_logp, config.tis_cap)
            pg = pg * weights
            metrics["tis_weight_sum"] = (weights * mask).sum()
            metrics["tis_clip_count"] = (
                (on & (old_logp - sampler_logp > jnp.log(config.tis_cap))).astype(dtype).sum()
            )

    token_loss = pg
    if use_kl and ref_logp_BxT is not None:
        kl = kl_estimate(logp, masked_input(ref_logp_BxT), config.kl_estimator) * mask
        metrics["kl_sum"] = jax.lax.stop_gradient(kl.sum())
        if kl_in_loss:
            token_loss = token_loss + config.kl_coef * kl

    loss = aggregate_token_losses(token_loss, mask, config.aggregation, config.max_tokens_for_norm,
                                  normalizer)
    tokens_B = mask.sum(axis=-1)
    metrics.update(
        token_count=tokens_B.sum(),
        seq_count=(tokens_B > 0).astype(dtype).sum(),
        pg_loss_sum=jax.lax.stop_gradient((pg * mask).sum()),
        ratio_sum=jax.lax.stop_gradient((ratio * mask).sum()),
        clip_low_count=clip_low.astype(dtype).sum(),
        clip_high_count=clip_high.astype(dtype).sum(),
        clip_count=(clip_low | clip_high).astype(dtype).sum(),
        advantage_sum=(adv_Bx1 * mask).sum(),
    )
    return loss, metrics


def policy_logprobs(logits_BxLxV: jax.Array, tokens_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """log p(token t | tokens < t) and the entropy of that predictive distribution, both [B, L]
    and aligned like `next_token_nll` (column t from the logits at t - 1; column 0 is 0).

    Entropy H = logsumexp(z) - sum_v softmax(z)_v z_v. The float32 cast of the logits is the only
    [B, L, V] array materialised (under jit the softmax-weighted sum fuses into its reduction), and
    the logits are never sliced: all L positions are scored against the tokens shifted left and
    the outputs shifted right, which wastes one position instead of copying [B, L - 1, V].
    """
    logits = _float(logits_BxLxV)
    lse_BxL = jax.nn.logsumexp(logits, axis=-1)
    next_BxL = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, 1)))
    target_BxL = jnp.take_along_axis(logits, next_BxL[..., None], axis=-1)[..., 0]
    expected_logit_BxL = jnp.sum(jnp.exp(logits - lse_BxL[..., None]) * logits, axis=-1)

    def shift_right(x_BxL: jax.Array) -> jax.Array:
        return jnp.pad(x_BxL[:, :-1], ((0, 0), (1, 0)))

    return shift_right(target_BxL - lse_BxL), shift_right(lse_BxL - expected_logit_BxL)


def chunked_policy_logprobs(
    hidden_BxLxE: jax.Array,
    head_ExV: jax.Array,
    tokens_BxL: jax.Array,
    *,
    scale: float = 1.0,
    chunk: int = 512,
) -> tuple[jax.Array, jax.Array]:
    """`policy_logprobs(scale * hidden @ head, tokens)` without the [B, L, V] logits.

    Positions go through the head `chunk` at a time (a scan); each chunk's logits are float32
    straight out of the matmul (accumulated in float32 from the inputs' dtype, never rounded to
    bf16 first: these log-probs feed the PPO ratio, where a bf16-rounded logit is an error of
    ~1e-2 nats on a large vocabulary). The chunk body is rematerialised in the backward pass, so
    only one chunk's logits live at a time there too. Same alignment as `policy_logprobs`:
    column t is log p(token t | tokens < t) and that distribution's entropy; column 0 is 0.
    Gradients flow to hidden and head through the log-probs; the entropy is a metric.
    """
    if hidden_BxLxE.ndim != 3 or head_ExV.ndim != 2 or head_ExV.shape[0] != hidden_BxLxE.shape[2]:
        raise ValueError(
            f"chunked_policy_logprobs: hidden [B, L, E] and head [E, V] expected, got "
            f"{hidden_BxLxE.shape} and {head_ExV.shape}"
        )
    if tokens_BxL.shape != hidden_BxLxE.shape[:2]:
        raise ValueError(f"chunked_policy_logprobs: tokens {tokens_BxL.shape} must be the hidden "
                         f"states' [B, L] {hidden_BxLxE.shape[:2]}")
    if chunk < 1:
        raise ValueError(f"chunked_policy_logprobs: chunk must be >= 1, got {chunk}")
    length = hidden_BxLxE.shape[1]
    chunk = min(int(chunk), length)
    head_ExV = head_ExV.astype(hidden_BxLxE.dtype)
    next_BxL = jnp.pad(tokens_BxL[:, 1:].astype(jnp.int32), ((0, 0), (0, 1)))

    @jax.checkpoint
    def one_chunk(h_BxCxE: jax.Array, t_BxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = jnp.dot(h_BxCxE, head_ExV, preferred_element_type=jnp.float32) * scale
        lse_BxC = jax.nn.logsumexp(logits, axis=-1)
        target = jnp.take_along_axis(logits, t_BxC[..., None], axis=-1)[..., 0]
        z, lse = jax.lax.stop_gradient(logits), jax.lax.stop_gradient(lse_BxC)
        entropy = lse - jnp.sum(jnp.exp(z - lse[..., None]) * z, axis=-1)
        return target - lse_BxC, entropy

    def body(carry: None, xs: tuple[jax.Array, jax.Array]):
        return carry, one_chunk(*xs)

    _, (logp, entropy) = jax.lax.scan(
        body, None, (_head_chunks(hidden_BxLxE, chunk), _head_chunks(next_BxL, chunk)))
    logp_BxL, entropy_BxL = _head_unchunk(logp, length), _head_unchunk(entropy, length)

    def shift_right(x_BxL: jax.Array) -> jax.Array:
        return jnp.pad(x_BxL[:, :-1], ((0, 0), (1, 0)))

    return shift_right(logp_BxL), shift_right(entropy_BxL)
