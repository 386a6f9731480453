r"""The embedded default reasoning task: seeded multi-step integer word problems.

One concept, hence one module over 700 lines: task v1, whose problem structures, their
renderings in every style and phrasing, and the splits drawn from them are read together.

sftrl's CPU-sized experiments need a task that a ~1M-parameter model learns in minutes and that
GRPO can then improve. This module generates it: a start value followed by `steps` operations
(add, subtract, multiply, exact divide), told as a short story, with an exact integer answer.
Numbers stay small so a tiny model can learn the arithmetic: start values 1..50, added and
subtracted operands 1..20, factors and divisors 2..5, every value along the way in 1..200.

SFT variants mirror the paper's data contrasts (`SFTVariant`, named e.g. "long_cot-diverse-2000"):
    style     `answer_only`  "The answer is \boxed{N}."
              `short_cot`    one equation per step with its result, then the boxed answer
              `long_cot`     the steps restated and explained, inverse-operation checks,
                             occasional deliberate mistakes that are corrected at once
                             ("12 + 5 = 18. Wait, 12 + 5 = 17."), a re-check of every step
    phrasing  `homogeneous`  one name, one object, one template per sentence kind
              `diverse`      several names, objects and templates for problems and solutions
    size      number of SFT training examples
Only the solution differs between styles and only the wording between phrasings: variants of one
size share the same underlying problems (ids match), and a smaller size is a prefix of a larger.

Splits (the defaults; see `TaskConfig`). Every split is drawn from its own seeded stream and no
problem appears in two splits: problems are deduplicated by their structure (start value and
operations), which determines the text, so no problem text appears twice either.
    SFT train / held-out   1-3 steps; held-out problems are shared by all variants and rendered
                           in each variant's own phrasing and solution style
    RL prompts             1-3 steps (the SFT distribution), problem + gold answer only
    test                   2-5 steps: harder on average, and 4-5 step problems are beyond what SFT
                           saw; 2-3 step problems are kept so that a tiny model scores above zero
                           and pass@k curves are informative. Records carry `steps` so results can
                           be split by difficulty.
RL and test problems use `TaskConfig.eval_phrasing` (diverse by default).

Records (other modules rely on these exact shapes)
    SFT:     {"id", "messages": [{"role": "user", ...}, {"role": "assistant", ...}],
              "answer": "N", "steps": int}
    RL/test: {"id", "problem", "answer": "N", "steps": int}

The tokenizer: a byte-level BPE (so any text round-trips) with digits split one per token (a
space before a number rides with its first digit: " 2", "7"), trained on this task's text,
vocabulary 512 including the specials `<|pad|>`, `<|bos|>`, `<|user|>`, `<|assistant|>`,
`<|end|>` (end of turn = eos), saved in Hugging Face format with a chat template. It is
generated once and shipped in `task_files/tokenizer/`; regenerating it gives byte-identical files
(tested).

Reproducibility: all randomness comes from `numpy.random.Generator(PCG64(SeedSequence(...)))`
keyed by the seed, the split and the example index, never from global state or `hash()`.

Command line
    python -m sftrl.data.synthetic --out=DIR [--seed=0] [--variants=long_cot-diverse-2000,...]
    python -m sftrl.data.synthetic --write-tokenizer [--tokenizer-out=DIR]

One concept, task v1, at ~750 lines: its sections (configs, problem structures and their story,
the independent `solve`, solutions, splits and records, the tokenizer trained on the task's own
text, the command line) share the seeded streams and the record shapes: a change to one changes
the data every other section (and the shipped tokenizer) is built from. Task v2: `synthetic_v2`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sftrl import atomic

__all__ = [
    "CORRECTION_MARKERS",
    "EQUATION_RE",
    "PHRASINGS",
    "SPECIAL_TOKENS",
    "VARIANT_STYLES",
    "Problem",
    "ProblemParseError",
    "SFTVariant",
    "TaskConfig",
    "TaskConfigError",
    "default_variants",
    "main",
    "make_problems",
    "rl_records",
    "sft_records",
    "solve",
    "test_records",
    "tokenizer_dir",
    "train_tokenizer",
    "write_solution",
    "write_task",
]

VARIANT_STYLES = ("answer_only", "short_cot", "long_cot")
PHRASINGS = ("homogeneous", "diverse")

PAD, BOS, USER, ASSISTANT, END = "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, USER, ASSISTANT, END)  # ids 0..4 in this order
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('sftrl task chat template: unsupported role ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
DEFAULT_VOCAB_SIZE = 512
DEFAULT_SIZE = 2000

# An arithmetic statement in a solution: "12 + 5 = 17". Operators are ASCII so they cost one
# byte-level token each.
EQUATION_RE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
# Text that follows a deliberately wrong equation and introduces its correction.
CORRECTION_MARKERS = ("Wait, ", "Hmm, no: ", "Oops, actually ", "Let me redo that: ")

# Stream ids keep the splits' random draws independent of each other's sizes.
_STREAMS = {"problems": 0, "test": 1, "rl": 2, "heldout": 3, "train": 4, "tokenizer": 5}
_RENDER, _SOLUTION = 1, 2  # sub-stream salts for per-example generators
_MAX_STEPS_LIMIT = 12
_MAX_DUPLICATE_DRAWS = 2_000  # duplicates in a row before a step count counts as used up


class TaskConfigError(ValueError):
    """A task config, variant or variant name is invalid; the message names the field."""


class ProblemParseError(ValueError):
    """`solve` could not read a problem text; the message names the sentence."""


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def _check_int(owner: str, field: str, value: object, low: int, high: int | None = None) -> None:
    # bool is an int subclass; True as a step count is a bug, not a 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TaskConfigError(f"{owner}.{field}: expected an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise TaskConfigError(f"{owner}.{field}: {value} is not {bound}")


def _check_choice(owner: str, field: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise TaskConfigError(f"{owner}.{field}: {value!r} is not one of {tuple(choices)}")


def check_seed_and_step_ranges(owner: str, config: object, high: int) -> None:
    """The seed and the three (low, high) step ranges every task config has (v1 and v2): ints
    in 1..`high`, low <= high."""
    _check_int(owner, "seed", config.seed, 0)
    for lo, hi in (("min_steps", "max_steps"), ("rl_min_steps", "rl_max_steps"),
                   ("test_min_steps", "test_max_steps")):
        low_value, high_value = getattr(config, lo), getattr(config, hi)
        _check_int(owner, lo, low_value, 1, high)
        _check_int(owner, hi, high_value, 1, high)
        if low_value > high_value:
            raise TaskConfigError(f"{owner}.{lo}: {low_value} is greater than {hi}={high_value}")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Everything that determines the task's problems and splits (the SFT size is per variant)."""

    seed: int = 0
    min_steps: int = 1  # SFT train/held-out difficulty range
    max_steps: int = 3
    rl_min_steps: int = 1  # RL prompt difficulty range
    rl_max_steps: int = 3
    test_min_steps: int = 2  # test difficulty range; test_max_steps must exceed max_steps
    test_max_steps: int = 5
    num_heldout: int = 200
    num_rl_prompts: int = 1024
    num_test: int = 500
    eval_phrasing: str = "diverse"  # phrasing of RL and test problems
    mistake_prob: float = 0.15  # long_cot: chance that a step is first computed wrongly
    check_prob: float = 0.5  # long_cot: chance that a step is checked by its inverse

    def __post_init__(self) -> None:
        name = "TaskConfig"
        check_seed_and_step_ranges(name, self, _MAX_STEPS_LIMIT)
        if self.test_max_steps <= self.max_steps:
            raise TaskConfigError(
                f"{name}.test_max_steps: {self.test_max_steps} must exceed max_steps="
                f"{self.max_steps} (the test set holds harder problems than SFT saw)")
        if self.test_min_steps < self.min_steps:
            raise TaskConfigError(
                f"{name}.test_min_steps: {self.test_min_steps} is below min_steps="
                f"{self.min_steps} (the test set must not be easier than SFT)")
        _check_int(name, "num_heldout", self.num_heldout, 1)
        _check_int(name, "num_rl_prompts", self.num_rl_prompts, 1)
        _check_int(name, "num_test", self.num_test, 1)
        _check_choice(name, "eval_phrasing", self.eval_phrasing, PHRASINGS)
        for field in ("mistake_prob", "check_prob"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0.0 <= value <= 1.0):
                raise TaskConfigError(f"{name}.{field}: {value!r} is not a number in [0, 1]")


@dataclasses.dataclass(frozen=True)
class SFTVariant:
    """One SFT data set: solution style x phrasing x number of training examples."""

    style: str
    phrasing: str
    size: int

    def __post_init__(self) -> None:
        _check_choice("SFTVariant", "style", self.style, VARIANT_STYLES)
        _check_choice("SFTVariant", "phrasing", self.phrasing, PHRASINGS)
        _check_int("SFTVariant", "size", self.size, 1)

    @property
    def name(self) -> str:
        return f"{self.style}-{self.phrasing}-{self.size}"

    @classmethod
    def parse(cls, name: str) -> SFTVariant:
        """'long_cot-diverse-2000' -> SFTVariant('long_cot', 'diverse', 2000)."""
        parts = name.split("-") if isinstance(name, str) else []
        if len(parts) != 3:
            raise TaskConfigError(
                f"SFTVariant name {name!r}: expected '<style>-<phrasing>-<size>', "
                f"e.g. 'long_cot-diverse-{DEFAULT_SIZE}'")
        style, phrasing, size = parts
        if not size.isdigit():
            raise TaskConfigError(f"SFTVariant name {name!r}: size {size!r} is not an integer")
        return cls(style, phrasing, int(size))


def default_variants(size: int = DEFAULT_SIZE) -> tuple[SFTVariant, ...]:
    """All style x phrasing variants at one size."""
    return tuple(SFTVariant(s, p, size) for s in VARIANT_STYLES for p in PHRASINGS)


# ---------------------------------------------------------------------------------------------
# Problem structures (the math) and their text (the story)
# ---------------------------------------------------------------------------------------------

_MAX_START, _MAX_OPERAND, _MAX_FACTOR, _MAX_VALUE = 50, 20, 5, 200
_OPS = ("add", "sub", "mul", "div")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_INVERSE = {"add": "sub", "sub": "add", "mul": "div", "div": "mul"}

Ops = tuple[tuple[str, int], ...]
_Structure = tuple[int, Ops]


def _apply(op: str, value: int, operand: int) -> int:
    if op == "add":
        return value + operand
    if op == "sub":
        return value - operand
    if op == "mul":
        return value * operand
    return value // operand


def _draw_structure(rng: np.random.Generator, steps: int) -> _Structure:
    value = int(rng.integers(1, _MAX_START + 1))
    start, ops = value, []
    for _ in range(steps):
        # Operands that keep the value in 1.._MAX_VALUE (and divisions exact), per operation.
        choices = {
            "add": list(range(1, min(_MAX_OPERAND, _MAX_VALUE - value) + 1)),
            "sub": list(range(1, min(_MAX_OPERAND, value - 1) + 1)),
            "mul": list(range(2, min(_MAX_FACTOR, _MAX_VALUE // value) + 1)),
            "div": [k for k in range(2, _MAX_FACTOR + 1) if value % k == 0],
        }
        feasible = [op for op in _OPS if choices[op]]
        op = feasible[int(rng.integers(len(feasible)))]
        operand = choices[op][int(rng.integers(len(choices[op])))]
        ops.append((op, operand))
        value = _apply(op, value, operand)
    return start, tuple(ops)


def _structures(seed: int, stream: str, count: int, min_steps: int, max_steps: int,
                exclude: frozenset[_Structure] = frozenset()) -> list[_Structure]:
    """`count` distinct structures from one seeded stream, none of them in `exclude`.

    The step count is uniform, and a duplicate is redrawn with the same step count, so the mix
    of difficulties does not depend on how many problems are asked for (a smaller SFT size is a
    prefix of a larger one with the same mix). Only when a step count has no new problems left
    (there are about 2,000 distinct 1-step problems) is it dropped from the draw for the rest of
    the stream, which then holds more multi-step problems.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, _STREAMS[stream]])))
    seen: set[_Structure] = set(exclude)
    out: list[_Structure] = []
    exhausted: set[int] = set()
    while len(out) < count:
        open_steps = [k for k in range(min_steps, max_steps + 1) if k not in exhausted]
        if not open_steps:
            raise TaskConfigError(
                f"{stream}: cannot find {count} distinct problems with {min_steps}-{max_steps} "
                f"steps (found {len(out)}); ask for fewer or allow more steps")
        steps = open_steps[int(rng.integers(len(open_steps)))]
        for _ in range(_MAX_DUPLICATE_DRAWS):
            structure = _draw_structure(rng, steps)
            if structure not in seen:
                seen.add(structure)
                out.append(structure)
                break
        else:
            exhausted.add(steps)
    return out


def _rng(seed: int, stream: str, index: int, salt: int) -> np.random.Generator:
    key = [seed, _STREAMS[stream], index, salt]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


# (name, pronoun) pairs and objects for diverse phrasing. No name or object may contain a word
# that `solve` reads as an operation keyword.
_PEOPLE = (("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"),
           ("Omar", "he"), ("Lina", "she"), ("Ravi", "he"), ("Emma", "she"), ("Kai", "he"),
           ("Nora", "she"), ("Tom", "he"))
_OBJECTS = ("apple", "marble", "sticker", "coin", "card", "book", "shell", "pencil", "stamp",
            "cookie", "bead", "toy car")
_HOMOGENEOUS_PERSON, _HOMOGENEOUS_OBJECT = ("Sam", "he"), "apple"

# Problem sentence templates: {N} name, {P}/{p} pronoun (capitalised / not), {n} number, {o} the
# object in the number's grammatical number, {os} the object in the plural. The first of each
# list is the homogeneous template.
_START = ("{N} has {n} {o}.", "{N} starts with {n} {o}.", "At first, {N} owns {n} {o}.",
          "{N} keeps {n} {o} in a box.")
_OP_SENTENCES = {
    "add": ("{N} buys {n} more {o}.", "{P} finds {n} more {o}.",
            "Then {p} gets {n} more {o} from a friend.", "{N} collects {n} more."),
    "sub": ("{N} gives away {n} {o}.", "{P} loses {n} {o}.", "Then {p} sells {n} of them.",
            "{N} uses {n} {o}."),
    "mul": ("{N} ends up with {n} times as many {os}.",
            "The number of {os} {N} has grows to {n} times what it was.",
            "Then {p} multiplies the number of {os} by {n}."),
    "div": ("{N} splits the {os} into {n} equal groups and keeps one group.",
            "{P} divides the {os} into {n} equal piles and keeps one pile.",
            "Then {p} keeps only one of {n} equal parts."),
}
_QUESTION = ("How many {os} does {N} have now?", "How many {os} does {N} have in the end?",
             "How many {os} are there at the end?")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One word problem: its text, exact answer and the structure it was told from."""

    id: str
    text: str
    answer: int
    start: int
    ops: Ops
    phrasing: str
    name: str
    pronoun: str
    obj: str
    sentences: tuple[str, ...]  # start, one per operation, question
    seed_key: tuple[int, str, int]  # (seed, stream, index): seeds the solution's randomness

    @property
    def steps(self) -> int:
        return len(self.ops)

    @property
    def values(self) -> tuple[int, ...]:
        """The start value and the value after each operation."""
        out = [self.start]
        for op, operand in self.ops:
            out.append(_apply(op, out[-1], operand))
        return tuple(out)


def _render(structure: _Structure, phrasing: str, *, seed: int, stream: str,
            index: int) -> Problem:
    start, ops = structure
    rng = _rng(seed, stream, index, _RENDER)
    diverse = phrasing == "diverse"
    name, pronoun = (_PEOPLE[int(rng.integers(len(_PEOPLE)))] if diverse
                     else _HOMOGENEOUS_PERSON)
    obj = _pick(rng, _OBJECTS) if diverse else _HOMOGENEOUS_OBJECT

    def fill(templates: Sequence[str], n: int | None = None) -> str:
        template = _pick(rng, templates) if diverse else templates[0]
        return template.format(N=name, P=pronoun.capitalize(), p=pronoun, n=n,
                               o=_noun(obj, n), os=_noun(obj, None))

    sentences = [fill(_START, start)]
    sentences += [fill(_OP_SENTENCES[op], operand) for op, operand in ops]
    sentences.append(fill(_QUESTION))
    value = start
    for op, operand in ops:
        value = _apply(op, value, operand)
    return Problem(
        id=f"{stream}-{index:06d}", text=" ".join(sentences), answer=value, start=start,
        ops=ops, phrasing=phrasing, name=name, pronoun=pronoun, obj=obj,
        sentences=tuple(sentences), seed_key=(seed, stream, index))


def make_problems(n: int, *, min_steps: int, max_steps: int, seed: int,
                  phrasing: str = "diverse") -> list[Problem]:
    """`n` distinct seeded problems with `min_steps`..`max_steps` operations each."""
    _check_int("make_problems", "n", n, 0)
    _check_int("make_problems", "min_steps", min_steps, 1, _MAX_STEPS_LIMIT)
    _check_int("make_problems", "max_steps", max_steps, min_steps, _MAX_STEPS_LIMIT)
    _check_int("make_problems", "seed", seed, 0)
    _check_choice("make_problems", "phrasing", phrasing, PHRASINGS)
    structures = _structures(seed, "problems", n, min_steps, max_steps)
    return [_render(s, phrasing, seed=seed, stream="problems", index=i)
            for i, s in enumerate(structures)]


# ---------------------------------------------------------------------------------------------
# The independent evaluator
# ---------------------------------------------------------------------------------------------

# `solve` reads the text, not the generator's structure: it knows only which words signal which
# operation, so a template that says something other than what the generator computed is caught.
_KEYWORDS = {
    "add": re.compile(r"\bmore\b"),
    "sub": re.compile(r"\b(?:away|loses|sells|uses)\b"),
    "mul": re.compile(r"\b(?:times|multiplies)\b"),
    "div": re.compile(r"\bequal\b"),
}
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.?!])\s+")
_NUMBER_RE = re.compile(r"\d+")


def solve(problem: Problem | str) -> int:
    """The answer computed from the problem's text alone (never the generator's value)."""
    text = problem.text if isinstance(problem, Problem) else problem
    sentences = _SENTENCE_SPLIT_RE.split(text.strip())
    if len(sentences) < 2 or not sentences[-1].endswith("?"):
        raise ProblemParseError(f"problem {text!r}: expected statements then a question")
    if _NUMBER_RE.search(sentences[-1]):
        raise ProblemParseError(f"question {sentences[-1]!r}: a question holds no number")
    numbers = _NUMBER_RE.findall(sentences[0])
    if len(numbers) != 1:
        raise ProblemParseError(f"first sentence {sentences[0]!r}: expected one start number")
    value = int(numbers[0])
    for sentence in sentences[1:-1]:
        numbers = _NUMBER_RE.findall(sentence)
        ops = [op for op, pattern in _KEYWORDS.items() if pattern.search(sentence)]
        if len(numbers) != 1 or len(ops) != 1:
            raise ProblemParseError(
                f"sentence {sentence!r}: expected one number and one operation keyword, "
                f"found numbers {numbers} and operations {ops}")
        op, operand = ops[0], int(numbers[0])
        if op == "div" and (operand == 0 or value % operand):
            raise ProblemParseError(f"sentence {sentence!r}: {value} is not divisible evenly")
        value = _apply(op, value, operand)
        if value < 0:
            raise ProblemParseError(f"sentence {sentence!r}: the value becomes negative")
    return value


# ---------------------------------------------------------------------------------------------
# Solutions
# ---------------------------------------------------------------------------------------------

def _noun(obj: str, count: int | None) -> str:
    """`obj` agreeing with `count` (None: the plural)."""
    return obj if count == 1 else obj + "s"


_FINAL = ("The answer is \\boxed{{{a}}}.", "So the answer is \\boxed{{{a}}}.",
          "Final answer: \\boxed{{{a}}}.")
_SHORT_LINE = ("{eq}", "Then {eq}.", "Next, {eq}.", "{eq}, giving {r} {o}.")
_EXPLAIN = {
    "add": ("So we add {n}.", "That adds {n}.", "This means {n} more."),
    "sub": ("So we subtract {n}.", "That takes away {n}.", "This means {n} fewer."),
    "mul": ("So we multiply by {n}.", "That multiplies the count by {n}.",
            "This scales it by {n}."),
    "div": ("So we divide by {n}.", "That divides the count by {n}.",
            "This leaves one part out of {n}."),
}
_INTRO = ("{N} starts with {a} {o}.", "At the start, {N} has {a} {o}.",
          "First, {N} has {a} {o}.")
_STEP = ("Step {i}: {s}", "Step {i}. {s}", "({i}) {s}")
_CHECK = ("Check: {eq}. Correct.", "Let me verify: {eq}. Good.", "Double-check: {eq}, as expected.")
_RECAP = ("Let me re-check every step: {eqs}.", "Going over the steps again: {eqs}.",
          "Re-checking: {eqs}.")
_CONCLUDE = ("So {N} has {a} {o}.", "That leaves {a} {o}.", "In the end, {N} has {a} {o}.")


def _equation(op: str, left: int, operand: int, result: int) -> str:
    return f"{left} {_SYMBOL[op]} {operand} = {result}"


def _wrong_result(rng: np.random.Generator, right: int) -> int:
    deltas = [d for d in (-2, -1, 1, 2, 10) if right + d >= 0]
    return right + deltas[int(rng.integers(len(deltas)))]


def write_solution(problem: Problem, style: str, *, mistake_prob: float = 0.15,
                   check_prob: float = 0.5) -> str:
    """The solution of `problem` in `style`, worded in the problem's phrasing, ending in a box."""
    _check_choice("write_solution", "style", style, VARIANT_STYLES)
    seed, stream, index = problem.seed_key
    rng = _rng(seed, stream, index, _SOLUTION)
    diverse = problem.phrasing == "diverse"

    def pick(templates: Sequence[str], count: int | None = None, **kw: object) -> str:
        template = _pick(rng, templates) if diverse else templates[0]
        return template.format(N=problem.name, o=_noun(problem.obj, count), **kw)

    final = pick(_FINAL, a=problem.answer)
    values = problem.values
    if style == "answer_only":
        return final
    if style == "short_cot":
        lines = [pick(_SHORT_LINE, values[i + 1], r=values[i + 1],
                      eq=_equation(op, values[i], n, values[i + 1]))
                 for i, (op, n) in enumerate(problem.ops)]
        return "\n".join([*lines, final])

    lines = [pick(_INTRO, problem.start, a=problem.start)]
    for i, (op, n) in enumerate(problem.ops):
        left, right = values[i], values[i + 1]
        parts = [pick(_STEP, i=i + 1, s=problem.sentences[i + 1]), pick(_EXPLAIN[op], n=n)]
        if rng.random() < mistake_prob:
            wrong = _wrong_result(rng, right)
            marker = _pick(rng, CORRECTION_MARKERS) if diverse else CORRECTION_MARKERS[0]
            parts.append(
                f"{_equation(op, left, n, wrong)}. {marker}{_equation(op, left, n, right)}.")
        else:
            parts.append(f"{_equation(op, left, n, right)}.")
        if rng.random() < check_prob:
            parts.append(pick(_CHECK, eq=_equation(_INVERSE[op], right, n, left)))
        lines.append(" ".join(parts))
    if problem.steps > 1:
        eqs = ", ".join(_equation(op, values[i], n, values[i + 1])
                        for i, (op, n) in enumerate(problem.ops))
        lines.append(pick(_RECAP, eqs=eqs))
    lines.append(pick(_CONCLUDE, problem.answer, a=problem.answer))
    lines.append(final)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Splits and records
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _eval_structures(task: TaskConfig) -> dict[str, list[_Structure]]:
    """Test, RL and held-out structures, drawn in that order, each excluding the ones before."""
    out: dict[str, list[_Structure]] = {}
    taken: frozenset[_Structure] = frozenset()
    for stream, count, lo, hi in (
            ("test", task.num_test, task.test_min_steps, task.test_max_steps),
            ("rl", task.num_rl_prompts, task.rl_min_steps, task.rl_max_steps),
            ("heldout", task.num_heldout, task.min_steps, task.max_steps)):
        out[stream] = _structures(task.seed, stream, count, lo, hi, taken)
        taken = taken | frozenset(out[stream])
    return out


@functools.lru_cache(maxsize=8)
def _train_structures(task: TaskConfig, size: int) -> list[_Structure]:
    taken = frozenset(s for split in _eval_structures(task).values() for s in split)
    return _structures(task.seed, "train", size, task.min_steps, task.max_steps, taken)


def _sft_record(problem: Problem, style: str, task: TaskConfig) -> dict:
    solution = write_solution(problem, style, mistake_prob=task.mistake_prob,
                              check_prob=task.check_prob)
    return {"id": problem.id,
            "messages": [{"role": "user", "content": problem.text},
                         {"role": "assistant", "content": solution}],
            "answer": str(problem.answer), "steps": problem.steps}


def _prompt_record(problem: Problem) -> dict:
    return {"id": problem.id, "problem": problem.text, "answer": str(problem.answer),
            "steps": problem.steps}


def sft_records(variant: SFTVariant, task: TaskConfig) -> tuple[list[dict], list[dict]]:
    """(train, held-out) SFT records of `variant`; held-out problems are shared by variants."""
    if not isinstance(variant, SFTVariant):
        raise TaskConfigError(f"sft_records.variant: expected an SFTVariant, got {variant!r}")
    splits = (("train", _train_structures(task, variant.size)),
              ("heldout", _eval_structures(task)["heldout"]))
    train, heldout = (
        [_sft_record(_render(s, variant.phrasing, seed=task.seed, stream=stream, index=i),
                     variant.style, task) for i, s in enumerate(structures)]
        for stream, structures in splits)
    return train, heldout


def rl_records(task: TaskConfig) -> list[dict]:
    """RL prompts: problem and gold answer, no solution."""
    return [_prompt_record(_render(s, task.eval_phrasing, seed=task.seed, stream="rl", index=i))
            for i, s in enumerate(_eval_structures(task)["rl"])]


def test_records(task: TaskConfig) -> list[dict]:
    """The harder test set (see `TaskConfig.test_min_steps`/`test_max_steps`)."""
    return [_prompt_record(_render(s, task.eval_phrasing, seed=task.seed, stream="test", index=i))
            for i, s in enumerate(_eval_structures(task)["test"])]


test_records.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with atomic.replacing(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_task(out_dir: str | Path, task: TaskConfig,
               variants: Iterable[SFTVariant]) -> dict[str, Path]:
    """Writes every split as JSONL; returns {key: path}.

    Keys and files: "rl" -> rl.jsonl, "test" -> test.jsonl, "<variant>/train" ->
    sft/<variant>/train.jsonl, "<variant>/heldout" -> sft/<variant>/heldout.jsonl, and
    "manifest" -> task.json (the config, the variants and each file's record count).
    """
    out = Path(out_dir)
    variants = list(variants)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise TaskConfigError(f"write_task.variants: duplicate variant names in {names}")
    paths: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for key, records in (("rl", rl_records(task)), ("test", test_records(task))):
        paths[key] = out / f"{key}.jsonl"
        _write_jsonl(paths[key], records)
        counts[key] = len(records)
    for variant in variants:
        train, heldout = sft_records(variant, task)
        for split, records in (("train", train), ("heldout", heldout)):
            key = f"{variant.name}/{split}"
            paths[key] = out / "sft" / variant.name / f"{split}.jsonl"
            _write_jsonl(paths[key], records)
            counts[key] = len(records)
    manifest = {"task": dataclasses.asdict(task), "variants": names,
                "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
                "counts": counts}
    paths["manifest"] = out / "task.json"
    atomic.write_json(paths["manifest"], manifest, indent=2)
    return paths


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


def tokenizer_dir() -> Path:
    """The shipped tokenizer folder (Hugging Face format)."""
    return Path(__file__).resolve().parent / "task_files" / "tokenizer"


def _tokenizer_corpus(seed: int) -> list[str]:
    """Every kind of text the task produces: both phrasings, all styles, 1-6 steps."""
    texts = []
    for phrasing in PHRASINGS:
        structures = _structures(seed, "tokenizer", 600, 1, 6)
        for i, structure in enumerate(structures):
            problem = _render(structure, phrasing, seed=seed, stream="tokenizer", index=i)
            texts.append(problem.text)
            texts.extend(write_solution(problem, style) for style in VARIANT_STYLES)
    return texts


def train_tokenizer(out_dir: str | Path, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    seed: int = 0) -> Path:
    """Trains the task's byte-level BPE and saves it in Hugging Face format; returns the folder.

    Digits are split one per token so that numbers are spelled digit by digit (a tiny model
    learns carrying far more easily than a table of multi-digit tokens); a space before a number
    is merged with its first digit, which saves a token per number.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_int("train_tokenizer", "vocab_size", vocab_size, 256 + len(SPECIAL_TOKENS) + 1, 512)
    _check_int("train_tokenizer", "seed", seed, 0)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        # One digit per piece; a space before a number stays with its first digit (" 2", "7").
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_tokenizer_corpus(seed), trainer=trainer)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": END, "pad_token": PAD, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False,  # the chat template writes the bos
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "padding_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "extra_special_tokens": [USER, ASSISTANT],
    }
    (out / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sftrl.data.synthetic",
        description="Write the embedded reasoning task's splits, or regenerate its tokenizer.")
    parser.add_argument("--out", type=Path, help="directory for the task's JSONL files")
    parser.add_argument("--seed", type=int, default=TaskConfig.seed)
    parser.add_argument(
        "--variants", default=",".join(v.name for v in default_variants()),
        help="comma-separated variant names, e.g. long_cot-diverse-2000,short_cot-homogeneous-500")
    parser.add_argument("--write-tokenizer", action="store_true",
                        help="regenerate the shipped tokenizer (byte-identical)")
    parser.add_argument("--tokenizer-out", type=Path, default=None,
                        help="where --write-tokenizer writes (default: the shipped folder)")
    args = parser.parse_args(argv)
    if args.out is None and not args.write_tokenizer:
        parser.error("give --out=DIR and/or --write-tokenizer")
    try:
        if args.write_tokenizer:
            folder = train_tokenizer(args.tokenizer_out or tokenizer_dir())
            print(f"tokenizer written to {folder}")
        if args.out is not None:
            task = TaskConfig(seed=args.seed)
            variants = [SFTVariant.parse(n.strip()) for n in args.variants.split(",") if n.strip()]
            for key, path in write_task(args.out, task, variants).items():
                print(f"{key}: {path}")
    except TaskConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
