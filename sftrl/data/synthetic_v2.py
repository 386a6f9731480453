r"""Task v2 of the embedded reasoning task: multi-step arithmetic whose answers cannot be guessed.

Why a second task (issue 21): on task v1 (`sftrl.data.synthetic`) the answers take ~150 values,
so a constant answer scored 0.047 and the guessing control (samples scored against another
prompt's answer) reached 55% of pass@1 and 79% of pass@256; v1's SFT length was confounded with
solution style, and its test set asked for 4-5 step problems SFT never showed. v1 is kept as it
was (its generator output and configs are unchanged); v2 is selected by
`data.synthetic.version = 2`.

The math. A start value 100..999 and `steps` operations:
    add     + 2..20
    sub     - 2..20
    double  * 2
    halve   / 2 (only when the value is even)
with every value along the way in 10..`MAX_VALUE` (4999). Each operation is "local" in the
decimal digits (adding or subtracting 2..20 touches the last two digits plus a rare carry,
doubling and halving map each digit with one neighbour), so a small model can learn it digit by
digit, while the final answer is a three- or four-digit number spread over thousands of values
(the start value alone takes 900).

Test answers are distinct (a problem whose answer is already in the test split is redrawn), so a
constant answer scores at most 1/len(evaluated set) and a sample scored against another prompt's
answer almost never matches; with `num_test` >= 1000 the test set holds >= 1000 distinct answers.

One canonical chain-of-thought for every SFT set and the common held-out set (length and style are
no longer confounded): one equation per operation, then the boxed answer:
    347 + 58 = 405
    405 * 2 = 810
    The answer is \boxed{810}.
Problem wording is always varied (several names, objects and sentence templates); the SFT data
sets differ in *structure* and *length* instead:
    structure `diverse`      step counts min_steps..max_steps (uniform), any feasible operations
              `homogeneous`  always `homogeneous_steps` steps in one fixed pattern: add or sub,
                             then double or halve, then add or sub (repeating)
    length    `varied`       the pool as drawn (all step counts)
              `short`        only the pool's problems with <= `short_max_steps` steps: the same
                             pool, filtered (the paper's "shortest subset")
    size      number of SFT training examples; a smaller size is a prefix of a larger one of the
              same structure and length, and `short` is a filter of the `diverse` pool's stream
Variant names: "v2-<structure>-<length>-<size>", e.g. "v2-diverse-varied-4000".

Splits (all disjoint by problem structure, which determines the text up to wording; the
wording's randomness is keyed by the split and index, so no problem text repeats either):
    test            test_min_steps..test_max_steps (default 2-5: overlaps SFT's 1-4 and
                    extends it by one step), distinct answers
    rl              rl_min_steps..rl_max_steps (default 2-5, as hard as the test set, so that
                    most GRPO groups get mixed rewards)
    common_heldout  diverse structure, min_steps..max_steps, the canonical CoT: the one held-out
                    set every checkpoint's generalization loss is measured on (comparable across
                    data sets)
    heldout         per (structure, length): the data set's own held-out split, in its own
                    distribution (the second generalization-loss column)
    train           per structure, one stream (the pool) excluding every split above

Records (the same shapes as v1, plus "ops")
    SFT / held-out: {"id", "messages": [user, assistant], "answer": "N", "steps": int, "ops": str}
    RL / test:      {"id", "problem", "answer": "N", "steps": int, "ops": str}

The tokenizer is v1's shipped one (byte-level BPE, one digit per token), so v1 and v2 share it.
Randomness: `numpy.random.Generator(PCG64(SeedSequence([VERSION, seed, stream, ...])))`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from sftrl.data.synthetic import (
    TaskConfigError,
    _check_choice,
    _check_int,
    check_seed_and_step_ranges,
    tokenizer_dir,
)

__all__ = [
    "LENGTHS",
    "MAX_VALUE",
    "STRUCTURES",
    "VERSION",
    "Problem",
    "TaskConfigV2",
    "VariantV2",
    "common_heldout_records",
    "rl_records",
    "sft_records",
    "solve",
    "test_records",
    "tokenizer_dir",
    "write_solution",
]

VERSION = 2
STRUCTURES = ("diverse", "homogeneous")
LENGTHS = ("varied", "short")
OPS = ("add", "sub", "double", "halve")
MIN_START, MAX_START = 100, 999
# Operands as small as v1's: a pilot with two-digit operands (10..99) had 0.3-0.5% of its
# add/subtract equations right after 600 SFT steps (it could not even copy the operand), while
# v1's 1..20 operands are learnt by this model size.
MIN_OPERAND, MAX_OPERAND = 2, 20
MIN_VALUE, MAX_VALUE = 10, 4999
COT_STYLES = ("equations", "state", "quoted", "named")
_STATE_STYLES = ("state", "quoted", "named")  # every count on every line (two counters)
_QUOTED_STYLES = ("quoted", "named")  # each line led by its sentence's change
_SYMBOL = {"add": "+", "sub": "-", "double": "*", "halve": "/"}
_STREAMS = {"test": 0, "rl": 1, "common_heldout": 2, "heldout": 3, "train": 4}
_RENDER = 1
_MAX_DRAWS = 200_000  # draws per split before giving up (a config asking for too many problems)

# (operation, operand, which counter); a structure is (start values, operations)
Ops = tuple[tuple[str, int, int], ...]
Structure = tuple[tuple[int, ...], Ops]


@dataclasses.dataclass(frozen=True)
class TaskConfigV2:
    """Everything that determines task v2's splits (the SFT data set is a `VariantV2`)."""

    seed: int = 0
    min_steps: int = 1  # SFT pool and common held-out difficulty
    max_steps: int = 4
    rl_min_steps: int = 2
    rl_max_steps: int = 5
    test_min_steps: int = 2
    test_max_steps: int = 5
    homogeneous_steps: int = 3
    short_max_steps: int = 2
    # The operations problems may use (comma-separated, a subset of OPS) and the largest start
    # value. The defaults are the task as first planned; the study's sweep narrows them (PLAN.md,
    # "Change after the start").
    ops: str = ",".join(OPS)
    max_start: int = MAX_START
    # How many quantities a problem tracks. 2: two objects, each operation changes one of them,
    # and the answer is both final counts boxed together ("41, 57"); with two-digit values
    # (min_start=10, max_start=89, max_value=99) that is ~4000 unordered answers from
    # arithmetic as small as task v1's.
    counters: int = 1
    min_start: int = MIN_START
    max_value: int = MAX_VALUE
    # The canonical chain of thought (the same for every SFT set and the common held-out set):
    # "equations" writes one equation per operation ("apples: 30 + 17 = 47" with two counters);
    # "state" writes every counter on every line, in the order the problem introduces them
    # ("30, 18" then "30 + 17 = 47, 18"), so each line copies the line above it and only the
    # first line reads values out of the wording (PLAN.md, "Change after the start (3)");
    # "quoted" is "state" with each later line led by its sentence's change as the sentence
    # words it ("8 more apples: 30 + 8 = 38, 18"), so each line says which sentence it carries
    # out (PLAN.md, pilot P9); "named" is "quoted" with every count led by its object
    # ("2 fewer beads: shells 18, beads 65 - 2 = 63"), so the count a sentence changes is found
    # by its name on the line, not by the order the problem introduced the objects (pilot P10).
    cot: str = "equations"
    # The largest add/subtract operand (from MIN_OPERAND). 9 keeps every addend one digit, so
    # an equation's units digit depends on two digits only (PLAN.md, pilot P8).
    max_operand: int = MAX_OPERAND
    num_test: int = 1000
    num_rl_prompts: int = 2048
    num_common_heldout: int = 256
    num_heldout: int = 256

    def __post_init__(self) -> None:
        name = "TaskConfigV2"
        check_seed_and_step_ranges(name, self, 8)
        # The difficulty rule: the test range overlaps SFT's and extends it by <= 1.
        if self.test_min_steps > self.max_steps:
            raise TaskConfigError(f"{name}.test_min_steps: {self.test_min_steps} does not "
                                  f"overlap the SFT range {self.min_steps}..{self.max_steps}")
        if self.test_max_steps > self.max_steps + 1:
            raise TaskConfigError(f"{name}.test_max_steps: {self.test_max_steps} extends the SFT "
                                  f"range (max_steps={self.max_steps}) by more than one step")
        _check_int(name, "homogeneous_steps", self.homogeneous_steps, self.min_steps,
                   self.max_steps)
        _check_int(name, "short_max_steps", self.short_max_steps, self.min_steps,
                   self.max_steps)
        for field in ("num_test", "num_rl_prompts", "num_common_heldout", "num_heldout"):
            _check_int(name, field, getattr(self, field), 1)
        ops = self.op_tuple
        unknown = [op for op in ops if op not in OPS]
        if not ops or unknown or len(set(ops)) != len(ops):
            raise TaskConfigError(f"{name}.ops: {self.ops!r} must name distinct operations "
                                  f"from {OPS}, comma-separated")
        _check_int(name, "counters", self.counters, 1, 2)
        _check_choice(name, "cot", self.cot, COT_STYLES)
        _check_int(name, "max_operand", self.max_operand, MIN_OPERAND + 1, MAX_OPERAND)
        _check_int(name, "max_value", self.max_value, MIN_VALUE + MAX_OPERAND, MAX_VALUE)
        _check_int(name, "min_start", self.min_start, MIN_VALUE, self.max_value)
        _check_int(name, "max_start", self.max_start, self.min_start, self.max_value)

    @property
    def op_tuple(self) -> tuple[str, ...]:
        return tuple(op.strip() for op in str(self.ops).split(",") if op.strip())

    @property
    def pattern(self) -> tuple[tuple[str, ...], ...]:
        """The homogeneous structure's operations per position (cycled): add or sub, then
        double or halve, when the task has both kinds; else one fixed operation per position."""
        ops = self.op_tuple
        additive = tuple(op for op in ops if op in ("add", "sub"))
        scaling = tuple(op for op in ops if op in ("double", "halve"))
        if additive and scaling:
            return (additive, scaling)
        return tuple((op,) for op in ops)


@dataclasses.dataclass(frozen=True)
class VariantV2:
    """One SFT data set of task v2: structure x length x number of training examples."""

    structure: str
    length: str
    size: int

    def __post_init__(self) -> None:
        _check_choice("VariantV2", "structure", self.structure, STRUCTURES)
        _check_choice("VariantV2", "length", self.length, LENGTHS)
        if self.structure == "homogeneous" and self.length == "short":
            raise TaskConfigError("VariantV2: 'homogeneous' problems all have one step count, "
                                  "so 'short' (a length filter) does not apply; use 'varied'")
        _check_int("VariantV2", "size", self.size, 1)

    @property
    def name(self) -> str:
        return f"v2-{self.structure}-{self.length}-{self.size}"


# ---------------------------------------------------------------------------------------------
# Structures


def _apply(op: str, value: int, operand: int) -> int:
    if op == "add":
        return value + operand
    if op == "sub":
        return value - operand
    if op == "double":
        return value * 2
    return value // 2


def _choices(op: str, value: int, max_value: int = MAX_VALUE,
             max_operand: int = MAX_OPERAND) -> list[int]:
    """The operands of `op` (add/sub: MIN_OPERAND..max_operand) that keep `value` in
    MIN_VALUE..max_value (halving exact)."""
    if op == "add":
        return list(range(MIN_OPERAND, min(max_operand, max_value - value) + 1))
    if op == "sub":
        return list(range(MIN_OPERAND, min(max_operand, value - MIN_VALUE) + 1))
    if op == "double":
        return [2] if value * 2 <= max_value else []
    return [2] if value % 2 == 0 and value // 2 >= MIN_VALUE else []


def _draw(rng: np.random.Generator, steps: int, homogeneous: bool,
          task: TaskConfigV2) -> Structure | None:
    # One counter draws exactly what the task first planned drew (same stream, same order).
    values = [int(rng.integers(task.min_start, task.max_start + 1)) for _ in range(task.counters)]
    start, ops = tuple(values), []
    pattern = task.pattern
    for i in range(steps):
        # which counter: drawn (diverse) or alternating (homogeneous); one counter: always 0
        target = 0 if task.counters == 1 else (
            i % task.counters if homogeneous else int(rng.integers(task.counters)))
        allowed = pattern[i % len(pattern)] if homogeneous else task.op_tuple
        feasible = [op for op in allowed
                    if _choices(op, values[target], task.max_value, task.max_operand)]
        if not feasible:
            return None
        op = feasible[int(rng.integers(len(feasible)))]
        options = _choices(op, values[target], task.max_value, task.max_operand)
        operand = options[int(rng.integers(len(options)))]
        ops.append((op, operand, target))
        values[target] = _apply(op, values[target], operand)
    return start, tuple(ops)


def final_values(structure: Structure) -> tuple[int, ...]:
    values = list(structure[0])
    for op, operand, target in structure[1]:
        values[target] = _apply(op, values[target], operand)
    return tuple(values)


def answer_text(values: Sequence[int]) -> str:
    """The gold answer: one count, or the counts in the order the problem introduces them
    (the verifier compares two boxed counts as a set, so either order is right)."""
    return ", ".join(str(v) for v in values)


def answer_of(structure: Structure) -> int | str:
    values = final_values(structure)
    return values[0] if len(values) == 1 else answer_text(values)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([VERSION, *key])))


def _draw_split(task: TaskConfigV2, stream: str, salt: int, count: int,
                step_range: tuple[int, int], homogeneous_steps: int | None,
                taken: set[Structure], *, distinct_answers: bool = False) -> list[Structure]:
    """`count` new structures from one seeded stream (added to `taken`). Step counts are
    uniform over `step_range` (or fixed at `homogeneous_steps` with the homogeneous pattern)."""
    rng = _rng(task.seed, _STREAMS[stream], salt)
    lo, hi = step_range
    answers: set[tuple[int, ...]] = set()
    out: list[Structure] = []
    for _ in range(_MAX_DRAWS):
        if len(out) == count:
            return out
        steps = (homogeneous_steps if homogeneous_steps is not None
                 else int(rng.integers(lo, hi + 1)))
        structure = _draw(rng, steps, homogeneous_steps is not None, task)
        if structure is None or structure in taken:
            continue
        if distinct_answers:
            # distinct as the verifier compares them: two counts in either order are one answer
            answer = tuple(sorted(final_values(structure)))
            if answer in answers:
                continue
            answers.add(answer)
        taken.add(structure)
        out.append(structure)
    raise TaskConfigError(f"{stream}: found only {len(out)} of {count} distinct problems with "
                          f"{lo}-{hi} steps; ask for fewer")


# Held-out splits per (structure, length), drawn in this fixed order so that every variant sees
# the same exclusions and the train pools do not depend on which variant is asked for.
_HELDOUT_KINDS = (("diverse", "varied"), ("diverse", "short"), ("homogeneous", "varied"))


@functools.lru_cache(maxsize=4)
def _eval_structures(task: TaskConfigV2) -> dict[str, list[Structure]]:
    taken: set[Structure] = set()
    out = {
        "test": _draw_split(task, "test", 0, task.num_test,
                            (task.test_min_steps, task.test_max_steps), None, taken,
                            distinct_answers=True),
        "rl": _draw_split(task, "rl", 0, task.num_rl_prompts,
                          (task.rl_min_steps, task.rl_max_steps), None, taken),
        "common_heldout": _draw_split(task, "common_heldout", 0, task.num_common_heldout,
                                      (task.min_steps, task.max_steps), None, taken),
    }
    for i, (structure, length) in enumerate(_HELDOUT_KINDS):
        out[f"heldout/{structure}-{length}"] = _draw_split(
            task, "heldout", i, task.num_heldout, _step_range(task, length),
            task.homogeneous_steps if structure == "homogeneous" else None, taken)
    return out


def _step_range(task: TaskConfigV2, length: str) -> tuple[int, int]:
    return (task.min_steps, task.short_max_steps if length == "short" else task.max_steps)


@functools.lru_cache(maxsize=8)
def _train_structures(task: TaskConfigV2, variant: VariantV2) -> list[tuple[int, Structure]]:
    """(pool index, structure): the pool of `variant.structure` filtered by length, the first
    `variant.size` of them.

    `short` filters the same stream as `varied` (one pool), so the short set's problems are the
    varied pool's short ones in the same order, with the same ids and text."""
    taken = {s for split in _eval_structures(task).values() for s in split}
    homogeneous = variant.structure == "homogeneous"
    rng = _rng(task.seed, _STREAMS["train"], int(homogeneous))
    out: list[tuple[int, Structure]] = []
    index = 0
    for _ in range(_MAX_DRAWS * 4):
        if len(out) == variant.size:
            return out
        steps = (task.homogeneous_steps if homogeneous
                 else int(rng.integers(task.min_steps, task.max_steps + 1)))
        structure = _draw(rng, steps, homogeneous, task)
        if structure is None or structure in taken:
            continue
        taken.add(structure)  # the pool has no duplicates
        index += 1
        if variant.length == "short" and steps > task.short_max_steps:
            continue
        out.append((index - 1, structure))
    raise TaskConfigError(f"train pool {variant.name}: found only {len(out)} problems")


# ---------------------------------------------------------------------------------------------
# Text

_PEOPLE = (("Mia", "she"), ("Leo", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"),
           ("Omar", "he"), ("Lina", "she"), ("Ravi", "he"), ("Emma", "she"), ("Kai", "he"),
           ("Nora", "she"), ("Tom", "he"))
_PLACES = ("farm", "shop", "library", "museum", "school", "bakery", "factory", "garden")
_OBJECTS = ("apples", "marbles", "stickers", "coins", "cards", "books", "shells", "pencils",
            "stamps", "cookies", "beads", "bottles")
_START = ("{N}'s {place} has {n} {o}.", "There are {n} {o} at the {place}.",
          "At first, the {place} holds {n} {o}.", "{N} counts {n} {o} at the {place}.")
# Each operation's sentences carry one keyword that `solve` reads (more / fewer / double /
# half) and, for add and sub, the one number.
_OP_SENTENCES = {
    "add": ("Then {n} more {o} arrive.", "{N} brings {n} more {o}.",
            "A delivery adds {n} more {o}.", "{P} buys {n} more {o}."),
    "sub": ("Then there are {n} fewer {o} after a sale.",
            "{N} sells some, so there are {n} fewer {o}.", "A storm leaves {n} fewer {o}.",
            "After a gift, the {place} has {n} fewer {o}."),
    "double": ("Then the number of {o} doubles.", "{N} manages to double the {o}.",
               "A big order makes the {o} double."),
    "halve": ("Then half of the {o} are sold, leaving half.", "{N} keeps only half of the {o}.",
              "A flood leaves half of the {o}."),
}
# The change as every one of its sentences words it ("{n} more {o}" and "{n} fewer {o}" appear
# verbatim in each add/subtract template): the quoted chain of thought's line labels.
_QUOTE = {"add": "{n} more {o}", "sub": "{n} fewer {o}", "double": "double the {o}",
          "halve": "half of the {o}"}
_QUESTION = ("How many {o} are there now?", "How many {o} does the {place} have at the end?",
             "How many {o} are left in the end?")


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str
    text: str
    answer: int | str
    starts: tuple[int, ...]
    objects: tuple[str, ...]
    ops: Ops

    @property
    def steps(self) -> int:
        return len(self.ops)

    def equations(self) -> list[tuple[int, str, int, int, int]]:
        """(counter, symbol, value before, operand, value after) per operation."""
        values, out = list(self.starts), []
        for op, operand, target in self.ops:
            after = _apply(op, values[target], operand)
            out.append((target, _SYMBOL[op], values[target], operand, after))
            values[target] = after
        return out


def _two(template: str) -> str:
    return template.replace("{n} {o}", "{n} {o} and {m} {o2}")


def _render(structure: Structure, *, seed: int, stream: str, salt: int, index: int) -> Problem:
    starts, ops = structure
    rng = _rng(seed, _STREAMS[stream], salt, index, _RENDER)
    name, pronoun = _PEOPLE[int(rng.integers(len(_PEOPLE)))]
    place = _PLACES[int(rng.integers(len(_PLACES)))]
    objects = [_OBJECTS[int(rng.integers(len(_OBJECTS)))]]
    if len(starts) == 2:
        others = [o for o in _OBJECTS if o != objects[0]]
        objects.append(others[int(rng.integers(len(others)))])

    def fill(templates: Sequence[str], n: int | None = None, obj: str = objects[0],
             m: int | None = None, obj2: str = "") -> str:
        template = templates[int(rng.integers(len(templates)))]
        return template.format(N=name, P=pronoun.capitalize(), n=n, o=obj, m=m, o2=obj2,
                               place=place)

    if len(starts) == 1:
        sentences = [fill(_START, starts[0])]
    else:
        sentences = [fill([_two(t) for t in _START], starts[0], objects[0], starts[1],
                          objects[1])]
    sentences += [fill(_OP_SENTENCES[op], operand, objects[target])
                  for op, operand, target in ops]
    sentences.append(fill(_QUESTION, obj=" and ".join(objects)))
    return Problem(id=f"v2-{stream}{salt or ''}-{index:06d}", text=" ".join(sentences),
                   answer=answer_of(structure), starts=starts, objects=tuple(objects), ops=ops)


_KEYWORDS = {"add": re.compile(r"\bmore\b"), "sub": re.compile(r"\bfewer\b"),
             "double": re.compile(r"\bdoubles?\b"), "halve": re.compile(r"\bhalf\b")}
_COUNT_RE = re.compile(r"(\d+) ([a-z]+)")
_SENTENCE_END_RE = re.compile(r"(?<=[.?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    """A problem's sentences (the first one introduces the counters)."""
    return _SENTENCE_END_RE.split(text.strip())


def start_counts(text: str) -> dict[str, int]:
    """{object: start value} from a problem's first sentence, in the order it names them (also
    task v1's: one "<number> <object>" pair)."""
    return {obj: int(n) for n, obj in _COUNT_RE.findall(sentences(text)[0])}
_NUMBER_RE = re.compile(r"\d+")


def solve(text: str) -> int | str:
    """The answer read from the problem text alone (an independent check of the generator):
    the first sentence's "<number> <object>" pairs are the counters, then each sentence's keyword
    names its operation and its object names the counter it changes."""
    parts = sentences(text)
    counts = start_counts(text)
    if not counts:
        raise ValueError(f"sentence {parts[0]!r}: no start value")
    objects = list(counts)
    values = list(counts.values())
    for sentence in parts[1:-1]:
        ops = [op for op, pattern in _KEYWORDS.items() if pattern.search(sentence)]
        if len(ops) != 1:
            raise ValueError(f"sentence {sentence!r}: operations {ops}")
        targets = [i for i, obj in enumerate(objects) if re.search(rf"\b{obj}\b", sentence)]
        if len(targets) != 1:
            raise ValueError(f"sentence {sentence!r}: counters {targets}")
        numbers = [int(n) for n in _NUMBER_RE.findall(sentence)]
        operand = numbers[0] if ops[0] in ("add", "sub") else 2
        values[targets[0]] = _apply(ops[0], values[targets[0]], operand)
    return values[0] if len(values) == 1 else answer_text(values)


def write_solution(problem: Problem, cot: str = "equations") -> str:
    """The canonical chain of thought in style `cot` (TaskConfigV2.cot), then the boxed answer.
    "equations": one equation per operation, prefixed by its object when there are two
    counters. "state": the start values, then per operation every counter, the changed one as
    its equation; "quoted": "state" with each operation's line led by the words its sentence
    uses for the change; "named": "quoted" with each count led by its object (one counter:
    all three are the same lines as "equations")."""
    two = len(problem.starts) == 2
    if cot in _STATE_STYLES and two:
        names = [f"{o} " if cot == "named" else "" for o in problem.objects]
        values = [str(v) for v in problem.starts]
        lines = [", ".join(name + v for name, v in zip(names, values, strict=True))]
        for (op, _, _), (target, symbol, a, n, b) in zip(problem.ops, problem.equations(),
                                                         strict=True):
            shown = list(values)
            shown[target] = f"{a} {symbol} {n} = {b}"
            values[target] = str(b)
            quote = (_QUOTE[op].format(n=n, o=problem.objects[target]) + ": "
                     if cot in _QUOTED_STYLES else "")
            lines.append(quote + ", ".join(name + v for name, v in zip(names, shown,
                                                                          strict=True)))
    else:
        lines = [(f"{problem.objects[target]}: " if two else "") + f"{a} {symbol} {n} = {b}"
                 for target, symbol, a, n, b in problem.equations()]
    lines.append(f"The answer is \\boxed{{{problem.answer}}}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Records


def _ops_text(problem: Problem) -> str:
    return ",".join(op for op, _, _ in problem.ops)


def _sft_record(problem: Problem, cot: str) -> dict:
    return {"id": problem.id,
            "messages": [{"role": "user", "content": problem.text},
                         {"role": "assistant", "content": write_solution(problem, cot)}],
            "answer": str(problem.answer), "steps": problem.steps, "ops": _ops_text(problem)}


def _prompt_record(problem: Problem) -> dict:
    return {"id": problem.id, "problem": problem.text, "answer": str(problem.answer),
            "steps": problem.steps, "ops": _ops_text(problem)}


def _check_task(task: object, variant: object = None) -> None:
    if not isinstance(task, TaskConfigV2):
        raise TaskConfigError(f"task v2: expected a TaskConfigV2, got {task!r}")
    if variant is not None and not isinstance(variant, VariantV2):
        raise TaskConfigError(f"task v2: expected a VariantV2, got {variant!r}")


def sft_records(variant: VariantV2, task: TaskConfigV2) -> tuple[list[dict], list[dict]]:
    """(train, own held-out) SFT records of `variant`."""
    _check_task(task, variant)
    heldout_key = f"heldout/{variant.structure}-{variant.length}"
    salt = _HELDOUT_KINDS.index((variant.structure, variant.length))
    train = [_sft_record(_render(s, seed=task.seed, stream="train",
                                 salt=int(variant.structure == "homogeneous"), index=i), task.cot)
             for i, s in _train_structures(task, variant)]
    heldout = [_sft_record(_render(s, seed=task.seed, stream="heldout", salt=salt, index=i),
                           task.cot)
               for i, s in enumerate(_eval_structures(task)[heldout_key])]
    return train, heldout


def common_heldout_records(task: TaskConfigV2) -> list[dict]:
    """The held-out set every checkpoint's generalization loss is measured on."""
    _check_task(task)
    return [_sft_record(_render(s, seed=task.seed, stream="common_heldout", salt=0, index=i),
                        task.cot)
            for i, s in enumerate(_eval_structures(task)["common_heldout"])]


def rl_records(task: TaskConfigV2) -> list[dict]:
    _check_task(task)
    return [_prompt_record(_render(s, seed=task.seed, stream="rl", salt=0, index=i))
            for i, s in enumerate(_eval_structures(task)["rl"])]


def test_records(task: TaskConfigV2) -> list[dict]:
    _check_task(task)
    return [_prompt_record(_render(s, seed=task.seed, stream="test", salt=0, index=i))
            for i, s in enumerate(_eval_structures(task)["test"])]


test_records.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
