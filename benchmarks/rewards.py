r"""Answer-verification throughput: one MATH-500 pass@256 evaluation, cached and uncached.

What is measured
    `sftrl.rewards.Verifier.verify_batch` over P prompts x N samples (default 500 x 256 = 128k
    checks) with realistic answer repetition. Per prompt:
      about 1/2   the gold in varied equivalent forms (`\dfrac`, `a/b`, decimals, thousands
                  separators, units, `x = `, spacing, `\left(`, unicode, "final answer is ..."),
      about 1/3   a few (3) recurring wrong answers, also in varied wrappings,
      the rest    junk: truncated reasoning with no final answer, a boxed random number, boxed
                  LaTeX gibberish, or a degenerate repetition loop.
    Each response carries about 1 KB of reasoning text before its answer, so extraction reads
    realistic lengths. Gold answers come from MATH-500 (`--data`, when the file exists) or are
    generated in the same styles (integers, fractions, radicals, pi, tuples, intervals, sets,
    matrices, equations, text).

Rows (one per mode, each on a fresh verifier, so no mode profits from another's work)
    cached      the default verifier: symbolic outcomes shared across identical
                (normalised candidate, gold) pairs
    uncached    `Verifier(cache=False)`: every sample checked on its own (fast paths kept; they
                are part of the verifier, not a cache)
    math-verify plain `math_verify.parse` + `math_verify.verify` in a loop, on a subsample
                (`--baseline-samples`), for scale; its agreement with ours is reported
    Reported: seconds, checks/s, the seconds the full P x N run takes at that rate, symbolic
    checks run in workers, timeouts, worker restarts, and whether the verdicts are identical to
    the uncached run (every sample on its own). The generator's intent gives a sanity check:
    the share of "gold" samples judged correct and of "wrong"/"junk" samples judged correct.

Usage
    python benchmarks/rewards.py --out runs/bench
    python benchmarks/rewards.py --prompts 50 --samples 64 --workers 2 --skip-uncached
Writes DIR/rewards.json ({"meta": ..., "rows": [...]}) and DIR/rewards.md (the table printed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from sftrl import rewards

log = logging.getLogger("bench.rewards")

DEFAULT_DATA = Path("/work/shared/data/math500.jsonl")
ROW_KEYS = (
    "mode", "checks", "seconds", "checks_per_s", "seconds_for_full_run", "symbolic", "timeouts",
    "restarts", "identical_to_uncached", "gold_judged_correct", "wrong_or_junk_judged_correct",
)

FILLER = (
    "Let us set up the problem carefully.", "We first simplify the expression.",
    "Substituting the values, we obtain the following.", "By the given condition,",
    "Note that the sum telescopes.", "Hence the two quantities are equal.",
    "We check the boundary cases separately.", "Multiplying both sides by the denominator,",
    "This gives a quadratic equation in $x$.",
    "Therefore $x^2 - 5x + 6 = 0$, so $x = 2$ or $x = 3$.",
    "Using the identity $\\sin^2\\theta + \\cos^2\\theta = 1$,", "Now compute $7 \\cdot 8 = 56$.",
    "The area of the triangle is $\\frac{1}{2} \\cdot 6 \\cdot 4 = 12$.",
    "Wait, let me double check this step.", "So far we have $a + b = 10$ and $ab = 21$.",
)
GIBBERISH = ("\\frac{", "x", "+", "\\sqrt{", "}", "2", "^", "(", ")", "\\pi", "=", "-", "\\cdot",
             "y", "3", "\\left(", "\\right)", ",", "\\infty", "7")


@dataclass(frozen=True)
class Sample:
    response: str
    gold: str
    intent: str  # "gold", "wrong" or "junk": what the generator meant


# -- golds ----------------------------------------------------------------------------------


def load_golds(path: Path, prompts: int) -> list[str] | None:
    if not path.is_file():
        return None
    golds = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record.get("answer"), str):
                raise ValueError(f"{path}:{line_number}: missing string field 'answer'")
            golds.append(record["answer"])
    return (golds * (prompts // len(golds) + 1))[:prompts]


def generated_golds(prompts: int, rng: random.Random) -> list[str]:
    """Gold answers in the styles of MATH-500 (used when the data file is absent)."""
    makers = (
        lambda: str(rng.randint(0, 999)),
        lambda: str(rng.randint(1000, 99999)),
        lambda: f"\\frac{{{rng.randint(1, 40)}}}{{{rng.randint(41, 97)}}}",
        lambda: f"-\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(11, 19)}}}",
        lambda: f"{rng.randint(2, 9)}\\sqrt{{{rng.choice([2, 3, 5, 6, 7, 10])}}}",
        lambda: f"\\frac{{\\sqrt{{{rng.choice([2, 3, 5])}}}}}{{{rng.randint(2, 9)}}}",
        lambda: f"{rng.randint(2, 30)}\\pi",
        lambda: f"\\left( {rng.randint(-9, 9)}, {rng.randint(-9, 9)} \\right)",
        lambda: f"[{rng.randint(-9, 0)}, {rng.randint(1, 9)})",
        lambda: f"\\{{{rng.randint(1, 4)}, {rng.randint(5, 9)}\\}}",
        lambda: (f"\\begin{{pmatrix}} {rng.randint(-9, 9)} \\\\ {rng.randint(-9, 9)} "
                 "\\end{pmatrix}"),
        lambda: f"y = {rng.randint(2, 9)}x - {rng.randint(1, 9)}",
        lambda: f"x^2 + {rng.randint(2, 9)}x + {rng.randint(1, 9)}",
        lambda: rng.choice(["\\text{(C)}", "\\text{Monday}", "\\text{ellipse}"]),
        lambda: f"{rng.randint(1, 9)}.{rng.randint(1, 99):02d}",
    )
    weights = (30, 8, 14, 4, 6, 4, 5, 5, 3, 3, 3, 3, 3, 3, 3)
    return [rng.choices(makers, weights)[0]() for _ in range(prompts)]


# -- answers --------------------------------------------------------------------------------

_INT = re.compile(r"-?[0-9]+")
_FRAC = re.compile(r"(-?)\\d?frac\{([0-9]+)\}\{([0-9]+)\}")


def _decimal(value: Fraction) -> str | None:
    """A terminating decimal for `value`, if it has one of at most 6 places."""
    for places in range(1, 7):
        scaled = value * 10**places
        if scaled.denominator == 1:
            text = f"{abs(scaled.numerator):0{places + 1}d}"
            sign = "-" if value < 0 else ""
            return f"{sign}{text[:-places]}.{text[-places:]}"
    return None


def equivalent_forms(gold: str) -> list[str]:
    """Ways a model writes the same answer; the first is the gold as given."""
    forms = [gold]
    if _INT.fullmatch(gold):
        n = int(gold)
        forms += [f"{n}.0", f"x = {n}", f"{n} \\text{{ units}}", f"\\frac{{{2 * n}}}{{2}}"]
        if abs(n) >= 1000:
            forms += [f"{n:,}", f"{n:,}".replace(",", "{,}")]
    elif (m := _FRAC.fullmatch(gold)) is not None:
        sign, a, b = m.groups()
        value = Fraction(int(a), int(b)) * (-1 if sign else 1)
        forms += [f"{sign}{a}/{b}", f"{sign}\\dfrac{{{a}}}{{{b}}}", f"{sign}\\frac {{{a}}} {{{b}}}"]
        if (decimal := _decimal(value)) is not None:
            forms.append(decimal)
        forms.append(f"\\frac{{{value.numerator * 3}}}{{{value.denominator * 3}}}")
    else:
        forms += [
            gold.replace("\\left", "").replace("\\right", "").replace(" ", ""),
            gold.replace("\\frac", "\\dfrac"),
            re.sub(r",\s*", ", ", gold),
            gold.replace("\\pi", "π"),
        ]
        if (m := re.fullmatch(r"([0-9]+)\\sqrt\{([0-9]+)\}", gold)) is not None:
            forms.append(f"\\sqrt{{{int(m.group(1)) ** 2 * int(m.group(2))}}}")  # needs sympy
        if (m := re.fullmatch(r"\\frac\{\\sqrt\{([0-9]+)\}\}\{([0-9]+)\}", gold)) is not None:
            forms.append(f"\\sqrt{{{m.group(1)}}}/{m.group(2)}")  # needs sympy
    return list(dict.fromkeys(forms))


def wrong_answers(gold: str, others: Sequence[str], rng: random.Random) -> list[str]:
    """Three recurring wrong answers for a prompt."""
    if _INT.fullmatch(gold):
        n = int(gold)
        return [str(n + 1), str(n + 10), str(n - 3)]
    if (m := _FRAC.fullmatch(gold)) is not None:
        sign, a, b = m.groups()
        return [f"{sign}\\frac{{{b}}}{{{a}}}", f"{sign}\\frac{{{int(a) + 1}}}{{{b}}}", str(int(a))]
    picks = [o for o in rng.sample(list(others), min(len(others), 8)) if o != gold][:2]
    return [f"{gold}+1", *picks]


_WRAPS = (
    "\\boxed{{{}}}", "So the answer is $\\boxed{{{}}}$.",
    "**Final Answer**\n$$\\boxed{{{}}}$$", "The final answer is $\\boxed{{{}}}$",
    "Final Answer: The final answer is ${}$. I hope it is correct.",
)


def _reasoning(rng: random.Random, chars: int = 1000) -> str:
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(rng.choice(FILLER))
    return " ".join(parts)


def _junk(rng: random.Random) -> str:
    kind = rng.random()
    text = _reasoning(rng)
    if kind < 0.45:  # cut off by the length limit: no final answer
        return text[: rng.randint(200, len(text))]
    if kind < 0.65:
        return f"{text}\n\\boxed{{{rng.randint(-10**6, 10**6)}}}"
    if kind < 0.85:
        soup = "".join(rng.choice(GIBBERISH) for _ in range(rng.randint(3, 12)))
        return f"{text}\n\\boxed{{{soup}}}"
    return text + " the the" * rng.randint(50, 300)


def make_samples(golds: Sequence[str], samples: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for gold in golds:
        forms = equivalent_forms(gold)
        form_weights = [len(forms) * 2] + [1] * (len(forms) - 1)  # the gold's own form is common
        wrongs = wrong_answers(gold, golds, rng)
        for _ in range(samples):
            draw = rng.random()
            if draw < 0.5:
                answer, intent = rng.choices(forms, form_weights)[0], "gold"
            elif draw < 0.5 + 1 / 3:
                answer, intent = rng.choice(wrongs), "wrong"
            else:
                out.append(Sample(_junk(rng), gold, "junk"))
                continue
            response = f"{_reasoning(rng)}\n{rng.choice(_WRAPS).format(answer)}"
            out.append(Sample(response, gold, intent))
    return out


# -- modes ----------------------------------------------------------------------------------


def run_verifier(mode: str, samples: Sequence[Sample], *, cache: bool, workers: int,
                 timeout_s: float, full_checks: int) -> tuple[dict[str, Any], list[bool]]:
    pairs = [(s.response, s.gold) for s in samples]
    with rewards.Verifier("math500", workers=workers, timeout_s=timeout_s,
                          cache=cache) as verifier:
        start = time.perf_counter()
        verdicts = verifier.verify_batch(pairs, progress=True)
        seconds = time.perf_counter() - start
        stats = verifier.stats
    row = _row(mode, samples, verdicts, seconds, full_checks)
    row.update(symbolic=stats.symbolic, timeouts=stats.timeouts, restarts=stats.restarts)
    return row, verdicts


def run_math_verify(samples: Sequence[Sample], ours: Sequence[bool],
                    full_checks: int) -> dict[str, Any]:
    """Plain math-verify in a loop (its own signal-based time limits), for scale."""
    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    start = time.perf_counter()
    verdicts = [
        bool(math_verify.verify(math_verify.parse(f"${s.gold}$"), math_verify.parse(s.response)))
        for s in samples
    ]
    seconds = time.perf_counter() - start
    row = _row("math-verify loop", samples, verdicts, seconds, full_checks)
    agree = sum(a == b for a, b in zip(verdicts, ours, strict=True)) / max(1, len(samples))
    row["agreement_with_ours"] = round(agree, 4)
    return row


def _row(mode: str, samples: Sequence[Sample], verdicts: Sequence[bool], seconds: float,
         full_checks: int) -> dict[str, Any]:
    def share(intents: tuple[str, ...]) -> float | None:
        picked = [v for s, v in zip(samples, verdicts, strict=True) if s.intent in intents]
        return round(sum(picked) / len(picked), 4) if picked else None

    rate = len(samples) / seconds if seconds > 0 else float("inf")
    return {
        "mode": mode, "checks": len(samples), "seconds": round(seconds, 3),
        "checks_per_s": round(rate, 1), "seconds_for_full_run": round(full_checks / rate, 2),
        "symbolic": None, "timeouts": None, "restarts": None, "identical_to_uncached": None,
        "gold_judged_correct": share(("gold",)),
        "wrong_or_junk_judged_correct": share(("wrong", "junk")),
    }


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = ("mode", "checks", "seconds", "checks/s", "s for full run", "symbolic", "timeouts",
              "identical", "gold ok", "wrong/junk ok")
    keys = ("mode", "checks", "seconds", "checks_per_s", "seconds_for_full_run", "symbolic",
            "timeouts", "identical_to_uncached", "gold_judged_correct",
            "wrong_or_junk_judged_correct")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = ["-" if row.get(k) is None else str(row[k]) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="MATH-500 jsonl with an 'answer' field; generated golds if absent")
    parser.add_argument("--skip-uncached", action="store_true")
    parser.add_argument("--baseline-samples", type=int, default=1000,
                        help="samples for the plain math-verify loop (0: skip)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rng = random.Random(args.seed)
    golds = load_golds(args.data, args.prompts)
    source = str(args.data) if golds is not None else "generated"
    if golds is None:
        golds = generated_golds(args.prompts, rng)
    samples = make_samples(golds, args.samples, args.seed)
    full = args.prompts * args.samples
    log.info("%d samples (%d prompts x %d), golds: %s", len(samples), args.prompts,
             args.samples, source)

    cached, cached_verdicts = run_verifier("cached", samples, cache=True, workers=args.workers,
                                           timeout_s=args.timeout_s, full_checks=full)
    rows = [cached]
    if not args.skip_uncached:
        uncached, uncached_verdicts = run_verifier(
            "uncached", samples, cache=False, workers=args.workers, timeout_s=args.timeout_s,
            full_checks=full)
        cached["identical_to_uncached"] = cached_verdicts == uncached_verdicts
        uncached["identical_to_uncached"] = True
        rows.append(uncached)
    if args.baseline_samples > 0:
        picked = random.Random(args.seed + 1).sample(
            range(len(samples)), min(args.baseline_samples, len(samples)))
        rows.append(run_math_verify([samples[i] for i in picked],
                                    [cached_verdicts[i] for i in picked], full))

    meta = {
        "prompts": args.prompts, "samples_per_prompt": args.samples, "golds": source,
        "workers": args.workers, "timeout_s": args.timeout_s, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rewards.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown(rows)
    (args.out / "rewards.md").write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
