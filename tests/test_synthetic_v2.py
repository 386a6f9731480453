"""Task v2 (sftrl.data.synthetic_v2): determinism, unguessable answers, step ranges, disjoint
splits, structure and length variants, and the config/sources wiring."""

from __future__ import annotations

import collections
import dataclasses
import re

import pytest

from sftrl import config_lib
from sftrl.data import sources, synthetic
from sftrl.data import synthetic_v2 as v2

TASK = v2.TaskConfigV2()
# Small sizes keep the tests fast; the full default splits are drawn once (cached).
DIVERSE = v2.VariantV2("diverse", "varied", 600)
SHORT = v2.VariantV2("diverse", "short", 300)
HOMOGENEOUS = v2.VariantV2("homogeneous", "varied", 300)


def _problems(records: list[dict]) -> list[str]:
    return [r["messages"][0]["content"] if "messages" in r else r["problem"] for r in records]


def test_deterministic_per_seed_and_seeds_differ():
    first = (v2.test_records(TASK), v2.sft_records(DIVERSE, TASK))
    v2._eval_structures.cache_clear()
    v2._train_structures.cache_clear()
    assert (v2.test_records(TASK), v2.sft_records(DIVERSE, TASK)) == first
    other = dataclasses.replace(TASK, seed=1)
    assert _problems(v2.test_records(other))[:20] != _problems(first[0])[:20]


def test_answers_cannot_be_guessed():
    test = v2.test_records(TASK)
    answers = collections.Counter(r["answer"] for r in test)
    assert len(answers) >= 1000  # >= 1000 distinct answers on the test set
    # The best constant answer's pass@1 on the evaluated set (the first 128 prompts) and on
    # the whole test set.
    for evaluated in (test[:128], test):
        counts = collections.Counter(r["answer"] for r in evaluated)
        assert counts.most_common(1)[0][1] / len(evaluated) < 0.01
    values = sorted(int(a) for a in answers)
    assert values[-1] >= 1000 and len({len(str(v)) for v in values}) >= 2  # 3- and 4-digit


def test_answers_are_correct_and_solutions_consistent():
    for record in v2.test_records(TASK)[:200] + v2.rl_records(TASK)[:200]:
        assert v2.solve(record["problem"]) == int(record["answer"])
    train, heldout = v2.sft_records(DIVERSE, TASK)
    for record in train[:200] + heldout[:50]:
        text, solution = (m["content"] for m in record["messages"])
        assert v2.solve(text) == int(record["answer"])
        lines = solution.splitlines()
        assert len(lines) == record["steps"] + 1
        assert lines[-1] == f"The answer is \\boxed{{{record['answer']}}}."
        for line in lines[:-1]:  # every equation is true
            match = synthetic.EQUATION_RE.fullmatch(line)
            assert match, line
            left, op, right, result = match.groups()
            a, b = int(left), int(right)
            assert {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op] == int(result)
            assert op != "/" or a % b == 0


def test_step_ranges():
    steps = {name: collections.Counter(r["steps"] for r in records) for name, records in (
        ("test", v2.test_records(TASK)), ("rl", v2.rl_records(TASK)),
        ("common", v2.common_heldout_records(TASK)), ("train", v2.sft_records(DIVERSE, TASK)[0]),
        ("short", v2.sft_records(SHORT, TASK)[0]),
        ("homogeneous", v2.sft_records(HOMOGENEOUS, TASK)[0]))}
    assert set(steps["train"]) == set(steps["common"]) == {1, 2, 3, 4}
    assert set(steps["test"]) == set(steps["rl"]) == {2, 3, 4, 5}
    # The test range overlaps SFT's and extends it by one step.
    assert max(steps["test"]) == max(steps["train"]) + 1
    assert set(steps["short"]) == {1, 2}
    assert set(steps["homogeneous"]) == {3}
    with pytest.raises(synthetic.TaskConfigError, match="more than one step"):
        v2.TaskConfigV2(test_max_steps=6)


def test_splits_are_disjoint():
    groups = {"test": v2.test_records(TASK), "rl": v2.rl_records(TASK),
              "common": v2.common_heldout_records(TASK)}
    for variant in (DIVERSE, SHORT, HOMOGENEOUS):
        train, heldout = v2.sft_records(variant, TASK)
        groups[f"{variant.name}/train"] = train
        groups[f"{variant.name}/heldout"] = heldout
    texts = {name: set(_problems(records)) for name, records in groups.items()}
    # No problem text (hence no problem) repeats within a split, nor across split kinds:
    # every train set is disjoint from every test/RL/held-out set.
    for name, records in groups.items():
        assert len(texts[name]) == len(records), name
    evaluation = [n for n in texts if not n.endswith("/train")]
    for i, a in enumerate(evaluation):
        for b in evaluation[i + 1:]:
            assert not texts[a] & texts[b], (a, b)
        for train in (n for n in texts if n.endswith("/train")):
            assert not texts[a] & texts[train], (a, train)
    structures = {name: {(r["steps"], r["ops"], r["answer"]) for r in records}
                  for name, records in groups.items()}
    assert structures  # the structure keys exist (ops and steps recorded)


def test_structure_variants():
    diverse = v2.sft_records(v2.VariantV2("diverse", "varied", 2000), TASK)[0]
    homogeneous = v2.sft_records(v2.VariantV2("homogeneous", "varied", 2000), TASK)[0]
    patterns = collections.Counter(
        tuple(op in ("add", "sub") for op in r["ops"].split(",")) for r in homogeneous)
    assert list(patterns) == [(True, False, True)]  # add/sub, double/halve, add/sub
    diverse_patterns = {r["ops"] for r in diverse}
    assert len(diverse_patterns) > 50  # many operation sequences of every length
    ops = collections.Counter(op for r in diverse for op in r["ops"].split(","))
    assert set(ops) == set(v2.OPS) and min(ops.values()) > 0.1 * sum(ops.values())


def test_length_variants_share_one_pool():
    varied = v2.sft_records(v2.VariantV2("diverse", "varied", 1200), TASK)[0]
    short = v2.sft_records(v2.VariantV2("diverse", "short", 300), TASK)[0]
    varied_short = [r for r in varied if r["steps"] <= TASK.short_max_steps]
    # `short` is the varied pool's short problems, in order (one pool, filtered).
    assert _problems(short)[: len(varied_short)] == _problems(varied_short)[: len(short)]
    # A smaller size is a prefix of a larger one.
    assert v2.sft_records(v2.VariantV2("diverse", "varied", 100), TASK)[0] == varied[:100]
    # Short examples are shorter (problem and solution, in characters).
    mean = {name: sum(len(m["content"]) for r in rs for m in r["messages"]) / len(rs)
            for name, rs in (("varied", varied), ("short", short))}
    assert mean["short"] < 0.8 * mean["varied"]


def test_variant_validation():
    assert DIVERSE.name == "v2-diverse-varied-600"
    with pytest.raises(synthetic.TaskConfigError, match="structure"):
        v2.VariantV2("mixed", "varied", 10)
    with pytest.raises(synthetic.TaskConfigError, match="short"):
        v2.VariantV2("homogeneous", "short", 10)


def test_config_selects_task_v2():
    c = config_lib.base_config()
    c.data.synthetic.update(version=2, structure="diverse", length="short", size=300)
    c.eval.common_heldout = "synthetic"
    assert sources.dataset_name(c.data) == "v2-diverse-short-300"
    splits = sources.sft_splits(c.data)
    assert splits.train == v2.sft_records(SHORT, TASK)[0]
    assert sources.synthetic_test_records(c.data) == v2.test_records(TASK)
    assert sources.synthetic_rl_records(c.data) == v2.rl_records(TASK)
    common = sources.common_heldout(c)
    assert common == v2.common_heldout_records(TASK)[: c.data.max_heldout_examples]
    config_lib.validate(c, num_devices=1)
    c.data.synthetic.version = 1  # v1 has no common held-out split
    with pytest.raises(config_lib.ConfigError, match="common_heldout"):
        config_lib.validate(c, num_devices=1)
    c.eval.common_heldout = ""
    c.data.synthetic.version = 3
    with pytest.raises(config_lib.ConfigError, match="version"):
        config_lib.validate(c, num_devices=1)


TWO = v2.TaskConfigV2(counters=2, ops="add,sub", min_start=10, max_start=89, max_value=99)


def test_two_counters_answers_cannot_be_guessed_and_are_correct():
    test = v2.test_records(TWO)
    # distinct as the verifier compares them (two counts in either order are one answer)
    assert len({frozenset(r["answer"].split(", ")) for r in test}) == len(test) >= 1000
    for evaluated in (test[:128], test):
        counts = collections.Counter(r["answer"] for r in evaluated)
        assert counts.most_common(1)[0][1] / len(evaluated) < 0.01
    for record in test[:200] + v2.rl_records(TWO)[:200]:
        assert v2.solve(record["problem"]) == record["answer"]
    train, _ = v2.sft_records(v2.VariantV2("diverse", "varied", 300), TWO)
    for record in train:
        text, solution = (m["content"] for m in record["messages"])
        assert v2.solve(text) == record["answer"]
        values = {obj: int(n) for n, obj in re.findall(r"(\d+) ([a-z]+)", text.split(".")[0])}
        assert len(values) == 2
        *equations, last = solution.splitlines()
        assert len(equations) == record["steps"]
        for line in equations:  # every equation is true and continues its own counter
            obj, a, sym, b, result = re.fullmatch(r"([a-z]+): (\d+) ([+-]) (\d+) = (\d+)",
                                                  line).groups()
            assert values[obj] == int(a)
            values[obj] = int(a) + int(b) if sym == "+" else int(a) - int(b)
            assert values[obj] == int(result) and 10 <= values[obj] <= 99
        assert last == f"The answer is \\boxed{{{', '.join(map(str, values.values()))}}}."


def test_two_counters_homogeneous_structure_alternates():
    records = v2.sft_records(v2.VariantV2("homogeneous", "varied", 200), TWO)[0]
    shapes = {(r["ops"], tuple(line.split(":")[0] == r["messages"][1]["content"].split(":")[0]
                               for line in r["messages"][1]["content"].splitlines()[:-1]))
              for r in records}
    assert shapes == {("add,sub,add", (True, False, True))}
    with pytest.raises(synthetic.TaskConfigError, match="counters"):
        v2.TaskConfigV2(counters=3)
    with pytest.raises(synthetic.TaskConfigError, match="ops"):
        v2.TaskConfigV2(ops="add,mul")


_STATE_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}


@pytest.mark.parametrize("split", ["train", "common_heldout"])
def test_state_chain_of_thought_tracks_both_counters(split: str):
    """cot="state", read back with nothing from the generator: the first line is the two start
    counts in the order the problem names them, each later line changes exactly one count by a
    right equation whose left side is that count on the line above, and the boxed answer is the
    last line's counts."""
    task = v2.TaskConfigV2(ops="add,sub", counters=2, min_start=10, max_start=89, max_value=99,
                           cot="state")
    records = (v2.sft_records(v2.VariantV2("diverse", "varied", 200), task)[0]
               if split == "train" else v2.common_heldout_records(task))
    for record in records:
        problem, solution = (m["content"] for m in record["messages"])
        *lines, last = solution.split("\n")
        starts = [int(n) for n in re.findall(r"(\d+) [a-z]+", problem.split(". ")[0])[:2]]
        assert [int(n) for n in lines[0].split(", ")] == starts, (problem, solution)
        values = starts
        for line in lines[1:]:
            slots = line.split(", ")
            changed = [i for i, slot in enumerate(slots) if "=" in slot]
            assert len(slots) == 2 and len(changed) == 1, line
            i = changed[0]
            a, op, b, _, c = slots[i].split()
            assert int(a) == values[i] and _STATE_OPS[op](int(a), int(b)) == int(c), line
            assert int(slots[1 - i]) == values[1 - i], line
            values = [int(c) if j == i else values[j] for j in range(2)]
        assert last == f"The answer is \\boxed{{{values[0]}, {values[1]}}}."
        assert record["answer"] == f"{values[0]}, {values[1]}"


def _same_problems_in_two_styles(cot: str, other: str, size: int) -> list[tuple[dict, dict]]:
    """The SFT records of one two-counter data set written in two chain-of-thought styles."""
    kwargs = dict(ops="add,sub", counters=2, min_start=10, max_start=89, max_value=99,
                  max_operand=9)
    variant = v2.VariantV2("diverse", "varied", size)
    first, second = (v2.sft_records(variant, v2.TaskConfigV2(cot=style, **kwargs))[0]
                     for style in (cot, other))
    return list(zip(first, second, strict=True))


def test_quoted_chain_of_thought_leads_each_line_with_its_sentence_words():
    """cot="quoted": each line after the first starts with words copied verbatim from the
    operation sentence it carries out, in the problem's order, then the state line "state"
    writes for the same problem."""
    for q, s in _same_problems_in_two_styles("quoted", "state", 100):
        problem, solution = (m["content"] for m in q["messages"])
        assert s["messages"][0]["content"] == problem
        q_lines, s_lines = solution.split("\n"), s["messages"][1]["content"].split("\n")
        assert q_lines[0] == s_lines[0] and q_lines[-1] == s_lines[-1]
        operation_sentences = problem.split(". ")[1:-1]
        assert len(q_lines) == len(operation_sentences) + 2
        for line, plain, sentence in zip(q_lines[1:-1], s_lines[1:-1], operation_sentences,
                                         strict=True):
            quote, rest = line.split(": ")
            assert rest == plain
            assert re.fullmatch(r"\d+ (more|fewer) [a-z]+", quote) and quote in sentence, line


def test_named_chain_of_thought_is_quoted_with_each_count_behind_its_object():
    for n, q in _same_problems_in_two_styles("named", "quoted", 60):
        problem = n["messages"][0]["content"]
        objects = re.findall(r"\d+ ([a-z]+)", problem.split(". ")[0])[:2]
        n_lines = n["messages"][1]["content"].split("\n")
        q_lines = q["messages"][1]["content"].split("\n")
        assert n_lines[-1] == q_lines[-1]
        for n_line, q_line in zip(n_lines[:-1], q_lines[:-1], strict=True):
            head, _, slots = n_line.rpartition(": ")
            q_head, _, q_slots = q_line.rpartition(": ")
            assert head == q_head
            pairs = [slot.split(" ", 1) for slot in slots.split(", ")]
            assert [name for name, _ in pairs] == objects, n_line
            assert ", ".join(rest for _, rest in pairs) == q_slots


def test_unknown_chain_of_thought_style_is_refused():
    with pytest.raises(v2.TaskConfigError, match="cot"):
        v2.TaskConfigV2(cot="prose")


def test_max_operand_bounds_every_add_and_subtract_and_answers_stay_unguessable():
    task = v2.TaskConfigV2(ops="add,sub", counters=2, min_start=10, max_start=89, max_value=99,
                           cot="state", max_operand=9)
    records = v2.sft_records(v2.VariantV2("diverse", "varied", 300), task)[0]
    operands = [int(b) for r in records
                for b in re.findall(r"\d+ [-+] (\d+) =", r["messages"][1]["content"])]
    assert operands and max(operands) == 9 and min(operands) == 2
    test = v2.test_records(task)
    assert len({r["answer"] for r in test}) >= 1000
    with pytest.raises(v2.TaskConfigError, match="max_operand"):
        v2.TaskConfigV2(max_operand=30)
