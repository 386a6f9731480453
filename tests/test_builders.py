"""Builders: the normalizer, SFT split/dedup readers, RL reader and the TFDS builders."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftrl.data.builders import (
    HELDOUT,
    TRAIN,
    DataFormatError,
    SplitStats,
    heldout_score,
    is_heldout,
    normalize,
    normalize_problem_text,
    read_rl_file,
    read_sft_file,
    read_sft_files,
)
from sftrl.data.builders.sft import problem_text


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- normalizer


def _source_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    manifest = {}
    for name, text in files.items():
        (src / name).write_text(text, encoding="utf-8")
        manifest[name] = {
            "records": text.count("\n"),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "license": "MIT", "origin": f"somewhere/{name}", "commit": "abc",
        }
    (src / "MANIFEST.json").write_text(json.dumps(manifest), encoding="utf-8")
    (src / "SOURCES.md").write_text("# Upstream\nnotes\n", encoding="utf-8")
    return src


GOOD = (
    '{"problem": "Find  $x$.", "id": "t-1", "answer": " 5 \\n", "level": "2", "year": 1999}\n'
    '{"id": "t-2", "problem": "Café?", "answer": "no", "solution": "Because.", "part": ""}\n'
)


def test_normalizer_output_and_determinism(tmp_path):
    src = _source_dir(tmp_path, {"bench.jsonl": GOOD, "math_train.jsonl": GOOD})
    assert normalize.main(["--src", str(src), "--out", str(tmp_path / "a")]) == 0
    normalize.normalize_dir(src, tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["MANIFEST.json", "SOURCES.md", "bench.jsonl", "math_train.jsonl"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines = (tmp_path / "a" / "bench.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [
        '{"answer": "5", "id": "t-1", "level": "2", "problem": "Find  $x$."}',
        '{"answer": "no", "id": "t-2", "problem": "Café?", "solution": "Because."}',
    ]
    train = (tmp_path / "a" / "math_train.jsonl").read_text(encoding="utf-8")
    assert "solution" not in train
    manifest = json.loads((tmp_path / "a" / "MANIFEST.json").read_text(encoding="utf-8"))
    data = (tmp_path / "a" / "bench.jsonl").read_bytes()
    assert manifest["bench.jsonl"] == {
        "records": 2, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
        "license": "MIT", "origin": "somewhere/bench.jsonl", "commit": "abc",
        "source_sha256": hashlib.sha256(GOOD.encode()).hexdigest(),
        "dropped_fields": ["part", "year"],
    }
    assert manifest["math_train.jsonl"]["dropped_fields"] == ["part", "solution", "year"]
    assert "notes" in (tmp_path / "a" / "SOURCES.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"id": "t-3", "problem": "p"', r"bench\.jsonl:3: malformed JSON"),
        ('{"problem": "p", "answer": "1"}', r"bench\.jsonl:3: field 'id': missing"),
        ('{"id": "", "problem": "p", "answer": "1"}', r"bench\.jsonl:3: field 'id': empty"),
        ('{"id": "t-3", "problem": "p", "answer": ""}', r"bench\.jsonl:3: field 'answer': empty"),
        ('{"id": "t-3", "answer": "1"}', r"bench\.jsonl:3: field 'problem': missing"),
        ('{"id": "t-1", "problem": "p", "answer": "1"}',
         r"bench\.jsonl:3: field 'id': duplicate id 't-1' \(first at .*bench\.jsonl:1\)"),
        ('{"id": "t-3", "problem": ["p"], "answer": "1"}',
         r"bench\.jsonl:3: field 'problem': expected a string, got list"),
    ],
)
def test_normalizer_rejects_bad_input_and_writes_nothing(tmp_path, bad_line, match):
    src = _source_dir(tmp_path, {"bench.jsonl": GOOD + bad_line + "\n"})
    out = tmp_path / "out"
    with pytest.raises(DataFormatError, match=match):
        normalize.normalize_dir(src, out)
    assert not out.exists()
    assert normalize.main(["--src", str(src), "--out", str(out)]) == 1


def test_normalizer_checks_source_manifest(tmp_path):
    src = _source_dir(tmp_path, {"bench.jsonl": GOOD})
    (src / "bench.jsonl").write_text(GOOD.replace("Café", "Cafe"), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bench\.jsonl: sha256 .* does not match"):
        normalize.normalize_dir(src, tmp_path / "out")
    (tmp_path / "x").mkdir()
    src2 = _source_dir(tmp_path / "x", {"bench.jsonl": GOOD})
    (src2 / "stray.jsonl").write_text(GOOD, encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"not in the manifest: \['stray\.jsonl'\]"):
        normalize.normalize_dir(src2, tmp_path / "out")
    manifest = json.loads((src2 / "MANIFEST.json").read_text(encoding="utf-8"))
    manifest["bench.jsonl"]["records"] = 3
    del manifest["bench.jsonl"]["license"]
    (src2 / "stray.jsonl").unlink()
    (src2 / "MANIFEST.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"field 'bench\.jsonl\.license': missing"):
        normalize.normalize_dir(src2, tmp_path / "out")
    manifest["bench.jsonl"]["license"] = "MIT"
    (src2 / "MANIFEST.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"2 records, MANIFEST\.json says 3"):
        normalize.normalize_dir(src2, tmp_path / "out")


# ---------------------------------------------------------------- SFT split


def test_split_hash_is_pinned():
    # sha256 of the normalized text "what is 1+1?", first 8 bytes, as a fraction of 2**64.
    assert heldout_score("What is 1+1?") == int("0ab60986ffbd49a1", 16) / 2**64
    assert heldout_score("  what IS\n1+1? ") == heldout_score("What is 1+1?")
    assert normalize_problem_text(" A\t b\n\nC ") == "a b c"
    assert [is_heldout(t, 0.05) for t in ("What is 1+1?", "Find x.", "Compute 2^10.")] == [
        True, False, False]
    assert [is_heldout(f"problem {i}", 0.2) for i in range(4)] == [True, False, True, False]
    assert not is_heldout("What is 1+1?", 0.0) and is_heldout("Compute 2^10.", 1.0)


def _sft_rows(n_problems: int) -> list[dict]:
    rows = []
    for i in range(n_problems):
        # Two solutions per problem, the second with different case/spacing in the problem:
        # both must land in the same split.
        rows.append({"problem": f"Problem {i}: add {i} and 1.", "solution": f"It is {i + 1}."})
        rows.append({"messages": [
            {"role": "system", "content": f"style {i % 3}"},
            {"role": "user", "content": f"problem  {i}: ADD {i} and 1."},
            {"role": "assistant", "content": f"The answer is {i + 1}."},
        ]})
    return rows


def test_sft_split_disjoint_stable_and_deduplicated(tmp_path):
    rows = _sft_rows(100)
    rows += [rows[0], rows[3], rows[3]]  # three exact duplicates
    path = _write_jsonl(tmp_path / "sft.jsonl", rows)
    splits, stats = read_sft_files([path], heldout_fraction=0.25)
    assert stats == SplitStats(total=203, duplicates_removed=3, train=stats.train,
                               heldout=stats.heldout)
    assert stats.train + stats.heldout == 200 and 20 <= stats.heldout <= 80
    keys = {s: {normalize_problem_text(problem_text(r["messages"])) for r in splits[s]}
            for s in (TRAIN, HELDOUT)}
    assert not keys[TRAIN] & keys[HELDOUT]
    assert len(keys[TRAIN]) + len(keys[HELDOUT]) == 100
    train, stats_t = read_sft_file(path, heldout_fraction=0.25, split="train")
    heldout, stats_h = read_sft_file(path, heldout_fraction=0.25, split="heldout")
    assert train == splits[TRAIN] and heldout == splits[HELDOUT] and stats_t == stats_h == stats
    assert train[0] == {"id": "sft.jsonl-1", "messages": [
        {"role": "user", "content": "Problem 0: add 0 and 1."},
        {"role": "assistant", "content": "It is 1."}]}
    # A larger held-out fraction only moves problems train -> heldout (threshold on one score).
    bigger, _ = read_sft_files([path], heldout_fraction=0.5)
    assert {r["id"] for r in splits[HELDOUT]} <= {r["id"] for r in bigger[HELDOUT]}


def test_sft_ids_from_file_or_position_and_duplicate_ids(tmp_path):
    rows = [{"id": "x", "problem": "a", "solution": "b"}, {"problem": "c", "solution": "d"}]
    path = _write_jsonl(tmp_path / "s.jsonl", rows)
    splits, _ = read_sft_files([path], heldout_fraction=0.0)
    assert [r["id"] for r in splits[TRAIN]] == ["x", "s.jsonl-2"]
    _write_jsonl(tmp_path / "t.jsonl", [{"id": "x", "problem": "e", "solution": "f"}])
    with pytest.raises(DataFormatError, match=r"t\.jsonl:1: field 'id': duplicate id 'x'"):
        read_sft_files([path, tmp_path / "t.jsonl"])


def test_sft_parquet_both_forms(tmp_path):
    rows = _sft_rows(10)
    chat = [r for r in rows if "messages" in r]
    plain = [r for r in rows if "problem" in r]
    pq.write_table(pa.Table.from_pylist(chat), tmp_path / "chat.parquet", row_group_size=3)
    pq.write_table(pa.Table.from_pylist(plain), tmp_path / "plain.parquet")
    jsonl = _write_jsonl(tmp_path / "all.jsonl", rows)
    from_parquet, stats = read_sft_files([tmp_path / "plain.parquet", tmp_path / "chat.parquet"],
                                         heldout_fraction=0.3)
    from_jsonl, _ = read_sft_files([jsonl], heldout_fraction=0.3)
    assert stats.total == 20 and stats.duplicates_removed == 0

    def contents(split):
        return sorted(json.dumps(r["messages"]) for r in split)

    for s in (TRAIN, HELDOUT):
        assert contents(from_parquet[s]) == contents(from_jsonl[s])
    assert from_parquet[TRAIN][0]["id"].startswith("plain.parquet-row")
    assert from_parquet[TRAIN][0]["messages"][0]["role"] == "user"


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "field 'messages': .*no assistant"),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "field 'messages': .*no user"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}]},
         r"field 'messages\[1\]\.content': expected a string, got int"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
         r"field 'messages\[1\]\.role': unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
         r"field 'messages\[1\]\.content': empty"),
        ({"messages": "hi"}, "field 'messages': expected a list"),
        ({"messages": [{"role": "user", "content": "q"}, "a"]}, r"field 'messages\[1\]'"),
        ({"problem": "q"}, "field 'solution': missing"),
        ({"problem": "q", "solution": ""}, "field 'solution': empty"),
        ({"question": "q", "answer": "a"}, "field 'messages': record has neither 'messages' nor"),
        ({"id": 7, "problem": "q", "solution": "a"}, "field 'id': expected a string"),
    ],
)
def test_sft_bad_records_name_file_line_field(tmp_path, row, match):
    good = {"problem": "p", "solution": "s"}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: " + match):
        read_sft_file(path, split="train")


def test_sft_bad_files_and_arguments(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "solution": "s"}\n{"problem": \n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: malformed JSON"):
        read_sft_file(path, split="train")
    path.write_bytes(b'{"problem": "p", "solution": "s"}\n{"problem": "\xff"}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: not valid UTF-8"):
        read_sft_file(path, split="train")
    table = pa.Table.from_pylist([{"problem": "p", "solution": "s"}, {"problem": "q",
                                                                     "solution": None}])
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"bad\.parquet:row 1: field 'solution': missing"):
        read_sft_file(tmp_path / "bad.parquet", split="train")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataFormatError, match=r"junk\.parquet: cannot read as Parquet"):
        read_sft_file(tmp_path / "junk.parquet", split="train")
    with pytest.raises(DataFormatError, match=r"unknown file type '\.csv'"):
        read_sft_file(tmp_path / "x.csv", split="train")
    with pytest.raises(DataFormatError, match=r"missing\.jsonl: cannot open"):
        read_sft_file(tmp_path / "missing.jsonl", split="train")
    good = _write_jsonl(tmp_path / "good.jsonl", [{"problem": "p", "solution": "s"}])
    with pytest.raises(ValueError, match="split must be one of"):
        read_sft_file(good, split="validation")
    with pytest.raises(ValueError, match="heldout_fraction"):
        read_sft_file(good, split="train", heldout_fraction=1.5)


# ---------------------------------------------------------------- RL prompts


def test_read_rl_file(tmp_path):
    rows = [{"id": "r1", "problem": "1+1?", "answer": " 2", "solution": "x"},
            {"id": "r2", "problem": "2+2?", "answer": "4"}]
    expected = [{"id": "r1", "problem": "1+1?", "answer": "2"},
                {"id": "r2", "problem": "2+2?", "answer": "4"}]
    assert read_rl_file(_write_jsonl(tmp_path / "rl.jsonl", rows)) == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rl.parquet")
    assert read_rl_file(tmp_path / "rl.parquet") == expected
    _write_jsonl(tmp_path / "bad.jsonl", [rows[0], {"id": "r2", "problem": "q", "answer": 4}])
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:2: field 'answer': expected a string"):
        read_rl_file(tmp_path / "bad.jsonl")


# ---------------------------------------------------------------- TFDS builders


def test_tfds_builders_build_and_read_back_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    from sftrl.data.benchmarks import load_benchmark
    from sftrl.data.builders import tfds_builders as tb

    tfds.disable_progress_bar()
    data_dir = tmp_path / "tfds"

    bench = tb.SftrlBenchmarks(config="aime25", data_dir=data_dir)
    bench.download_and_prepare()
    source = tfds.data_source("sftrl_benchmarks/aime25", data_dir=data_dir, download=False)
    assert len(source["test"]) == 30
    got = sorted((tb.decode_problem(source["test"][i]) for i in range(30)),
                 key=lambda r: r["id"])
    assert got == sorted(load_benchmark("aime25"), key=lambda r: r["id"])
    assert bench.info.metadata["records"] == 30

    rows = [*_sft_rows(30), {"problem": "Problem 0: add 0 and 1.", "solution": "It is 1."}]
    sft_path = _write_jsonl(tmp_path / "sft.jsonl", rows)
    config = tb.SftConfig(name="tiny", files=(str(sft_path),), heldout_fraction=0.3)
    sft = tb.SftrlSft(config=config, data_dir=data_dir)
    sft.download_and_prepare()
    expected, stats = read_sft_files([sft_path], heldout_fraction=0.3)
    assert stats.duplicates_removed == 1
    reread = tfds.builder_from_directory(sft.data_dir)
    assert {k: reread.info.metadata[k] for k in ("total", "duplicates_removed", "train",
                                                  "heldout")} == stats.as_dict()
    sources = sft.as_data_source()
    for split in (TRAIN, HELDOUT):
        records = [tb.decode_conversation(sources[split][i]) for i in range(len(sources[split]))]
        assert sorted(records, key=lambda r: r["id"]) == sorted(expected[split],
                                                                key=lambda r: r["id"])

    rl_path = _write_jsonl(tmp_path / "rl.jsonl", [
        {"id": f"q{i}", "problem": f"{i}+1?", "answer": str(i + 1)} for i in range(5)])
    rl = tb.SftrlRlPrompts(config=tb.RlConfig(name="local", files=(str(rl_path),)),
                           data_dir=data_dir)
    rl.download_and_prepare()
    rl_source = rl.as_data_source(split="train")
    assert sorted(tb.decode_problem(rl_source[i])["id"] for i in range(5)) == [
        f"q{i}" for i in range(5)]
    assert rl.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert "tensorflow" not in sys.modules


def test_tfds_sft_builder_refuses_empty_split(tmp_path):
    from sftrl.data.builders import tfds_builders as tb

    path = _write_jsonl(tmp_path / "one.jsonl", [{"problem": "Find x.", "solution": "x=1"}])
    sft = tb.SftrlSft(config=tb.SftConfig(name="one", files=(str(path),), heldout_fraction=0.1),
                      data_dir=tmp_path / "tfds")
    with pytest.raises(DataFormatError, match=r"one\.jsonl: split\(s\) \['heldout'\] would be"):
        sft.download_and_prepare()
    sft = tb.SftrlSft(config=tb.SftConfig(name="all", files=(str(path),), heldout_fraction=0.0),
                      data_dir=tmp_path / "tfds")
    sft.download_and_prepare()
    assert list(sft.as_data_source()) == ["train"]
