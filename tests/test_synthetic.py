r"""sftrl.data.synthetic: reproducibility, independently checked answers, splits, variants, the
shipped tokenizer, bad configs and the command line.

Answers are checked three ways that do not trust the generator's value: `solve` re-reads the
problem text; the last `\boxed{}` of each solution is read by `sftrl.rewards.extract_answer`; and
every equation in a chain-of-thought is re-computed here, where only a wrong result that is
immediately corrected (a marked, deliberate mistake) is allowed.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sftrl.data import synthetic
from sftrl.data.synthetic import (
    CORRECTION_MARKERS,
    EQUATION_RE,
    PHRASINGS,
    SPECIAL_TOKENS,
    VARIANT_STYLES,
    ProblemParseError,
    SFTVariant,
    TaskConfig,
    TaskConfigError,
    make_problems,
    rl_records,
    sft_records,
    solve,
    write_solution,
)
from sftrl.rewards import extract_answer

SMALL = TaskConfig(num_heldout=40, num_rl_prompts=60, num_test=60)
SIZE = 120
ALL_VARIANTS = [SFTVariant(s, p, SIZE) for s in VARIANT_STYLES for p in PHRASINGS]
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a / b}
_CORRECTION_RE = re.compile(
    r"(\d+) ([-+*/]) (\d+) = (\d+)\. (?:" + "|".join(map(re.escape, CORRECTION_MARKERS))
    + r")(\d+) ([-+*/]) (\d+) = (\d+)")


def _all_sft(task: TaskConfig = SMALL) -> Iterator[tuple[SFTVariant, str, dict]]:
    for variant in ALL_VARIANTS:
        train, heldout = sft_records(variant, task)
        for split, records in (("train", train), ("heldout", heldout)):
            for record in records:
                yield variant, split, record


def _equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(r)) for a, op, b, r in EQUATION_RE.findall(text)]


def _is_right(a: int, op: str, b: int, r: int) -> bool:
    return _OPS[op](a, b) == r


def _check_arithmetic(solution: str) -> int:
    """Raises AssertionError on any wrong equation that is not a marked, corrected mistake.

    Returns the number of corrected mistakes.
    """
    corrected = set()
    for m in _CORRECTION_RE.finditer(solution):
        wrong, right = m.groups()[:4], m.groups()[4:]
        assert wrong[:3] == right[:3], f"correction restates another equation: {m.group(0)!r}"
        a, op, b, r = int(right[0]), right[1], int(right[2]), int(right[3])
        assert _is_right(a, op, b, r), f"correction is wrong: {m.group(0)!r}"
        assert not _is_right(a, op, b, int(wrong[3])), f"'mistake' is right: {m.group(0)!r}"
        corrected.add(m.start())
    for m in EQUATION_RE.finditer(solution):
        a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
        assert _is_right(a, op, b, r) or m.start() in corrected, (
            f"unmarked wrong equation {m.group(0)!r} in {solution!r}")
    return len(corrected)


# ---------------------------------------------------------------------------------------------
# Reproducibility and record formats
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_records_different_seed_different() -> None:
    variant = SFTVariant("long_cot", "diverse", 50)
    a = (sft_records(variant, SMALL), rl_records(SMALL), synthetic.test_records(SMALL))
    # A new, equal config object bypasses nothing: records depend only on the config's values.
    same = TaskConfig(num_heldout=40, num_rl_prompts=60, num_test=60)
    b = (sft_records(variant, same), rl_records(same), synthetic.test_records(same))
    assert a == b
    other = TaskConfig(seed=1, num_heldout=40, num_rl_prompts=60, num_test=60)
    c = (sft_records(variant, other), rl_records(other), synthetic.test_records(other))
    for split_a, split_c in zip(a[0] + a[1:], c[0] + c[1:], strict=True):
        texts_a = [json.dumps(r, sort_keys=True) for r in split_a]
        texts_c = [json.dumps(r, sort_keys=True) for r in split_c]
        assert len(set(texts_a) & set(texts_c)) < len(texts_a) // 4

    p1 = make_problems(30, min_steps=1, max_steps=4, seed=7)
    p2 = make_problems(30, min_steps=1, max_steps=4, seed=7)
    p3 = make_problems(30, min_steps=1, max_steps=4, seed=8)
    assert [p.text for p in p1] == [p.text for p in p2]
    assert [p.text for p in p1] != [p.text for p in p3]
    assert [write_solution(p, "long_cot") for p in p1] == [
        write_solution(p, "long_cot") for p in p2]


def test_pinned_problems() -> None:
    # Pins the generator across machines and versions: a change here silently changes every
    # experiment's data, so it must be deliberate (and the shipped tokenizer regenerated).
    p = make_problems(1, min_steps=2, max_steps=2, seed=0, phrasing="homogeneous")[0]
    assert p.text == ("Sam has 43 apples. Sam gives away 11 apples. Sam gives away 7 apples. "
                      "How many apples does Sam have now?")
    assert (p.answer, p.steps) == (25, 2)
    p = make_problems(1, min_steps=1, max_steps=3, seed=0)[0]
    assert p.text == ("Zoe keeps 32 coins in a box. Then she multiplies the number of coins "
                      "by 3. Zoe gives away 1 coin. Zoe buys 1 more coin. How many coins does "
                      "Zoe have in the end?")
    assert write_solution(p, "long_cot").splitlines()[1] == (
        "Step 1. Then she multiplies the number of coins by 3. This scales it by 3. "
        "32 * 3 = 96. Check: 96 / 3 = 32. Correct.")


def test_record_formats() -> None:
    train, heldout = sft_records(SFTVariant("short_cot", "diverse", 10), SMALL)
    for record in train + heldout:
        assert set(record) == {"id", "messages", "answer", "steps"}
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
        assert set(record["messages"][0]) == {"role", "content"}
        assert isinstance(record["answer"], str) and record["answer"].isdigit()
        assert isinstance(record["steps"], int) and isinstance(record["id"], str)
    for record in rl_records(SMALL) + synthetic.test_records(SMALL):
        assert set(record) == {"id", "problem", "answer", "steps"}
        assert isinstance(record["answer"], str) and record["answer"].isdigit()
    assert [r["id"] for r in train] == [f"train-{i:06d}" for i in range(10)]


# ---------------------------------------------------------------------------------------------
# Answers, checked independently
# ---------------------------------------------------------------------------------------------


def test_every_answer_is_right() -> None:
    count = 0
    for variant, _, record in _all_sft():
        problem, solution = (m["content"] for m in record["messages"])
        assert solve(problem) == int(record["answer"])
        assert extract_answer(solution) == record["answer"], (variant.name, solution)
        assert solution.rstrip().endswith(f"\\boxed{{{record['answer']}}}.")
        assert len(EQUATION_RE.findall(solution)) >= (0 if variant.style == "answer_only"
                                                     else record["steps"])
        _check_arithmetic(solution)
        count += 1
    for record in rl_records(SMALL) + synthetic.test_records(SMALL):
        assert solve(record["problem"]) == int(record["answer"])
        count += 1
    assert count == len(ALL_VARIANTS) * (SIZE + SMALL.num_heldout) + 120
    for p in make_problems(300, min_steps=1, max_steps=8, seed=3):
        assert solve(p) == p.answer == p.values[-1]
        assert all(1 <= v <= 200 for v in p.values)


def test_solve_reads_handwritten_text() -> None:
    text = ("Kim has 3 pens. Kim buys 4 more pens. She ends up with 2 times as many pens. "
            "Then she sells 5 of them. She splits the pens into 3 equal groups and keeps one "
            "group. How many pens does Kim have now?")
    assert solve(text) == 3


@pytest.mark.parametrize("text", [
    "Kim has pens. How many pens does Kim have now?",  # no start number
    "Kim has 3 pens. Kim sings 4 songs. How many pens does Kim have now?",  # no operation
    "Kim has 3 pens. Kim buys 4 more pens and loses 2. How many pens?",  # two numbers
    "Kim has 7 pens. Kim splits them into 2 equal groups. How many pens?",  # inexact division
    "Kim has 3 pens. Kim buys 4 more pens.",  # no question
    "Kim has 3 pens. How many of the 3 pens?",  # a number in the question
])
def test_solve_rejects_unreadable_text(text: str) -> None:
    with pytest.raises(ProblemParseError):
        solve(text)


def test_short_cot_is_a_chain_from_the_problem_to_the_answer() -> None:
    for phrasing in PHRASINGS:
        train, _ = sft_records(SFTVariant("short_cot", phrasing, SIZE), SMALL)
        for record in train:
            problem, solution = (m["content"] for m in record["messages"])
            eqs = _equations(solution)
            assert len(eqs) == record["steps"]
            assert eqs[0][0] == int(re.search(r"\d+", problem)[0])  # starts at the start value
            for prev, cur in itertools.pairwise(eqs):
                assert cur[0] == prev[3]
            assert eqs[-1][3] == int(record["answer"])
            assert all(_is_right(*eq) for eq in eqs)


def test_long_cot_mistakes_are_marked_and_corrected() -> None:
    problems = make_problems(60, min_steps=2, max_steps=3, seed=5)
    mistakes = 0
    for p in problems:
        solution = write_solution(p, "long_cot", mistake_prob=0.5, check_prob=0.5)
        mistakes += _check_arithmetic(solution)
        assert extract_answer(solution) == str(solve(p))
    assert mistakes > 20
    # Default settings: mistakes happen, but only occasionally.
    _, heldout = sft_records(SFTVariant("long_cot", "diverse", 10), SMALL)
    counts = [_check_arithmetic(r["messages"][1]["content"]) for r in heldout]
    assert 0 < sum(counts) < sum(r["steps"] for r in heldout) / 2
    # The checker itself catches an unmarked wrong equation.
    bad = write_solution(problems[0], "long_cot", mistake_prob=0.0).replace(
        " = ", " = 1", 1)
    with pytest.raises(AssertionError, match="unmarked wrong equation"):
        _check_arithmetic(bad)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_phrasing", PHRASINGS)
def test_splits_are_disjoint(eval_phrasing: str) -> None:
    # With homogeneous wording a text is exactly its problem's math, so disjoint texts across
    # homogeneous SFT and homogeneous RL/test splits also prove the math is disjoint.
    task = TaskConfig(num_heldout=40, num_rl_prompts=60, num_test=60,
                      eval_phrasing=eval_phrasing)
    texts: dict[str, set[str]] = {
        "rl": {r["problem"] for r in rl_records(task)},
        "test": {r["problem"] for r in synthetic.test_records(task)},
    }
    for phrasing in PHRASINGS:
        train, heldout = sft_records(SFTVariant("answer_only", phrasing, 300), task)
        texts[f"train-{phrasing}"] = {r["messages"][0]["content"] for r in train}
        texts[f"heldout-{phrasing}"] = {r["messages"][0]["content"] for r in heldout}
        assert len(texts[f"train-{phrasing}"]) == 300  # no duplicates inside a split either
    names = sorted(texts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not texts[a] & texts[b], (a, b)


def test_test_set_is_harder_and_ranges_hold() -> None:
    train, heldout = sft_records(SFTVariant("answer_only", "diverse", 300), SMALL)
    sft_steps = [r["steps"] for r in train + heldout]
    test_steps = [r["steps"] for r in synthetic.test_records(SMALL)]
    rl_steps = [r["steps"] for r in rl_records(SMALL)]
    assert set(sft_steps) == set(range(SMALL.min_steps, SMALL.max_steps + 1))
    assert set(rl_steps) <= set(range(SMALL.rl_min_steps, SMALL.rl_max_steps + 1))
    assert set(test_steps) == set(range(SMALL.test_min_steps, SMALL.test_max_steps + 1))
    assert max(test_steps) > max(sft_steps)
    assert statistics.mean(test_steps) > statistics.mean(sft_steps) + 1
    assert all(
        solve(r["problem"]) == int(r["answer"]) for r in synthetic.test_records(SMALL))


def test_variants_share_problems_and_sizes_nest() -> None:
    by_style = {s: sft_records(SFTVariant(s, "diverse", 50), SMALL) for s in VARIANT_STYLES}
    for split in (0, 1):
        keys = {s: [(r["id"], r["messages"][0]["content"], r["answer"]) for r in recs[split]]
                for s, recs in by_style.items()}
        assert keys["answer_only"] == keys["short_cot"] == keys["long_cot"]
    homogeneous = sft_records(SFTVariant("long_cot", "homogeneous", 50), SMALL)[0]
    assert [r["answer"] for r in homogeneous] == [r["answer"] for r in by_style["long_cot"][0]]
    bigger, heldout = sft_records(SFTVariant("long_cot", "diverse", 80), SMALL)
    assert bigger[:50] == by_style["long_cot"][0]
    assert heldout == by_style["long_cot"][1]


def test_step_mix_does_not_depend_on_size() -> None:
    # Sizes are compared against each other, so a larger size must not hold relatively fewer
    # easy problems (1-step problems are few: about 2,000 exist).
    train, _ = sft_records(SFTVariant("answer_only", "homogeneous", 3000), SMALL)
    for part in (train[:300], train[-1000:]):
        shares = [sum(r["steps"] == k for r in part) / len(part) for k in (1, 2, 3)]
        assert all(abs(share - 1 / 3) < 0.06 for share in shares), shares


# ---------------------------------------------------------------------------------------------
# Variants differ as designed
# ---------------------------------------------------------------------------------------------


def _skeleton(text: str) -> str:
    return re.sub(r"apples?", "apples", re.sub(r"\d+", "#", text))


def test_styles_and_phrasings_differ_as_designed() -> None:
    lengths: dict[tuple[str, str], float] = {}
    for style in VARIANT_STYLES:
        for phrasing in PHRASINGS:
            train, _ = sft_records(SFTVariant(style, phrasing, SIZE), SMALL)
            solutions = [r["messages"][1]["content"] for r in train]
            lengths[style, phrasing] = statistics.mean(len(s) for s in solutions)
            if style == "answer_only" and phrasing == "homogeneous":
                assert all(re.fullmatch(r"The answer is \\boxed\{\d+\}\.", s) for s in solutions)
    for phrasing in PHRASINGS:
        assert (lengths["answer_only", phrasing] < lengths["short_cot", phrasing]
                < lengths["long_cot", phrasing])
    assert lengths["long_cot", "homogeneous"] > 3 * lengths["short_cot", "homogeneous"]

    # Homogeneous: one template per sentence kind (start, 4 operations, question) and one per
    # solution line kind; diverse: many.
    def sentence_skeletons(phrasing: str) -> set[str]:
        train, _ = sft_records(SFTVariant("long_cot", phrasing, SIZE), SMALL)
        return {_skeleton(s) for r in train
                for s in re.split(r"(?<=[.?])\s+", r["messages"][0]["content"])}

    homogeneous, diverse = sentence_skeletons("homogeneous"), sentence_skeletons("diverse")
    assert len(homogeneous) == 6, homogeneous
    assert len(diverse) > 30
    train, _ = sft_records(SFTVariant("short_cot", "homogeneous", SIZE), SMALL)
    lines = {_skeleton(line) for r in train for line in r["messages"][1]["content"].splitlines()}
    assert lines == {"# + # = #", "# - # = #", "# * # = #", "# / # = #",
                     "The answer is \\boxed{#}."}
    train, _ = sft_records(SFTVariant("long_cot", "homogeneous", SIZE), SMALL)
    markers = {m for r in train for m in CORRECTION_MARKERS if m in r["messages"][1]["content"]}
    assert markers == {CORRECTION_MARKERS[0]}


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic.tokenizer_dir()))


def test_shipped_tokenizer_loads_and_renders_the_chat_template(hf_tokenizer: Any) -> None:
    tok = hf_tokenizer
    assert len(tok) <= 512
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|end|>")
    messages = [{"role": "user", "content": "Q 12?"}, {"role": "assistant", "content": "A"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<|bos|><|user|>\nQ 12?<|end|>\n<|assistant|>\nA<|end|>\n")
    assert tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == (
        "<|bos|><|user|>\nQ 12?<|end|>\n<|assistant|>\n")
    ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert ids[:2] == [1, 2] and ids.count(4) == 2  # bos once, one eos per turn
    # Plain encoding adds no specials; the chat template owns the bos.
    assert 1 not in tok("Sam has 12 apples.")["input_ids"]
    with pytest.raises(Exception, match="unsupported role"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_tokenizer_round_trips_all_texts(hf_tokenizer: Any) -> None:
    tok = hf_tokenizer
    texts = [m["content"] for _, _, r in _all_sft() for m in r["messages"]]
    texts += [r["problem"] for r in synthetic.test_records(SMALL)]
    texts += ["naïve café – 名字 🙂\t\n  x", "\\boxed{-3/4}", "", "  leading and trailing  "]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids) == text
    # Digits are one per token (a leading space may ride with the first digit).
    for token in tok.convert_ids_to_tokens(tok("12 + 345 = 357")["input_ids"]):
        assert len(re.sub(r"\D", "", token)) <= 1, token


def test_shipped_tokenizer_regenerates_byte_identically(tmp_path: Path) -> None:
    assert synthetic.main(["--write-tokenizer", f"--tokenizer-out={tmp_path}"]) == 0
    shipped = sorted(p.name for p in synthetic.tokenizer_dir().iterdir())
    assert shipped == ["tokenizer.json", "tokenizer_config.json"]
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (synthetic.tokenizer_dir() / name).read_bytes()
    with pytest.raises(TaskConfigError, match="vocab_size"):
        synthetic.train_tokenizer(tmp_path / "x", vocab_size=600)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"min_steps": 0}, "min_steps"),
    ({"min_steps": 3, "max_steps": 2}, "min_steps"),
    ({"max_steps": True}, "max_steps"),
    ({"test_max_steps": 3}, "test_max_steps"),  # not harder than SFT
    ({"test_min_steps": 0}, "test_min_steps"),
    ({"num_heldout": 0}, "num_heldout"),
    ({"num_rl_prompts": "10"}, "num_rl_prompts"),
    ({"eval_phrasing": "mixed"}, "eval_phrasing"),
    ({"mistake_prob": 1.5}, "mistake_prob"),
    ({"rl_min_steps": 4, "rl_max_steps": 2}, "rl_min_steps"),
])
def test_bad_task_config_raises_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(TaskConfigError, match=rf"TaskConfig\.{field}\b"):
        TaskConfig(**kwargs)


@pytest.mark.parametrize(("name", "match"), [
    ("long_cot-diverse", "expected"),
    ("medium_cot-diverse-100", "SFTVariant.style"),
    ("long_cot-varied-100", "SFTVariant.phrasing"),
    ("long_cot-diverse-0", "SFTVariant.size"),
    ("long_cot-diverse-1k", "size"),
    ("long-cot-diverse-100", "expected"),
])
def test_bad_variant_names_raise(name: str, match: str) -> None:
    with pytest.raises(TaskConfigError, match=match):
        SFTVariant.parse(name)


def test_variant_name_round_trips_and_impossible_requests_raise() -> None:
    variant = SFTVariant.parse("long_cot-diverse-2000")
    assert variant == SFTVariant("long_cot", "diverse", 2000)
    assert variant.name == "long_cot-diverse-2000"
    assert issubclass(TaskConfigError, ValueError)
    with pytest.raises(TaskConfigError, match="cannot find"):
        make_problems(5000, min_steps=1, max_steps=1, seed=0)
    with pytest.raises(TaskConfigError, match="phrasing"):
        make_problems(3, min_steps=1, max_steps=2, seed=0, phrasing="fancy")
    with pytest.raises(TaskConfigError, match="style"):
        write_solution(make_problems(1, min_steps=1, max_steps=1, seed=0)[0], "essay")


# ---------------------------------------------------------------------------------------------
# Files and the command line
# ---------------------------------------------------------------------------------------------


def test_cli_writes_every_split(tmp_path: Path) -> None:
    rc = synthetic.main([f"--out={tmp_path}", "--seed=2",
                         "--variants=long_cot-diverse-30,answer_only-homogeneous-20"])
    assert rc == 0
    manifest = json.loads((tmp_path / "task.json").read_text())
    assert manifest["variants"] == ["long_cot-diverse-30", "answer_only-homogeneous-20"]
    assert manifest["task"]["seed"] == 2
    for key, rel in manifest["files"].items():
        lines = (tmp_path / rel).read_text().splitlines()
        assert len(lines) == manifest["counts"][key]
        for line in lines:
            record = json.loads(line)
            text = record.get("problem") or record["messages"][0]["content"]
            assert solve(text) == int(record["answer"])
    assert manifest["counts"]["long_cot-diverse-30/train"] == 30
    assert manifest["counts"]["test"] == TaskConfig().num_test
    assert synthetic.main([f"--out={tmp_path}", "--variants=bogus-x-1"]) == 2
    with pytest.raises(TaskConfigError, match="duplicate"):
        synthetic.write_task(tmp_path, SMALL, [SFTVariant("long_cot", "diverse", 5)] * 2)
