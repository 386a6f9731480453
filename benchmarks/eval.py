"""Wall time of a full pass@k benchmark evaluation, split into generation / verification /
bookkeeping (the sample store's fsync'd appends and the metrics); bookkeeping should stay < 5%.

A tiny random-weight Llama-shaped model (the configs/tiny.py shape, vocabulary from the
tokenizer) samples `--num-samples` responses for each of `--prompts` task records through
`sftrl.eval.benchmarks.evaluate_benchmark`, with the real verifier (`sftrl.rewards`). A warm-up
run over the same records compiles every shape first; the timed run starts from an empty store.

Inputs: `--tokenizer` (a Hugging Face tokenizer folder; default the task's
`sftrl/data/task_files/tokenizer`) and `--tasks` (a JSONL of {"id", "problem", "answer"}; default
`sftrl.data.synthetic.test_records`). If the project's tokenizer or task modules are missing, it
stops with a message saying what to pass.

python benchmarks/eval.py --out runs/bench [--num-samples 256] [--prompts 8] [--max-new-tokens 64]
Writes <out>/eval.json and <out>/eval.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("prompts", "num_samples", "max_new_tokens", "prompts_per_wave", "total_s",
            "generation_s", "verification_s", "bookkeeping_s", "bookkeeping_share",
            "samples_per_s", "tokens_per_s", "mean_response_tokens", "pass@1",
            "warmup_s", "verification_boxed_s", "tokenizer", "tasks")


class InputError(ValueError):
    """A missing tokenizer/task input or a malformed task line; names the file and line."""


def load_tasks(path: Path | None, count: int) -> tuple[list[dict[str, Any]], str]:
    if path is not None:
        records = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            for field in ("id", "problem", "answer"):
                if field not in record:
                    raise InputError(f"{path}:{number}: missing field {field!r}")
            records.append(record)
        source = str(path)
    else:
        try:
            from sftrl.data import synthetic
        except ImportError as error:
            raise InputError(f"sftrl.data.synthetic is not importable ({error}); pass --tasks "
                             "FILE.jsonl with {id, problem, answer} lines") from None
        records = synthetic.test_records(synthetic.TaskConfig())
        source = "sftrl.data.synthetic.test_records"
    if len(records) < count:
        raise InputError(f"{source}: {len(records)} records, --prompts asks for {count}")
    return records[:count], source


def load_tokenizer(path: Path | None) -> tuple[Any, str]:
    try:
        from sftrl.data import tokenizer as tokenizer_lib
    except ImportError as error:
        raise InputError(f"sftrl.data.tokenizer is not importable ({error}); this benchmark "
                         "needs the project's tokenizer module") from None
    if path is None:
        path = ROOT / "sftrl" / "data" / "task_files" / "tokenizer"
    if not path.is_dir():
        raise InputError(f"{path}: no tokenizer folder; pass --tokenizer FOLDER")
    return tokenizer_lib.load_tokenizer(path), str(path)


def time_boxed_verification(records: list[dict[str, Any]], num_samples: int) -> float:
    """Seconds to verify as many answered responses as the run sampled: a random model rarely
    writes an answer, so its verification time understates a trained model's. Each response
    ends in `\\boxed{}` holding the gold, gold + 1 or a fraction (which goes to math-verify)."""
    from sftrl import rewards

    pairs = []
    for record in records:
        gold = str(record["answer"])
        for i in range(num_samples):
            guess = (gold, f"{gold}+1", f"\\frac{{{i % 7 + 1}}}{{{i % 5 + 2}}}")[i % 3]
            pairs.append((f"Step by step... so the answer is \\boxed{{{guess}}}.", gold))
    with rewards.Verifier() as verifier:
        verifier.verify_batch(pairs[:1])  # start the worker pool outside the timing
        start = time.perf_counter()
        verifier.verify_batch(pairs)
        return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from sftrl import sharding
    from sftrl.eval import benchmarks as bench
    from sftrl.models.model_config import ModelConfig
    from sftrl.models.transformer import build_model

    tokenizer, tokenizer_source = load_tokenizer(args.tokenizer)
    records, task_source = load_tasks(args.tasks, args.prompts)
    config = ModelConfig("llama", tokenizer.vocab_size, 128, 4, 4, 2, 32, 384,
                         max_position_embeddings=4096)
    model = build_model(config, sharding.single_device_layout(), seed=0)
    spec = bench.SamplingSpec(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                              temperature=1.0, seed=0, prompts_per_wave=args.prompts_per_wave)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bench.evaluate_benchmark(model, tokenizer, records, name="bench",
                                 store_path=Path(tmp) / "warmup.jsonl", spec=spec,
                                 progress=False)
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        result = bench.evaluate_benchmark(model, tokenizer, records, name="bench",
                                          store_path=Path(tmp) / "timed.jsonl", spec=spec,
                                          progress=False)
        total_s = time.perf_counter() - start
    timing = result["timing"]
    samples = args.prompts * args.num_samples
    boxed_s = time_boxed_verification(records, args.num_samples)
    return {
        "prompts": args.prompts, "num_samples": args.num_samples,
        "max_new_tokens": args.max_new_tokens, "prompts_per_wave": args.prompts_per_wave,
        "total_s": total_s, **timing,
        "bookkeeping_share": timing["bookkeeping_s"] / total_s,
        "samples_per_s": samples / total_s,
        "tokens_per_s": samples * result["mean_response_tokens"] / timing["generation_s"],
        "mean_response_tokens": result["mean_response_tokens"], "pass@1": result["pass@1"],
        "warmup_s": warmup_s, "verification_boxed_s": boxed_s,
        "tokenizer": tokenizer_source, "tasks": task_source,
    }


def table(row: dict[str, Any]) -> str:
    parts = [("generation", row["generation_s"]), ("verification", row["verification_s"]),
             ("bookkeeping", row["bookkeeping_s"])]
    other = row["total_s"] - sum(v for _, v in parts)
    lines = [f"pass@{row['num_samples']} on {row['prompts']} prompts, "
             f"max_new_tokens {row['max_new_tokens']} (tiny random model, CPU)", "",
             "| part | seconds | share |", "|---|---|---|"]
    for name, value in [*parts, ("unaccounted", other), ("total", row["total_s"])]:
        lines.append(f"| {name} | {value:.3f} | {value / row['total_s']:.1%} |")
    if "verification_boxed_s" in row:
        lines += ["", f"Verifying the same number of answered (boxed) responses: "
                      f"{row['verification_boxed_s']:.3f} s"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--tasks", type=Path, default=None)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts-per-wave", type=int, default=4)
    args = parser.parse_args(argv)
    try:
        row = run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(row, indent=2) + "\n")
    (args.out / "eval.md").write_text(table(row))
    print(table(row))
    if row["bookkeeping_share"] >= 0.05:
        print(f"warning: bookkeeping is {row['bookkeeping_share']:.1%} of the wall time (>= 5%)")
    return row


if __name__ == "__main__":
    main()
