"""sftrl.study_v2_diagnostics on hand-written samples whose shares are counted by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sftrl.data.synthetic_v2 import start_counts
from sftrl.study_v2_diagnostics import diagnose

PROBLEM = ("Ava's bakery has 30 apples and 18 bottles. A delivery adds 17 more apples. "
           "Then there are 7 fewer bottles after a sale. How many apples and bottles are left?")


def test_start_counts_come_from_the_first_sentence_in_order():
    assert start_counts(PROBLEM) == {"apples": 30, "bottles": 18}
    assert list(start_counts(PROBLEM)) == ["apples", "bottles"]


def test_state_style():
    right = "30, 18\n30 + 17 = 47, 18\n47, 18 - 7 = 11\nThe answer is \\boxed{47, 11}."
    # first line wrong (31), the carried 18 right, 31 + 17 = 48 right, then a carried 48 and an
    # equation 19 - 7 = 11 whose left side (19) is not the 18 above it and which is wrong
    wrong = "31, 18\n31 + 17 = 48, 18\n48, 19 - 7 = 11\nThe answer is \\boxed{48, 11}."
    out = diagnose([{"problem": PROBLEM, "responses": [right, wrong], "correct": [True, False]}])
    assert out["samples"] == 2 and out["pass@1"] == 0.5
    assert out["starts_read_right"] == 0.5  # one of two first lines
    assert out["equations"] == 4 and out["equations_right"] == 0.75
    # carried slots: right: 30, 18 | 47, 18 -> 4 of 4; wrong: 31, 18 | 48, 19 -> 3 of 4
    assert out["carried"] == 8 and out["carried_right"] == pytest.approx(7 / 8)


def test_equations_style_with_labels():
    good = "apples: 30 + 17 = 47\nbottles: 18 - 7 = 11\nThe answer is \\boxed{47, 11}."
    bad = "bottles: 30 + 17 = 47\napples: 18 - 7 = 12\nThe answer is \\boxed{47, 12}."
    out = diagnose([{"problem": PROBLEM, "responses": [good, bad], "correct": [True, False]}])
    assert out["equations"] == 4 and out["equations_right"] == 0.75
    assert out["starts_read_right"] == 0.5  # good: 2 of 2 first operands; bad: 0 of 2
    assert out["carried"] == 0 and out["carried_right"] is None


def test_task_v1_short_chain_of_thought():
    problem = "Omar keeps 31 cookies in a box. Omar gives away 2 cookies. How many now?"
    out = diagnose([{"problem": problem, "responses": ["Then 31 - 2 = 29.\nSo the answer is 29.",
                                                       "Then 30 - 2 = 27."],
                     "correct": [True, False]}])
    assert out["equations_right"] == 0.5 and out["starts_read_right"] == 0.5


def test_cli_prints_one_line_per_file(tmp_path):
    row = {"id": "a", "problem": PROBLEM, "answer": "47, 11", "extracted": ["47, 11"],
           "correct": [True], "responses": ["30, 18\n30 + 17 = 47, 18\n47, 18 - 7 = 11"]}
    path = tmp_path / "synthetic.jsonl"
    path.write_text(json.dumps(row) + "\n")
    result = subprocess.run([sys.executable, "-m", "sftrl.study_v2", "--diagnose", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["equations_right"] == 1.0 and printed["carried_right"] == 1.0
    missing = subprocess.run([sys.executable, "-m", "sftrl.study_v2", "--diagnose",
                              str(tmp_path / "none.jsonl")], capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


# quoted: the second sentence skipped (the first quote repeated and applied again);
# named: the bottles count changed where the apples sentence was (wrong slot), carried right
_QUOTED = ("30, 18\n17 more apples: 30 + 17 = 47, 18\n7 fewer bottles: 47, 18 - 7 = 11\n"
           "The answer is \\boxed{47, 11}.",
           "30, 18\n17 more apples: 30 + 17 = 47, 18\n17 more apples: 47 + 17 = 64, 18\n"
           "The answer is \\boxed{64, 18}.", 0.75)
_NAMED = ("apples 30, bottles 18\n17 more apples: apples 30 + 17 = 47, bottles 18\n"
          "7 fewer bottles: apples 47, bottles 18 - 7 = 11\nThe answer is \\boxed{47, 11}.",
          "apples 30, bottles 18\n17 more apples: apples 30, bottles 18 + 17 = 35\n"
          "7 fewer bottles: apples 30, bottles 35 - 7 = 28\nThe answer is \\boxed{30, 28}.", 1.0)


@pytest.mark.parametrize("right, wrong, quotes_right", [_QUOTED, _NAMED], ids=["quoted", "named"])
def test_quoted_and_named_styles(right: str, wrong: str, quotes_right: float):
    """Quotes are compared with the sentences in order; names are dropped before the counts
    are read, so the counts, equations and carries are all right in both samples."""
    out = diagnose([{"problem": PROBLEM, "responses": [right, wrong],
                     "correct": [True, False]}])
    assert out["quotes"] == 4 and out["quotes_right"] == quotes_right
    assert out["starts_read_right"] == 1.0
    assert out["equations"] == 4 and out["equations_right"] == 1.0
    assert out["carried"] == 8 and out["carried_right"] == 1.0
