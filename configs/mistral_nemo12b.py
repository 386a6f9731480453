"""Mistral-NeMo-12B-Instruct (2407): head_dim 128 explicit (32 * 128 != 5120), 128k vocab.

Variants: ':tiny' (same structure, CPU-sized). Set model.hf_path to load real weights.
"""

from sftrl import config_lib


def get_config(arg: str | None = None):
    c = config_lib.full_size_config(
        model_type="mistral", vocab_size=131072, hidden_size=5120, num_layers=40, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, rope_theta=1000000.0,
        rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=1024000,
    )
    c = config_lib.apply_variant(c, arg)
    if c.full_size:  # not the ':tiny' variant
        # Fits v5p-64 (docs/paper_scale/mistral_nemo12b_v5p-64): SFT 64 x 8192 in 2
        # micro-batches, the 256-row GRPO mini-batch in 8 (the bf16 sampler weights, 23 GiB a
        # chip, stay resident meanwhile).
        c.sft.grad_accum = 2
        c.rl.grad_accum = 8
    return c
