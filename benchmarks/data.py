"""SFT input pipeline throughput on CPU: tokenization, packing and padded batching.

What is measured
    Synthetic chat records of realistic lengths (a user turn of `--prompt-chars` and an
    assistant turn of `--response-chars` characters, uniform in the given ranges, made of random
    words) go through `sftrl.data.sft`:
      tokenize   `tokenize_records` (validation + `encode_chat` + loss masks) of all records
      pack       one epoch of `SFTPipeline` with packing (first-fit, segment ids, positions)
      pad        one epoch of `SFTPipeline` without packing (bucketed lengths, sorting windows)
      resume     a pipeline that took up to 8 batches: `get_state`, JSON round trip, `set_state`
                 into a fresh pipeline and its next batch (includes building both pipelines)
    Each stage runs `--repeats` times; the median wall time is reported with examples/s and
    tokens/s (tokens of the records, not of the padded batches) and, for the batching stages,
    batches/s and the padding fraction of the batches.

Tokenizer
    The real one (`sftrl.data.tokenizer.load_tokenizer(--tokenizer)`) when that module and
    folder exist; otherwise a byte-level stand-in (one token per UTF-8 byte), announced on
    stderr and recorded in the JSON as `tokenizer: "bytes (fallback)"`.

Usage
    python benchmarks/data.py
    python benchmarks/data.py --examples=500 --max-length=1024 --out=/tmp/data.json
Writes the rows as JSON to --out (default benchmarks/results/data.json), and a table to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from sftrl.data.sft import SFTDataConfig, SFTPipeline, TokenizedSet, tokenize_records  # noqa: E402

log = logging.getLogger("bench.data")

ROW_KEYS = (
    "stage", "examples", "tokens", "batches", "seconds_median", "seconds_min", "examples_per_s",
    "tokens_per_s", "batches_per_s", "padding_fraction", "batch_size", "max_length",
    "tokenizer", "repeats", "cpu_count", "python", "timestamp",
)

_WORDS = (
    "the", "a", "number", "of", "is", "we", "so", "then", "sum", "product", "let", "x", "y",
    "equation", "solve", "therefore", "answer", "step", "divide", "multiply", "prime", "root",
    "triangle", "angle", "area", "probability", "integer", "+", "=", "\\frac{1}{2}", "42",
)


class ByteTokenizer:
    """Fallback: one token per UTF-8 byte (+3 specials), chat turns as role + bytes + EOT."""

    pad_id, bos_id, eos_id, vocab_size = 0, 1, 2, 262
    stop_ids = (2,)
    _role: ClassVar[dict[str, int]] = {"system": 259, "user": 260, "assistant": 261}

    def encode_chat(self, messages: list[dict[str, str]], *,
                    add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = [self.bos_id], [0]
        for m in messages:
            body = [3 + b for b in m["content"].encode()] + [self.eos_id]
            ids += [self._role[m["role"]], *body]
            mask += [0] + [int(m["role"] == "assistant")] * len(body)
        if add_generation_prompt:
            ids, mask = [*ids, self._role["assistant"]], [*mask, 0]
        return np.asarray(ids, np.int32), np.asarray(mask, np.int32)


def load(tokenizer_dir: str) -> tuple[Any, str]:
    """(tokenizer, description): the real tokenizer if available, else the byte fallback."""
    path = Path(tokenizer_dir)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    try:
        from sftrl.data.tokenizer import load_tokenizer
    except ImportError as e:
        print(f"sftrl.data.tokenizer is not importable ({e}); using a byte-level stand-in",
              file=sys.stderr)
        return ByteTokenizer(), "bytes (fallback)"
    if not path.is_dir():
        print(f"{path}: no tokenizer folder; using a byte-level stand-in", file=sys.stderr)
        return ByteTokenizer(), "bytes (fallback)"
    return load_tokenizer(path), str(path.relative_to(REPO_ROOT) if path.is_relative_to(
        REPO_ROOT) else path)


def synthetic_records(n: int, prompt_chars: tuple[int, int], response_chars: tuple[int, int],
                      seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    words = np.asarray(_WORDS)

    def text(lo: int, hi: int) -> str:
        target = int(rng.integers(lo, hi + 1))
        out = " ".join(rng.choice(words, size=target // 4 + 1))
        return out[:target].strip() or "x"

    return [{"id": f"bench-{i}", "messages": [
        {"role": "user", "content": text(*prompt_chars)},
        {"role": "assistant", "content": text(*response_chars)},
    ]} for i in range(n)]


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def make_row(stage: str, times: list[float], *, examples: int, tokens: int, batches: int | None,
             padding: float | None, args: argparse.Namespace, tokenizer: str) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "stage": stage, "examples": examples, "tokens": tokens, "batches": batches,
        "seconds_median": median, "seconds_min": min(times),
        "examples_per_s": examples / median, "tokens_per_s": tokens / median,
        "batches_per_s": None if batches is None else batches / median,
        "padding_fraction": padding, "batch_size": args.batch_size,
        "max_length": args.max_length, "tokenizer": tokenizer, "repeats": args.repeats,
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def epoch_of(data: TokenizedSet, tokenizer: Any, config: SFTDataConfig) -> dict[str, Any]:
    pipe = SFTPipeline(data, tokenizer, config, report_overlong=False)
    batches = sum(1 for _ in pipe)
    return {**pipe.stats, "batches": batches}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    tokenizer, name = load(args.tokenizer)
    records = synthetic_records(args.examples, tuple(args.prompt_chars),
                                tuple(args.response_chars), args.seed)
    times, data = timed(lambda: tokenize_records(records, tokenizer), args.repeats)
    counts = data.counts()
    log.info("%d records, %d tokens (longest %d)", counts["examples"], counts["tokens"],
             counts["max_length"])
    rows = [make_row("tokenize", times, examples=counts["examples"], tokens=counts["tokens"],
                     batches=None, padding=None, args=args, tokenizer=name)]
    common = dict(batch_size=args.batch_size, max_length=args.max_length, num_epochs=1,
                  overlong="truncate", drop_remainder=False)
    edges = tuple(e for e in (256, 512, 1024, 2048, 4096) if e < args.max_length)
    stages = {
        "pack": SFTDataConfig(**common, packing=True),
        "pad": SFTDataConfig(**common, packing=False, bucket_boundaries=edges or None,
                             bucket_window=8),
    }
    for stage, config in stages.items():
        times, out = timed(lambda config=config: epoch_of(data, tokenizer, config), args.repeats)
        rows.append(make_row(stage, times, examples=int(out["examples_seen"]),
                             tokens=int(out["tokens"]), batches=out["batches"],
                             padding=out["padding_fraction"], args=args, tokenizer=name))

    skip = min(8, rows[1]["batches"] - 1)

    def resume() -> dict[str, Any]:
        pipe = SFTPipeline(data, tokenizer, stages["pack"], report_overlong=False)
        for _ in range(skip):
            next(pipe)
        fresh = SFTPipeline(data, tokenizer, stages["pack"], report_overlong=False)
        fresh.set_state(json.loads(json.dumps(pipe.get_state())))
        return next(fresh)

    times, batch = timed(resume, args.repeats)
    tokens = int(batch["attention_mask"].sum())
    rows.append(make_row("resume", times, examples=int((batch["example_ids"] >= 0).sum()),
                         tokens=tokens, batches=1, padding=None, args=args, tokenizer=name))
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header = "| stage | examples | tokens | batches | median s | examples/s | tokens/s | padding |"
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for r in rows:
        batches = "" if r["batches"] is None else str(r["batches"])
        padding = "" if r["padding_fraction"] is None else f"{r['padding_fraction']:.1%}"
        lines.append(
            f"| {r['stage']} | {r['examples']} | {r['tokens']:,} | {batches} "
            f"| {r['seconds_median']:.3f} | {r['examples_per_s']:,.0f} | {r['tokens_per_s']:,.0f} "
            f"| {padding} |")
    if rows:
        r = rows[0]
        lines += ["", f"tokenizer {r['tokenizer']}; B={r['batch_size']} L={r['max_length']}; "
                  f"{r['cpu_count']} CPUs, Python {r['python']}, {r['timestamp']}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="sftrl/data/task_files/tokenizer",
                        help="Hugging Face tokenizer folder (falls back to bytes if missing)")
    parser.add_argument("--examples", type=int, default=2000, help="synthetic records")
    parser.add_argument("--prompt-chars", type=int, nargs=2, default=(100, 600),
                        metavar=("MIN", "MAX"), help="user turn length range in characters")
    parser.add_argument("--response-chars", type=int, nargs=2, default=(300, 2000),
                        metavar=("MIN", "MAX"), help="assistant turn length range in characters")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch size")
    parser.add_argument("--max-length", type=int, default=2048, help="row length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/results/data.json"),
                        help="JSON file for the rows")
    args = parser.parse_args(argv)
    for name in ("examples", "batch_size", "max_length", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("prompt_chars", "response_chars"):
        lo, hi = getattr(args, name)
        if not 1 <= lo <= hi:
            parser.error(f"--{name.replace('_', '-')}: need 1 <= MIN <= MAX, got {lo} {hi}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark, writes the JSON rows to --out, prints the table."""
    args = parse_args(argv)
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    log.info("wrote %s", out)
    print(markdown_table(rows), end="")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    log.setLevel(logging.INFO)
    main()
