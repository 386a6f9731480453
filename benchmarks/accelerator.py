"""Accelerator figures in one run: the machine's ceilings, the decode kernel, large-k sampling of
a Llama-3-8B-shaped model and the SFT step's MFU.

Parts (`--parts`, comma list; each writes its rows to OUT/accelerator.json as it finishes, so an
interrupted run keeps what it measured):

  limits   device-to-device copy bandwidth (bytes read + written) and a bf16 matmul's FLOP/s,
           measured here: the ceilings the other parts are reported against.
  kernel   sftrl/kernels/decode_attention.py compiled (Triton on GPU, Mosaic on TPU) against its
           plain-JAX reference: error on ragged prefixes, then step time and the share of the
           copy bandwidth at which the prefix K/V is read (read once per step).
  sampler  sftrl.sampling.generate on random bf16 weights with Llama-3-8B's shapes, one prompt of
           P tokens, k samples of exactly R tokens, with the shared prefix (a) and with sharing
           off (b, the prompt repeated k times): decode tokens/s and its share of the bandwidth
           roofline, bytes per step = weights + KV actually needed (prefix once per prompt when
           shared, once per sample otherwise; each sample's own suffix).
  sft      one full SFT step (forward, masked NLL, backward, AdamW; bf16 compute, f32 params and
           optimizer state) of a Llama-3.2-1B-shaped model through the trainer's own jitted,
           sharded step, at (batch, seq) = (4, 4096): tokens/s and MFU against the datasheet
           peak and against the measured matmul rate (FLOPs = 6 x matmul params x tokens +
           unhalved attention).

python benchmarks/accelerator.py --out runs/bench            # on a GPU / TPU
python benchmarks/accelerator.py --out /tmp/x --small        # tiny shapes: a CPU smoke test
Writes OUT/accelerator.json and OUT/accelerator.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sftrl.kernels import decode_attention as da
from sftrl.models.model_config import ModelConfig

PARTS = ("limits", "kernel", "sampler", "sft")
# Dense bf16 peak from the datasheets (FLOP/s), by a substring of jax's device_kind.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v5 lite": 197e12,
             "TPU v5": 459e12, "TPU v4": 275e12, "TPU v6": 918e12}

# The shapes are spelled out here rather than read from configs/: that needs ml_collections,
# which accelerator images often lack (this script needs only jax, flax and optax).
LLAMA3_8B = ModelConfig(
    model_type="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
    num_kv_heads=8, head_dim=128, intermediate_size=14336, rope_theta=500000.0,
    rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=8192)
LLAMA32_1B = ModelConfig(
    model_type="llama", vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32,
    num_kv_heads=8, head_dim=64, intermediate_size=8192, rope_theta=500000.0,
    rms_norm_eps=1e-5, tie_embeddings=True, max_position_embeddings=8192)
TINY = ModelConfig(
    model_type="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=16, intermediate_size=128, rope_theta=500000.0,
    rms_norm_eps=1e-5, tie_embeddings=False, max_position_embeddings=1024)


def _median_seconds(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_flops() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_BF16.items():
        if name in kind:
            return peak
    return None


# --- limits -------------------------------------------------------------------------------------


def limits(small: bool) -> dict[str, Any]:
    n = 1 << (16 if small else 29)  # 1 GiB of float16-sized elements on the device
    x = jax.random.normal(jax.random.key(0), (n,), jnp.bfloat16)
    copy = jax.jit(lambda a: a * 2)
    seconds = _median_seconds(lambda: copy(x), 3, 20)
    bandwidth = 2 * x.nbytes / seconds
    m = 256 if small else 8192
    keys = jax.random.split(jax.random.key(1), 2)
    a = jax.random.normal(keys[0], (m, m), jnp.bfloat16)
    b = jax.random.normal(keys[1], (m, m), jnp.bfloat16)
    matmul = jax.jit(jnp.dot)
    seconds = _median_seconds(lambda: matmul(a, b), 3, 20)
    return {"part": "limits", "device": jax.devices()[0].device_kind,
            "copy_gb_per_s": bandwidth / 1e9, "bf16_matmul_tflops": 2 * m**3 / seconds / 1e12,
            "datasheet_bf16_tflops": (peak_flops() or 0) / 1e12 or None}


# --- kernel -------------------------------------------------------------------------------------


def kernel(small: bool, bandwidth: float) -> list[dict[str, Any]]:
    impl = "pallas" if jax.default_backend() in ("gpu", "tpu") else "interpret"
    # (P, K, N, G, S, D): Llama-3-8B's heads (K=8, G=4, D=128) at several prefixes and samples.
    shapes = ([(2, 2, 4, 2, 100, 64)] if small else
              [(8, 8, 64, 4, 2048, 128), (4, 8, 16, 4, 4096, 128), (2, 8, 256, 4, 2048, 128),
               (16, 8, 32, 4, 1024, 128)])
    rows = []
    for P, K, N, G, S, D in shapes:
        keys = jax.random.split(jax.random.key(P * S + N), 3)
        q = jax.random.normal(keys[0], (P, K, N * G, D), jnp.bfloat16)
        k = jax.random.normal(keys[1], (P, K, S, D), jnp.bfloat16)
        v = jax.random.normal(keys[2], (P, K, S, D), jnp.bfloat16)
        ragged = jnp.asarray(np.random.default_rng(S).integers(0, S + 1, P), jnp.int32)
        full = jnp.full((P,), S, jnp.int32)

        def call(q, k, v, lengths, impl):
            return da.prefix_decode_attention(q, k, v, lengths, impl=impl)

        fast = jax.jit(lambda q, k, v, n: call(q, k, v, n, impl))
        ref = jax.jit(lambda q, k, v, n: call(q, k, v, n, "reference"))
        errors = {}
        for name, lengths in (("ragged", ragged), ("full", full)):
            out, lse = fast(q, k, v, lengths)
            out_ref, lse_ref = ref(q, k, v, lengths)
            o, o_ref = np.asarray(out, np.float32), np.asarray(out_ref, np.float32)
            errors[f"rel_err_{name}"] = float(np.linalg.norm(o - o_ref) /
                                              max(np.linalg.norm(o_ref), 1e-30))
            finite = np.isfinite(np.asarray(lse_ref))
            errors[f"lse_err_{name}"] = float(np.max(np.abs(
                np.where(finite, np.asarray(lse) - np.asarray(lse_ref), 0.0)), initial=0.0))
            if np.any(np.isfinite(np.asarray(lse)) != finite) or not np.all(np.isfinite(o)):
                errors[f"rel_err_{name}"] = float("nan")
        iters = 3 if small else 50
        t_fast = _median_seconds(functools.partial(fast, q, k, v, full), 2, iters)
        t_ref = _median_seconds(functools.partial(ref, q, k, v, full), 2, iters)
        prefix_bytes = 2 * P * K * S * D * 2
        rows.append({"part": "kernel", "impl": impl, "P": P, "K": K, "N": N, "G": G, "S": S,
                     "D": D, **errors, "kernel_us": t_fast * 1e6, "reference_us": t_ref * 1e6,
                     "speedup_vs_reference": t_ref / t_fast,
                     "kernel_gb_per_s": prefix_bytes / t_fast / 1e9,
                     "share_of_copy_bandwidth": prefix_bytes / t_fast / bandwidth})
        print(f"kernel P={P} N={N} S={S}: {t_fast * 1e6:.0f} us "
              f"({prefix_bytes / t_fast / 1e9:.0f} GB/s), reference {t_ref * 1e6:.0f} us, "
              f"errors {errors}", flush=True)
    return rows


# --- sampler ------------------------------------------------------------------------------------


def _decode_bytes(config: ModelConfig, p: int, r: int, k: int, shared: bool) -> float:
    """Bytes one decode step must read on average over R steps (bf16): every weight but the
    embedding table (only k rows of it are gathered), the prompt's KV (once, or once per
    sample) and each sample's own suffix so far."""
    weights = config.num_params() - config.vocab_size * config.hidden_size * (
        0 if config.tie_embeddings else 1)
    kv_per_token = config.num_layers * 2 * config.num_kv_heads * config.head_dim * 2
    prefix = p * (1 if shared else k)
    suffix = k * (r - 1) / 2
    return 2 * weights + kv_per_token * (prefix + suffix)


def sampler(small: bool, bandwidth: float, shapes: Sequence[tuple[int, int, int]]):
    from sftrl import sampling, sharding
    from sftrl.models.transformer import build_model

    config = TINY if small else LLAMA3_8B
    layout = sharding.Layout(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                             sharding.SAMPLING_RULES)
    start = time.perf_counter()
    model = build_model(config, layout, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    jax.block_until_ready(model.params)
    print(f"sampler: {config.num_params() / 1e9:.2f}B params built in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for p, r, k in shapes:
        prompt = np.random.default_rng(p).integers(10, config.vocab_size, p).tolist()
        # "a unrolled": the shared-prefix decode from per-layer weight copies (no layer scan)
        for method, shared, unroll in (("a shared", True, False), ("b unshared", False, False),
                                       ("a unrolled", True, True)):
            def once(shared=shared, unroll=unroll, prompt=prompt, r=r, k=k) -> float:
                begin = time.perf_counter()
                out = sampling.generate(model, [prompt], num_samples=k, max_new_tokens=r,
                                        share_prefix=shared, unroll_layers=unroll,
                                        progress=False)
                if not (out.lengths == r).all():
                    raise RuntimeError("a sample stopped early: no stop ids were given")
                return time.perf_counter() - begin

            warm = once()
            seconds = once()
            # The prefill alone, to report decode tokens/s (the roofline covers decode).
            def prefill_only(shared=shared, unroll=unroll, prompt=prompt, k=k) -> float:
                begin = time.perf_counter()
                sampling.generate(model, [prompt], num_samples=k, max_new_tokens=1,
                                  share_prefix=shared, unroll_layers=unroll, progress=False)
                return time.perf_counter() - begin

            prefill_only()
            prefill = prefill_only()
            bound = k * bandwidth / _decode_bytes(config, p, r, k, shared)  # rows per step
            # Decode time is the run minus a prefill-only run; when timing noise makes it <= 0
            # (tiny shapes) there is no decode figure rather than an absurd one.
            decode = seconds - prefill
            tokens_per_s = k * (r - 1) / decode if decode > 0 else None
            rows.append({"part": "sampler", "method": method,
                         "P": p, "R": r, "k": k, "seconds": seconds, "warmup_seconds": warm,
                         "prefill_seconds": prefill, "decode_tokens_per_s": tokens_per_s,
                         "end_to_end_tokens_per_s": k * r / seconds,
                         "roofline_tokens_per_s": bound,
                         "share_of_bandwidth_roofline":
                             tokens_per_s / bound if tokens_per_s else None})
            decode_text = (f"decode {tokens_per_s:.0f} tok/s = "
                           f"{100 * tokens_per_s / bound:.0f}% of roofline" if tokens_per_s
                           else "decode time below timer noise")
            print(f"sampler {rows[-1]['method']} P={p} R={r} k={k}: {seconds:.2f} s "
                  f"(prefill {prefill:.2f} s), {decode_text}", flush=True)
        a, b, unrolled = rows[-3:]
        a["shared_over_unshared"] = b["seconds"] / a["seconds"]
        unrolled["unrolled_over_scanned"] = a["seconds"] / unrolled["seconds"]
    return rows


# --- sft ----------------------------------------------------------------------------------------


def _step_flops(config: ModelConfig, batch: int, seq: int) -> float:
    e, d = config.hidden_size, config.head_dim
    per_layer = e * d * (2 * config.num_heads + 2 * config.num_kv_heads) + \
        3 * e * config.intermediate_size
    matmul = config.num_layers * per_layer + config.vocab_size * e
    attention = 3 * 4 * config.num_layers * seq * config.num_heads * d
    return batch * seq * (6 * matmul + attention)


def sft(small: bool, matmul_flops: float, shapes: Sequence[tuple[int, int]],
        remats: Sequence[str], attentions: Sequence[str] = ("auto",)) -> list[dict[str, Any]]:
    from sftrl import sharding
    from sftrl.optim import OptimizerConfig, make_optimizer

    config = TINY if small else LLAMA32_1B
    opt = OptimizerConfig(lr=1e-5, schedule="constant", weight_decay=0.1, grad_clip=1.0)
    tx = make_optimizer(opt)
    layout = sharding.Layout(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    rows = []
    for attention in attentions:
        for remat in remats:
            for batch, seq in shapes:
                try:
                    rows.append(_sft_variant(config, layout, tx, opt, remat, batch, seq, small,
                                             matmul_flops, attention))
                except Exception as error:  # an OOM at one shape leaves the others measurable
                    traceback.print_exc()
                    rows.append({"part": "sft", "batch": batch, "seq": seq, "remat": remat,
                                 "attention": attention,
                                 "error": f"{type(error).__name__}: {error}"[:300]})
    return rows


def _sft_variant(config: ModelConfig, layout: Any, tx: Any, opt: Any, remat: str, batch: int,
                 seq: int, small: bool, matmul_flops: float,
                 attention: str = "auto") -> dict[str, Any]:
    """One (attention, remat, batch, seq) SFT step measurement."""
    from sftrl import sharding
    from sftrl.models.transformer import build_model, param_shardings
    from sftrl.optim import learning_rate
    from sftrl.train import state as state_lib
    from sftrl.train.sft_step import jit_sft_step, make_sft_step

    model = build_model(config, layout, seed=0, dtype=jnp.bfloat16,
                        param_dtype=jnp.float32, remat=remat, attention=attention)

    def create(params):
        return state_lib.create_train_state(params, tx, seed=0)

    shardings = state_lib.state_shardings(
        jax.eval_shape(create, model.params), param_shardings(model.module, layout),
        layout.sharding(()))
    state = jax.jit(create, out_shardings=shardings)(model.params)
    module = model.module
    del model
    step_fn = jit_sft_step(make_sft_step(module, tx, learning_rate(opt)), shardings,
                           layout)
    rng = np.random.default_rng(0)
    batch_np = {
        "tokens": rng.integers(3, config.vocab_size, (batch, seq), dtype=np.int32),
        "loss_mask": (np.arange(seq)[None] >= seq // 4).repeat(batch, 0).astype(np.int32),
        "attention_mask": np.ones((batch, seq), np.int32)}
    holder = {"state": state}
    del state
    losses = []

    def step(holder=holder, batch_np=batch_np, losses=losses, step_fn=step_fn):
        holder["state"], metrics = step_fn(holder["state"],
                                           sharding.shard_batch(batch_np, layout))
        losses.append(metrics["loss_sum"])
        return metrics["loss_sum"]

    begin = time.perf_counter()
    jax.block_until_ready(step())
    compile_s = time.perf_counter() - begin
    seconds = _median_seconds(step, 1, 2 if small else 5)
    flops = _step_flops(config, batch, seq)
    peak = peak_flops()
    row = {"part": "sft", "params_b": config.num_params() / 1e9, "batch": batch,
           "seq": seq, "remat": remat, "attention": attention, "step_seconds": seconds,
           "first_step_seconds": compile_s, "tokens_per_s": batch * seq / seconds,
           "tflops": flops / seconds / 1e12,
           "mfu_datasheet": flops / seconds / peak if peak else None,
           "mfu_measured_matmul": flops / seconds / matmul_flops,
           "losses_finite": bool(all(np.isfinite(float(x)) for x in losses))}
    print(f"sft {attention} {remat} ({batch}, {seq}): {seconds * 1e3:.0f} ms/step, "
          f"{row['tokens_per_s']:.0f} tok/s, {row['tflops']:.0f} TFLOP/s, MFU "
          f"{row['mfu_datasheet']} (datasheet) {row['mfu_measured_matmul']:.2f} "
          f"(measured matmul)", flush=True)
    return row


# --- driver -------------------------------------------------------------------------------------


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for part in PARTS:
        mine = [r for r in rows if r.get("part") == part]
        if not mine:
            continue
        columns = [c for c in mine[0] if c != "part"]
        for r in mine[1:]:
            columns += [c for c in r if c not in columns and c != "part"]
        lines += [f"### {part}", "", "| " + " | ".join(columns) + " |",
                  "|" + "---|" * len(columns)]
        for r in mine:
            cells = [r.get(c) for c in columns]
            lines.append("| " + " | ".join(
                "-" if c is None else f"{c:.4g}" if isinstance(c, float) else str(c)
                for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _run_part(args: argparse.Namespace, part: str, out: Path) -> None:
    """Child process: one part, its rows appended to OUT/accelerator.json."""
    path = out / "accelerator.json"
    rows: list[dict[str, Any]] = json.loads(path.read_text()) if path.exists() else []

    def save() -> None:
        path.write_text(json.dumps(rows, indent=2) + "\n")
        (out / "accelerator.md").write_text(markdown(rows))

    if part == "limits":
        print(f"jax {jax.__version__} on {jax.devices()}", flush=True)
        rows.append(limits(args.small))
        save()
        return
    measured = next((r for r in rows if r.get("part") == "limits"), None)
    if measured is None:
        raise SystemExit(f"{path}: no 'limits' row; run --parts=limits first")
    bandwidth = measured["copy_gb_per_s"] * 1e9
    sampler_shapes = [tuple(int(x) for x in s.split("x")) for s in args.sampler_shapes.split(",")]
    sft_shapes = [tuple(int(x) for x in s.split("x")) for s in args.sft_shapes.split(",")]
    if args.small:
        sampler_shapes, sft_shapes = [(40, 8, 4)], [(2, 64)]
    try:
        if part == "kernel":
            rows.extend(kernel(args.small, bandwidth))
        elif part == "sampler":
            rows.extend(sampler(args.small, bandwidth, sampler_shapes))
        else:
            rows.extend(sft(args.small, measured["bf16_matmul_tflops"] * 1e12, sft_shapes,
                            args.sft_remat.split(","), args.sft_attention.split(",")))
    except Exception as error:  # keep the other parts' figures; the error is reported
        traceback.print_exc()
        rows.append({"part": part, "error": f"{type(error).__name__}: {error}"[:500]})
    save()


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--sampler-shapes", default="2048x256x64",
                        help="comma list of PxRxk (prompt tokens, new tokens, samples)")
    parser.add_argument("--sft-shapes", default="2x4096,4x4096", help="comma list of BATCHxSEQ")
    parser.add_argument("--sft-remat", default="dots_no_batch", help="comma list")
    parser.add_argument("--sft-attention", default="auto",
                        help="comma list of attention implementations (auto, cudnn, flash, xla)")
    parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.child:
        _run_part(args, args.child, out)
        return []
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; known: {', '.join(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator.json").unlink(missing_ok=True)
    # Each part in its own process: every one starts with the whole device memory (an 8B
    # sampler's weights or a failed allocation must not shrink the next part's room).
    passed = ["--out", str(out), "--sampler-shapes", args.sampler_shapes, "--sft-shapes",
              args.sft_shapes, "--sft-remat", args.sft_remat, "--sft-attention",
              args.sft_attention] + (["--small"] if args.small else [])
    for part in ["limits"] + [p for p in parts if p != "limits"]:
        # The sampler's shapes one process each, so that a run cut short keeps the finished ones.
        shapes = args.sampler_shapes.split(",") if part == "sampler" else [args.sampler_shapes]
        for shape in shapes:
            extra = ["--sampler-shapes", shape] if part == "sampler" else []
            done = subprocess.run([sys.executable, __file__, "--child", part, *passed, *extra])
            if done.returncode and part == "limits":
                raise SystemExit("measuring the limits failed; see above")
    rows = json.loads((out / "accelerator.json").read_text())
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
