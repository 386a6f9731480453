"""Wall time of `sftrl.rank` per checkpoint on the embedded task, and the share of it spent
outside the model: loading weights, applying the chat template to the held-out set, answer
verification and bookkeeping (sample-store writes, summaries, result files).

`--checkpoints` tiny random-weight Llama models (the configs/tiny.py shape, one seed each) are
exported as Hugging Face folders with the task's tokenizer, and ranked on `--heldout` examples of
the task's held-out split and `--prompts` test prompts x `--num-samples` samples. "Model" time is
the held-out forward passes plus generation (prompt encoding and detokenisation included, as
`sftrl.eval.benchmarks` times them); compilation is inside both, once per checkpoint, as in a
real run (each checkpoint is a new model).

PYTHONPATH=. python benchmarks/rank.py --out runs/bench_rank [--checkpoints 3] [--prompts 16]
Writes <out>/rank_bench.json and <out>/rank_bench.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checkpoints(root: Path, count: int) -> list[str]:
    import jax.numpy as jnp

    from sftrl import config_lib
    from sftrl.data import synthetic
    from sftrl.models.checkpoint import export_hf
    from sftrl.models.transformer import build_model
    from sftrl.sharding import TRAIN_RULES, Layout, make_mesh

    sys.path.insert(0, str(ROOT / "configs"))
    import tiny

    arch = config_lib.model_config(tiny.get_config())
    layout = Layout(make_mesh(data=1, fsdp=-1, tensor=1), TRAIN_RULES)
    out = []
    for seed in range(count):
        folder = export_hf(build_model(arch, layout, seed=seed, dtype=jnp.float32), None,
                           root / f"seed{seed}")
        for file in synthetic.tokenizer_dir().iterdir():
            shutil.copy(file, folder / file.name)
        out.append(str(folder))
    return out


def _inputs(root: Path, heldout: int, prompts: int) -> tuple[Path, Path]:
    from sftrl.data import synthetic

    task = synthetic.TaskConfig()
    variant = synthetic.SFTVariant(style="short_cot", phrasing="diverse", size=2000)
    _, records = synthetic.sft_records(variant, task)
    heldout_file = root / "heldout.jsonl"
    heldout_file.write_text("".join(json.dumps({"id": r["id"], "messages": r["messages"]}) + "\n"
                                    for r in records[:heldout]))
    bench = root / "synthetic_test.jsonl"
    bench.write_text("".join(json.dumps({k: r[k] for k in ("id", "problem", "answer")}) + "\n"
                             for r in synthetic.test_records(task)[:prompts]))
    return heldout_file, bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    from sftrl.rank import SamplingSpec, Settings, rank

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoints = _checkpoints(root, args.checkpoints)
        heldout, bench = _inputs(root, args.heldout, args.prompts)
        settings = Settings(SamplingSpec(num_samples=args.num_samples,
                                         max_new_tokens=args.max_new_tokens,
                                         prompts_per_wave=args.prompts),
                            max_length=512, prompt_template="plain", num_bootstrap=1000)
        start = time.perf_counter()
        rank(checkpoints, heldout=str(heldout), benchmarks=[str(bench)], workdir=root / "rank",
             settings=settings)
        total = time.perf_counter() - start
        shutil.copy(root / "rank" / "rank.md", args.out / "rank.md")  # the report it made
        rows = []
        for file in sorted((root / "rank" / "results").glob("*.json")):
            t = json.loads(file.read_text())["timing"]
            outside = t["load_s"] + t["tokenize_s"] + t["verification_s"] + t["bookkeeping_s"]
            model = t["heldout_s"] + t["generation_s"]
            rows.append({"checkpoint": file.stem, **{k: round(v, 3) for k, v in t.items()},
                         "model_s": round(model, 3), "outside_model_s": round(outside, 3),
                         "outside_share": round(outside / t["total_s"], 4)})
    summary = {"checkpoints": args.checkpoints, "heldout_examples": args.heldout,
               "prompts": args.prompts, "num_samples": args.num_samples,
               "max_new_tokens": args.max_new_tokens, "rank_total_s": round(total, 2),
               "per_checkpoint": rows}
    (args.out / "rank_bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| checkpoint | total s | model s | load s | tokenize s | verify s | bookkeeping s "
             "| outside model |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['checkpoint']} | {r['total_s']:.2f} | {r['model_s']:.2f} | {r['load_s']:.2f} "
              f"| {r['tokenize_s']:.3f} | {r['verification_s']:.3f} | {r['bookkeeping_s']:.3f} "
              f"| {r['outside_share']:.1%} |" for r in rows]
    lines.append(f"\nrank total (incl. validation, bootstrap, report): {total:.1f} s")
    (args.out / "rank_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
