"""Replication v2 (issue 21): gate quantities from a run's sample files.

    python -m sftrl.study_v2 --gates SAMPLES.jsonl [SAMPLES.jsonl ...]

For each sample file (`<workdir>/samples/<checkpoint>/<benchmark>.jsonl`, one prompt per line
with its gold `answer`, the `extracted` answers and their `correct` verdicts) it prints the
quantities the plan's gates use (docs/quagmire_v2/PLAN.md), and nothing else, so that pilots can
look at gates without seeing any proxy-vs-outcome relation:

    pass@1, pass@n            unbiased estimates over the file's prompts
    control@1, control@n      the guessing control (`mismatched_answer_pass_at_k`): the same
                              samples scored against another prompt's gold answer
    control share             control@k / pass@k (gate: < 0.10 at k = 64)
    best constant             the share of prompts whose gold is the most common gold: the pass@1
                              of always answering that value (gate: < 0.01)
    mixed groups              the share of prompts whose samples are neither all right nor all
                              wrong (for RL prompts: how many GRPO groups carry signal)
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl.eval.passk import mismatched_answer_pass_at_k, pass_at_k


def read_samples(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        for field in ("answer", "extracted", "correct"):
            if field not in row:
                raise ValueError(f"{path}: line {i + 1} has no field {field!r}")
    return rows


def gates(rows: Sequence[dict[str, Any]], k: int | None = None) -> dict[str, float]:
    """The gate quantities of one checkpoint's samples on one benchmark (see the module doc)."""
    if len(rows) < 2:
        raise ValueError("gates need at least 2 prompts")
    n_min = min(len(r["correct"]) for r in rows)
    k = n_min if k is None else min(k, n_min)
    n = np.array([len(r["correct"]) for r in rows])
    c = np.array([sum(map(bool, r["correct"])) for r in rows])
    answers = [r["extracted"] for r in rows]
    golds = [r["answer"] for r in rows]
    out = {"prompts": float(len(rows)), "k": float(k),
           "pass@1": float(np.mean(pass_at_k(n, c, 1))),
           f"pass@{k}": float(np.mean(pass_at_k(n, c, k))),
           "control@1": mismatched_answer_pass_at_k(answers, golds, 1),
           f"control@{k}": mismatched_answer_pass_at_k(answers, golds, k),
           "best_constant": collections.Counter(golds).most_common(1)[0][1] / len(golds),
           "mixed_groups": float(np.mean((c > 0) & (c < n)))}
    out["control_share@1"] = out["control@1"] / out["pass@1"] if out["pass@1"] else float("nan")
    out[f"control_share@{k}"] = (out[f"control@{k}"] / out[f"pass@{k}"] if out[f"pass@{k}"]
                                 else float("nan"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sftrl.study_v2", description=__doc__)
    parser.add_argument("--gates", nargs="+", type=Path, required=True,
                        help="sample files (<workdir>/samples/<checkpoint>/<benchmark>.jsonl)")
    parser.add_argument("--k", type=int, default=64, help="the large k (default 64)")
    args = parser.parse_args(argv)
    for path in args.gates:
        result = gates(read_samples(path), args.k)
        print(json.dumps({"file": str(path), **{key: round(v, 4) for key, v in result.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
