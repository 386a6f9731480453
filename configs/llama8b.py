"""Llama-3-8B-Instruct (the paper's first base model).

Variants: ':tiny' (same structure, CPU-sized), ':llama3.1' (Llama 3.1 llama3 RoPE scaling, 128k).
Set model.hf_path to a local Hugging Face folder to load real weights.
"""

from sftrl import config_lib


def _llama31(c):
    c.model.rope_scaling = config_lib.llama3_rope_scaling()
    c.model.max_position_embeddings = 131072


def get_config(arg: str | None = None):
    c = config_lib.full_size_config(
        model_type="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=8192,
    )
    c = config_lib.apply_variant(c, arg, {"llama3.1": _llama31})
    if c.full_size:  # not the ':tiny' variant
        # Fits v5p-64 (docs/paper_scale/llama8b_v5p-64_fixed): the 256-row GRPO mini-batch of
        # 4608-token rows in 4 micro-batches (143 GiB a chip in one).
        c.rl.grad_accum = 4
    return c
