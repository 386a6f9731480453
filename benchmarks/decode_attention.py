"""Shared-prefix decode attention (sftrl/kernels/decode_attention.py): step time and HBM GB/s.

What is measured
    One decode step of the prefix half of a cascade decode: P prompts, K kv heads, N samples per
    prompt, G query heads per kv head (R = N * G stacked rows per (prompt, kv head)), a prefix of
    S positions (all valid) and head dim D. Each implementation is jitted, compiled once (compile
    time reported), run `--warmup` times, then `--iters` times, each call timed on the host with
    `jax.block_until_ready`. Reported: median and min milliseconds per step and the achieved
    bandwidth GB/s = bytes of prefix K + V read once per step (2 * P * K * S * D * itemsize) /
    median time. The queries and outputs are small next to the prefix and are not counted.

Rows
    `reference` (plain JAX, XLA-fused) always; `pallas` (Triton on GPU, Mosaic on TPU) when the
    backend is a GPU or TPU, one row per `--splits` value (a comma-separated list of split-KV
    counts or `auto`, default `auto`), with `speedup` = reference median / pallas median. The
    `splits` column is the number the kernel actually used (auto resolved, capped by the kv
    blocks); the pallas time includes the split merge. The interpreter is not timed (it measures
    nothing about the kernel). On CPU the table has the reference only.

Usage
    python benchmarks/decode_attention.py --out=runs/bench
    python benchmarks/decode_attention.py --prompts=8 --samples=64 --prefix=2048 --dtype=bfloat16
    python benchmarks/decode_attention.py --prompts=1 --samples=16 --splits=1,4,auto
Writes DIR/decode_attention.json (a list of rows) and DIR/decode_attention.md (the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from sftrl.kernels import decode_attention as da

COLUMNS = ("impl", "backend", "dtype", "P", "K", "N", "G", "S", "D", "block_kv", "splits",
           "compile_s", "median_ms", "min_ms", "gb_per_s", "speedup")


def _time(fn, args, warmup: int, iters: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, times


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    backend = jax.default_backend()
    dtype = jnp.dtype(args.dtype)
    P, K, N, G, S, D = args.prompts, args.kv_heads, args.samples, args.group, args.prefix, args.dim
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (P, K, N * G, D), dtype)
    k = jax.random.normal(keys[1], (P, K, S, D), dtype)
    v = jax.random.normal(keys[2], (P, K, S, D), dtype)
    lengths = jnp.full((P,), S, jnp.int32)
    prefix_bytes = 2 * P * K * S * D * dtype.itemsize
    runs: list[tuple[str, da.BlockSizes, int | None]] = [
        ("reference", da.BlockSizes(block_kv=args.block_kv), None)]
    if backend in ("gpu", "tpu"):
        for splits in args.splits:
            block_sizes = da.BlockSizes(block_kv=args.block_kv, num_splits=splits)
            used = da.num_splits_for(q.shape, S, dtype, block_sizes, backend)
            runs.append(("pallas", block_sizes, used))
    rows = []
    for impl, block_sizes, used in runs:
        def step(q, k, v, lengths, impl=impl, block_sizes=block_sizes):
            return da.prefix_decode_attention(q, k, v, lengths, block_sizes=block_sizes, impl=impl)

        compile_s, times = _time(step, (q, k, v, lengths), args.warmup, args.iters)
        median = statistics.median(times)
        rows.append({
            "impl": impl, "backend": backend, "dtype": dtype.name, "P": P, "K": K, "N": N,
            "G": G, "S": S, "D": D, "block_kv": args.block_kv, "splits": used,
            "compile_s": round(compile_s, 3),
            "median_ms": median * 1e3, "min_ms": min(times) * 1e3,
            "gb_per_s": prefix_bytes / median / 1e9, "speedup": None,
        })
    for row in rows[1:]:
        row["speedup"] = rows[0]["median_ms"] / row["median_ms"]
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _splits(text: str) -> list[int | None]:
    """`--splits`: comma-separated positive ints or `auto` (None: the kernel's auto rule)."""
    values: list[int | None] = []
    for item in text.split(","):
        item = item.strip()
        if item == "auto":
            values.append(None)
        elif item.isdigit() and int(item) > 0:
            values.append(int(item))
        else:
            raise argparse.ArgumentTypeError(
                f"--splits takes positive ints or 'auto', comma-separated; got {item!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="P")
    parser.add_argument("--kv-heads", type=int, default=8, help="K")
    parser.add_argument("--samples", type=int, default=16, help="N samples per prompt")
    parser.add_argument("--group", type=int, default=4, help="G query heads per kv head")
    parser.add_argument("--prefix", type=int, default=1024, help="S prefix positions")
    parser.add_argument("--dim", type=int, default=128, help="D head dim")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--block-kv", type=int, default=128)
    parser.add_argument("--splits", type=_splits, default=[None],
                        help="split-KV counts for the pallas rows, e.g. 1,4,auto (default auto)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", default="runs/bench", help="folder for decode_attention.json/.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, writes DIR/decode_attention.json and .md, prints the table."""
    args = parse_args(argv)
    rows = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_attention.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "decode_attention.md").write_text(table)
    print(table, end="")
    return rows


if __name__ == "__main__":
    main()
