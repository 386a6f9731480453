"""Forward-pass throughput of the sftrl decoder: step time, tokens/s, achieved FLOP/s and MFU.

What is measured
    One jitted forward pass (`Transformer.apply` on a [B, L] batch of random token ids, no
    padding, no KV cache) returning float32 logits [B, L, V] — the same computation `Model.__call__`
    runs. The function is lowered and compiled once (compile time is reported separately), run
    `--warmup` times, then `--iters` times, each call timed on the host with
    `jax.block_until_ready` on the logits. Reported: median and min seconds per step, tokens/s
    (B * L / median), achieved GFLOP/s (model FLOPs / median) and, on GPU/TPU, MFU.

Rows
    One per config on a single device (`sharding.single_device_layout()`), plus, when more than
    one device is visible and `--sharded` is on (default), the same model, weights and batch on an
    FSDP mesh (data=1, fsdp=n, tensor=1; weights split along 'embed', batch along fsdp). The batch
    must split evenly, so n is the largest divisor of the device count that divides B (a warning
    says when that is fewer than all devices). On a CPU with
    XLA_FLAGS=--xla_force_host_platform_device_count=8 this puts single vs sharded side by side.

How FLOPs are counted (per token, forward only)
    matmul  = 2 * P_matmul, where P_matmul counts every weight used in a matmul: per layer
              q/k/v/o and gate/up/down projections, plus the lm_head (the embedding matrix when the
              embeddings are tied, counted once). The embedding lookup (a gather) and the RMSNorm
              scales are excluded.
    attention = 2 * 2 * num_layers * L * num_heads * head_dim (QK^T and PV), NOT halved for
              causality: the implementation materialises and masks the full L x L score matrix, so
              this is the work actually executed (MaxText-style causal halving would lower it).
    MFU = model FLOPs / step time / (peak * devices in the row's mesh), with `peak` the dense
    bfloat16 FLOP/s of the device kind (PEAK_BF16_FLOPS). MFU is null on CPU (no meaningful peak),
    for an unknown device kind, and for a dtype other than bfloat16 (the table is bf16 peaks).
    (XLA's `cost_analysis()` is not used: it counts the body of the `nn.scan` over layers once,
    so it reports roughly lm_head + one layer. For that one layer it agrees with this formula.)

Configs
    `tiny` (configs/tiny.py), `100m` (defined here: a Llama-style 100.1M-parameter model with tied
    embeddings) and any config file `path/to/file.py[:arg]` whose `get_config(arg)` returns an
    sftrl config (its random-init architecture is used; `model.hf_path`, `dtype` and `mesh` are
    ignored: dtype comes from `--dtype`, meshes from the rows above).

Usage
    python benchmarks/forward.py --out=runs/bench
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/forward.py
    python benchmarks/forward.py --configs=tiny,configs/qwen3_4b.py:tiny --batch=4 --seq=128
Writes DIR/forward.json (a list of rows) and DIR/forward.md (the table printed at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from sftrl import config_lib, sharding
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import Model, build_model

log = logging.getLogger("bench.forward")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Dense (no sparsity) bfloat16 peak FLOP/s per chip, matched against the lower-cased
# `device_kind` by substring, first match wins (so the more specific keys come first).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),  # PCIe and NVL cards: lower clocks than SXM
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),  # v5e
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),  # v5p reports itself as "TPU v5"
    ("tpu v6 lite", 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12),
)

# A Llama-style ~100M model: Llama-2 vocabulary, GQA (12 query / 4 kv heads), SwiGLU MLP, tied
# embeddings (as Llama 3.2 1B/3B), so that num_params() is 100.1M.
LLAMA_100M = ModelConfig(
    model_type="llama", vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
    num_kv_heads=4, head_dim=64, intermediate_size=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
    tie_embeddings=True, max_position_embeddings=8192,
)

# (batch, seq) when --batch/--seq are not given: sized so that all of the defaults together take
# well under three minutes on a 2-core CPU; bigger on accelerators so that the chip is busy.
DEFAULT_SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "cpu": {"tiny": (8, 256), "100m": (8, 256), "file": (8, 256)},
    "accelerator": {"tiny": (64, 1024), "100m": (32, 2048), "file": (8, 2048)},
}

ROW_KEYS = (
    "config", "params", "matmul_params", "num_layers", "batch", "seq", "dtype", "platform",
    "device_kind", "device_count", "mesh", "compile_s", "step_s_median", "step_s_min",
    "tokens_per_s", "flops_per_token", "gflops_per_s", "peak_flops", "mfu",
    "warmup", "iters", "jax_version", "flax_version", "timestamp",
)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A named architecture to benchmark; `kind` picks the default shapes."""

    name: str
    model: ModelConfig
    kind: str  # 'tiny', '100m' or 'file'


# --- FLOPs ---------------------------------------------------------------------------------------


def matmul_params(config: ModelConfig) -> int:
    """Weights used in matmuls: per-layer projections and the lm_head (tied or not, once)."""
    e, d = config.hidden_size, config.head_dim
    attn = e * d * (2 * config.num_heads + 2 * config.num_kv_heads)  # q, o; k, v
    mlp = 3 * e * config.intermediate_size  # gate, up, down
    return config.num_layers * (attn + mlp) + config.vocab_size * e


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs per token: 2 * matmul params + full (unhalved) attention scores/values."""
    attention = 2 * 2 * config.num_layers * seq_len * config.num_heads * config.head_dim
    return 2 * matmul_params(config) + attention


def peak_flops(device_kind: str, platform: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None on CPU and for unknown kinds."""
    if platform == "cpu":
        return None
    kind = device_kind.lower()
    for key, value in PEAK_BF16_FLOPS:
        if key in kind:
            return value
    return None


# --- configs -------------------------------------------------------------------------------------


def _load_config_file(spec: str) -> BenchConfig:
    """'path/to/file.py[:arg]' -> its get_config(arg) architecture, named 'file[:arg]'."""
    path_str, _, arg = spec.partition(":")
    path = Path(path_str)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    if not path.is_file():
        raise SystemExit(f"--configs: {path_str}: no such config file")
    module_name = f"_bench_config_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"--configs: {path_str}: cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    name = path.stem + (f":{arg}" if arg else "")
    return BenchConfig(name, config_lib.model_config(config), "file")


def resolve_configs(names: str) -> list[BenchConfig]:
    configs = []
    for raw in names.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "tiny":
            configs.append(BenchConfig("tiny", _load_config_file("configs/tiny.py").model, "tiny"))
        elif name == "100m":
            configs.append(BenchConfig("100m", LLAMA_100M, "100m"))
        elif name.partition(":")[0].endswith(".py"):
            configs.append(_load_config_file(name))
        else:
            raise SystemExit(f"--configs: {name!r} is not 'tiny', '100m' or a path/to/config.py")
    if not configs:
        raise SystemExit("--configs: nothing to benchmark")
    return configs


def resolve_dtype(name: str) -> Any:
    if name == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(name)


# --- one row -------------------------------------------------------------------------------------


def _mesh_str(layout: sharding.Layout) -> str:
    return ",".join(f"{axis}={size}" for axis, size in layout.mesh.shape.items())


def sharded_layout(batch: int) -> sharding.Layout:
    """An FSDP mesh over as many devices as split both the device count and the batch evenly."""
    devices = jax.devices()
    n = math.gcd(batch, len(devices))
    if n < len(devices):
        log.warning("batch %d does not split over %d devices: the sharded row uses %d",
                    batch, len(devices), n)
    return sharding.Layout(sharding.make_mesh(1, n, 1, devices=devices[:n]))


def bench_one(
    bench: BenchConfig,
    layout: sharding.Layout,
    *,
    batch: int,
    seq: int,
    dtype: Any,
    warmup: int,
    iters: int,
) -> dict[str, Any]:
    """Builds the model on `layout`, compiles its forward pass, times it; returns one row."""
    cfg = bench.model
    mesh = _mesh_str(layout)
    log.info("%s: %.2fM params, B=%d L=%d %s on %s", bench.name, cfg.num_params() / 1e6, batch,
             seq, jnp.dtype(dtype).name, mesh)
    model: Model = build_model(cfg, layout, seed=0, dtype=dtype, param_dtype=dtype)
    module, params = model.module, model.params

    def forward(params: Any, tokens_BxL: jax.Array) -> jax.Array:
        logits_BxLxV, _ = module.apply({"params": params}, tokens_BxL)
        return logits_BxLxV

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (batch, seq), dtype=np.int32)
    tokens = jax.device_put(tokens, layout.sharding(("activation_batch", None), tokens.shape))

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(params, tokens).compile()
    compile_s = time.perf_counter() - start
    log.info("  compiled in %.1fs", compile_s)

    for _ in range(warmup):
        jax.block_until_ready(compiled(params, tokens))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, tokens))
        times.append(time.perf_counter() - start)

    median, fastest = statistics.median(times), min(times)
    tokens_per_step = batch * seq
    per_token = flops_per_token(cfg, seq)
    achieved = per_token * tokens_per_step / median
    device = layout.mesh.devices.flat[0]
    num_devices = layout.mesh.size
    peak = peak_flops(device.device_kind, device.platform)
    is_bf16 = jnp.dtype(dtype) == jnp.bfloat16
    mfu = achieved / (peak * num_devices) if peak is not None and is_bf16 else None
    row = {
        "config": bench.name,
        "params": cfg.num_params(),
        "matmul_params": matmul_params(cfg),
        "num_layers": cfg.num_layers,
        "batch": batch,
        "seq": seq,
        "dtype": jnp.dtype(dtype).name,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": num_devices,
        "mesh": mesh,
        "compile_s": compile_s,
        "step_s_median": median,
        "step_s_min": fastest,
        "tokens_per_s": tokens_per_step / median,
        "flops_per_token": per_token,
        "gflops_per_s": achieved / 1e9,
        "peak_flops": peak,
        "mfu": mfu,
        "warmup": warmup,
        "iters": iters,
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    log.info("  median %.1f ms, min %.1f ms, %.0f tokens/s, %.1f GFLOP/s%s", median * 1e3,
             fastest * 1e3, row["tokens_per_s"], row["gflops_per_s"],
             "" if mfu is None else f", MFU {mfu:.1%}")
    return row


# --- output --------------------------------------------------------------------------------------


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("| config | params | mesh | dev | dtype | B | L | median ms | min ms | tokens/s "
              "| GFLOP/s | MFU |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.1f}M | {r['mesh']} | {r['device_count']} "
            f"| {r['dtype']} | {r['batch']} | {r['seq']} | {r['step_s_median'] * 1e3:.1f} "
            f"| {r['step_s_min'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {r['gflops_per_s']:.1f} "
            f"| {mfu} |"
        )
    if rows:
        r = rows[0]
        lines.append("")
        lines.append(
            f"{r['device_kind']} ({r['platform']}), jax {r['jax_version']}, {r['timestamp']}; "
            "FLOPs/token = 2 * matmul params + unhalved attention"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "forward.json").write_text(json.dumps(list(rows), indent=2) + "\n")
    (out / "forward.md").write_text(markdown_table(rows))
    log.info("wrote %s and %s", out / "forward.json", out / "forward.md")


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,100m",
                        help="comma list of 'tiny', '100m' or path/to/config.py[:arg]")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size for every config (default: per config and platform)")
    parser.add_argument("--seq", type=int, default=None,
                        help="sequence length for every config (default: per config and platform)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="params and compute; auto = float32 on CPU, bfloat16 on GPU/TPU")
    parser.add_argument("--out", default="runs/bench", help="folder for forward.json/.md")
    parser.add_argument("--sharded", action=argparse.BooleanOptionalAction, default=True,
                        help="also an FSDP row over all devices when more than one is visible")
    args = parser.parse_args(argv)
    for name in ("batch", "seq", "iters"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be positive, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """All rows for the parsed flags (nothing written)."""
    configs = resolve_configs(args.configs)
    dtype = resolve_dtype(args.dtype)
    platform = "cpu" if jax.default_backend() == "cpu" else "accelerator"
    log.info("jax %s on %d x %s; dtype %s", jax.__version__, jax.device_count(),
             jax.devices()[0].device_kind, jnp.dtype(dtype).name)
    rows = []
    for bench in configs:
        default_batch, default_seq = DEFAULT_SHAPES[platform][bench.kind]
        batch = args.batch or default_batch
        seq = args.seq or default_seq
        layouts = [sharding.single_device_layout()]
        if args.sharded and jax.device_count() > 1:
            layouts.append(sharded_layout(batch))
        for layout in layouts:
            rows.append(bench_one(bench, layout, batch=batch, seq=seq, dtype=dtype,
                                  warmup=args.warmup, iters=args.iters))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, writes DIR/forward.json and DIR/forward.md, prints the table."""
    args = parse_args(argv)
    rows = run(args)
    write_outputs(rows, Path(args.out))
    print(markdown_table(rows), end="")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    log.setLevel(logging.INFO)
    main()
