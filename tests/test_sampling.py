"""The shared-prefix sampler: greedy == transformers, log-probs == teacher forcing, seeds, waves."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from hf_fixtures import save_hf_model

from sftrl import sampling, sharding
from sftrl.models.checkpoint import load_hf
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import build_model

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15], [20]]


@pytest.fixture(scope="module")
def model():
    config = ModelConfig("qwen3", 61, 32, 2, 8, 2, 8, 48, qk_norm=True, tie_embeddings=True)
    return build_model(config, sharding.single_device_layout(), seed=1)


def _teacher_forced(model, prompt, generated):
    seq = list(prompt) + list(generated)
    logits = np.asarray(model(np.array([seq])))[0]
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    start = len(prompt) - 1
    rows = log_probs[start: start + len(generated)]
    return rows, rows[np.arange(len(generated)), generated]


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.7])
def test_logprobs_equal_a_teacher_forced_forward(model, temperature):
    out = sampling.generate(model, PROMPTS, num_samples=5, max_new_tokens=7,
                            temperature=temperature, seed=2, progress=False)
    assert out.tokens.shape == (4, 5, 7)
    for p, prompt in enumerate(PROMPTS):
        for n in range(5):
            generated = out.sequence(p, n)
            rows, model_logp = _teacher_forced(model, prompt, generated)
            np.testing.assert_allclose(out.model_logprobs[p, n, : len(generated)], model_logp,
                                       atol=2e-5)
            if temperature == 0.0:
                assert generated == rows.argmax(axis=-1).tolist()
                assert not out.logprobs[p, n].any()
            elif temperature == 1.0:  # no truncation: sampling distribution == model
                np.testing.assert_allclose(out.logprobs[p, n, : len(generated)], model_logp,
                                           atol=2e-5)


@pytest.mark.parametrize("kind", ["llama3", "qwen3"])
def test_greedy_equals_transformers_generate(kind, tmp_path):
    hf = save_hf_model(kind, tmp_path / kind)
    ours, _ = load_hf(tmp_path / kind, dtype="float32")
    prompts = [[3, 17, 5, 99, 42], [7, 7], list(range(30, 50))]
    out = sampling.generate(ours, prompts, num_samples=2, max_new_tokens=12, temperature=0.0,
                            progress=False)
    for p, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12,
                              min_new_tokens=12, eos_token_id=None, pad_token_id=0)
        expected = ref[0, len(prompt):].tolist()
        assert out.sequence(p, 0) == expected
        assert out.sequence(p, 1) == expected


def test_waves_give_the_same_samples_as_one_batch(model):
    kwargs = dict(num_samples=4, max_new_tokens=6, seed=5, top_p=0.9, progress=False)
    whole = sampling.generate(model, PROMPTS, **kwargs)
    waves = sampling.generate(model, PROMPTS, max_kv_tokens=40, **kwargs)
    assert len(sampling._waves([len(p) for p in PROMPTS], 24, 40)) > 1
    np.testing.assert_array_equal(whole.tokens, waves.tokens)
    np.testing.assert_allclose(whole.logprobs, waves.logprobs, atol=1e-5)


def test_seeds(model):
    kwargs = dict(num_samples=8, max_new_tokens=6, progress=False)
    a = sampling.generate(model, PROMPTS, seed=1, **kwargs)
    b = sampling.generate(model, PROMPTS, seed=1, **kwargs)
    c = sampling.generate(model, PROMPTS, seed=2, **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).any()
    # samples of one prompt differ from each other (each draws from its own key)
    assert len({tuple(a.sequence(0, n)) for n in range(8)}) > 1


def test_stop_ids_end_each_sequence(model):
    greedy = sampling.generate(model, PROMPTS, num_samples=2, max_new_tokens=8,
                               temperature=0.0, progress=False)
    stop = int(greedy.tokens[0, 0, 2])
    out = sampling.generate(model, PROMPTS, num_samples=2, max_new_tokens=8, temperature=0.0,
                            stop_ids=[stop], pad_id=0, progress=False)
    assert out.finished[0].all() and (out.lengths[0] <= 3).all()
    for p in range(len(PROMPTS)):
        for n in range(2):
            seq = out.sequence(p, n)
            assert stop not in seq[:-1]
            assert out.finished[p, n] == (seq[-1] == stop)
            assert (out.tokens[p, n, len(seq):] == 0).all()
            assert not out.model_logprobs[p, n, len(seq):].any()


@pytest.mark.parametrize(("top_k", "top_p"), [(3, 1.0), (0, 0.5), (5, 0.8)])
def test_truncation_never_emits_outside_the_kept_set(model, top_k, top_p):
    out = sampling.generate(model, PROMPTS, num_samples=16, max_new_tokens=5, top_k=top_k,
                            top_p=top_p, seed=9, progress=False)
    for p, prompt in enumerate(PROMPTS):
        for n in range(16):
            generated = out.sequence(p, n)
            rows, _ = _teacher_forced(model, prompt, generated)
            for row, token in zip(rows, generated, strict=True):
                order = np.argsort(-row)
                rank = int(np.flatnonzero(order == token)[0])
                if top_k:
                    assert rank < top_k
                probs = np.exp(row[order])
                assert probs[:rank].sum() < top_p + 1e-6  # inside the nucleus


def test_sampling_on_a_mesh_matches_one_device(model):
    layout = sharding.Layout(sharding.make_mesh(2, 1, 4), sharding.SAMPLING_RULES)
    sharded = model.reshard(layout)
    kwargs = dict(num_samples=4, max_new_tokens=5, seed=3, progress=False)
    a = sampling.generate(model, PROMPTS, **kwargs)
    b = sampling.generate(sharded, PROMPTS, **kwargs)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_bad_arguments_are_named(model):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampling.generate(model, [[1], []], num_samples=1, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"prompt 0: token ids must be in \[0, 61\)"):
        sampling.generate(model, [[61]], num_samples=1, max_new_tokens=1)
    with pytest.raises(ValueError, match="top_p"):
        sampling.generate(model, [[1]], num_samples=1, max_new_tokens=1, top_p=0.0)


def test_unshared_prefix_gives_the_same_samples(model):
    kwargs = dict(num_samples=3, max_new_tokens=5, seed=11, top_k=20, progress=False)
    shared = sampling.generate(model, PROMPTS, **kwargs)
    repeated = sampling.generate(model, PROMPTS, share_prefix=False, **kwargs)
    np.testing.assert_array_equal(shared.tokens, repeated.tokens)
    np.testing.assert_allclose(shared.model_logprobs, repeated.model_logprobs, atol=1e-5)
    np.testing.assert_array_equal(shared.lengths, repeated.lengths)


def _reference_generate(model, prompts, *, num_samples, max_new_tokens, stop_ids, seed, pad_id,
                        **sampling_args):
    """The sampler's contract written as a plain loop: every step a full forward pass (no
    cache), keys fold_in(fold_in(fold_in(key(seed), p), n), t), pad and zeros after a stop."""
    width = max(len(p) for p in prompts) + max_new_tokens
    rows = [(p, n) for p in range(len(prompts)) for n in range(num_samples)]
    seqs = [list(prompts[p]) for p, _ in rows]
    done = np.zeros(len(rows), bool)
    shape = (len(prompts), num_samples, max_new_tokens)
    tokens, logps, model_logps = np.full(shape, pad_id), np.zeros(shape), np.zeros(shape)
    base = jax.random.key(seed)
    for t in range(max_new_tokens):
        batch = np.full((len(rows), width), pad_id, np.int32)
        for r, seq in enumerate(seqs):
            batch[r, : len(seq)] = seq
        logits = np.asarray(model(batch))[np.arange(len(rows)), [len(s) - 1 for s in seqs]]
        keys = jax.numpy.stack([
            jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(base, p), n), t)
            for p, n in rows
        ])
        tok, logp, model_logp = (np.asarray(x)[0] for x in sampling._sample(
            logits[None], keys[None], **sampling_args)[:3])
        for r, (p, n) in enumerate(rows):
            if not done[r]:
                tokens[p, n, t], logps[p, n, t], model_logps[p, n, t] = tok[r], logp[r], \
                    model_logp[r]
                done[r] = tok[r] in stop_ids
            seqs[r].append(int(tokens[p, n, t]))
    return tokens, logps, model_logps


def test_fused_steps_equal_a_plain_reference_loop(model):
    # the settings of test_waves_give_the_same_samples_as_one_batch: its compiled steps are reused
    kwargs = dict(num_samples=4, max_new_tokens=6, seed=5, pad_id=0)
    sampling_args = dict(temperature=1.0, top_k=0, top_p=0.9)
    # stop ids that occur: the first tokens the sampler draws for two of the prompts
    first = sampling.generate(model, PROMPTS, progress=False, **kwargs, **sampling_args)
    stop_ids = sorted({int(first.tokens[0, 0, 1]), int(first.tokens[2, 1, 0])})
    out = sampling.generate(model, PROMPTS, stop_ids=stop_ids, progress=False, **kwargs,
                            **sampling_args)
    tokens, logps, model_logps = _reference_generate(model, PROMPTS, stop_ids=stop_ids,
                                                     **kwargs, **sampling_args)
    assert out.finished.any() and not out.finished.all()
    np.testing.assert_array_equal(out.tokens, tokens)
    np.testing.assert_allclose(out.logprobs, logps, atol=2e-5)
    np.testing.assert_allclose(out.model_logprobs, model_logps, atol=2e-5)


def test_unrolled_layers_give_the_same_samples(model):
    """Decoding from per-layer weight copies (no scan) is the same computation: same samples,
    same log-probs, both with shared and with repeated prompts."""
    kwargs = dict(num_samples=3, max_new_tokens=6, seed=5, top_p=0.9, stop_ids=(3,),
                  progress=False)
    for share in (True, False):
        scanned = sampling.generate(model, PROMPTS, share_prefix=share, **kwargs)
        unrolled = sampling.generate(model, PROMPTS, share_prefix=share, unroll_layers=True,
                                     **kwargs)
        np.testing.assert_array_equal(unrolled.tokens, scanned.tokens)
        np.testing.assert_array_equal(unrolled.lengths, scanned.lengths)
        np.testing.assert_allclose(unrolled.logprobs, scanned.logprobs, atol=1e-5)
        np.testing.assert_allclose(unrolled.model_logprobs, scanned.model_logprobs, atol=1e-5)


def test_unstack_layers_splits_every_weight(model):
    from sftrl.models.transformer import unstack_layers

    flat = unstack_layers(model.params, model.config.num_layers)
    assert "layers" not in flat and {"layer_0", "layer_1"} <= set(flat)
    stacked = jax.tree.leaves(model.params["layers"])
    for i in range(model.config.num_layers):
        for got, want in zip(jax.tree.leaves(flat[f"layer_{i}"]), stacked, strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want)[i])
    with pytest.raises(ValueError, match="no stacked 'layers'"):
        unstack_layers(flat, 2)


@pytest.mark.parametrize("max_new_tokens", [1, 7, 64, 65, 384, 1000, 4096])
def test_suffix_window_covers_the_step_in_few_buckets(max_new_tokens):
    windows = [sampling._suffix_window(step, max_new_tokens) for step in range(max_new_tokens)]
    # each step reads its own slot (`step`) and never past the suffix
    assert all(step < w <= max_new_tokens for step, w in enumerate(windows))
    assert windows == sorted(windows) and windows[-1] == max_new_tokens
    assert len(set(windows)) <= sampling.SUFFIX_WINDOWS  # compilations per length
    assert min(windows) >= min(max_new_tokens, sampling.MIN_SUFFIX_WINDOW)


def test_suffix_window_gives_the_full_suffix_result(model, monkeypatch):
    """Reading only the suffix slots written so far is the same computation as masking the
    rest: identical tokens and log-probs, with windows that change mid-generation."""
    kwargs = dict(num_samples=4, max_new_tokens=20, seed=3, progress=False)
    monkeypatch.setattr(sampling, "MIN_SUFFIX_WINDOW", 3)  # windows 3, 6, ..., 20
    windowed = sampling.generate(model, PROMPTS, **kwargs)
    monkeypatch.setattr(sampling, "MIN_SUFFIX_WINDOW", 10**6)  # one window: all 20 slots
    full = sampling.generate(model, PROMPTS, **kwargs)
    np.testing.assert_array_equal(windowed.tokens, full.tokens)
    np.testing.assert_array_equal(windowed.lengths, full.lengths)
    np.testing.assert_allclose(windowed.logprobs, full.logprobs, atol=1e-6)
    np.testing.assert_allclose(windowed.model_logprobs, full.model_logprobs, atol=1e-6)


# --- a prompt's samples split over waves ------------------------------------------------------
# PROMPTS' lengths are 5, 2, 7, 1; with max_new_tokens 6 a sample holds 6 suffix slots.


def test_plan_splits_samples_only_when_the_budget_needs_it():
    lengths = [len(p) for p in PROMPTS]
    plan = sampling.plan_waves(lengths, 8, 6, None)
    assert plan == [([0, 1, 2, 3], 0, 8)]
    # 2 * (5 + 48) = 106 <= 110, 3 * (7 + 48) = 165 > 110: prompts cut as before, all samples
    assert sampling.plan_waves(lengths, 8, 6, 110) == [([0, 1], 0, 8), ([2, 3], 0, 8)]
    # 7 + 48 = 55 > 40: prompt 2 cannot hold 8 samples; 4 samples: 7 + 24 = 31 <= 40 alone,
    # two prompts 2 * (5 + 24) = 58 > 40
    assert sampling.plan_waves(lengths, 8, 6, 40) == [
        ([p], first, 4) for p in range(4) for first in (0, 4)]
    # 7 + 12 = 19 <= 20 < 7 + 24: 2 samples a wave, 4 waves per prompt
    assert sampling.plan_waves(lengths, 8, 6, 20) == [
        ([p], first, 2) for p in range(4) for first in (0, 2, 4, 6)]


def test_plan_keeps_waves_aligned_to_the_batch_split():
    lengths = [len(p) for p in PROMPTS]
    # align 2, budget 40: 4 samples fit one prompt only (2 * (5 + 24) = 58), an unaligned wave;
    # 2 samples fit pairs: 2 * (5 + 12) = 34 and 2 * (7 + 12) = 38 <= 40
    plan = sampling.plan_waves(lengths, 8, 6, 40, align=2)
    assert plan == [([0, 1], f, 2) for f in (0, 2, 4, 6)] + [([2, 3], f, 2) for f in (0, 2, 4, 6)]
    # align 4: 4 * (7 + 6c) <= 80 holds for c = 2, not 4
    assert sampling.plan_waves(lengths, 8, 6, 80, align=4) == [
        ([0, 1, 2, 3], f, 2) for f in (0, 2, 4, 6)]
    # no chunk gives aligned waves that fit (a pair with prompt 3 needs 2 * (30 + 1) = 62 > 32):
    # the largest chunk whose waves, cut one prompt at a time, fit
    assert sampling.plan_waves([1, 1, 1, 30], 1, 1, 32, align=2) == [
        ([0, 1, 2], 0, 1), ([3], 0, 1)]


def test_plan_chunks_are_divisors_covering_every_sample():
    # 7 + 6 * 5 = 37 <= 40 < 7 + 6 * 6: at most 5 samples; 5 and 4 do not divide 6: chunks of 3
    plan = sampling.plan_waves([7], 6, 6, 40)
    assert plan == [([0], 0, 3), ([0], 3, 3)]


def test_a_budget_below_one_sample_is_one_line_naming_max_kv_tokens(model):
    from sftrl.errors import UserError

    # prompt 2 (7 tokens) + 6 new tokens = 13 > 12
    for share_prefix in (True, False):
        with pytest.raises(UserError, match=r"^max_kv_tokens=12 cannot hold one sample of "
                                            r"prompt 2 \(7 prompt tokens \+ max_new_tokens 6\)"):
            sampling.generate(model, PROMPTS, num_samples=8, max_new_tokens=6,
                              max_kv_tokens=12, share_prefix=share_prefix, progress=False)
    with pytest.raises(UserError, match="max_kv_tokens=12"):
        sampling.plan_waves([len(p) for p in PROMPTS], 8, 6, 12)


def _split_kwargs(model):
    """Sampling settings whose runs stop some samples early, with a stop id drawn in the
    second half of prompt 0's samples (a wrong sample-id offset would change it)."""
    kwargs = dict(num_samples=8, max_new_tokens=6, seed=4, top_k=20, progress=False)
    first = sampling.generate(model, PROMPTS, **kwargs)
    return dict(kwargs, stop_ids=[int(first.tokens[0, 5, 2])])


def _assert_same_samples(a, b):
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.finished, b.finished)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5)
    np.testing.assert_allclose(a.policy_logprobs, b.policy_logprobs, atol=1e-5)


@pytest.mark.parametrize("budget", [40, 20])  # 2 and 4 waves per prompt (see the plan test)
def test_split_samples_equal_the_unsplit_run(model, budget):
    kwargs = _split_kwargs(model)
    whole = sampling.generate(model, PROMPTS, **kwargs)
    split = sampling.generate(model, PROMPTS, max_kv_tokens=budget, **kwargs)
    assert whole.finished.any() and not whole.finished.all()
    assert split.tokens.shape == (4, 8, 6) and split.lengths.shape == (4, 8)
    _assert_same_samples(whole, split)
    # repeated prompts (one sample a prompt) split alike
    repeated = sampling.generate(model, PROMPTS, max_kv_tokens=budget, share_prefix=False,
                                 **kwargs)
    _assert_same_samples(whole, repeated)


def test_split_samples_on_a_mesh_equal_the_unsplit_run(model):
    layout = sharding.Layout(sharding.make_mesh(2, 2, 2), sharding.SAMPLING_RULES)
    assert sampling.batch_ways(layout) == 4  # waves of 4 prompts x 2 samples (the plan test)
    kwargs = _split_kwargs(model)
    whole = sampling.generate(model, PROMPTS, **kwargs)
    split = sampling.generate(model.reshard(layout), PROMPTS, max_kv_tokens=80, **kwargs)
    _assert_same_samples(whole, split)


def test_progress_counts_every_token_of_split_waves(model, monkeypatch):
    counted = []

    class Bar:
        def __init__(self, total, **_):
            counted.append(total)

        def update(self, n):
            counted.append(n)

        def close(self):
            pass

    monkeypatch.setattr(sampling.tqdm, "tqdm", Bar)
    sampling.generate(model, PROMPTS, num_samples=8, max_new_tokens=6, max_kv_tokens=20,
                      seed=4)
    total, *updates = counted
    # no stop ids: every wave runs all 6 steps; 16 waves of one prompt x 2 samples
    assert total == 4 * 8 * 6 and updates == [2] * (16 * 6)
