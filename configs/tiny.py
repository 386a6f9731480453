"""The embedded default: a ~0.92M-parameter Llama-style model that runs on a CPU laptop in minutes.

Usage: python -m sftrl.main --config=configs/tiny.py --workdir=runs/tiny
"""

from sftrl import config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config()
    c.model.update(
        model_type="llama", vocab_size=512, hidden_size=128, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=32, intermediate_size=384, rope_theta=10000.0,
        rms_norm_eps=1e-5, max_position_embeddings=2048,
    )
    # the embedded task (its tokenizer has 512 tokens; the longest chat is ~340 tokens) at CPU
    # scale: config_lib.cpu_scale_training holds the SFT / GRPO / eval settings
    c.dtype = "float32"
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return config_lib.apply_variant(c, arg if arg != "tiny" else None)
