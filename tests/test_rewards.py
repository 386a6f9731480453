r"""sftrl.rewards: extraction, normalisation, equivalence, hostile input, the cache, the pool, CLI.

Speed is measured in benchmarks/rewards.py, never here; wall-time bounds below only prove that
nothing hangs. Every pool has at most 2 workers and is closed; the last test checks that no
worker process outlives its verifier.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scripts import load_benchmark

from sftrl import rewards
from sftrl.rewards import (
    ExtractionConfig,
    Verifier,
    extract_answer,
    guards,
    normalize_answer,
    symbolic,
)
from sftrl.rewards.pool import WorkerPool

ROOT = Path(__file__).resolve().parents[1]
HOSTILE_SECONDS = 10.0  # generous: a hostile item must come back well within this

# ---------------------------------------------------------------------------------------------
# The equivalence table: answer styles of MATH-500, GSM8K, AIME 24/25, AMC 23, OlympiadBench and
# Minerva. (gold, response, preset)
# ---------------------------------------------------------------------------------------------

EQUIVALENT = [
    # fractions and \dfrac
    (r"\frac{1}{2}", r"so $\boxed{0.5}$", "math500"),
    (r"\frac{1}{2}", r"\boxed{\dfrac{1}{2}}", "math500"),
    (r"\frac 34", r"\boxed{\frac{3}{4}}", "math500"),
    (r"\frac9{19}", r"\boxed{9/19}", "math500"),
    (r"-\frac{24}{25}", r"\boxed{\frac{-24}{25}}", "math500"),
    (r"\dfrac{17}{50}", r"\boxed{0.34}", "math500"),
    (r"\frac{1}{3}", r"\boxed{0.333333}", "math500"),  # a decimal agreeing to 6 places
    (r"\frac{1}{2}", r"Answer: $\frac12$", "math500"),
    # mixed numbers
    (r"1\frac{4}{5}", r"\boxed{\frac{9}{5}}", "math500"),
    (r"2\frac{1}{2}", r"\boxed{2.5}", "math500"),
    # degrees
    (r"75^\circ", r"\boxed{75}", "math500"),
    (r"30", r"\boxed{30^{\circ}}", "math500"),
    (r"180^\circ", r"\boxed{180°}", "math500"),
    # intervals
    (r"\left(\frac{3}{5},\frac{8}{3}\right]", r"\boxed{(0.6, 8/3]}", "math500"),
    (r"[-2,7)", r"\boxed{[-2, 7)}", "math500"),
    # sets, tuples, multiple answers
    (r"\{1\pm\sqrt{5},-2\}", r"\boxed{-2, 1+\sqrt{5}, 1-\sqrt{5}}", "math500"),
    (r"1, 3, 5, 15", r"\boxed{15, 5, 3, 1}", "olympiadbench"),
    (r"2, 3", r"The roots are $\boxed{2}$ and $\boxed{3}$.", "math500"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3,\pi/2)}", "math500"),
    (r"(-1,6)", r"\boxed{(-1, 6)}", "math500"),
    # \text{} and units
    (r"12", r"\boxed{12\text{ cm}}", "math500"),
    (r"5", r"\boxed{5 \text{ square units}}", "math500"),
    (r"5", r"\boxed{5 \text{ cm}^2}", "math500"),
    (r"\text{(C)}", r"\boxed{C}", "math500"),
    (r"\text{(C)}", r"\boxed{\textbf{(C)}}", "amc23"),
    (r"\text{ellipse}", r"\boxed{\text{ellipse}}", "math500"),
    (r"\text{Monday}", r"So the answer is Monday.", "math500"),
    # large integers with thousands separators
    (r"58,500", r"\boxed{58500}", "math500"),
    (r"10,\!080", r"\boxed{10080}", "math500"),
    (r"1000000", r"\boxed{1,000,000}", "math500"),
    (r"11,\! 111,\! 111,\! 100", r"\boxed{11111111100}", "math500"),
    (r"1000", "The total is\n#### 1,000", "gsm8k"),
    # negative numbers
    (r"-7", r"\boxed{-7}", "math500"),
    (r"-7", "\\boxed{\u22127}", "math500"),  # unicode minus sign
    (r"-\frac{3}{2}", r"\boxed{-1.5}", "olympiadbench"),
    # scientific notation (Minerva)
    (r"4.5e33", r"\boxed{4.5 \times 10^{33}}", "minerva_math"),
    (r"7.353e14", r"Final Answer: The final answer is $7.353 \times 10^{14}$. I hope it is "
     r"correct.", "minerva_math"),
    (r"1.04e-3", r"\boxed{0.00104}", "minerva_math"),
    (r".0000672", r"\boxed{6.72\times10^{-5}}", "math500"),
    # radicals and pi (symbolic)
    (r"2\sqrt{5}", r"\boxed{\sqrt{20}}", "math500"),
    (r"\frac{\sqrt{3}}{3}", r"\boxed{\frac{1}{\sqrt{3}}}", "math500"),
    (r"12\pi", r"\boxed{12 \pi}", "math500"),
    (r"8 \pi", r"\boxed{\pi \cdot 8}", "math500"),
    (r"\frac{\sqrt{3}}{2}", r"\boxed{0.866025}", "math500"),
    # equations and expressions
    (r"y = -2x", r"\boxed{y=-2x}", "math500"),
    (r"x=3", r"\boxed{3}", "math500"),
    (r"3", r"\boxed{x = 3}", "math500"),
    (r"x^3+3x-6", r"\boxed{3x + x^3 - 6}", "math500"),
    (r"p - q", r"\boxed{-q + p}", "math500"),
    (r"\frac{1}{2 n+2}", r"\boxed{\frac{1}{2(n+1)}}", "olympiadbench"),
    (r"1+2i", r"\boxed{2i+1}", "math500"),
    # matrices
    (r"\begin{pmatrix} 1/5 \\ -18/5 \end{pmatrix}",
     r"\boxed{\begin{pmatrix} 0.2 \\ -3.6 \end{pmatrix}}", "math500"),
    # percent, currency, trailing period
    (r"10\%", r"\boxed{10}", "math500"),
    (r"25", r"\boxed{25\%}", "math500"),
    (r"\$18.90", r"The final answer is $\$18.90$.", "math500"),
    (r"18", r"The answer is: \$18.00", "gsm8k"),
    (r"5", r"The final answer is 5.", "math500"),
    # GSM8K, AIME, AMC
    (r"18", "She makes 9 * 2 = 18 dollars.\n#### 18", "gsm8k"),
    (r"18", "She makes 9 * 2 = $18 every day.", "gsm8k"),  # the last number, GSM8K only
    (r"5", r"The answer is 5 apples.", "gsm8k"),
    (r"204", r"Thus the answer is $\boxed{204}$.", "aime24"),
    (r"33", r"\boxed{033}", "aime25"),
    (r"27", r"**Final Answer**" "\n" r"$$\boxed{27}$$", "amc23"),
    # unicode lookalikes that are the same characters in compatibility form
    (r"12", "\\boxed{\uff11\uff12}", "math500"),  # fullwidth digits
    (r"12", "\\boxed{1\u200b2}", "math500"),  # a zero-width space
]

NOT_EQUIVALENT = [
    (r"\frac{1}{3}", r"\boxed{0.33}", "math500"),
    (r"\frac{1}{2}", r"\boxed{\frac{1}{3}}", "math500"),
    (r"2\frac{1}{2}", r"\boxed{1}", "math500"),  # a mixed number, not 2 * 1/2
    (r"[-2,7)", r"\boxed{[-2,7]}", "math500"),
    (r"(-1,6)", r"\boxed{(6,-1)}", "math500"),
    (r"1234", r"\boxed{1,235}", "math500"),
    (r"10080", r"\boxed{10,081}", "math500"),
    (r"-7", r"\boxed{7}", "math500"),
    (r"4.5e33", r"\boxed{4.5\times10^{32}}", "minerva_math"),
    (r"2\sqrt{5}", r"\boxed{\sqrt{10}}", "math500"),
    (r"x^3+3x-6", r"\boxed{x^3+3x+6}", "math500"),
    (r"y = -2x", r"\boxed{y = 2x}", "math500"),
    (r"3", r"\boxed{x=4}", "math500"),
    (r"\text{(C)}", r"\boxed{D}", "math500"),
    (r"1+2i", r"\boxed{1-2i}", "math500"),
    (r"2, 3", r"\boxed{2}", "math500"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}",
     "math500"),
    (r"12", r"I am not sure how to finish this.", "math500"),
    (r"12", r"\boxed{}", "math500"),
    (r"12", r"\boxed{12", "math500"),  # never closed: no answer
    (r"18", "#### 18", "math500"),  # not a pattern of this benchmark
    (r"18", r"18 is close, but the final answer is 19.", "math500"),
    (r"18", r"First \boxed{18}, no wait: \boxed{19}", "math500"),  # the last box counts
    (r"5", r"\boxed{\frac{1}{0}}", "math500"),
    (r"12", "\\boxed{\u0661\u0662}", "math500"),  # Arabic-Indic digits are other characters
]


def _ids(table: list[tuple[str, str, str]]) -> list[str]:
    return [f"{i}-{preset}-{gold[:20]}" for i, (gold, _, preset) in enumerate(table)]


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with Verifier(workers=2, timeout_s=10.0) as v:
        yield v


@pytest.mark.parametrize(("gold", "response", "preset"), EQUIVALENT, ids=_ids(EQUIVALENT))
def test_equivalent(verifier: Verifier, gold: str, response: str, preset: str) -> None:
    assert verifier.verify(response, gold, config=preset), (
        rewards.extract_candidates(response, preset), normalize_answer(gold))


@pytest.mark.parametrize(("gold", "response", "preset"), NOT_EQUIVALENT,
                         ids=_ids(NOT_EQUIVALENT))
def test_not_equivalent(verifier: Verifier, gold: str, response: str, preset: str) -> None:
    assert not verifier.verify(response, gold, config=preset)


# ---------------------------------------------------------------------------------------------
# Extraction and normalisation
# ---------------------------------------------------------------------------------------------


def test_extract_last_box_with_nested_braces() -> None:
    text = r"We get \boxed{3}. Finally $\boxed{\frac{\sqrt{2}}{\{1,2\}}}$ done"
    assert extract_answer(text) == r"\frac{\sqrt{2}}{\{1,2\}}"
    assert extract_answer(r"\fbox{42}") == "42"
    assert extract_answer(r"\boxed 7") == "7"
    # an unclosed last box: the previous closed one is the answer
    assert extract_answer(r"\boxed{5} then \boxed{6") == "5"


def test_extract_patterns_and_priority() -> None:
    assert extract_answer("x\n#### 42\n", "gsm8k") == "42"
    assert extract_answer("So the final answer is $-3$.") == "-3"
    assert extract_answer("**Final Answer:** 17") == "17"
    assert extract_answer("The answer is: 2/3.") == "2/3"
    assert extract_answer("The answer is 12 but \\boxed{13}") == "13"  # boxed comes first
    assert extract_answer("nothing here, just 7 words") is None
    assert extract_answer("nothing here, just 7 words", "gsm8k") == "7"
    candidates = rewards.extract_candidates(r"The final answer is 5. \boxed{)(}")
    assert candidates == [")(", "5"]
    no_fallback = ExtractionConfig(fallback=False)
    assert rewards.extract_candidates(r"The final answer is 5. \boxed{)(}", no_fallback) == [")("]


def test_presets_and_config_errors() -> None:
    for name in ("math500", "gsm8k", "aime24", "aime25", "amc23", "olympiadbench",
                 "minerva_math"):
        assert isinstance(rewards.get_config(name), ExtractionConfig)
    with pytest.raises(KeyError, match="unknown extraction preset"):
        rewards.get_config("math501")
    with pytest.raises(ValueError, match="unknown"):
        ExtractionConfig(patterns=("boxed", "regex"))
    with pytest.raises(ValueError, match="pair 1: gold answer is empty"):
        rewards.verify_batch([("\\boxed{1}", "1"), ("\\boxed{1}", "  ")])
    with pytest.raises(TypeError, match="pair 0: response must be a str"):
        rewards.verify_batch([(None, "1")])  # type: ignore[list-item]


@pytest.mark.parametrize(("raw", "normalised"), [
    (r"$\dfrac{1}{2}$.", r"\frac{1}{2}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"10,\!080", "10080"),
    (r"1\,000", "1000"),
    (r"\$1{,}000.50", "1000.50"),
    (r"45^{\circ}", "45"),
    (r"50\%", "50"),
    (r"5\text{ cm}^2", "5"),
    (r"\text{(C)}", "(C)"),
    (r"3 \text{ and } 4", "3,4"),
    (r"4.5e33", r"4.5\times10^{33}"),
    (r"\frac 34", r"\frac{3}{4}"),
    (r"\sqrt2", r"\sqrt{2}"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    ("\uff11\uff12", "12"),
])
def test_normalize(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_reward_is_verify_plus_format_bonus(verifier: Verifier) -> None:
    assert verifier.reward(r"\boxed{\frac{2}{4}}", "0.5") == 1.0
    assert verifier.reward(r"\boxed{\frac{2}{4}}", "0.5", format_bonus=0.1) == pytest.approx(1.1)
    assert verifier.reward(r"\boxed{3}", "0.5", format_bonus=0.1) == pytest.approx(0.1)
    assert verifier.reward("The final answer is 0.5", "0.5", format_bonus=0.1) == 1.0
    assert verifier.reward("no answer", "0.5", format_bonus=0.1) == 0.0
    assert verifier.reward_batch([(r"\boxed{1}", "1"), (r"\boxed{2}", "1")]) == [1.0, 0.0]


def test_shared_verifier_entry_points() -> None:
    assert rewards.verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")
    assert rewards.verify_batch([(r"\boxed{1}", "1"), (r"\boxed{2}", "1")]) == [True, False]
    assert rewards.reward(r"\boxed{1}", "1", format_bonus=0.5) == 1.5
    rewards.close()


# ---------------------------------------------------------------------------------------------
# Hostile input: every item returns a verdict in bounded time
# ---------------------------------------------------------------------------------------------

MEGABYTE = 1 << 20
# (name, response, gold, verdict)
HOSTILE = [
    # powers that would take sympy forever or all memory
    ("9**9**9", r"\boxed{9**9**9}", "12", False),
    ("tower", r"\boxed{9^{9^{9}}}", "12", False),
    ("unbraced tower", r"\boxed{9^9^9}", "12", False),
    ("huge exponent", r"\boxed{2^{99999999}}", "12", False),
    ("power of a big number", r"\boxed{123456789^{5000}}", "12", False),
    ("factorial", r"\boxed{1000000!}", "12", False),
    # size
    ("1 MB of text", "a" * MEGABYTE, "12", False),
    ("1 MB in a box", r"\boxed{" + "1" * MEGABYTE + "}", "12", False),
    ("1 MB of boxes", r"\boxed{" * (MEGABYTE // 7), "12", False),
    ("1 MB of dollars", "$" * MEGABYTE, "12", False),
    ("1 MB of 'final answer is'", "final answer is " * (MEGABYTE // 16), "12", False),
    ("1 MB of digits", "1" * MEGABYTE, "12", False),
    # nesting
    ("10k nested braces", r"\boxed{" + "{" * 10_000 + "1" + "}" * 10_000 + "}", "1", False),
    ("10k unclosed braces", r"\boxed{" + "{" * 10_000, "1", False),
    # small enough to be extracted, so the depth guard is what stops them
    ("200 nested braces", r"\boxed{" + "{" * 200 + "1" + "}" * 200 + "}", "1", False),
    ("nested sqrt", r"\boxed{" + r"\sqrt{" * 60 + "2" + "}" * 60 + "}", "2", False),
    ("deep fractions", r"\boxed{" + r"\frac{1}{" * 2000 + "1" + "}" * 2000 + "}", "1", False),
    ("deep parentheses", r"\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}", "1", False),
    # lookalikes and invisible characters
    ("cyrillic x", "\\boxed{\u0445 = 3}", "3", False),
    ("right-to-left override", "\\boxed{\u202e21}", "12", False),
    ("mathematical bold digits", "\\boxed{\U0001d7cf\U0001d7d0}", "12", True),  # NFKC: 12
    # commands that make sympy compute, and TeX programming
    ("sum", r"\boxed{\sum_{n=1}^{10^{9}} n}", "1", False),
    ("product", r"\boxed{\prod_{k=1}^{100000000} k}", "1", False),
    ("integral", r"\boxed{\int_0^{1} x^{9000} \sin(x) dx}", "1", False),
    ("limit", r"\boxed{\lim_{n \to \infty} (1+1/n)^n}", "e", False),
    ("input", r"\boxed{\input{/etc/passwd}}", "1", False),
    ("def", r"\boxed{\def\x{\x\x}\x}", "1", False),
    ("python", r"\boxed{__import__('os').system('echo pwned')}", "0", False),
]


@pytest.mark.parametrize(("answer", "reason"), [
    (r"9^{9^{9}}", "exponent too large"),
    (r"9^9^9", "exponent too large"),
    (r"2^{10001}", "exponent too large"),
    (r"123456789^{5000}", "exponent too large"),
    (r"1000000!", "factorial too large"),
    ("{" * 30 + "1" + "}" * 30, "nested too deep"),
    (r"\sum_{n=1}^{10} n", "refused command"),
    (r"\int_0^1 x dx", "refused command"),
    (r"\input{x}", "refused command"),
    ("x" * 1001, "too long"),
    (r"\frac{1}{2", "unbalanced brackets"),
    (r"(x+1))", "unbalanced brackets"),
    (r")x(", "unbalanced brackets"),
    (r"[0,1)", None),
    (r"\{1,2\}", None),
    ("\u0445", "non-ASCII"),
    (r"2^{10}", None),
    (r"e^{-x^2}", None),
    (r"\frac{\sqrt{3}}{2}", None),
    (r"\begin{pmatrix}1\\2\end{pmatrix}", None),
])
def test_static_guards(answer: str, reason: str | None) -> None:
    assert guards.refusal(answer, guards.Limits()) == reason


@pytest.fixture(scope="module")
def hostile_verifier() -> Iterator[Verifier]:
    with Verifier(workers=2, timeout_s=1.0) as v:
        yield v


@pytest.mark.parametrize(("name", "response", "gold", "expected"), HOSTILE,
                         ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_bounded(hostile_verifier: Verifier, name: str, response: str,
                                  gold: str, expected: bool) -> None:
    start = time.monotonic()
    verdict = hostile_verifier.verify(response, gold)
    assert time.monotonic() - start < HOSTILE_SECONDS, name
    assert verdict is expected, name


def test_honest_answer_at_the_end_of_a_huge_response(hostile_verifier: Verifier) -> None:
    text = "blah " * (MEGABYTE // 5) + r"so \boxed{\frac{\sqrt{8}}{2}}"
    start = time.monotonic()
    assert hostile_verifier.verify(text, r"\sqrt{2}")
    assert time.monotonic() - start < HOSTILE_SECONDS
    # only the tail is read: an answer a megabyte before the end is not found
    assert not hostile_verifier.verify(r"\boxed{7} " + "blah " * (MEGABYTE // 5), "7")


def test_model_text_is_never_evaluated(hostile_verifier: Verifier, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"The final answer is __import__('pathlib').Path('{marker}').touch()",
        f"\\boxed{{(lambda: open('{marker}', 'w'))()}}",
    ]
    hostile_verifier.verify_batch([(p, "1") for p in payloads])
    assert not marker.exists()


def test_slow_sympy_times_out_once_and_the_pool_recovers() -> None:
    # Passes every static guard, then keeps sympy's simplify busy for minutes.
    slow = r"\boxed{\sin^{2000}(x)+\cos^{2000}(x)}"
    with Verifier(workers=2, timeout_s=1.0) as v:
        start = time.monotonic()
        verdicts = v.verify_batch([(slow, "1")] * 50 + [(r"\boxed{\sqrt{20}}", r"2\sqrt{5}")])
        assert time.monotonic() - start < HOSTILE_SECONDS
        assert verdicts == [False] * 50 + [True]
        stats = v.stats
        assert stats.timeouts == 1  # the 50 identical answers are one check
        assert stats.restarts >= 1  # the busy worker was killed and replaced
        assert v.verify(r"\boxed{\frac{1}{\sqrt{3}}}", r"\frac{\sqrt{3}}{3}")  # pool still works


# ---------------------------------------------------------------------------------------------
# The cache changes no verdict
# ---------------------------------------------------------------------------------------------

# The boxed answer does not parse, so the verdict comes from "final answer is ...": a cache keyed
# on the boxed string alone would give each pair the same verdict.
FALLBACK = [
    (r"Answer: 5. \boxed{\frac{}{}}", "5"),  # sympy cannot parse the box
    (r"Answer: 7. \boxed{\frac{}{}}", "5"),
    (r"The final answer is 5. \boxed{)(}", "5"),  # malformed: refused before sympy
    (r"The final answer is 6. \boxed{)(}", "5"),
    (r"The final answer is 9. \boxed{9^{9^{9}}}", "9"),  # hostile: refused before sympy
]


def _mixed_batch(seed: int) -> list[tuple[str, str]]:
    table = [(response, gold) for gold, response, _ in EQUIVALENT + NOT_EQUIVALENT]
    table += FALLBACK
    table += [(r"\boxed{9^{9^{9}}}", "12"), ("\\boxed{\u0445 = 3}", "3")]
    # the same answers wrapped in different text, as among k samples of one prompt
    wrapped = [(f"Step {i}. {response}", gold) for i, (response, gold) in enumerate(table)]
    batch = table * 3 + wrapped
    random.Random(seed).shuffle(batch)
    return batch


def test_cache_changes_no_verdict() -> None:
    batch = _mixed_batch(seed=0)
    with Verifier("math500", workers=2, timeout_s=10.0) as cached:
        first = cached.verify_batch(batch)
        again = cached.verify_batch(batch)  # everything symbolic now comes from the cache
        hits = cached.stats.cache_hits
        symbolic_runs = cached.stats.symbolic
        assert cached._outcomes[(r"\frac{}{}", "5")] == symbolic.UNPARSABLE
    with Verifier("math500", workers=2, timeout_s=10.0, cache=False) as uncached:
        reference = uncached.verify_batch(batch)
        one_by_one = [uncached.verify(response, gold) for response, gold in batch[:60]]
        uncached_runs = uncached.stats.symbolic
    assert first == reference
    assert again == reference
    assert one_by_one == reference[:60]
    assert hits > 0 and symbolic_runs < uncached_runs
    verdict = dict(zip(FALLBACK, (reference[batch.index(item)] for item in FALLBACK),
                       strict=True))
    assert [verdict[item] for item in FALLBACK] == [True, False, True, False, True]


def test_numbers_far_from_a_symbolic_gold_skip_sympy_without_changing_verdicts() -> None:
    golds = [r"\frac{\pi}{6}", r"2\sqrt{5}", r"k = 3\sqrt{2}", r"e^{2}", r"\frac{\sqrt{3}}{3}"]
    answers = ["1", "-154697", "0.5", r"\frac{1}{2}", "4.47", "4.472136", "4.2426406871",
               "7.389056", "0.57735", "0.577350", "2^{3}", r"1\frac{1}{2}"]
    pairs = [(rf"\boxed{{{a}}}", g) for g in golds for a in answers]
    with Verifier(workers=2, timeout_s=10.0) as v:
        verdicts = v.verify_batch(pairs)
        symbolic_runs = v.stats.symbolic
    # the same comparisons, each done by sympy in this process
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled": we know
    limits = guards.Limits()
    expected = [symbolic.check_symbolic(normalize_answer(a), normalize_answer(g), limits)
                == symbolic.CORRECT for g in golds for a in answers]
    assert verdicts == expected
    assert sum(verdicts) == 5  # 4.472136, 4.2426406871, 7.389056, 0.57735 and 0.577350
    assert symbolic_runs < len(pairs) // 2  # one value per gold, sympy only for the close ones


# ---------------------------------------------------------------------------------------------
# The pool: lazy, reused, per-check timeouts and crashes, no leaked processes
# ---------------------------------------------------------------------------------------------


def _hanging_worker(jobs: tuple[tuple[str, str], ...], limits: object) -> list[str]:
    """Stands in for sympy: "hang" never finishes, everything else is instant."""
    if any(candidate == "hang" for candidate, _ in jobs):
        time.sleep(600)
    return [symbolic.CORRECT if c == g else symbolic.WRONG for c, g in jobs]


def _crashing_worker(jobs: tuple[tuple[str, str], ...], limits: object) -> list[str]:
    """Stands in for a segfaulting parser: "boom" kills the worker process."""
    if any(candidate == "boom" for candidate, _ in jobs):
        os._exit(3)
    return [symbolic.CORRECT if c == g else symbolic.WRONG for c, g in jobs]


def _hash_worker(jobs: tuple[tuple[str, str], ...], limits: object) -> list[str]:
    return [str(hash(candidate)) for candidate, _ in jobs]


def _pool(worker_fn: object) -> WorkerPool:
    return WorkerPool(2, 1.0, guards.Limits(), None, worker_fn=worker_fn)


def test_pool_times_out_one_check_and_keeps_the_others() -> None:
    pool = _pool(_hanging_worker)
    jobs = [("1", "1"), ("2", "1"), ("hang", "1"), ("3", "3"), ("4", "5"), ("6", "6")]
    try:
        start = time.monotonic()
        outcomes, timeouts, crashes = pool.run(jobs)
        assert time.monotonic() - start < HOSTILE_SECONDS
    finally:
        pool.close()
    assert outcomes == ["correct", "wrong", "timeout", "correct", "wrong", "correct"]
    assert (timeouts, crashes) == (1, 0)
    assert pool.restarts >= 1


def test_pool_survives_a_worker_crash_and_names_its_check() -> None:
    pool = _pool(_crashing_worker)
    jobs = [("1", "1"), ("boom", "1"), ("3", "3"), ("4", "5")]
    try:
        outcomes, timeouts, crashes = pool.run(jobs)
        again, _, _ = pool.run([("7", "7")])
    finally:
        pool.close()
    assert outcomes == ["correct", "crashed", "correct", "wrong"]
    assert (timeouts, crashes) == (0, 1)
    assert again == ["correct"]


def test_workers_hash_alike_in_every_pool() -> None:
    hashes = []
    for _ in range(2):
        pool = _pool(_hash_worker)
        try:
            hashes.append(pool.run([("sftrl", "")] * 40)[0])
        finally:
            pool.close()
    assert len({h for run in hashes for h in run}) == 1  # both workers, both pools


_RNG_INDEPENDENCE_SCRIPT = r"""
import json, logging
import sympy.core.random
from sftrl.rewards import guards, symbolic
logging.getLogger("math_verify").setLevel(logging.ERROR)
jobs = ((r"\pi\pi\infty", "2"), (r"\sqrt{8}", r"2\sqrt{2}"), (symbolic.GOLD_VALUE_JOB, r"\pi"))
states, outcomes = [], []
for prior in (1, 2):
    sympy.core.random.seed(prior)
    outcomes.append(symbolic.worker_run(jobs, guards.Limits()))
    states.append(repr(sympy.core.random.rng.getstate()))
print(json.dumps({"same_state": states[0] == states[1], "outcomes": outcomes}))
"""


def test_a_check_does_not_depend_on_what_ran_before() -> None:
    # sympy draws random points and shuffles assumption facts; each check starts from the same
    # RNG state, whatever the worker did before. Run in a fresh interpreter, as the verifier's
    # workers are: sympy's caches filled by other tests in this process are not what a worker
    # sees (once seen in CI: this check came out 'correct' after the whole suite had run).
    done = subprocess.run([sys.executable, "-c", _RNG_INDEPENDENCE_SCRIPT], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes = result["outcomes"]
    assert result["same_state"]
    assert outcomes[0] == outcomes[1] and outcomes[0][:2] == ["wrong", "correct"]


def _worker_pids(verifier: Verifier) -> set[int]:
    executor = verifier._pool._executor
    assert executor is not None
    return {p.pid for p in executor._processes.values()}


def test_pool_is_lazy_reused_and_closed() -> None:
    v = Verifier(workers=2, timeout_s=10.0)
    try:
        assert v.verify_batch([(r"\boxed{0.5}", r"\frac12"), ("nothing", "1")]) == [True, False]
        assert not v._pool.started  # plain numbers never need a worker
        assert v.verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}")
        pids = _worker_pids(v)
        assert v.verify(r"\boxed{\sqrt{12}}", r"2\sqrt{3}")
        assert _worker_pids(v) == pids  # the same processes serve the next call
    finally:
        v.close()
    alive = {p.pid for p in multiprocessing.active_children()}
    assert not pids & alive


# ---------------------------------------------------------------------------------------------
# Command line: python -m sftrl.rewards --check
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[object]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


SAMPLES = [
    {"id": "a", "gold": r"2\sqrt{5}", "response": r"\boxed{\sqrt{20}}", "correct": False},
    {"id": "b", "gold": "12", "response": [r"\boxed{12}", r"\boxed{13}", "no answer"]},
    {"id": "c", "gold": "0.5", "response": r"The final answer is $\frac12$."},
]


def test_check_rescores_into_a_new_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "samples.jsonl"
    _write_jsonl(source, SAMPLES)
    before = source.read_text()
    assert rewards.main(["--check", str(source), "--workers", "1"]) == 0
    assert source.read_text() == before  # the input is not touched
    out = tmp_path / "samples.rescored.jsonl"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["correct"] for r in records] == [True, [True, False, False], True]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    printed = capsys.readouterr().out
    assert "5 responses, 3 correct" in printed and "verdicts changed: 1 of 1" in printed
    assert not list(tmp_path.glob(".*.tmp"))


def test_check_in_place_and_custom_fields(tmp_path: Path) -> None:
    source = tmp_path / "gsm8k.jsonl"  # the file name picks the gsm8k preset
    _write_jsonl(source, [{"answer": "18", "text": "so 9 * 2 = 18"}])
    assert rewards.main(["--check", str(source), "--in-place", "--gold-field", "answer",
                         "--response-field", "text", "--verdict-field", "ok",
                         "--workers", "1"]) == 0
    assert json.loads(source.read_text()) == {"answer": "18", "text": "so 9 * 2 = 18",
                                              "ok": True}


@pytest.mark.parametrize(("lines", "message"), [
    ('{"gold": "1", "response": "1"}\n{"gold": "1", "response": \n', ":2: not valid JSON"),
    ('{"gold": "1", "response": "1"}\n\n{"response": "1"}\n', ":3: missing field 'gold'"),
    ('{"gold": "1"}\n', ":1: missing field 'response'"),
    ('{"gold": "1", "response": 5}\n', ":1: field 'response' must be a string"),
    ('{"gold": "", "response": "1"}\n', ":1: field 'gold': gold answer is empty"),
    ('[1, 2]\n', ":1: expected a JSON object"),
    (b'{"gold": "1", "response": "1"}\n{"gold": "1", "response": "\xff"}\n', ":2: not UTF-8"),
])
def test_check_names_file_line_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         lines: str | bytes, message: str) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(lines.encode() if isinstance(lines, str) else lines)
    assert rewards.main(["--check", str(source), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{source}{message}" in err and err.startswith("sftrl: error: ")
    assert not (tmp_path / "bad.rescored.jsonl").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_check_reads_the_files_the_eval_stage_writes(tmp_path: Path) -> None:
    """The sample store's layout (`responses` / `answer`) is rescored without field flags."""
    from sftrl.eval.sample_store import SampleStore

    source = tmp_path / "math500.jsonl"
    with SampleStore(source) as store:
        store.append({"id": "p0", "problem": "1+1?", "answer": "2",
                      "responses": [r"\boxed{2}", r"\boxed{3}"], "num_tokens": [3, 3],
                      "finished": [True, True], "correct": [False, False],
                      "extracted": [None, None]})
    out = tmp_path / "rescored.jsonl"
    assert rewards.main(["--check", str(source), "--out", str(out), "--workers", "1"]) == 0
    assert json.loads(out.read_text())["correct"] == [True, False]


def test_check_as_a_module(tmp_path: Path) -> None:
    source = tmp_path / "samples.jsonl"
    _write_jsonl(source, SAMPLES)
    out = tmp_path / "out" / "rescored.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "sftrl.rewards", "--check", str(source), "--out", str(out),
         "--workers", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == [
        True, [True, False, False], True]


def test_check_refuses_to_overwrite_its_input_unless_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "samples.jsonl"
    _write_jsonl(source, SAMPLES)
    assert rewards.main(["--check", str(source), "--out", str(source)]) == 2
    assert "--in-place" in capsys.readouterr().err


def test_check_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert rewards.main(["--check", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# benchmarks/rewards.py runs end to end (a script dir: loaded by path). No speed is asserted.
# ---------------------------------------------------------------------------------------------


def test_benchmark_writes_rows(tmp_path: Path) -> None:
    bench = load_benchmark("rewards")
    rows = bench.main(["--prompts=4", "--samples=24", "--workers=1", "--baseline-samples=8",
                       f"--data={tmp_path / 'absent.jsonl'}", f"--out={tmp_path}"])
    written = json.loads((tmp_path / "rewards.json").read_text())
    assert written["rows"] == rows and written["meta"]["golds"] == "generated"
    assert [r["mode"] for r in rows] == ["cached", "uncached", "math-verify loop"]
    for row in rows[:2]:
        assert set(bench.ROW_KEYS) <= set(row) and row["checks"] == 96
        assert row["identical_to_uncached"] is True
    assert (tmp_path / "rewards.md").read_text().startswith("| mode |")


def test_no_worker_process_outlives_its_verifier(verifier: Verifier,
                                                 hostile_verifier: Verifier) -> None:
    verifier.close()
    hostile_verifier.close()
    rewards.close()
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_default_extraction_knows_every_explicit_marker():
    assert rewards.extract_answer(r"so \boxed{\frac{1}{2}} and #### 7") == r"\frac{1}{2}"
    assert rewards.extract_answer("steps...\n#### 1,234") == "1,234"
    assert rewards.extract_answer("The final answer is 12.") is not None
    assert rewards.extract_answer("I computed 12 then 13") is None  # no bare-number guessing


# ---------------------------------------------------------------------------------------------
# A SIGKILLed parent leaves no verifier workers behind
# ---------------------------------------------------------------------------------------------

_PARENT = r"""
import os, sys, time
from sftrl.rewards import Verifier
verifier = Verifier("default", workers=2, cache=False)
assert verifier.verify(r"\boxed{\sqrt{20}}", r"2\sqrt{5}")  # symbolic: starts the workers
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces; the fields after its closing parenthesis do not
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_exit_when_their_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        # the spawn context's resource tracker is a child too; it exits on its own pipe's EOF
        workers = _children(parent.pid)
        assert len(workers) >= 2
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in workers if _alive(pid)]
