"""What a task v2 model gets right inside its chain of thought, read from its samples alone.

Pilots that size task v2 (docs/quagmire_v2/PLAN.md) may look at gate quantities only; these are
such quantities: they say which part of the task SFT has not learnt yet (reading the start values
out of the wording, carrying counts from line to line, the arithmetic), never how a proxy relates
to a post-RL result. `python -m sftrl.study_v2 --diagnose FILES` prints them per sample file.

Both chain-of-thought styles of `sftrl.data.synthetic_v2` are read:
    equations   "apples: 30 + 17 = 47" (the object label only with two counters)
    state       "30, 18" then "30 + 17 = 47, 18": every count on every line
    quoted      "30, 18" then "17 more apples: 30 + 17 = 47, 18": state lines led by the
                change as its sentence words it
    named       "apples 30, bottles 18" then "17 more apples: apples 30 + 17 = 47, bottles 18":
                quoted lines with every count led by its object (names are dropped before
                the counts are read)
(and task v1's short chain of thought, "Then 31 - 2 = 29.", read like "equations").

The start values are read from the problem's first sentence ("... 30 apples and 18 bottles.")
by the task's own reader, `synthetic_v2.start_counts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from sftrl.data.synthetic_v2 import sentences, start_counts

_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_LABELLED = re.compile(r"(?:([a-z]+): )?(\d+) ([-+*/]) (\d+) = (\d+)")
_CHANGE = re.compile(r"\d+ (?:more|fewer) [a-z]+|double the [a-z]+|half of the [a-z]+")
# a count led by its object's name ("named" style): "apples 30" or "apples 30 + 17 = 47"
_NAMED_SLOT = re.compile(r"(?:(?<=, )|^)[a-z]+ (?=\d)")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
          "/": lambda a, b: a / b}


def _right(a: int, op: str, b: int, c: int) -> bool:
    return _APPLY[op](a, b) == c


def _state_lines(lines: Sequence[str]) -> list[list[str]] | None:
    """The lines before the answer split into slots, if the response is in the state style."""
    rows = [line.split(", ") for line in lines]
    if not rows or not all(slot.isdigit() for slot in rows[0]):
        return None
    return rows


def changes(problem: str) -> list[str]:
    """The change each operation sentence states, in the words the quoted style copies."""
    found = [_CHANGE.search(sentence) for sentence in sentences(problem)[1:-1]]
    return [match[0] if match else "" for match in found]


def _tally(response: str, starts: dict[str, int], wanted: Sequence[str],
           counts: dict[str, int]) -> None:
    """Adds one response's counts; `starts` and `wanted` (the sentences' changes) are read from
    its problem once per prompt."""
    lines = [line for line in response.split("\n") if line and not line.startswith("The answer")]
    values = list(starts.values())
    quotes = [line.split(": ", 1)[0] for line in lines[1:] if ": " in line]
    # quoted and named styles: the i-th line's quote should be the i-th sentence's change
    if quotes and _state_lines([_NAMED_SLOT.sub("", lines[0])]):
        counts["quotes"] += len(quotes)
        counts["quotes_right"] += sum(q == w for q, w in zip(quotes, wanted, strict=False))
        lines = lines[:1] + [line.split(": ", 1)[-1] for line in lines[1:]]
    if lines and _NAMED_SLOT.match(lines[0]):
        lines = [_NAMED_SLOT.sub("", line) for line in lines]
    state = _state_lines(lines) if len(values) == 2 else None
    if state is not None:
        counts["first_line"] += 1
        counts["first_line_right"] += [int(s) for s in state[0]] == values
        previous = [int(s) for s in state[0]]
        for slots in state[1:]:
            if len(slots) != len(previous):
                break
            current = []
            for i, slot in enumerate(slots):
                match = _EQUATION.fullmatch(slot)
                left = int(match[1]) if match else int(slot) if slot.isdigit() else None
                if left is None:
                    return
                counts["carried"] += 1
                counts["carried_right"] += left == previous[i]
                if match:
                    counts["equations"] += 1
                    counts["equations_right"] += _right(int(match[1]), match[2], int(match[3]),
                                                        int(match[4]))
                current.append(int(match[4]) if match else left)
            previous = current
        return
    seen: set[str] = set()
    for line in lines:
        match = _LABELLED.search(line)
        if not match:
            continue
        label, a, op, b, c = match[1] or "", int(match[2]), match[3], int(match[4]), int(match[5])
        counts["equations"] += 1
        counts["equations_right"] += _right(a, op, b, c)
        if label not in seen:  # the first equation of each counter starts from its start value
            seen.add(label)
            counts["first_operands"] += 1
            want = starts.get(label) if label else (values[0] if values else None)
            counts["first_operands_right"] += want == a


def diagnose(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Shares over every sample of every prompt (rows: {"problem", "responses", "correct"}):
    pass@1; equations right; start values read right (state: the first line holds every start
    value; equations: each counter's first equation starts from its start value); counts
    carried right (state: each later line's counts, or the changed one's left side, equal the
    line above); quotes right (quoted: the i-th line's quote is the i-th operation sentence's
    change, so a skipped or repeated sentence shows here). A share with nothing to count is
    None, with its count beside it."""
    counts = {key: 0 for key in ("samples", "right", "equations", "equations_right",
                                 "first_line", "first_line_right", "first_operands",
                                 "first_operands_right", "carried", "carried_right",
                                 "quotes", "quotes_right")}
    for row in rows:
        starts, wanted = start_counts(row["problem"]), changes(row["problem"])
        for response, correct in zip(row["responses"], row["correct"], strict=True):
            counts["samples"] += 1
            counts["right"] += bool(correct)
            _tally(response, starts, wanted, counts)

    def share(part: str, whole: str) -> float | None:
        return counts[part] / counts[whole] if counts[whole] else None

    return {"samples": counts["samples"], "pass@1": share("right", "samples"),
            "equations": counts["equations"],
            "equations_right": share("equations_right", "equations"),
            "starts_read_right": (share("first_line_right", "first_line") if counts["first_line"]
                                  else share("first_operands_right", "first_operands")),
            "carried": counts["carried"], "carried_right": share("carried_right", "carried"),
            "quotes": counts["quotes"], "quotes_right": share("quotes_right", "quotes")}
