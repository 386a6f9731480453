"""Logit parity with transformers (PyTorch, CPU) for tiny random Llama 3, Mistral and Qwen3."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_fixtures import VOCAB, hf_logits, save_hf_model

from sftrl.models.checkpoint import load_hf

KINDS = ("llama3", "mistral", "qwen3")
F32_TOL = 1e-4


@pytest.fixture(scope="module", params=KINDS)
def hf_model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, save_hf_model(request.param, folder)


def _tokens(batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, length))


def test_f32_logits_match(hf_model):
    kind, folder, hf = hf_model
    model, config = load_hf(folder, dtype="float32")
    assert config.model_type == {"llama3": "llama"}.get(kind, kind)
    tokens = _tokens(3, 48)
    np.testing.assert_allclose(np.asarray(model(tokens)), hf_logits(hf, tokens), atol=F32_TOL,
                               rtol=0)


def test_left_and_right_padded_batches_match(hf_model):
    _, folder, hf = hf_model
    model, _ = load_hf(folder, dtype="float32")
    tokens = _tokens(4, 32, seed=1)
    mask = np.ones_like(tokens)
    mask[1, :9] = 0  # left padding
    mask[2, 20:] = 0  # right padding
    mask[3, :3] = 0
    mask[3, 30:] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    ref = hf_logits(hf, tokens, mask, positions)
    ours = np.asarray(model(tokens, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=F32_TOL, rtol=0)
    # A padded row's real tokens give the same logits as the row without its padding.
    alone = np.asarray(model(tokens[1:2, 9:]))
    np.testing.assert_allclose(ours[1, 9:], alone[0], atol=F32_TOL, rtol=0)


def test_bf16_is_as_accurate_as_transformers_bf16(hf_model, tmp_path):
    kind, _, hf = hf_model
    tokens = _tokens(2, 32, seed=2)
    reference = hf_logits(hf, tokens)
    bf16_folder = tmp_path / "bf16"
    hf_bf16 = save_hf_model(kind, bf16_folder, dtype=torch.bfloat16)
    model, _ = load_hf(bf16_folder, dtype="bfloat16")
    assert all(str(x.dtype) == "bfloat16" for x in __import__("jax").tree.leaves(model.params))
    ours_err = np.abs(np.asarray(model(tokens)) - reference).max()
    hf_err = np.abs(hf_logits(hf_bf16, tokens) - reference).max()
    # Stated tolerance: within 2x the error of transformers' own bf16 forward, and below 0.25
    # absolute on logits of magnitude ~3.
    assert ours_err <= 2 * hf_err + 1e-2, (ours_err, hf_err)
    assert ours_err < 0.25


def test_legacy_rope_config_format(tmp_path):
    """Released checkpoints write rope_theta + rope_scaling, not v5's rope_parameters."""
    folder = tmp_path / "llama"
    hf = save_hf_model("llama3", folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = params
    config_path.write_text(json.dumps(config))
    model, arch = load_hf(folder, dtype="float32")
    assert arch.rope_scaling is not None and arch.rope_scaling.factor == 8.0
    tokens = _tokens(1, 80, seed=3)  # past original_max_position_embeddings=64
    np.testing.assert_allclose(np.asarray(model(tokens)), hf_logits(hf, tokens), atol=F32_TOL,
                               rtol=0)


def test_mistral_sliding_window(tmp_path):
    folder = tmp_path / "mistral_sw"
    hf = save_hf_model("mistral", folder, sliding_window=8)
    model, arch = load_hf(folder, dtype="float32")
    assert arch.sliding_window == 8
    tokens = _tokens(2, 24, seed=4)
    np.testing.assert_allclose(np.asarray(model(tokens)), hf_logits(hf, tokens), atol=F32_TOL,
                               rtol=0)


def test_packed_segments_equal_separate_sequences(hf_model):
    _, folder, _ = hf_model
    model, _ = load_hf(folder, dtype="float32")
    a, b = _tokens(1, 10, seed=5)[0], _tokens(1, 14, seed=6)[0]
    packed = np.concatenate([a, b, np.zeros(8, int)])[None]
    segments = np.array([[1] * 10 + [2] * 14 + [0] * 8])
    out = np.asarray(model(packed, segment_ids=segments))
    np.testing.assert_allclose(out[0, :10], np.asarray(model(a[None]))[0], atol=F32_TOL, rtol=0)
    np.testing.assert_allclose(out[0, 10:24], np.asarray(model(b[None]))[0], atol=F32_TOL, rtol=0)
