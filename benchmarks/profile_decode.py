"""Where a large-k decode step's time goes: a jax.profiler trace of `sampling.generate`,
summarised per device op (perfetto JSON, no TensorBoard needed).

    python benchmarks/profile_decode.py --out OUT [--shape 2048x32x64] [--small]

Prints (and writes OUT/profile_decode.json) the ops that take the most device time over the
traced call, with their share, so a slow step can be attributed to the model's matmuls, the
attention, the sampling or the bookkeeping.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.accelerator import LLAMA3_8B, TINY
from sftrl import sampling, sharding
from sftrl.models.transformer import build_model


def summarise(trace_path: Path, top: int) -> dict:
    """Device-side events of a perfetto trace, grouped by name."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {e["pid"]: e["args"]["name"] for e in events
                     if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in process_names.items()
                   if "/device:" in name and "CPU" not in name.upper().split("/DEVICE:")[-1][:3]}
    if not device_pids:  # CPU runs: the XLA ops sit on host threads
        device_pids = set(process_names)
    by_name: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device_pids:
            by_name[e["name"]] += float(e.get("dur", 0.0))
            counts[e["name"]] += 1
    total = sum(by_name.values())
    rows = [{"op": name[:120], "us": us, "calls": counts[name], "share": us / total}
            for name, us in sorted(by_name.items(), key=lambda kv: -kv[1])[:top]]
    return {"device_processes": sorted(process_names[p] for p in device_pids),
            "total_device_us": total, "top": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/profile_decode")
    parser.add_argument("--shape", default="2048x32x64", help="PxRxk")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--unshared", action="store_true")
    args = parser.parse_args(argv)
    p, r, k = (int(x) for x in args.shape.split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TINY if args.small else LLAMA3_8B
    layout = sharding.Layout(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                             sharding.SAMPLING_RULES)
    model = build_model(config, layout, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    prompt = np.random.default_rng(p).integers(10, config.vocab_size, p).tolist()

    def once() -> float:
        begin = time.perf_counter()
        sampling.generate(model, [prompt], num_samples=k, max_new_tokens=r,
                          share_prefix=not args.unshared, progress=False)
        return time.perf_counter() - begin

    once()
    plain = once()
    with jax.profiler.trace(str(out / "trace"), create_perfetto_trace=True):
        traced = once()
    trace_path = max((out / "trace").rglob("perfetto_trace.json.gz"),
                     key=lambda path: path.stat().st_mtime)
    summary = summarise(trace_path, args.top)
    summary.update(shape=args.shape, shared=not args.unshared, seconds=plain,
                   traced_seconds=traced, device=str(jax.devices()[0].device_kind))
    (out / "profile_decode.json").write_text(json.dumps(summary, indent=1))
    print(f"{args.shape} shared={not args.unshared}: {plain:.3f} s untraced, "
          f"{traced:.3f} s traced, device busy {summary['total_device_us'] / 1e6:.3f} s")
    for row in summary["top"]:
        print(f"{row['share']:6.1%} {row['us'] / 1e3:9.2f} ms {row['calls']:6d}x  {row['op']}")
    return summary


if __name__ == "__main__":
    main()
