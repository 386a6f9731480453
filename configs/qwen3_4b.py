"""Qwen3-4B-Base: per-head q/k RMSNorm, tied embeddings, head_dim 128 explicit.

Variants: ':tiny' (same structure, CPU-sized). Set model.hf_path to load real weights.
"""

from sftrl import config_lib


def get_config(arg: str | None = None):
    c = config_lib.full_size_config(
        model_type="qwen3", vocab_size=151936, hidden_size=2560, num_layers=36, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=9728, rope_theta=1000000.0,
        rms_norm_eps=1e-6, qk_norm=True, tie_embeddings=True, max_position_embeddings=32768,
    )
    c = config_lib.apply_variant(c, arg)
    if c.full_size:  # not the ':tiny' variant
        # Fits v5p-64 (docs/paper_scale/qwen3_4b_v5p-64): a 256-row GRPO mini-batch of 4608-token
        # rows in 4 micro-batches.
        c.rl.grad_accum = 4
    return c
