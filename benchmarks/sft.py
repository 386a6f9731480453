"""SFT step throughput: ours (sharded, jitted) vs a plain `jax.jit` step vs PyTorch eager.

What is measured
    One full SFT step (forward, masked next-token NLL normalised per token, backward, global-norm
    clip 1.0, AdamW with weight decay 0.1 on matrices but not on norms or embeddings) on a
    Llama-3-shaped model with random float32 weights, for each (batch, seq) shape, by:
      ours   `jit_sft_step(make_sft_step(...))` with the sharding machinery: a Layout over the
             visible devices (FSDP over as many as split the batch), `state_shardings`,
             `shard_batch`, the state donated;
      jit    the same `make_sft_step` under a bare `jax.jit` (donating the state) on a module
             without a Layout, unsharded arrays: what the step costs without the machinery;
      torch  `transformers.LlamaForCausalLM` (default attention, i.e. SDPA) in eager mode,
             `F.cross_entropy` over the same masked positions, `clip_grad_norm_`,
             `torch.optim.AdamW`, `torch.set_num_threads(os.cpu_count())`.
    All three see the same batch: random token ids, every row full length, the first 25-75% of
    each row a prompt with loss_mask 0 (so about half the tokens are trained on).

    Each (method, shape) runs in its own process, so its peak RSS (ru_maxrss) is its own. The
    first `--warmup` steps (compilation included) are timed apart; then `--steps` steps are timed,
    each waited for (`block_until_ready`), and the median is reported. tokens/s counts every
    position of the batch (B * L per step), trained or not. The parent watches each child's
    resident size and kills it past `--max-rss-gb` (the machine may be shared): that (method,
    shape) becomes an error row, the others still run.

Memory
    Our training attention (`sftrl.models.attention.flash_attention`, a custom VJP) keeps only
    its output and log-sum-exp per layer and recomputes each query block's probabilities in the
    backward pass, as PyTorch's SDPA (flash-style) attention does; the LM head is fused with the
    NLL in sequence chunks (`sftrl.losses.head_weighted_nll`), so no [B, L, V] float32 logits
    are kept. `--remat dots_no_batch` (applied to both JAX methods) also keeps the weight
    matmuls' outputs and the attention residuals and recomputes the elementwise rest.

Roofline
    In the same run the parent process measures float32 sgemm GFLOP/s (best of a few square
    matmuls, in numpy and in jax, the faster taken). FLOPs of a step = 6 * matmul params * tokens
    (q/k/v/o, gate/up/down per layer plus lm_head; the embedding gather excluded) + attention,
    3 * 4 * layers * L * heads * head_dim per token (QK^T and PV, forward and backward, NOT halved
    for causality, a fixed convention across versions). "% roofline" is that FLOP
    count per second over the measured sgemm rate: the share of the machine's matmul peak.

Usage
    python benchmarks/sft.py [--shapes 8x512,2x2048] [--steps 3] [--methods ours,jit,torch]
                             [--model 125m|tiny] [--remat none|dots_no_batch|...]
                             [--attention auto|flash|cudnn|xla|reference]
                             [--max-rss-gb N] [--out benchmarks/results]
Writes OUT/sft.json (a list of rows) and OUT/sft.md (the table printed at the end).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl.models.attention import ATTENTION_IMPLS
from sftrl.models.transformer import REMAT_POLICIES

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ours", "jit", "torch")
DEFAULT_SHAPES = "8x512,2x2048"

# Hugging Face LlamaConfig fields; the sftrl ModelConfig is derived from the same numbers.
MODELS: dict[str, dict[str, Any]] = {
    "125m": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, intermediate_size=2048, max_position_embeddings=4096,
                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512,
                 rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
}
# sgemm size per model: big enough to reach the BLAS peak, small enough for the tiny test.
SGEMM_SIZE = {"125m": 2048, "tiny": 256}
LR, WEIGHT_DECAY, BETAS, EPS, CLIP = 1e-4, 0.1, (0.9, 0.95), 1e-8, 1.0


def _total_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


class ShapeError(ValueError):
    """A malformed --shapes entry; the message names the flag and the entry."""


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'8x512,2x2048' -> [(8, 512), (2, 2048)]."""
    shapes = []
    for entry in text.split(","):
        parts = entry.strip().split("x")
        try:
            batch, seq = (int(p) for p in parts)
        except ValueError:
            raise ShapeError(f"--shapes: {entry!r} is not BATCHxSEQ (e.g. 8x512)") from None
        if batch < 1 or seq < 2:
            raise ShapeError(f"--shapes: {entry!r} needs batch >= 1 and seq >= 2")
        shapes.append((batch, seq))
    return shapes


def make_batch(arch: dict[str, Any], batch: int, seq: int) -> dict[str, np.ndarray]:
    """Full-length rows whose first 25-75% is an untrained prompt (loss_mask 0)."""
    rng = np.random.default_rng(batch * 100003 + seq)
    tokens = rng.integers(3, arch["vocab_size"], (batch, seq), dtype=np.int32)
    prompt = rng.integers(seq // 4, max(seq // 4 + 1, 3 * seq // 4), batch)
    loss_mask = (np.arange(seq)[None, :] >= prompt[:, None]).astype(np.int32)
    return {"tokens": tokens, "loss_mask": loss_mask,
            "attention_mask": np.ones((batch, seq), np.int32)}


def matmul_params(arch: dict[str, Any]) -> int:
    """Weights used in matmuls (per-layer projections and lm_head), as benchmarks/forward.py."""
    e, h, k = arch["hidden_size"], arch["num_attention_heads"], arch["num_key_value_heads"]
    d = e // h
    per_layer = e * d * (2 * h + 2 * k) + 3 * e * arch["intermediate_size"]
    return arch["num_hidden_layers"] * per_layer + arch["vocab_size"] * e


def step_flops(arch: dict[str, Any], batch: int, seq: int) -> int:
    """6 * matmul params * tokens + unhalved attention (forward and backward)."""
    e, layers = arch["hidden_size"], arch["num_hidden_layers"]
    attention = 3 * 4 * layers * seq * e  # heads * head_dim = hidden
    return batch * seq * (6 * matmul_params(arch) + attention)


# --- the three steps (each runs in its own process) ----------------------------------------------


def _timed(step: Callable[[], float], warmup: int, steps: int) -> dict[str, Any]:
    """Runs `step` (which returns the loss after waiting for the step) warmup + steps times."""
    start = time.perf_counter()
    losses = [step() for _ in range(warmup)]
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
    return {"step_s_median": statistics.median(times), "step_s_min": min(times),
            "step_s_all": times, "warmup_s": warmup_s, "first_loss": losses[0],
            "last_loss": losses[-1]}


def _sftrl_parts(arch: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(ModelConfig, optimizer config, tx) shared by the two JAX methods."""
    from sftrl.models.model_config import ModelConfig
    from sftrl.optim import OptimizerConfig, make_optimizer

    config = ModelConfig(
        model_type="llama", vocab_size=arch["vocab_size"], hidden_size=arch["hidden_size"],
        num_layers=arch["num_hidden_layers"], num_heads=arch["num_attention_heads"],
        num_kv_heads=arch["num_key_value_heads"],
        head_dim=arch["hidden_size"] // arch["num_attention_heads"],
        intermediate_size=arch["intermediate_size"], rope_theta=arch["rope_theta"],
        rms_norm_eps=arch["rms_norm_eps"], tie_embeddings=arch["tie_word_embeddings"],
        max_position_embeddings=arch["max_position_embeddings"],
    )
    opt = OptimizerConfig(lr=LR, schedule="constant", weight_decay=WEIGHT_DECAY, b1=BETAS[0],
                          b2=BETAS[1], eps=EPS, grad_clip=CLIP)
    return config, opt, make_optimizer(opt)


def run_ours(arch: dict[str, Any], batch_np: dict[str, np.ndarray], warmup: int,
             steps: int, remat: str, attention: str) -> dict[str, Any]:
    import jax

    from sftrl import sharding
    from sftrl.models.transformer import build_model, param_shardings
    from sftrl.optim import learning_rate
    from sftrl.train import state as state_lib
    from sftrl.train.sft_step import jit_sft_step, make_sft_step

    config, opt, tx = _sftrl_parts(arch)
    devices = jax.devices()
    n = math.gcd(batch_np["tokens"].shape[0], len(devices))
    layout = sharding.Layout(sharding.make_mesh(1, n, 1, devices=devices[:n]))
    model = build_model(config, layout, seed=0, remat=remat)
    module = model.module.clone(attention=attention)

    def create(params: Any) -> Any:
        return state_lib.create_train_state(params, tx, seed=0)

    shardings = state_lib.state_shardings(
        jax.eval_shape(create, model.params), param_shardings(model.module, layout),
        layout.sharding(()))
    state = jax.jit(create, out_shardings=shardings)(model.params)
    del model  # the state holds its own copy of the weights: free the first one
    step_fn = jit_sft_step(make_sft_step(module, tx, learning_rate(opt)), shardings, layout)
    holder = {"state": state}

    def step() -> float:
        batch = sharding.shard_batch(batch_np, layout)
        holder["state"], metrics = step_fn(holder["state"], batch)
        return float(jax.block_until_ready(metrics["loss_sum"]))

    return {**_timed(step, warmup, steps), "devices": n}


def run_plain_jit(arch: dict[str, Any], batch_np: dict[str, np.ndarray], warmup: int,
                  steps: int, remat: str, attention: str) -> dict[str, Any]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from sftrl.models.transformer import Transformer
    from sftrl.optim import learning_rate
    from sftrl.train import state as state_lib
    from sftrl.train.sft_step import make_sft_step

    config, opt, tx = _sftrl_parts(arch)
    # no Layout: no sharding constraints anywhere
    module = Transformer(config, remat=remat, attention=attention)

    def create(rng: jax.Array) -> Any:
        params = nn.meta.unbox(module.init(rng, jnp.zeros((1, 1), jnp.int32)))["params"]
        return state_lib.create_train_state(params, tx, seed=0)

    # the same key as build_model(seed=0): the same initial weights as "ours"
    holder = {"state": jax.jit(create)(jax.random.key(0))}
    step_fn = jax.jit(make_sft_step(module, tx, learning_rate(opt)), donate_argnums=(0,))

    def step() -> float:
        batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
        holder["state"], metrics = step_fn(holder["state"], batch)
        return float(jax.block_until_ready(metrics["loss_sum"]))

    return {**_timed(step, warmup, steps), "devices": 1}


def run_torch(arch: dict[str, Any], batch_np: dict[str, np.ndarray], warmup: int,
              steps: int, remat: str, attention: str) -> dict[str, Any]:
    # eager PyTorch keeps every activation; its SDPA attention stores no L x L probs
    del remat, attention
    import torch
    import torch.nn.functional as F
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**arch)).train()
    # as sftrl.optim.decay_mask: matrices decay, norms and the embedding do not
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS)
    tokens = torch.as_tensor(batch_np["tokens"], dtype=torch.long)
    attention_mask = torch.as_tensor(batch_np["attention_mask"])
    scored = torch.as_tensor(batch_np["loss_mask"][:, 1:], dtype=torch.float32)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens, attention_mask=attention_mask).logits
        nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                              tokens[:, 1:].reshape(-1), reduction="none")
        loss = (nll * scored.reshape(-1)).sum() / scored.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        return float(loss.detach())

    return {**_timed(step, warmup, steps), "devices": 1, "threads": torch.get_num_threads()}


RUNNERS = {"ours": run_ours, "jit": run_plain_jit, "torch": run_torch}


def one(args: argparse.Namespace) -> None:
    """Child process: one (method, shape); prints a RESULT line with its timings and peak RSS."""
    batch, seq = parse_shapes(args.one_shape)[0]
    arch = MODELS[args.model]
    result = RUNNERS[args.one](arch, make_batch(arch, batch, seq), args.warmup, args.steps,
                               args.remat, args.attention)
    if args.one != "torch":
        import jax

        result["matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    # Linux reports ru_maxrss in KiB
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: roofline, children, table -------------------------------------------------------


def sgemm_gflops(n: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-`repeats` float32 n x n matmul rate, in numpy (BLAS) and in jax (XLA:CPU)."""
    import jax
    import jax.numpy as jnp

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    rates = {}
    matmul = jax.jit(lambda x: x @ x)
    for name, fn, x in (("numpy", lambda x: x @ x, a),
                        ("jax", lambda x: matmul(x).block_until_ready(), jnp.asarray(a))):
        fn(x)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * n**3 / best / 1e9
    return {"sgemm_gflops_numpy": rates["numpy"], "sgemm_gflops_jax": rates["jax"],
            "sgemm_gflops": max(rates.values())}


def _rss_gb(pid: int) -> float:
    """Current resident set of a live process (Linux), 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError):
        pass
    return 0.0


def run_child(args: argparse.Namespace, method: str, batch: int, seq: int) -> dict[str, Any]:
    """One (method, shape) in a fresh process; killed (an "error" row) past --max-rss-gb."""
    cmd = [sys.executable, __file__, "--one", method, "--one-shape", f"{batch}x{seq}",
           "--model", args.model, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--remat", args.remat, "--attention", args.attention]
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=ROOT, env=env)
    peak = 0.0
    while True:
        try:
            stdout, stderr = child.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            peak = max(peak, _rss_gb(child.pid))
            # the machine is shared: a run that would swap or OOM-kill a neighbour is stopped
            if peak > args.max_rss_gb:
                child.kill()
                child.communicate()
                return {"error": f"killed at {peak:.1f} GB RSS (--max-rss-gb {args.max_rss_gb})"}
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if child.returncode or not lines:
        raise RuntimeError(f"{method} {batch}x{seq} failed (exit {child.returncode}):\n"
                           f"{stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| B | L | method | remat | median s/step | tok/s | % sgemm roofline | ours / this "
             "| peak RSS MB | warmup s | loss |", "|---" * 11 + "|"]
    for r in rows:
        head = f"| {r['batch']} | {r['seq']} | {r['method']} | {r['remat']} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} |" + " |" * 6)
            continue
        ours = next((x for x in rows if x["method"] == "ours" and "error" not in x and
                     (x["batch"], x["seq"]) == (r["batch"], r["seq"])), None)
        ratio = f"{ours['tokens_per_s'] / r['tokens_per_s']:.2f}x" if ours else "-"
        lines.append(
            f"{head} {r['step_s_median']:.3f} | {r['tokens_per_s']:.1f} "
            f"| {100 * r['share_of_roofline']:.1f} | {ratio} | {r['peak_rss_mb']:.0f} "
            f"| {r['warmup_s']:.1f} | {r['first_loss']:.3f} |")
    if rows:
        r = rows[0]
        lines += ["", f"{r['model']} ({r['matmul_params'] / 1e6:.1f}M matmul params, float32); "
                  f"sgemm "
                  f"{r['sgemm_gflops']:.1f} GFLOP/s (numpy {r['sgemm_gflops_numpy']:.1f}, jax "
                  f"{r['sgemm_gflops_jax']:.1f}); FLOPs/step = 6 * matmul params * tokens + "
                  f"unhalved attention; load average {r['load_avg_1m']:.2f} on "
                  f"{r['cpu_count']} cores at the start"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of BATCHxSEQ")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps, compile included")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--model", default="125m", choices=sorted(MODELS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                        help="folder for sft.json / sft.md")
    parser.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES),
                        help="remat policy of the JAX methods (sftrl REMAT_POLICIES); "
                        "dots_no_batch recomputes the L x L attention in the backward pass")
    parser.add_argument("--attention", default="auto", choices=ATTENTION_IMPLS,
                        help="training attention of the JAX methods (sftrl.models.attention); "
                        "reference = plain softmax in query blocks, as before issue 8")
    parser.add_argument("--max-rss-gb", type=float, default=round(0.6 * _total_memory_gb(), 1),
                        help="kill a method's process past this resident size (default: 60%% of "
                        "RAM); it becomes an error row")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--one-shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1:
        parser.error(f"--steps and --warmup must be >= 1, got {args.steps}, {args.warmup}")
    try:
        args.shape_list = parse_shapes(args.shapes)
    except ShapeError as e:
        parser.error(str(e))
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.method_list) - set(METHODS))
    if unknown or not args.method_list:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs every (shape, method) in its own process; writes OUT/sft.json and OUT/sft.md."""
    args = parse_args(argv)
    if args.one:
        one(args)
        return []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arch = MODELS[args.model]
    limits = sgemm_gflops(SGEMM_SIZE[args.model])
    print(f"sgemm: {limits['sgemm_gflops']:.1f} GFLOP/s (numpy {limits['sgemm_gflops_numpy']:.1f},"
          f" jax {limits['sgemm_gflops_jax']:.1f})", flush=True)
    common = {"model": args.model, "matmul_params": matmul_params(arch), **limits,
              "max_rss_gb": args.max_rss_gb,
              "load_avg_1m": os.getloadavg()[0], "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(),
              "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    rows = []
    for batch, seq in args.shape_list:
        for method in args.method_list:
            result = run_child(args, method, batch, seq)
            row: dict[str, Any] = {"method": method, "batch": batch, "seq": seq,
                                   "remat": "none" if method == "torch" else args.remat,
                                   "attention": "sdpa" if method == "torch" else args.attention}
            if "error" in result:
                row.update(result, **common)
                print(f"{method:5s} B={batch} L={seq}: {result['error']}", flush=True)
            else:
                flops = step_flops(arch, batch, seq)
                achieved = flops / result["step_s_median"] / 1e9
                row.update(result, tokens_per_s=batch * seq / result["step_s_median"],
                           flops_per_step=flops, gflops_per_s=achieved,
                           share_of_roofline=achieved / limits["sgemm_gflops"], **common)
                print(f"{method:5s} B={batch} L={seq}: {row['tokens_per_s']:8.1f} tok/s, "
                      f"{achieved:.1f} GFLOP/s ({100 * row['share_of_roofline']:.1f}% of sgemm), "
                      f"peak {result['peak_rss_mb']:.0f} MB, loss {result['first_loss']:.3f}",
                      flush=True)
            rows.append(row)
            (out / "sft.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown_table(rows)
    (out / "sft.md").write_text(table)
    print(table, end="")
    return rows


if __name__ == "__main__":
    main()
