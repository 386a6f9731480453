"""Large-k sampling throughput: ours (shared prefix / repeated prompt) vs transformers generate.

For each shape (P prompt tokens, R generated tokens, k samples), on the same random
Llama-3-shaped ~125M-parameter float32 weights (saved in HF format, loaded by both sides) and
the same prompt, every sample decodes exactly R tokens, with:
  a  ours, shared prefix: one prefill, k samples decoded against the prompt's KV read once
  b  ours, sharing off: the prompt repeated k times (k prefills, k KV copies)
  a0 (ablation, not in the default set) a with the suffix window off: every decode step
     reads all R suffix slots instead of those written so far
  c  transformers generate(num_return_sequences=k)
  d  transformers with the shared-prefill trick: one batch-1 forward over the prompt, its KV
     cache repeated k times, then generate
Each (method, shape) runs in its own process, so its peak RSS is its own; compile/warm-up runs
are excluded from the timing (reported apart). In the same run the machine's sgemm GFLOP/s and
copy bandwidth are measured, and each result is given as a share of the roofline
tokens/s = rows / max(FLOPs / peak FLOP/s, bytes / bandwidth) per decode step, where bytes are
the weights plus the KV actually read (prompt KV once per prompt when shared, once per sample
otherwise).

python benchmarks/sampling.py --out runs/bench [--shapes 512x64x64,2048x256x64] [--methods a,b,c,d]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = "512x64x64,512x64x128,2048x64x16,2048x256x64"
ARCH = dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            num_key_value_heads=4, intermediate_size=2048, max_position_embeddings=4096,
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def make_model(folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**ARCH))
    model.save_pretrained(folder, safe_serialization=True)


def _prompt(length: int) -> list[int]:
    return np.random.default_rng(length).integers(10, ARCH["vocab_size"], length).tolist()


def run_ours(folder: str, p: int, r: int, k: int, shared: bool, window: bool = True) -> dict:
    sys.path.insert(0, str(ROOT))
    from sftrl import sampling
    from sftrl.models.checkpoint import load_hf

    if not window:  # one window of all R slots
        sampling.MIN_SUFFIX_WINDOW = r

    model, _ = load_hf(folder, dtype="float32")
    prompt = _prompt(p)

    def once() -> float:
        start = time.perf_counter()
        out = sampling.generate(model, [prompt], num_samples=k, max_new_tokens=r,
                                temperature=1.0, share_prefix=shared, progress=False)
        assert (out.lengths == r).all()
        return time.perf_counter() - start

    warm = once()
    return {"seconds": once(), "warmup_seconds": warm}


def run_transformers(folder: str, p: int, r: int, k: int, shared_prefill: bool) -> dict:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = torch.tensor([_prompt(p)])
    kwargs = dict(do_sample=True, max_new_tokens=r, min_new_tokens=r, eos_token_id=None,
                  pad_token_id=0)

    def once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            if shared_prefill:
                cache = transformers.DynamicCache(config=model.config)
                model(prompt[:, :-1], past_key_values=cache, use_cache=True)
                cache.batch_repeat_interleave(k)
                out = model.generate(prompt.repeat(k, 1), past_key_values=cache, **kwargs)
            else:
                out = model.generate(prompt, num_return_sequences=k, **kwargs)
        assert out.shape == (k, p + r)
        return time.perf_counter() - start

    warm = once()
    return {"seconds": once(), "warmup_seconds": warm}


def machine_limits() -> dict:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9
    src = np.ones(64 * 1024 * 1024, np.float32)  # 256 MB
    dst = np.empty_like(src)
    np.copyto(dst, src)
    start = time.perf_counter()
    for _ in range(5):
        np.copyto(dst, src)
    bandwidth = 5 * 2 * src.nbytes / (time.perf_counter() - start) / 1e9
    return {"sgemm_gflops": gflops, "copy_gb_per_s": bandwidth}


def roofline_tokens_per_s(p: int, r: int, k: int, shared: bool, limits: dict) -> float:
    """Decode-phase bound, averaged over the R steps (prefill excluded)."""
    layers, hidden = ARCH["num_hidden_layers"], ARCH["hidden_size"]
    kv_dim = ARCH["num_key_value_heads"] * hidden // ARCH["num_attention_heads"]
    per_layer = hidden * (2 * hidden + 2 * kv_dim) + 3 * hidden * ARCH["intermediate_size"]
    params = layers * per_layer + ARCH["vocab_size"] * hidden
    kv_bytes_per_token = layers * 2 * kv_dim * 4
    seconds = 0.0
    for step in range(r):
        prefix_reads = 1 if shared else k
        kv_bytes = kv_bytes_per_token * (prefix_reads * p + k * step)
        flops = 2 * params * k + 4 * layers * hidden * k * (p + step)
        seconds += max(flops / (limits["sgemm_gflops"] * 1e9),
                       (params * 4 + kv_bytes) / (limits["copy_gb_per_s"] * 1e9))
    return k * r / seconds


def one(args: argparse.Namespace) -> None:
    p, r, k = (int(x) for x in args.one_shape.split("x"))
    method = args.one
    if method in ("a", "b", "a0"):
        result = run_ours(args.model, p, r, k, shared=method != "b", window=method != "a0")
    else:
        result = run_transformers(args.model, p, r, k, shared_prefill=method == "d")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--methods", default="a,b,c,d")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-shape", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limits = machine_limits()
    print(f"machine: {limits['sgemm_gflops']:.1f} GFLOP/s sgemm, "
          f"{limits['copy_gb_per_s']:.1f} GB/s copy", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_model(Path(tmp) / "model")
        for shape in args.shapes.split(","):
            p, r, k = (int(x) for x in shape.split("x"))
            for method in args.methods.split(","):
                cmd = [sys.executable, __file__, "--one", method, "--one-shape", shape,
                       "--model", str(Path(tmp) / "model")]
                done = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "JAX_PLATFORMS": "cpu"})
                lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not lines:
                    raise RuntimeError(f"{method} {shape} failed:\n{done.stderr[-3000:]}")
                result = json.loads(lines[-1][7:])
                tokens_per_s = k * r / result["seconds"]
                bound = roofline_tokens_per_s(p, r, k, method in ("a", "a0"), limits)
                rows.append({"method": method, "P": p, "R": r, "k": k, **result,
                             "tokens_per_s": tokens_per_s, "roofline_tokens_per_s": bound,
                             "share_of_roofline": tokens_per_s / bound, **limits})
                print(f"{method} P={p} R={r} k={k}: {tokens_per_s:8.1f} tok/s "
                      f"({100 * tokens_per_s / bound:.1f}% of roofline), "
                      f"peak {result['peak_rss_mb']:.0f} MB", flush=True)
                (out / "sampling.json").write_text(json.dumps(rows, indent=2))
    table = ["| P | R | k | method | tok/s | % roofline | peak RSS MB | vs d |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = next((x for x in rows if x["method"] == "d" and
                    (x["P"], x["R"], x["k"]) == (row["P"], row["R"], row["k"])), None)
        ratio = f"{row['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        table.append(f"| {row['P']} | {row['R']} | {row['k']} | {row['method']} | "
                     f"{row['tokens_per_s']:.1f} | {100 * row['share_of_roofline']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} | {ratio} |")
    (out / "sampling.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
