"""SFT data read per process: shard assignment, lazy file shards, the streamed pipeline (the
same global batches on any process count, resume), and field mappings of common open sets."""

from __future__ import annotations

import itertools
import json
import pathlib
from typing import Any

import numpy as np
import pytest
from test_data_pipeline import TOK, assert_same_batches, make_records, segments

from sftrl.data.builders import (
    DataFormatError,
    check_sft_files,
    is_heldout,
    parse_fields,
    read_heldout,
    read_sft_files,
)
from sftrl.data.builders.sft import problem_text, to_messages
from sftrl.data.sft import RecordError, SFTDataConfig
from sftrl.data.sft_stream import StreamingSFTPipeline, merge_states
from sftrl.data.shards import host_share, line_starts, split_range
from sftrl.data.stream_source import FileSource, RecordSource
from sftrl.errors import UserError

# --- which process reads what --------------------------------------------------------------------


@pytest.mark.parametrize(("shards", "processes"), [(1, 1), (4, 1), (4, 2), (4, 4), (6, 3),
                                                   (1, 2), (2, 4), (3, 6)])
def test_every_shard_row_is_read_by_exactly_the_processes_that_need_it(shards, processes):
    batch = 12
    rows_of = {}  # (shard, row in the shard's batch) -> processes keeping it
    for i in range(processes):
        share = host_share(shards, i, processes)
        per_shard = batch // shards
        for j in share.shards:
            n = per_shard // share.parts
            for r in range(share.part * n, (share.part + 1) * n):
                rows_of.setdefault((j, r), []).append(i)
    # every row of every shard's batch is kept by exactly one process
    assert sorted(rows_of) == [(j, r) for j in range(shards) for r in range(batch // shards)]
    assert all(len(p) == 1 for p in rows_of.values())
    # and processes hold contiguous, ordered blocks of the global batch (shard 0 first)
    order = [p[0] for _, p in sorted(rows_of.items())]
    assert order == sorted(order)


def test_shard_counts_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="3 shards do not split over 2 processes"):
        host_share(3, 0, 2)


@pytest.mark.parametrize("total", [0, 1, 7, 100])
def test_split_range_partitions(total):
    for k in (1, 3, 8):
        ranges = [split_range(total, j, k) for j in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        sizes = [hi - lo for lo, hi in ranges]
        assert max(sizes) - min(sizes) <= 1


def _write_jsonl(path: pathlib.Path, rows: list[dict[str, Any]]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_line_starts_partition_the_lines(tmp_path):
    rows = [{"problem": "p" * (i % 7 + 1), "solution": "s" * (i % 5 + 1)} for i in range(41)]
    path = _write_jsonl(tmp_path / "a.jsonl", rows)
    lines = path.read_bytes().splitlines(keepends=True)
    expected = np.cumsum([0] + [len(x) for x in lines[:-1]])  # independent: line lengths
    size = path.stat().st_size
    for k in (1, 2, 5, 13, 64):
        parts = [line_starts(path, *split_range(size, j, k)) for j in range(k)]
        np.testing.assert_array_equal(np.concatenate(parts), expected)


# --- file shards ---------------------------------------------------------------------------------


def _sft_rows(n: int) -> list[dict[str, Any]]:
    return [{"problem": f"Problem {i}: what is {i} plus {i}?", "solution": f"It is {2 * i}."}
            for i in range(n)]


def _train_messages(rows, fraction):
    out = []
    for i, row in enumerate(rows):
        messages = to_messages(row, f"row {i}")
        if not is_heldout(problem_text(messages), fraction):
            out.append(messages)
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_file_shards_hold_every_training_row_once(tmp_path, fmt):
    rows_a, rows_b = _sft_rows(37), _sft_rows(60)[37:]
    paths = []
    for name, rows in (("a", rows_a), ("b", rows_b)):
        if fmt == "jsonl":
            paths.append(_write_jsonl(tmp_path / f"{name}.jsonl", rows))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            paths.append(tmp_path / f"{name}.parquet")
            pq.write_table(pa.Table.from_pylist(rows), paths[-1], row_group_size=5)
    source = FileSource(paths, heldout_fraction=0.2)
    expected = _train_messages(rows_a + rows_b, 0.2)
    assert 0 < len(expected) < 60
    for k in (1, 3, 8):
        got, ids = [], []
        for j in range(k):
            shard = source.shard(j, k)
            for i in range(len(shard)):
                messages = shard.example(i)
                if messages is not None:
                    got.append(messages)
                    ids.append(shard.example_id(i))
        # each training row exactly once (shard j holds the j-th range of every file)
        assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))
        assert len(set(ids)) == len(ids)


def test_a_bad_line_deep_in_a_shard_is_named_by_file_and_line(tmp_path):
    rows = _sft_rows(30)
    path = tmp_path / "a.jsonl"
    text = "".join(json.dumps(r) + "\n" for r in rows[:20]) + "{not json\n" + "".join(
        json.dumps(r) + "\n" for r in rows[20:])
    path.write_text(text)
    source = FileSource([path], heldout_fraction=0.01)
    shard = source.shard(1, 2)
    with pytest.raises(DataFormatError, match=rf"^{path}:21: malformed JSON"):
        for i in range(len(shard)):
            shard.example(i)


# --- the streamed pipeline -----------------------------------------------------------------------


def _global(batches_per_process: list[list[dict[str, np.ndarray]]]):
    steps = min(len(b) for b in batches_per_process)
    return [{k: np.concatenate([p[s][k] for p in batches_per_process])
             for k in batches_per_process[0][0]} for s in range(steps)]


def _streams(source, shards, processes, **config):
    return [StreamingSFTPipeline(source, TOK, SFTDataConfig(
        **config, shard_index=i, shard_count=processes), num_shards=shards)
        for i in range(processes)]


@pytest.mark.parametrize("packing", [True, False])
def test_global_batches_do_not_depend_on_the_process_count(packing):
    source = RecordSource(make_records(64))
    config = dict(batch_size=8, max_length=48, packing=packing, num_epochs=2, seed=4)
    one = _global([list(p) for p in _streams(source, 4, 1, **config)])
    assert len(one) > 5
    for processes in (2, 4, 8):
        pipes = _streams(source, 4, processes, **config)
        assert all(p.num_batches is not None for p in pipes)
        steps = min(p.num_batches for p in pipes)  # what the trainer runs (gathered minimum)
        assert steps == len(one)
        assert_same_batches(_global([[next(p) for _ in range(steps)] for p in pipes]), one)


@pytest.mark.parametrize("packing", [True, False])
def test_streamed_batches_hold_each_example_once_per_epoch_with_its_tokens(packing):
    records = make_records(30)
    source = RecordSource(records)
    config = SFTDataConfig(batch_size=4, max_length=48, packing=packing, num_epochs=1,
                           drop_remainder=False, seed=1, shard_index=0, shard_count=1)
    seen = []
    for j in range(2):  # each shard on its own process, drained to its end
        pipe = StreamingSFTPipeline(source, TOK, SFTDataConfig(
            **{**config.__dict__, "shard_index": j, "shard_count": 2}), num_shards=2)
        for batch in pipe:
            for index, tokens, mask, positions in segments(batch):
                ids, want_mask = TOK.encode_chat(records[index]["messages"])
                np.testing.assert_array_equal(tokens, ids)
                np.testing.assert_array_equal(mask, want_mask)
                np.testing.assert_array_equal(positions, np.arange(len(tokens)))
                seen.append(index)
    assert sorted(seen) == list(range(30))


def test_each_process_reads_only_its_shards_rows():
    records = make_records(40)

    class Logged(RecordSource):
        def __init__(self):
            super().__init__(records)
            self.read: set[int] = set()

        def shard(self, index, num_shards):
            inner = super().shard(index, num_shards)
            log = self.read

            class Reader:
                def __len__(self):
                    return len(inner)

                def example(self, i):
                    log.add(inner.example_id(i))
                    return inner.example(i)

                def example_id(self, i):
                    return inner.example_id(i)

                def location(self, i):
                    return inner.location(i)

            return Reader()

    sources = [Logged() for _ in range(2)]
    for i, source in enumerate(sources):
        pipe = StreamingSFTPipeline(source, TOK, SFTDataConfig(
            batch_size=4, max_length=48, num_epochs=1, shard_index=i, shard_count=2),
            num_shards=2)
        pipe.num_batches  # noqa: B018  (the counting pass reads the whole share)
        list(pipe)
    assert sources[0].read.isdisjoint(sources[1].read)
    assert sources[0].read | sources[1].read == set(range(40))


@pytest.mark.parametrize("packing", [True, False])
def test_resume_continues_bit_identically_also_on_another_process_count(packing):
    source = RecordSource(make_records(33))
    config = dict(batch_size=4, max_length=40, packing=packing, num_epochs=3, seed=7,
                  packing_bins=6)
    reference = _global([list(p) for p in _streams(source, 2, 1, **config)])
    for k in (0, 1, 5, len(reference) - 1, len(reference)):
        for before, after in ((2, 2), (1, 2), (2, 1)):
            pipes = _streams(source, 2, before, **config)
            heads = [[next(p) for _ in range(k)] for p in pipes]
            state = json.loads(json.dumps(merge_states([p.get_state() for p in pipes])))
            restored = _streams(source, 2, after, **config)
            for p in restored:
                p.set_state(state)
            tails = [list(p) for p in restored]
            steps = len(reference) - k
            head = _global(heads) if k else []
            rest = _global([t[:steps] for t in tails]) if steps else []
            assert_same_batches(head + rest, reference)


def test_resume_into_other_data_or_shards_is_refused():
    config = SFTDataConfig(batch_size=4, max_length=40)
    pipe = StreamingSFTPipeline(RecordSource(make_records(20)), TOK, config, num_shards=2)
    state = pipe.get_state()
    other = StreamingSFTPipeline(RecordSource(make_records(21)), TOK, config, num_shards=2)
    with pytest.raises(ValueError, match="source: saved"):
        other.set_state(state)
    with pytest.raises(ValueError, match="num_shards: saved 2, now 4"):
        StreamingSFTPipeline(RecordSource(make_records(20)), TOK, config,
                             num_shards=4).set_state(state)


def test_a_shard_without_examples_and_bad_records_fail_at_start():
    with pytest.raises(UserError, match="data shard 0 of 2 holds no training example"):
        StreamingSFTPipeline(RecordSource(make_records(1)), TOK,
                             SFTDataConfig(batch_size=2, max_length=48), num_shards=2)
    bad = [*make_records(1), {"id": "x", "messages": [{"role": "user", "content": "q"}]}]
    with pytest.raises(RecordError, match=r"records: record 1 \(id 'x'\)"):
        list(StreamingSFTPipeline(RecordSource(bad), TOK,
                                  SFTDataConfig(batch_size=1, max_length=48, shuffle=False),
                                  num_shards=1))


def test_overlong_examples_are_dropped_or_truncated_in_the_stream():
    records = make_records(20, longest=40)
    long = {i for i, r in enumerate(records) if len(TOK.encode_chat(r["messages"])[0]) > 32}
    assert 0 < len(long) < 20
    for mode in ("drop", "truncate"):
        pipe = StreamingSFTPipeline(RecordSource(records), TOK, SFTDataConfig(
            batch_size=2, max_length=32, overlong=mode, num_epochs=1, drop_remainder=False),
            num_shards=1)
        found = {index: tokens for batch in pipe for index, tokens, _, _ in segments(batch)}
        if mode == "drop":
            assert set(found) == set(range(20)) - long
            assert pipe.stats["overlong_dropped"] == len(long)
        else:
            assert set(found) == set(range(20))
            for i in long:
                np.testing.assert_array_equal(
                    found[i], TOK.encode_chat(records[i]["messages"])[0][:32])


# --- held-out records ----------------------------------------------------------------------------


def test_read_heldout_equals_the_whole_file_reader_prefix(tmp_path):
    rows = _sft_rows(200)
    rows += [rows[i] for i in range(0, 200, 7)]  # duplicates
    a = _write_jsonl(tmp_path / "a.jsonl", rows[:120])
    b = _write_jsonl(tmp_path / "b.jsonl", rows[120:])
    whole, _ = read_sft_files([a, b], heldout_fraction=0.2)
    for limit in (0, 1, 9):
        got = read_heldout([a, b], heldout_fraction=0.2, limit=limit)
        assert got == (whole["heldout"][:limit] if limit else whole["heldout"])


# --- field mappings of common open SFT sets ------------------------------------------------------

QUESTION, ANSWER = "What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}."
CHAT = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]

# Records shaped like the public sets (field names and nesting as on their dataset cards).
OPEN_SETS = {
    "openmathinstruct2": (
        {"problem": QUESTION, "generated_solution": ANSWER, "expected_answer": "5",
         "problem_source": "augmented_math"},
        "solution=generated_solution", CHAT),
    "numinamath_cot": (
        {"source": "synthetic_math", "problem": QUESTION, "solution": ANSWER,
         "messages": [{"content": QUESTION, "role": "user"},
                      {"content": ANSWER, "role": "assistant"}]},
        "", CHAT),
    "numinamath_cot_problem_form": (
        {"source": "synthetic_math", "problem": QUESTION, "solution": ANSWER,
         "messages": [{"content": "other", "role": "user"},
                      {"content": "other", "role": "assistant"}]},
        "problem=problem,solution=solution", CHAT),
    "openthoughts": (
        {"system": "Think step by step.",
         "conversations": [{"from": "user", "value": QUESTION},
                           {"from": "assistant", "value": ANSWER}]},
        "messages=conversations,system=system",
        [{"role": "system", "content": "Think step by step."}, *CHAT]),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": QUESTION},
                           {"from": "gpt", "value": ANSWER}]},
        "messages=conversations", CHAT),
    "metamathqa": (
        {"type": "GSM_Rephrased", "query": QUESTION, "original_question": "x",
         "response": ANSWER},
        "problem=query,solution=response", CHAT),
}


@pytest.mark.parametrize("name", sorted(OPEN_SETS))
def test_field_mappings_of_common_open_sets(tmp_path, name):
    record, spec, expected = OPEN_SETS[name]
    path = _write_jsonl(tmp_path / f"{name}.jsonl", [record] * 3)
    check_sft_files([path], spec)
    splits, _ = read_sft_files([path], heldout_fraction=0.0, fields=spec)
    assert splits["train"] == [{"id": f"{name}.jsonl-1", "messages": expected}]
    shard = FileSource([path], fields=spec, heldout_fraction=0.0).shard(0, 1)
    assert [shard.example(i) for i in range(len(shard))] == [expected] * 3


@pytest.mark.parametrize(("record", "spec", "message"), [
    (OPEN_SETS["openmathinstruct2"][0], "", r":1: field 'solution': missing"),
    (OPEN_SETS["metamathqa"][0], "problem=question,solution=response",
     r":1: field 'question': missing \(data.fields maps problem to it\)"),
    (OPEN_SETS["openthoughts"][0], "messages=conversation",
     r":1: field 'conversation': missing"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "messages=conversations",
     r":1: field 'conversations\[0\]\.from': unknown speaker 'robot'"),
])
def test_a_wrong_mapping_names_file_line_and_field(tmp_path, record, spec, message):
    path = _write_jsonl(tmp_path / "set.jsonl", [record])
    with pytest.raises(DataFormatError, match=rf"^{path}{message}"):
        check_sft_files([path], spec)


def test_a_record_missing_a_mapped_field_later_is_named_by_line(tmp_path):
    good = OPEN_SETS["openmathinstruct2"][0]
    rows = [good, {**good, "problem": "Other?"}, {"problem": "no solution"}]
    path = _write_jsonl(tmp_path / "omi.jsonl", rows)
    check_sft_files([path], "solution=generated_solution")  # only the first record is checked
    shard = FileSource([path], fields="solution=generated_solution",
                       heldout_fraction=0.0).shard(0, 1)
    with pytest.raises(DataFormatError,
                       match=rf"^{path}:3: field 'generated_solution': missing"):
        [shard.example(i) for i in range(len(shard))]


@pytest.mark.parametrize(("spec", "message"), [
    ("solution", "'solution' is not target=field"),
    ("answer=expected_answer", "'answer' is not one of"),
    ("problem=a,problem=b", "mapped twice"),
    ("messages=conversations,solution=x", "not both"),
])
def test_bad_mapping_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_fields(spec)


# --- the SFT trainer on streamed files -----------------------------------------------------------


def _omi_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """The embedded task's SFT records written in OpenMathInstruct-2's shape."""
    from test_sft import _config

    from sftrl.data import sources

    rows = []
    for record in sources.sft_splits(_config().data).train:
        turns = {m["role"]: m["content"] for m in record["messages"]}
        rows.append({"problem": turns["user"], "generated_solution": turns["assistant"],
                     "expected_answer": "?"})
    return _write_jsonl(tmp_path / "omi.jsonl", rows)


@pytest.mark.slow
def test_streamed_sft_run_resumes_bit_identically(tmp_path):
    import jax
    from test_sft import _config

    from sftrl.data import synthetic
    from sftrl.sharding import single_device_layout
    from sftrl.train.sft import SFTTrainer

    path = _omi_file(tmp_path)
    extra = ("data.source=files", f"data.train_files=('{path}',)",
             "data.fields=solution=generated_solution",
             f"data.tokenizer={synthetic.tokenizer_dir()}", "data.shards=2", "sft.num_steps=6",
             "sft.save_every=3", "sft.eval_every=3")
    full = SFTTrainer(_config(*extra), tmp_path / "full", single_device_layout())
    assert full.streaming and 0 < len(full.splits.heldout) <= 48
    full.train()
    first = SFTTrainer(_config(*extra), tmp_path / "cut", single_device_layout())
    first.total_steps = 3  # stops (and saves) half-way, as a killed run's last checkpoint
    first.train()
    resumed = SFTTrainer(_config(*extra), tmp_path / "cut", single_device_layout())
    assert resumed.setup.start_step == 3
    resumed.train()
    a = SFTTrainer(_config(*extra), tmp_path / "full", single_device_layout())
    b = SFTTrainer(_config(*extra), tmp_path / "cut", single_device_layout())
    assert a.setup.start_step == b.setup.start_step == 6
    assert a.setup.data_state == b.setup.data_state
    for x, y in zip(jax.tree.leaves(a.setup.state.params), jax.tree.leaves(b.setup.state.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_wrong_field_mapping_is_one_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    from sftrl.data import synthetic

    root = pathlib.Path(__file__).resolve().parents[1]
    path = _write_jsonl(tmp_path / "omi.jsonl", [OPEN_SETS["openmathinstruct2"][0]])
    done = subprocess.run(
        [sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", "--stage=sft",
         f"--workdir={tmp_path / 'run'}", "--config.data.source=files",
         f"--config.data.train_files=('{path}',)", "--config.data.fields=solution=solution_text",
         f"--config.data.tokenizer={synthetic.tokenizer_dir()}"],
        cwd=root, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"sftrl: error: {path}:1: field 'solution_text': missing "
        "(data.fields maps solution to it)")


def test_a_prepared_tfds_dataset_is_read_per_shard(tmp_path):
    """Prepare once (`sftrl_sft`, deduplicated and split, fields mapped), read per process."""
    from sftrl.data.builders import tfds_builders as tb
    from sftrl.data.stream_source import TfdsSource

    rows = [{"query": r["problem"], "response": r["solution"]} for r in _sft_rows(40)]
    path = _write_jsonl(tmp_path / "metamath.jsonl", [*rows, rows[3]])
    spec = "problem=query,solution=response"
    builder = tb.SftrlSft(config=tb.SftConfig(name="mm", files=(str(path),),
                                              heldout_fraction=0.2, fields=spec),
                          data_dir=tmp_path / "tfds")
    builder.download_and_prepare()
    expected, _ = read_sft_files([path], heldout_fraction=0.2, fields=spec)
    source = TfdsSource(builder.data_dir)
    got = [source.shard(j, 3).example(i) for j in range(3) for i in range(len(source.shard(j, 3)))]
    assert sorted(map(json.dumps, got)) == sorted(json.dumps(r["messages"])
                                                  for r in expected["train"])
