"""Generalization loss: exact, and independent of batch size, padding, packing and mesh."""

from __future__ import annotations

import numpy as np
import pytest

from sftrl import sharding
from sftrl.eval.heldout import HeldoutEvaluator
from sftrl.losses import next_token_nll, token_nll
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import build_model

CONFIG = ModelConfig("llama", 61, 32, 2, 4, 2, 8, 48)


def _examples(count: int = 7, seed: int = 0):
    """(tokens, loss_mask) per example: a prompt (masked) then a response (scored)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        prompt, response = rng.integers(3, 9), rng.integers(2, 12)
        tokens = rng.integers(0, 61, prompt + response)
        mask = np.r_[np.zeros(prompt, int), np.ones(response, int)]
        out.append((tokens, mask))
    return out


def _padded_batches(examples, batch_size: int, length: int, left: bool = False):
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        rows = len(chunk) if batch_size == len(chunk) else batch_size
        tokens = np.zeros((rows, length), np.int32)
        loss = np.zeros((rows, length), np.int32)
        attn = np.zeros((rows, length), np.int32)
        for i, (t, m) in enumerate(chunk):
            cols = slice(length - len(t), length) if left else slice(0, len(t))
            tokens[i, cols], loss[i, cols], attn[i, cols] = t, m, 1
        batches.append({"tokens": tokens, "loss_mask": loss, "attention_mask": attn})
    return batches


def _packed_batch(examples, length: int):
    tokens = np.zeros((2, length), np.int32)
    loss = np.zeros_like(tokens)
    segments = np.zeros_like(tokens)
    fill = [0, 0]
    for n, (t, m) in enumerate(examples):
        row = n % 2
        cols = slice(fill[row], fill[row] + len(t))
        tokens[row, cols], loss[row, cols], segments[row, cols] = t, m, n // 2 + 1
        fill[row] += len(t)
    assert max(fill) <= length
    return [{"tokens": tokens, "loss_mask": loss, "segment_ids": segments}]


def _reference(model, examples) -> tuple[float, float, int]:
    """Each example alone, no padding: the definition, summed in float64."""
    sums, counts = [], []
    for tokens, mask in examples:
        logits = np.asarray(model(tokens[None]))
        nll = np.asarray(next_token_nll(logits, tokens[None], mask[None]))[0].astype(np.float64)
        sums.append(nll.sum())
        counts.append(int(mask[1:].sum()))
    return sum(sums) / sum(counts), float(np.mean(np.divide(sums, counts))), sum(counts)


@pytest.fixture(scope="module")
def setup():
    model = build_model(CONFIG, sharding.single_device_layout(), seed=4)
    examples = _examples()
    return model, examples, _reference(model, examples)


def test_token_nll_is_log_softmax():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (2, 3))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(token_nll(logits, targets)), want, rtol=1e-5)


@pytest.mark.parametrize("batch_size, left", [(1, False), (3, False), (4, True), (7, True)])
def test_matches_definition_for_any_batching_and_padding(setup, batch_size, left):
    model, examples, (loss, per_example, tokens) = setup
    result = HeldoutEvaluator(
        model, lambda: _padded_batches(examples, batch_size, 24, left)
    ).evaluate(model.params)
    assert result.num_tokens == tokens and result.num_examples == len(examples)
    assert result.loss == pytest.approx(loss, abs=1e-6)
    assert result.per_example_loss == pytest.approx(per_example, abs=1e-6)


def test_packed_batches_give_the_same_loss(setup):
    model, examples, (loss, per_example, tokens) = setup
    result = HeldoutEvaluator(model, lambda: _packed_batch(examples, 80)).evaluate(model.params)
    assert (result.num_tokens, result.num_examples) == (tokens, len(examples))
    assert result.loss == pytest.approx(loss, abs=1e-6)
    assert result.per_example_loss == pytest.approx(per_example, abs=1e-6)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (4, 1, 2)])
def test_same_loss_on_a_mesh(setup, mesh_shape):
    model, examples, (loss, _, _) = setup
    sharded = model.reshard(sharding.Layout(sharding.make_mesh(*mesh_shape)))
    batches = _padded_batches(examples + examples[:1], 8, 24)
    result = HeldoutEvaluator(sharded, lambda: batches).evaluate(sharded.params)
    single = HeldoutEvaluator(model, lambda: batches).evaluate(model.params)
    assert result.loss == pytest.approx(single.loss, abs=1e-6)
    assert abs(single.loss - loss) < 0.1  # one duplicated example shifts it a little


def test_length_buckets_and_metrics(setup):
    model, examples, (loss, _, tokens) = setup
    evaluator = HeldoutEvaluator(model, lambda: _padded_batches(examples, 4, 24),
                                 length_buckets=(4, 8))
    result = evaluator.evaluate(model.params)
    assert sum(b["tokens"] for b in result.by_length.values()) == tokens
    assert sum(b["examples"] for b in result.by_length.values()) == len(examples)
    assert set(result.by_length) <= {"<=4", "<=8", ">8"}
    metrics = evaluator.evaluate(model.params).metrics()
    assert metrics["heldout/loss"] == pytest.approx(loss, abs=1e-6)


def test_bad_batches_are_named(setup):
    model, _, _ = setup
    with pytest.raises(KeyError, match="held-out batch 0: missing field"):
        HeldoutEvaluator(model, lambda: [{"tokens": np.zeros((1, 4), int)}]).evaluate(
            model.params)
    bad = {"tokens": np.zeros((1, 4), int), "loss_mask": np.zeros((1, 3), int)}
    with pytest.raises(ValueError, match="loss_mask has shape"):
        HeldoutEvaluator(model, lambda: [bad]).evaluate(model.params)
    empty = {"tokens": np.zeros((1, 4), int), "loss_mask": np.zeros((1, 4), int)}
    with pytest.raises(ValueError, match="no response tokens"):
        HeldoutEvaluator(model, lambda: [empty]).evaluate(model.params)
