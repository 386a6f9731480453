"""Tiny random Hugging Face models, built and saved locally (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

VOCAB = 131


def hf_config(kind: str, **overrides: Any) -> transformers.PretrainedConfig:
    common: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-5,
        max_position_embeddings=256,
    )
    if kind == "llama3":
        cfg = transformers.LlamaConfig(
            **common, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        )
    elif kind == "mistral":
        # Explicit head_dim with heads * head_dim != hidden, as in Mistral-NeMo.
        cfg = transformers.MistralConfig(
            **common, head_dim=24, rope_theta=1e6, sliding_window=None
        )
    elif kind == "qwen3":
        cfg = transformers.Qwen3Config(
            **{**common, "rms_norm_eps": 1e-6}, head_dim=16, rope_theta=1e6,
            tie_word_embeddings=True,
        )
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def save_hf_model(
    kind: str, folder: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any
) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = hf_config(kind, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # larger-than-default weights so differences are not hidden
        for p in model.parameters():
            p.normal_(0.0, 0.08)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(1.0)
    model = model.to(dtype).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def hf_logits(
    model: transformers.PreTrainedModel,
    tokens: np.ndarray,
    attention_mask: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=None if attention_mask is None else torch.as_tensor(attention_mask),
            position_ids=None if positions is None else torch.as_tensor(positions).long(),
        )
    return out.logits.float().numpy()


def load_hf_folder(folder: Path, dtype: torch.dtype = torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation="eager"
    ).eval()
