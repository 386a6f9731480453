"""Large-k sampling: prefill each prompt once, decode all its samples against that shared prefix.

`generate(model, prompts, num_samples=N, ...)` right-pads a wave of prompts, prefills them in one
forward pass, turns the prefill cache into a `SharedPrefixCache` (prefix KV once per prompt, a
small per-sample suffix KV), and then decodes the P*N sequences in lockstep. Each step's
attention reads the prompt's KV once for all N samples (the prefix kernel) and merges it with the
sample's own suffix by log-sum-exp.

Each decode step is ONE jitted device call (model step, key derivation, filtering, the draw, both
log-probs, stop/pad bookkeeping), with the suffix KV and the [P, N, T] output buffers donated and
updated in place. Inside the loop the host only reads the previous step's all-done flag; the
outputs come back once per wave.

Randomness: the token of sample n of prompt p at step t is drawn with the key
fold_in(fold_in(fold_in(key(seed), p), n), t), where p is the prompt's index in `prompts`. So
results do not depend on how prompts are grouped into waves or a prompt's samples split over
them, and the same seed gives the same samples.

Log-probs of each drawn token under three distributions: `logprobs` under the one actually
sampled from (temperature, top-k, top-p applied and renormalised; 0 for greedy),
`model_logprobs` under the unmodified model (temperature 1, no truncation), and
`policy_logprobs` under the model at the sampling temperature without truncation
(log_softmax(logits / T); temperature 1 for greedy) — the policy a GRPO trainer optimises, so
the numbers it compares with its own forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sftrl.errors import UserError
from sftrl.models.kv_cache import KVCache, SharedPrefixCache
from sftrl.models.transformer import Model, param_shardings, unstack_layers
from sftrl.sharding import to_host

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Samples:
    """Generations for P prompts x N samples, padded to T = max_new_tokens."""

    tokens: np.ndarray  # [P, N, T] int32; positions >= length hold pad_id
    logprobs: np.ndarray  # [P, N, T] float32 under the sampling distribution
    model_logprobs: np.ndarray  # [P, N, T] float32 under the model (temperature 1)
    policy_logprobs: np.ndarray  # [P, N, T] float32 under the model at T, untruncated
    lengths: np.ndarray  # [P, N] int32, the stop token included
    finished: np.ndarray  # [P, N] bool: ended on a stop id (else truncated at max_new_tokens)

    def sequence(self, prompt: int, sample: int) -> list[int]:
        return self.tokens[prompt, sample, : self.lengths[prompt, sample]].tolist()

    @property
    def truncated(self) -> np.ndarray:
        return ~self.finished


def _filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int, top_p: float):
    """Scaled and truncated logits of the distribution sampled from (-inf outside the kept set)."""
    logits = logits_BxV / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep_sorted = before < top_p  # the top token is always kept
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order
        ].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def _inverse_cdf_sample(key: jax.Array, log_probs_V: jax.Array) -> jax.Array:
    """One draw by inverting the CDF: a single uniform per row (categorical's Gumbel trick
    draws one per vocabulary entry, which dominates a decode step on CPU)."""
    cdf = jnp.cumsum(jnp.exp(log_probs_V))
    u = jax.random.uniform(key, dtype=cdf.dtype) * cdf[-1]
    token = jnp.searchsorted(cdf, u, side="right")
    # u can round up to cdf[-1]; fall back to the last token that has probability.
    last_kept = log_probs_V.shape[0] - 1 - jnp.argmax(jnp.isfinite(log_probs_V[::-1]))
    return jnp.minimum(token, last_kept)


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p"))
def _sample(logits_PxNxV, keys_PxN, temperature: float, top_k: int, top_p: float):
    p, n, v = logits_PxNxV.shape
    logits = logits_PxNxV.reshape(p * n, v).astype(jnp.float32)
    model_logp = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1)
        sample_logp = jnp.zeros(p * n, jnp.float32)
    else:
        filtered = jax.nn.log_softmax(_filter_logits(logits, temperature, top_k, top_p), axis=-1)
        tokens = jax.vmap(_inverse_cdf_sample)(keys_PxN.reshape(p * n), filtered)
        sample_logp = jnp.take_along_axis(filtered, tokens[:, None], axis=-1)[:, 0]
    chosen = jnp.take_along_axis(model_logp, tokens[:, None], axis=-1)[:, 0]
    policy_chosen = chosen
    if temperature not in (0.0, 1.0):
        policy_logp = jax.nn.log_softmax(logits / temperature, axis=-1)
        policy_chosen = jnp.take_along_axis(policy_logp, tokens[:, None], axis=-1)[:, 0]
    return (tokens.reshape(p, n).astype(jnp.int32), sample_logp.reshape(p, n),
            chosen.reshape(p, n), policy_chosen.reshape(p, n))


@jax.jit
def _step_keys(base: jax.Array, prompt_ids_PxN: jax.Array, sample_ids_PxN: jax.Array,
               step: jax.Array) -> jax.Array:
    def key(prompt_id, sample_id):
        k = jax.random.fold_in(jax.random.fold_in(base, prompt_id), sample_id)
        return jax.random.fold_in(k, step)

    return jax.vmap(jax.vmap(key))(prompt_ids_PxN, sample_ids_PxN)


class _Wave(NamedTuple):
    """What every decode step of a wave reads and never changes (passed, not donated)."""

    prefix_k_LxPxKxSxD: jax.Array
    prefix_v_LxPxKxSxD: jax.Array
    prefix_lengths_P: jax.Array  # int32
    prompt_ids_PxN: jax.Array  # int32: the key ids of each row (see the module docstring)
    sample_ids_PxN: jax.Array  # int32
    base_key: jax.Array
    stops: jax.Array  # int32 stop ids ([-1] when none)
    pad_id: jax.Array  # int32 scalar


class _State(NamedTuple):
    """What a decode step carries to the next (donated: updated in place)."""

    suffix_k_LxPxNxKxTxD: jax.Array
    suffix_v_LxPxNxKxTxD: jax.Array
    step: jax.Array  # int32 scalar: index of the last token drawn (== suffix slots written)
    done_PxN: jax.Array  # bool: the sequence has emitted a stop id
    tokens_PxNxT: jax.Array  # int32: pad_id after a sequence's stop
    logprobs_PxNxT: jax.Array  # float32
    model_logprobs_PxNxT: jax.Array  # float32
    policy_logprobs_PxNxT: jax.Array  # float32
    was_done_PxNxT: jax.Array  # bool: the sequence had stopped before this step


def _draw(state: _State, wave: _Wave, logits_PxNxV: jax.Array, step: jax.Array,
          sampling: dict) -> tuple[_State, jax.Array]:
    """Draw token `step` of every row from its logits and record it; (state, all rows done)."""
    keys = _step_keys(wave.base_key, wave.prompt_ids_PxN, wave.sample_ids_PxN, step)
    tok, logp, model_logp, policy_logp = _sample(logits_PxNxV, keys, **sampling)
    done = state.done_PxN
    tok = jnp.where(done, wave.pad_id, tok)

    def put(buffer_PxNxT: jax.Array, value_PxN: jax.Array) -> jax.Array:
        return jax.lax.dynamic_update_index_in_dim(buffer_PxNxT, value_PxN, step, axis=2)

    new_done = done | jnp.isin(tok, wave.stops)
    state = state._replace(
        step=step,
        done_PxN=new_done,
        tokens_PxNxT=put(state.tokens_PxNxT, tok),
        logprobs_PxNxT=put(state.logprobs_PxNxT, jnp.where(done, 0.0, logp)),
        model_logprobs_PxNxT=put(state.model_logprobs_PxNxT, jnp.where(done, 0.0, model_logp)),
        policy_logprobs_PxNxT=put(state.policy_logprobs_PxNxT,
                                  jnp.where(done, 0.0, policy_logp)),
        was_done_PxNxT=put(state.was_done_PxNxT, done),
    )
    return state, jnp.all(new_done)


class _Decoder:
    """The two jitted calls of one model: `start` (prefill + the first draw) and `step` (one
    decode step + the next draw + stop bookkeeping, the carried state donated).

    One device call per generated token: on a GPU every separate dispatch costs launch latency,
    and the host never reads anything back inside the loop except the lagged all-done flag.
    """

    def __init__(self, model: Model):
        module = model.module

        def start(params, tokens_PxS, mask_PxS, wave_ids, base_key, stops, pad_id, *,
                  num_samples: int, max_new_tokens: int, **sampling):
            p = tokens_PxS.shape[0]
            cache = KVCache.init(module.config, p, tokens_PxS.shape[1], module.dtype,
                                 module.layout)
            lengths_P = jnp.sum(mask_PxS, axis=1, dtype=jnp.int32)
            logits, cache = module.apply(
                {"params": params}, tokens_PxS, attention_mask_BxL=mask_PxS, cache=cache,
                logit_positions_B=jnp.maximum(lengths_P - 1, 0),
            )
            shared = SharedPrefixCache.from_prefill(cache, lengths_P, num_samples,
                                                    max_new_tokens)
            if module.layout is not None:
                # Split the cache by prompt (and kv head) like the rows that read it; left to
                # itself XLA keeps the freshly zeroed suffix whole on every device (an 8B wave of
                # 96 prompts x 8 samples x 4096 tokens: 400 GiB per chip instead of 13).
                constrain = module.layout.constrain
                prefix_axes = ("layers", "activation_batch", "activation_kv_heads", None, None)
                suffix_axes = ("layers", "activation_batch", None, "activation_kv_heads", None,
                               None)
                shared = shared.replace(
                    prefix_k_LxPxKxSxD=constrain(shared.prefix_k_LxPxKxSxD, prefix_axes),
                    prefix_v_LxPxKxSxD=constrain(shared.prefix_v_LxPxKxSxD, prefix_axes),
                    suffix_k_LxPxNxKxTxD=constrain(shared.suffix_k_LxPxNxKxTxD, suffix_axes),
                    suffix_v_LxPxNxKxTxD=constrain(shared.suffix_v_LxPxNxKxTxD, suffix_axes))
            wave = _Wave(shared.prefix_k_LxPxKxSxD, shared.prefix_v_LxPxKxSxD,
                         shared.prefix_lengths_P, *wave_ids, base_key, stops, pad_id)
            shape = (p, num_samples, max_new_tokens)
            state = _State(
                shared.suffix_k_LxPxNxKxTxD, shared.suffix_v_LxPxNxKxTxD,
                jnp.zeros((), jnp.int32), jnp.zeros(shape[:2], bool),
                jnp.full(shape, pad_id, jnp.int32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(shape, bool),
            )
            logits_PxNxV = jnp.broadcast_to(logits[:, :1], (p, num_samples, logits.shape[-1]))
            state, all_done = _draw(state, wave, logits_PxNxV, jnp.zeros((), jnp.int32),
                                    sampling)
            return wave, state, all_done

        def step(module, params, wave: _Wave, state: _State, *, window: int, **sampling):
            # Feed the last token drawn; it sits at slot `state.step` of the suffix.
            tok_PxN = jax.lax.dynamic_index_in_dim(state.tokens_PxNxT, state.step, axis=2,
                                                   keepdims=False)
            p, n = tok_PxN.shape
            positions_PxN = jnp.broadcast_to(wave.prefix_lengths_P[:, None] + state.step,
                                             (p, n))
            cache = SharedPrefixCache(
                wave.prefix_k_LxPxKxSxD, wave.prefix_v_LxPxKxSxD, wave.prefix_lengths_P,
                state.suffix_k_LxPxNxKxTxD, state.suffix_v_LxPxNxKxTxD, state.step,
                suffix_window=window,
            )
            logits, cache = module.apply(
                {"params": params}, tok_PxN.reshape(p * n, 1),
                positions_BxL=positions_PxN.reshape(p * n, 1), cache=cache,
            )
            state = state._replace(suffix_k_LxPxNxKxTxD=cache.suffix_k_LxPxNxKxTxD,
                                   suffix_v_LxPxNxKxTxD=cache.suffix_v_LxPxNxKxTxD)
            return _draw(state, wave, logits.reshape(p, n, -1), state.step + 1, sampling)

        sampling_args = ("temperature", "top_k", "top_p")
        self.start = jax.jit(
            start, static_argnames=("num_samples", "max_new_tokens", *sampling_args)
        )
        # The wave (prefix KV included) is read only and not donated: a donated buffer is dead
        # after the call, so every step would have to return the prefix as an output.
        self.step = jax.jit(functools.partial(step, module),
                            static_argnames=("window", *sampling_args),
                            donate_argnames=("state",))
        # The same step over per-layer weight buffers (`Transformer.unrolled_layers`), and the
        # jitted split of the stacked weights into them.
        self.step_unrolled = jax.jit(functools.partial(step, module.clone(unrolled_layers=True)),
                                     static_argnames=("window", *sampling_args),
                                     donate_argnames=("state",))
        self.unstack = jax.jit(functools.partial(unstack_layers,
                                                 num_layers=module.config.num_layers))


def make_sampler_params(module: Any) -> Any:
    """A jitted `params -> the sampler's copy`: every floating weight in the module's compute
    dtype, placed per the module's layout (the sampling rules).

    The forward casts every weight to the compute dtype before use (dense kernels, norm scales,
    the embedding rows), so the copy gives bit-identical logits while holding half the bytes of
    float32 master weights, and a decode step, which reads every weight once per token, reads
    half as much."""
    dtype = module.dtype

    def cast(params: Any) -> Any:
        return jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)

    return jax.jit(cast, out_shardings=param_shardings(module, module.layout))


_DECODERS: dict[Any, _Decoder] = {}


def _decoder_for(model: Model) -> _Decoder:
    # Keyed by the module (hashable; equal for the same architecture, dtypes and layout), not
    # the weights: the decoder only closes over the module and takes params per call, so the
    # next checkpoint of one architecture (sftrl.rank) reuses the compiled calls, and no weights
    # are pinned in memory by the cache.
    decoder = _DECODERS.get(model.module)
    if decoder is None:
        _DECODERS.clear()  # one architecture at a time
        decoder = _DECODERS[model.module] = _Decoder(model)
    return decoder


def _check_args(prompts, num_samples, max_new_tokens, temperature, top_p, top_k, vocab) -> None:
    if not prompts:
        raise ValueError("prompts is empty")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty")
        lo, hi = min(prompt), max(prompt)
        if lo < 0 or hi >= vocab:
            raise ValueError(f"prompt {i}: token ids must be in [0, {vocab}), got [{lo}, {hi}]")
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be positive")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, "
            f"{top_k}"
        )


def _waves(lengths: Sequence[int], per_prompt_extra: int, max_kv_tokens: int | None,
           align: int = 1):
    """Consecutive groups of prompts whose KV (prefix + all suffixes) fits the budget.

    A wave the budget cuts keeps a multiple of `align` prompts (when it holds that many), the
    rest start the next wave: the cache is split over the mesh's batch axes by prompt, and a
    prompt count they do not divide leaves the whole wave's KV unsplit, on every device.
    """
    if max_kv_tokens is None:
        return [list(range(len(lengths)))]
    waves: list[list[int]] = [[]]
    longest = 0
    for i, length in enumerate(lengths):
        new_longest = max(longest, length)
        if waves[-1] and (len(waves[-1]) + 1) * (new_longest + per_prompt_extra) > max_kv_tokens:
            wave = waves[-1]
            keep = len(wave) - len(wave) % align if len(wave) >= align else len(wave)
            waves[-1], carried = wave[:keep], wave[keep:]
            waves.append(carried)
            new_longest = max([lengths[j] for j in carried] + [length])
        waves[-1].append(i)
        longest = new_longest
    return waves


class WavePlan(NamedTuple):
    """One wave: these prompts, samples [first_sample, first_sample + num_samples) of each."""

    prompts: list[int]
    first_sample: int
    num_samples: int


def plan_waves(lengths: Sequence[int], num_samples: int, max_new_tokens: int,
               max_kv_tokens: int | None, align: int = 1) -> list[WavePlan]:
    """The waves `generate` runs: groups of prompts (`_waves`), and when a budget needs it, each
    group's samples in equal chunks, one wave per chunk.

    The chunk is the largest divisor of num_samples (one compiled shape, sample ids offset by a
    whole chunk) whose waves all fit the budget and, except the last, hold a multiple of `align`
    prompts; only when no chunk meets both (a budget that cannot hold `align` prompts even at one
    sample each), the largest whose waves fit. All samples in one wave (today's plan) whenever
    it qualifies. Preferring aligned waves over whole samples is why a budget that fits one
    prompt's samples still splits them when it fits fewer than `align` such prompts: an
    unaligned wave's KV is not split by prompt and sits whole on every device.
    """
    if max_kv_tokens is None:
        return [WavePlan(list(range(len(lengths))), 0, num_samples)]
    _check_budget(lengths, max_new_tokens, max_kv_tokens)
    chunk, groups = _sample_chunk(lengths, num_samples, max_new_tokens, max_kv_tokens, align)
    return [WavePlan(group, first, chunk) for group in groups
            for first in range(0, num_samples, chunk)]


def _check_budget(lengths: Sequence[int], max_new_tokens: int, max_kv_tokens: int) -> None:
    """The smallest wave, one prompt with one sample, must fit the budget."""
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    if lengths[longest] + max_new_tokens > max_kv_tokens:
        raise UserError(
            f"max_kv_tokens={max_kv_tokens} cannot hold one sample of prompt {longest} "
            f"({lengths[longest]} prompt tokens + max_new_tokens {max_new_tokens}): raise "
            "max_kv_tokens (rl.max_kv_tokens / eval.max_kv_tokens) or lower max_new_tokens")


def _sample_chunk(lengths: Sequence[int], num_samples: int, max_new_tokens: int,
                  max_kv_tokens: int, align: int) -> tuple[int, list[list[int]]]:
    """(samples per wave, the prompt groups) of `plan_waves`.

    Three passes, each from the largest chunk down: fitting waves cut at multiples of `align`;
    fitting waves as `_waves` cuts them for `align` (it can carry prompts into a wave they
    overflow); waves cut one prompt at a time, which fit whenever every prompt fits alone, so
    chunk 1 always qualifies there (the caller checked one prompt with one sample)."""
    chunks = [c for c in range(num_samples, 0, -1) if num_samples % c == 0]
    for aligned, group_align in ((True, align), (False, align), (False, 1)):
        for chunk in chunks:
            groups = _waves(lengths, chunk * max_new_tokens, max_kv_tokens, group_align)
            fit = all(len(g) * (max(lengths[i] for i in g) + chunk * max_new_tokens)
                      <= max_kv_tokens for g in groups)
            if fit and (not aligned or all(len(g) % align == 0 for g in groups[:-1])):
                return chunk, groups
    raise AssertionError("unreachable: one prompt with one sample fits (checked by the caller)")


def batch_ways(layout: Any) -> int:
    """How many ways the layout splits a batch of rows (its 'activation_batch' mesh axes)."""
    if layout is None:
        return 1
    spec = layout.spec(("activation_batch",))
    axes = spec[0] if len(spec) else None
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return int(np.prod([layout.mesh.shape[a] for a in names]))


def generate(
    model: Model,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_ids: Sequence[int] = (),
    seed: int = 0,
    pad_id: int = 0,
    max_kv_tokens: int | None = None,
    share_prefix: bool = True,
    unroll_layers: bool = False,
    progress: bool = True,
    _key_ids: tuple[np.ndarray, np.ndarray] | None = None,
) -> Samples:
    """N samples for each prompt (ragged token-id lists); see the module docstring.

    max_kv_tokens bounds the cache: prompts are processed in waves whose prefix plus
    N * max_new_tokens suffix slots fit it, and when one prompt's N samples do not (or fewer
    prompts than the mesh's batch ways fit), each wave's samples in chunks (`plan_waves`);
    the results are the same as one big batch. A budget that cannot hold one prompt with one
    sample is a UserError naming max_kv_tokens.
    share_prefix=False repeats each prompt N times instead (the peers' way: N prefills and N
    copies of the prompt's KV) and gives the same samples; it exists to measure the difference.
    unroll_layers=True decodes from a per-layer copy of the layer weights, made once per call
    (it holds a second copy of them while it runs): a scanned decode step slices each weight out
    of the stack, which on GPU XLA copies before each cuBLAS gemm, every step. Same samples.
    """
    _check_args(prompts, num_samples, max_new_tokens, temperature, top_p, top_k,
                model.config.vocab_size)
    if max_kv_tokens is not None:  # here too: share_prefix=False would name a repeated prompt
        _check_budget([len(p) for p in prompts], max_new_tokens, max_kv_tokens)
    if not share_prefix:
        repeated = [p for p in prompts for _ in range(num_samples)]
        flat = generate(
            model, repeated, num_samples=1, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=stop_ids, seed=seed,
            pad_id=pad_id, max_kv_tokens=max_kv_tokens, unroll_layers=unroll_layers,
            progress=progress,
            _key_ids=(np.repeat(np.arange(len(prompts)), num_samples),
                      np.tile(np.arange(num_samples), len(prompts))),
        )
        return Samples(*(
            x.reshape(len(prompts), num_samples, *x.shape[2:])
            for x in dataclasses.astuple(flat)
        ))
    decoder = _decoder_for(model)
    p_total, n, t_max = len(prompts), num_samples, max_new_tokens
    if _key_ids is None:
        _key_ids = (np.arange(p_total), np.zeros(p_total, np.int64))
    out = Samples(
        tokens=np.full((p_total, n, t_max), pad_id, np.int32),
        logprobs=np.zeros((p_total, n, t_max), np.float32),
        model_logprobs=np.zeros((p_total, n, t_max), np.float32),
        policy_logprobs=np.zeros((p_total, n, t_max), np.float32),
        lengths=np.full((p_total, n), t_max, np.int32),
        finished=np.zeros((p_total, n), bool),
    )
    step_fn, step_params = decoder.step, model.params
    if unroll_layers:
        step_fn, step_params = decoder.step_unrolled, decoder.unstack(model.params)
    base_key = jax.random.key(seed)
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    pad = jnp.asarray(pad_id, jnp.int32)
    sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    waves = plan_waves([len(p) for p in prompts], n, t_max, max_kv_tokens,
                       align=batch_ways(model.module.layout))
    bar = tqdm.tqdm(total=p_total * n * t_max, unit="tok", desc="generate",
                    disable=not progress or None)
    for wave, first_sample, chunk in waves:
        # Prefix widths rounded up to a bucket: every distinct width would compile the prefill
        # and decode steps again (seconds each), the padded slots are masked out.
        width = _bucket(max(len(prompts[i]) for i in wave))
        tokens_PxS = np.full((len(wave), width), pad_id, np.int32)
        mask_PxS = np.zeros((len(wave), width), bool)
        for row, i in enumerate(wave):
            tokens_PxS[row, : len(prompts[i])] = prompts[i]
            mask_PxS[row, : len(prompts[i])] = True
        # Row r, sample n draws with key (prompt id, first sample id + n): with shared prefixes
        # (p, n); with repeated prompts the same (p, n) pairs, so both modes sample alike. A
        # wave holding a chunk of the samples offsets n by the chunk's start: the same keys.
        sample_ids = _key_ids[1][wave][:, None] + first_sample + np.arange(chunk)
        wave_ids = (np.repeat(_key_ids[0][wave][:, None], chunk, axis=1).astype(np.int32),
                    sample_ids.astype(np.int32))
        consts, state, all_done = decoder.start(
            model.params, tokens_PxS, mask_PxS, wave_ids, base_key, stops, pad,
            num_samples=chunk, max_new_tokens=t_max, **sampling,
        )
        bar.update(len(wave) * chunk)
        # The stop test reads the previous step's flag, which is ready while the current step
        # still runs: the host never waits for the device, and at most one step (all pad) is
        # wasted after the last sequence stops.
        step, all_done_before = 0, None
        while step < t_max - 1 and not (all_done_before is not None and bool(all_done_before)):
            all_done_before = all_done
            state, all_done = step_fn(step_params, consts, state,
                                      window=_suffix_window(step, t_max), **sampling)
            step += 1
            bar.update(len(wave) * chunk)
        del consts
        _store_wave(out, wave, slice(first_sample, first_sample + chunk), state, step + 1,
                    stop_ids)
    bar.close()
    return out


PREFIX_BUCKET = 32
# A decode step attends to a window of the suffix slots that covers the tokens so far, rounded
# up to a bucket (each window is one compilation): at most SUFFIX_WINDOWS of them per length,
# none smaller than MIN_SUFFIX_WINDOW slots.
SUFFIX_WINDOWS = 8
MIN_SUFFIX_WINDOW = 64


def _suffix_window(step: int, max_new_tokens: int) -> int:
    """Suffix slots decode step `step` reads: more than `step` (its own token sits at slot
    `step`), a multiple of the bucket, at most max_new_tokens."""
    bucket = max(MIN_SUFFIX_WINDOW, -(-max_new_tokens // SUFFIX_WINDOWS))
    return min(max_new_tokens, (step // bucket + 1) * bucket)


def _bucket(width: int) -> int:
    return -(-width // PREFIX_BUCKET) * PREFIX_BUCKET


def _store_wave(out: Samples, wave: list[int], samples: slice, state: _State, steps: int,
                stop_ids: Sequence[int]) -> None:
    """Copy the first `steps` tokens of a wave (its prompts' samples `samples`) to the host, once
    per wave, and derive lengths. On several processes each gathers the whole wave (its arrays
    span every process's devices), so every process holds every prompt's samples."""
    tokens, logp, model_logp, policy_logp, was_done = (
        to_host(x[:, :, :steps]) for x in (state.tokens_PxNxT, state.logprobs_PxNxT,
                                           state.model_logprobs_PxNxT,
                                           state.policy_logprobs_PxNxT, state.was_done_PxNxT)
    )
    rows = np.asarray(wave)
    out.tokens[rows, samples, :steps] = tokens  # already pad_id after a sequence's stop
    out.logprobs[rows, samples, :steps] = logp
    out.model_logprobs[rows, samples, :steps] = model_logp
    out.policy_logprobs[rows, samples, :steps] = policy_logp
    is_stop = np.isin(tokens, list(stop_ids)) & ~was_done
    finished = is_stop.any(axis=-1)
    out.finished[rows, samples] = finished
    out.lengths[rows, samples] = np.where(finished, is_stop.argmax(axis=-1) + 1,
                                          out.tokens.shape[-1])
