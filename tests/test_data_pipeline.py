"""SFT and RL prompt input pipelines: packing, padding, overlong, shuffling, resume, sharding."""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

import numpy as np
import pytest

from sftrl.data.prompts import (
    BENCHMARK_TEMPLATES,
    PROMPT_TEMPLATES,
    PromptDataConfig,
    PromptPipeline,
    benchmark_template,
    format_prompt,
)
from sftrl.data.sft import (
    RecordError,
    SFTDataConfig,
    SFTPipeline,
    heldout_batches,
    tokenize_records,
)

_ROLES = ("system", "user", "assistant")
PAD, BOS, EOT = 0, 1, 2


class CharTokenizer:
    """Stand-in for sftrl.data.tokenizer.Tokenizer: BOS, then per message a role token, one
    token per character and an end-of-turn token; assistant characters and EOT are trained."""

    pad_id, eos_id, stop_ids, vocab_size = PAD, EOT, (EOT,), 256

    def _chars(self, text: str) -> list[int]:
        return [6 + ord(c) % 250 for c in text]

    def encode_chat(self, messages, *, add_generation_prompt=False):
        ids, mask = [BOS], [0]
        for m in messages:
            body = [*self._chars(m["content"]), EOT]
            ids += [3 + _ROLES.index(m["role"]), *body]
            mask += [0] + [int(m["role"] == "assistant")] * len(body)
        if add_generation_prompt:
            ids, mask = [*ids, 5], [*mask, 0]
        return np.asarray(ids, np.int32), np.asarray(mask, np.int32)

    def encode_prompt(self, messages_or_problem):
        if isinstance(messages_or_problem, str):
            messages_or_problem = [{"role": "user", "content": messages_or_problem}]
        return self.encode_chat(messages_or_problem, add_generation_prompt=True)[0].tolist()


TOK = CharTokenizer()


def make_records(n: int = 23, *, seed: int = 0, longest: int = 24) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"id": f"ex{i}", "messages": [
            {"role": "user", "content": "q" * int(rng.integers(1, longest // 2))},
            {"role": "assistant", "content": chr(97 + i % 26) * int(rng.integers(1, longest))},
        ]}
        for i in range(n)
    ]


def drain(pipe) -> list[dict[str, np.ndarray]]:
    return list(pipe)


def segments(batch: dict[str, np.ndarray]):
    """(record index, tokens, loss_mask, positions) of every segment, row by row."""
    out = []
    for row in range(batch["tokens"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in range(1, int(seg.max(initial=0)) + 1):
            cols = np.flatnonzero(seg == s)
            assert cols.size and np.all(np.diff(cols) == 1), "a segment must be contiguous"
            out.append((int(batch["example_ids"][row, s - 1]), batch["tokens"][row, cols],
                        batch["loss_mask"][row, cols], batch["positions"][row, cols]))
        assert np.all(batch["example_ids"][row, int(seg.max(initial=0)):] == -1)
    return out


def check_layout(batch: dict[str, np.ndarray], rows: int) -> None:
    assert set(batch) == {"tokens", "loss_mask", "segment_ids", "attention_mask", "positions",
                          "example_ids"}
    for key in ("tokens", "loss_mask", "segment_ids", "attention_mask", "positions"):
        assert batch[key].dtype == np.int32 and batch[key].shape == batch["tokens"].shape
    assert batch["tokens"].shape[0] == rows and batch["example_ids"].dtype == np.int64
    pad = batch["segment_ids"] == 0
    np.testing.assert_array_equal(batch["attention_mask"], (~pad).astype(np.int32))
    assert np.all(batch["tokens"][pad] == PAD) and np.all(batch["loss_mask"][pad] == 0)
    assert np.all(batch["positions"][pad] == 0)


def example_order(batches) -> list[int]:
    return [i for b in batches for i in b["example_ids"].ravel().tolist() if i >= 0]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --- packing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_epochs", [1, 2])
def test_packing_keeps_examples_separate_and_complete(num_epochs):
    records = make_records()
    data = tokenize_records(records, TOK)
    config = SFTDataConfig(batch_size=4, max_length=48, num_epochs=num_epochs,
                           drop_remainder=False, seed=3)
    pipe = SFTPipeline(data, TOK, config)
    batches = drain(pipe)
    seen = collections.Counter()
    packed_rows = 0
    for batch in batches:
        check_layout(batch, 4)
        packed_rows += int((batch["segment_ids"].max(axis=1) > 1).sum())
        for index, tokens, mask, positions in segments(batch):
            seen[index] += 1
            np.testing.assert_array_equal(tokens, data.ids[index])
            np.testing.assert_array_equal(mask, data.loss_mask[index])
            np.testing.assert_array_equal(positions, np.arange(len(tokens)))
            assert mask[0] == 0  # the loss mask never reaches across a segment start
    assert packed_rows > 0, "the data should pack several examples into some rows"
    assert seen == {i: num_epochs for i in range(len(records))}
    assert pipe.num_batches == len(batches)
    stats = pipe.stats
    assert stats["examples_seen"] == num_epochs * len(records)
    assert stats["epoch"] == num_epochs
    assert stats["tokens"] == num_epochs * data.counts()["tokens"]
    assert stats["loss_tokens"] == num_epochs * data.counts()["loss_tokens"]
    cells = sum(b["tokens"].size for b in batches)
    assert stats["padding_fraction"] == pytest.approx(1 - stats["tokens"] / cells)


def test_drop_remainder_gives_full_batches_only():
    config = SFTDataConfig(batch_size=4, max_length=48, num_epochs=1)
    batches = drain(SFTPipeline(make_records(), TOK, config))
    assert batches and all(int((b["segment_ids"].max(axis=1) > 0).sum()) == 4 for b in batches)


# --- padding / bucketing -------------------------------------------------------------------------


def test_padding_mode_one_example_per_row_and_bucket_lengths():
    records = make_records(31)
    data = tokenize_records(records, TOK)
    config = SFTDataConfig(batch_size=4, max_length=48, packing=False, drop_remainder=False,
                           bucket_boundaries=(16, 32), bucket_window=3, seed=1)
    pipe = SFTPipeline(data, TOK, config)
    batches = drain(pipe)
    assert len(batches) == pipe.num_batches == 8
    lengths = set()
    for batch in batches:
        check_layout(batch, 4)
        assert batch["example_ids"].shape[1] == 1
        assert batch["segment_ids"].max(axis=1).tolist() in ([1] * 4, [1, 1, 1, 0])
        longest = int(batch["attention_mask"].sum(axis=1).max())
        width = batch["tokens"].shape[1]
        assert width == min(e for e in (16, 32, 48) if e >= longest)
        lengths.add(width)
        for index, tokens, mask, positions in segments(batch):
            np.testing.assert_array_equal(tokens, data.ids[index])
            np.testing.assert_array_equal(mask, data.loss_mask[index])
            np.testing.assert_array_equal(positions, np.arange(len(tokens)))
    assert len(lengths) > 1
    assert sorted(example_order(batches)) == list(range(len(records)))


def test_bucket_window_groups_similar_lengths():
    records = make_records(64, longest=40)

    def padding(window: int) -> float:
        config = SFTDataConfig(batch_size=4, max_length=64, packing=False,
                               bucket_boundaries=(8, 16, 24, 32, 40, 48, 56),
                               bucket_window=window, seed=5)
        pipe = SFTPipeline(records, TOK, config)
        drain(pipe)
        return pipe.stats["padding_fraction"]

    assert padding(8) < padding(1)


# --- overlong ------------------------------------------------------------------------------------


@pytest.mark.parametrize("packing", [True, False])
def test_overlong_dropped_counted_and_logged(packing, caplog):
    records = make_records(20, longest=40)
    data = tokenize_records(records, TOK)
    long = {i for i, x in enumerate(data.ids) if len(x) > 32}
    assert 0 < len(long) < len(records)
    config = SFTDataConfig(batch_size=2, max_length=32, packing=packing, drop_remainder=False)
    with caplog.at_level(logging.WARNING, logger="sftrl.data.sft"):
        pipe = SFTPipeline(data, TOK, config)
    assert f"{len(long)} of {len(records)} examples are longer than max_length=32" in caplog.text
    order = example_order(drain(pipe))
    assert sorted(order) == sorted(set(range(len(records))) - long)
    assert pipe.stats["overlong_dropped"] == len(long)
    assert pipe.stats["overlong_truncated"] == 0


def test_overlong_truncated_counted():
    records = make_records(20, longest=40)
    data = tokenize_records(records, TOK)
    long = {i for i, x in enumerate(data.ids) if len(x) > 32}
    config = SFTDataConfig(batch_size=2, max_length=32, overlong="truncate",
                           drop_remainder=False)
    pipe = SFTPipeline(data, TOK, config)
    found = {}
    for batch in drain(pipe):
        for index, tokens, _, _ in segments(batch):
            found[index] = tokens
    assert sorted(found) == list(range(len(records)))
    for i in long:
        np.testing.assert_array_equal(found[i], data.ids[i][:32])
    assert pipe.stats["overlong_truncated"] == len(long)
    assert pipe.stats["overlong_dropped"] == 0


def test_truncation_that_leaves_no_response_drops_and_counts():
    records = [{"id": "long-prompt", "messages": [
        {"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y"}]},
        *make_records(4, longest=8)]
    config = SFTDataConfig(batch_size=1, max_length=20, overlong="truncate")
    pipe = SFTPipeline(records, TOK, config)
    assert 0 not in example_order(drain(pipe))
    assert pipe.stats["overlong_dropped"] == 1


# --- shuffling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("packing", [True, False])
def test_shuffle_is_seeded_and_differs_per_epoch(packing):
    records = make_records(40)

    def order(seed: int, shuffle: bool = True) -> list[int]:
        config = SFTDataConfig(batch_size=2, max_length=48, packing=packing, seed=seed,
                               num_epochs=2, drop_remainder=False, shuffle=shuffle)
        return example_order(drain(SFTPipeline(records, TOK, config)))

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    epoch1, epoch2 = first[:40], first[40:]
    assert sorted(first) == sorted(list(range(40)) * 2)
    if not packing:  # (packing bins may mix the last examples of one epoch with the next)
        assert sorted(epoch1) == sorted(epoch2)
    assert epoch1 != epoch2
    assert sorted(first[:40]) != first[:40]  # actually shuffled
    if not packing:
        assert order(0, shuffle=False) == list(range(40)) * 2


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("packing", "bins"), [(True, None), (True, 5), (False, None)])
def test_resume_reproduces_batches_mid_epoch_and_across_epochs(packing, bins):
    records = make_records(15)
    # bins=5 with batch_size=3: packed groups and batches do not line up, so a state can fall
    # in the middle of a packed group.
    config = SFTDataConfig(batch_size=3, max_length=40, packing=packing, num_epochs=3,
                           packing_bins=bins,
                           bucket_boundaries=None if packing else (20,),
                           bucket_window=1 if packing else 2, seed=7)
    reference = drain(SFTPipeline(records, TOK, config))
    per_epoch = SFTPipeline(records, TOK, config).steps_per_epoch
    assert len(reference) > 2 * per_epoch  # so some resume points lie past an epoch boundary
    data = tokenize_records(records, TOK)
    for k in range(len(reference) + 1):
        pipe = SFTPipeline(data, TOK, config)
        head = [next(pipe) for _ in range(k)]
        state = json.loads(json.dumps(pipe.get_state()))  # must survive a JSON checkpoint
        stats = pipe.stats
        restored = SFTPipeline(data, TOK, config)
        restored.set_state(state)
        assert restored.stats == stats
        assert_same_batches(head + drain(restored), reference)


def test_resume_into_a_different_stream_is_refused():
    records = make_records(10)
    pipe = SFTPipeline(records, TOK, SFTDataConfig(batch_size=2, max_length=40))
    next(pipe)
    other = SFTPipeline(records, TOK, SFTDataConfig(batch_size=2, max_length=40, seed=1))
    with pytest.raises(ValueError, match="seed: saved 0, now 1"):
        other.set_state(pipe.get_state())


def test_infinite_stream_keeps_going():
    config = SFTDataConfig(batch_size=4, max_length=40, num_epochs=None)
    pipe = SFTPipeline(make_records(6), TOK, config)
    assert pipe.num_batches is None
    for _ in range(10):
        next(pipe)
    assert pipe.stats["epoch"] > 3


# --- sharding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("packing", [True, False])
def test_two_hosts_together_see_the_single_host_batch(packing):
    records = make_records(21)
    common = dict(batch_size=4, max_length=48, packing=packing, num_epochs=2,
                  drop_remainder=False, seed=2)
    single = drain(SFTPipeline(records, TOK, SFTDataConfig(**common)))
    hosts = [drain(SFTPipeline(records, TOK, SFTDataConfig(**common, shard_index=h,
                                                           shard_count=2)))
             for h in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == len(single)
    for whole, a, b in zip(single, *hosts, strict=True):
        assert a["tokens"].shape[0] == 2
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), whole[key])


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"SFTDataConfig\.batch_size: 6 does not split over 4"):
        SFTDataConfig(batch_size=6, max_length=8, shard_count=4)
    with pytest.raises(ValueError, match=r"SFTDataConfig\.overlong"):
        SFTDataConfig(batch_size=2, max_length=8, overlong="cut")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SFTDataConfig\.bucket_boundaries"):
        SFTDataConfig(batch_size=2, max_length=8, bucket_boundaries=(4, 16))


# --- held-out ------------------------------------------------------------------------------------


@pytest.mark.parametrize("packing", [True, False])
def test_heldout_batches_cover_every_example_once(packing):
    records = make_records(11)
    data = tokenize_records(records, TOK)
    batches = heldout_batches(records, TOK, batch_size=4, max_length=48, packing=packing)
    first, second = list(batches()), list(batches())
    assert_same_batches(first, second)
    order = example_order(first)
    assert sorted(order) == list(range(11))
    if not packing:
        assert order == list(range(11))  # no shuffle
        assert len(first) == 3 and first[-1]["example_ids"][-1, 0] == -1  # an empty last row
    for batch in first:
        check_layout(batch, 4)
    total = sum(int(b["loss_mask"].sum()) for b in first)
    assert total == data.counts()["loss_tokens"]


def test_heldout_evaluator_agrees_between_packing_and_padding():
    from sftrl import sharding
    from sftrl.eval.heldout import HeldoutEvaluator
    from sftrl.models.model_config import ModelConfig
    from sftrl.models.transformer import build_model

    model = build_model(ModelConfig("llama", 256, 32, 1, 4, 2, 8, 48),
                        sharding.single_device_layout(), seed=0)
    records = make_records(9)
    results = [
        HeldoutEvaluator(model, heldout_batches(records, TOK, batch_size=4, max_length=48,
                                                packing=packing)).evaluate(model.params)
        for packing in (True, False)
    ]
    assert results[0].num_examples == results[1].num_examples == 9
    assert results[0].num_tokens == results[1].num_tokens
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-5)


# --- bad records ---------------------------------------------------------------------------------


def _chat(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize(("record", "message"), [
    ({"id": "a"}, r"record 1 \(id 'a'\): field 'messages': missing"),
    ({"id": "a", "messages": []}, r"record 1 \(id 'a'\): field 'messages'"),
    ({"id": "a", "messages": _chat(("user", "q"), ("assistant", "  "))},
     r"record 1 \(id 'a'\): field 'messages\[1\]\.content': is empty"),
    ({"id": "a", "messages": _chat(("user", "q"), ("robot", "x"))},
     r"field 'messages\[1\]\.role'"),
    ({"id": "a", "messages": _chat(("user", "q"))}, "no assistant message"),
    ({"messages": _chat(("user", "q"), ("assistant", "x"))}, r"record 1: field 'id'"),
    ("not a record", r"record 1: field 'record'"),
])
def test_bad_records_raise_naming_the_record(record, message):
    records = [*make_records(1), record]
    with pytest.raises(RecordError, match=message) as info:
        tokenize_records(records, TOK, source="train.jsonl")
    assert str(info.value).startswith("train.jsonl: record 1")
    assert isinstance(info.value, ValueError)


# --- prompts -------------------------------------------------------------------------------------


def prompt_records(n: int = 10) -> list[dict[str, str]]:
    return [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}
            for i in range(n)]


def test_prompt_templates():
    assert format_prompt("1+1?", "boxed") == (
        "1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.")
    assert format_prompt("1+1?", "plain") == "1+1?"
    assert benchmark_template("synthetic") == "plain"
    assert set(BENCHMARK_TEMPLATES.values()) <= set(PROMPT_TEMPLATES)
    with pytest.raises(ValueError, match="unknown prompt template 'fancy'"):
        format_prompt("x", "fancy")
    with pytest.raises(ValueError, match=r"PromptDataConfig\.template"):
        PromptDataConfig(batch_size=2, template="fancy")


def test_prompt_pipeline_batches_and_epochs():
    records = prompt_records(10)
    pipe = PromptPipeline(records, TOK, PromptDataConfig(batch_size=5, num_epochs=2, seed=1))
    batches = list(pipe)
    assert len(batches) == pipe.num_batches == 4
    by_id = {r["id"]: r for r in records}
    for batch in batches:
        assert len(batch["ids"]) == len(batch["answers"]) == len(batch["problems"]) == 5
        for rid, ids, answer, problem in zip(batch["record_ids"], batch["ids"], batch["answers"],
                                             batch["problems"], strict=True):
            assert answer == by_id[rid]["answer"] and problem == by_id[rid]["problem"]
            assert ids == TOK.encode_prompt(format_prompt(problem, "boxed"))
    order = [rid for b in batches for rid in b["record_ids"]]
    assert sorted(order[:10]) == sorted(order[10:]) == sorted(by_id)
    assert order[:10] != order[10:]
    again = [b["record_ids"] for b in PromptPipeline(
        records, TOK, PromptDataConfig(batch_size=5, num_epochs=2, seed=1))]
    assert again == [b["record_ids"] for b in batches]


def test_prompt_pipeline_resume_and_sharding():
    records = prompt_records(7)
    config = PromptDataConfig(batch_size=4, num_epochs=3, seed=4)
    reference = list(PromptPipeline(records, TOK, config))
    for k in range(len(reference) + 1):
        pipe = PromptPipeline(records, TOK, config)
        head = [next(pipe) for _ in range(k)]
        state = json.loads(json.dumps(pipe.get_state()))
        restored = PromptPipeline(records, TOK, config)
        restored.set_state(state)
        assert head + list(restored) == reference
    hosts = [list(PromptPipeline(records, TOK, PromptDataConfig(
        batch_size=4, num_epochs=3, seed=4, shard_index=h, shard_count=2))) for h in range(2)]
    for whole, a, b in zip(reference, *hosts, strict=True):
        assert len(a["ids"]) == 2
        assert {k: a[k] + b[k] for k in whole} == whole


def test_prompt_pipeline_bad_records_and_overlong(caplog):
    records = prompt_records(3)
    with pytest.raises(RecordError, match=r"rl.jsonl: record 1 \(id 'p1'\): field 'answer'"):
        PromptPipeline([records[0], {"id": "p1", "problem": "x"}], TOK,
                       PromptDataConfig(batch_size=1), source="rl.jsonl")
    with pytest.raises(RecordError, match=r"record 0 \(id 'p0'\): field 'problem': is empty"):
        PromptPipeline([{**records[0], "problem": " "}], TOK, PromptDataConfig(batch_size=1))
    long = {"id": "long", "problem": "x" * 200, "answer": "1"}
    with caplog.at_level(logging.WARNING, logger="sftrl.data.prompts"):
        pipe = PromptPipeline([*records, long], TOK,
                              PromptDataConfig(batch_size=1, max_prompt_length=100))
    assert pipe.stats["dropped_overlong"] == 1 and pipe.num_prompts == 3
    assert "1 of 4 prompts are longer than max_prompt_length=100" in caplog.text


# --- benchmark -----------------------------------------------------------------------------------


def test_data_benchmark_writes_rows(tmp_path, capsys):
    from scripts import load_benchmark

    bench = load_benchmark("data")
    out = tmp_path / "data.json"
    rows = bench.main([f"--tokenizer={tmp_path / 'missing'}", "--examples=40", "--repeats=1",
                       "--batch-size=4", "--max-length=512", "--prompt-chars", "10", "50",
                       f"--out={out}"])
    assert json.loads(out.read_text()) == rows
    assert [r["stage"] for r in rows] == ["tokenize", "pack", "pad", "resume"]
    for row in rows:
        assert set(row) == set(bench.ROW_KEYS)
        assert row["tokenizer"] == "bytes (fallback)" and row["tokens_per_s"] > 0
    assert rows[1]["examples"] == rows[2]["examples"] == 40  # truncated, never dropped
    captured = capsys.readouterr()
    assert "byte-level stand-in" in captured.err and captured.out.startswith("| stage |")
