"""The packaged benchmark files: counts, sha256, normal form, tamper detection, user files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from sftrl.data import benchmarks
from sftrl.data.benchmarks import (
    BENCHMARKS,
    PAPER_BENCHMARKS,
    BenchmarkError,
    benchmark_dir,
    load_benchmark,
    load_jsonl_problems,
)
from sftrl.data.builders import DataFormatError, normalize

# Pinned independently of BENCHMARKS, so an edit there cannot hide a changed file.
EXPECTED_RECORDS = {
    "math500": 500, "gsm8k": 1319, "aime_1983_2024": 933, "aime24": 30, "aime25": 30,
    "amc23": 40, "olympiadbench": 675, "minerva_math": 272, "math_train": 11996,
}
ALLOWED_FIELDS = {"id", "problem", "answer", "level", "subject", "source", "solution"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _manifest() -> dict:
    return json.loads((benchmark_dir() / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(EXPECTED_RECORDS))
def test_every_benchmark_loads_with_count_and_sha(name):
    info = BENCHMARKS[name]
    path = benchmark_dir() / info.filename
    entry = _manifest()[info.filename]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert entry["records"] == EXPECTED_RECORDS[name] == info.records
    assert entry["bytes"] == path.stat().st_size
    assert entry["license"] and entry["origin"]
    records = load_benchmark(name)
    assert len(records) == EXPECTED_RECORDS[name]
    assert len({r["id"] for r in records}) == len(records)


def test_packaged_files_are_normalized_and_small():
    manifest = _manifest()
    assert set(manifest) == {i.filename for i in BENCHMARKS.values()}
    total = 0
    for filename in manifest:
        data = (benchmark_dir() / filename).read_bytes()
        total += len(data)
        assert b"\r" not in data and data.endswith(b"\n")
        for line in data.decode("utf-8").splitlines():
            rec = json.loads(line)
            assert list(rec) == sorted(rec)
            assert set(rec) <= ALLOWED_FIELDS
            assert all(isinstance(v, str) for v in rec.values())
            assert rec["answer"] == rec["answer"].strip() and rec["answer"]
            assert line == json.dumps(rec, sort_keys=True, ensure_ascii=False)
    assert total < 10_000_000
    # math_train's solutions are dropped to fit; the eval sets keep theirs.
    assert "solution" not in load_benchmark("math_train", limit=1)[0]
    assert "solution" in load_benchmark("math500", limit=1)[0]
    sources = (benchmark_dir() / "SOURCES.md").read_text(encoding="utf-8")
    for filename, entry in manifest.items():
        assert f"`{filename}`" in sources and entry["sha256"] in sources


def test_paper_benchmarks_are_seven_eval_sets():
    assert len(PAPER_BENCHMARKS) == len(set(PAPER_BENCHMARKS)) == 7
    assert all(BENCHMARKS[n].split == "test" for n in PAPER_BENCHMARKS)
    assert "aime24" in PAPER_BENCHMARKS and "math_train" not in PAPER_BENCHMARKS
    assert load_benchmark("aime_1983_2024", limit=3)[0]["id"] == "aime-1983-1"


def test_limit_and_bad_arguments():
    assert [r["id"] for r in load_benchmark("aime25", limit=2)] == [
        "aime25-2025-I-1", "aime25-2025-I-2"]
    assert load_benchmark("aime25", limit=0) == []
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("aime25", limit=-1)
    with pytest.raises(BenchmarkError, match="unknown benchmark 'aime26'"):
        load_benchmark("aime26")


def _copy_install(tmp_path: Path) -> Path:
    dst = tmp_path / "benchmark_files"
    shutil.copytree(benchmark_dir(), dst)
    return dst


def test_tampered_file_is_refused(tmp_path):
    data_dir = _copy_install(tmp_path)
    path = data_dir / "amc23.jsonl"
    assert len(load_benchmark("amc23", data_dir=data_dir)) == 40
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"answer": "27"', '"answer": "28"', 1), encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"amc23\.jsonl.*sha256"):
        load_benchmark("amc23", data_dir=data_dir)
    # verify=False trusts the bytes (still schema-checked), for deliberate local edits.
    assert load_benchmark("amc23", data_dir=data_dir, verify=False)[0]["answer"] == "28"
    path.unlink()
    with pytest.raises(BenchmarkError, match=r"amc23\.jsonl.*not installed"):
        load_benchmark("amc23", data_dir=data_dir)


def test_missing_manifest_is_refused(tmp_path):
    data_dir = _copy_install(tmp_path)
    (data_dir / "MANIFEST.json").unlink()
    with pytest.raises(BenchmarkError, match=r"MANIFEST\.json"):
        load_benchmark("aime24", data_dir=data_dir)


def test_load_jsonl_problems(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "a", "problem": "1+1?", "answer": " 2 ", "level": "1", "extra": 3}\n'
        '{"id": "b", "problem": "2+2?", "answer": "4"}\n',
        encoding="utf-8",
    )
    assert load_jsonl_problems(path) == [
        {"id": "a", "problem": "1+1?", "answer": "2", "level": "1"},
        {"id": "b", "problem": "2+2?", "answer": "4"},
    ]


@pytest.mark.parametrize(
    ("line2", "match"),
    [
        ('{"id": "b", "problem": "x"}', r"mine\.jsonl:2: field 'answer': missing"),
        ('{"id": "b", "problem": "  ", "answer": "1"}', r"mine\.jsonl:2: field 'problem': empty"),
        ('{"id": "b", "problem": "x", "answer": 4}', r"mine\.jsonl:2: field 'answer': expected a"),
        ('{"id": "a", "problem": "x", "answer": "4"}', r"mine\.jsonl:2: field 'id': duplicate"),
        ('{"id": "b", "problem": "x", "answer": "4"', r"mine\.jsonl:2: malformed JSON"),
        ('["b"]', r"mine\.jsonl:2: expected a JSON object"),
        ("", r"mine\.jsonl:2: blank line"),
        ('{"id": "b", "problem": "x", "answer": "4", "level": 3}',
         r"mine\.jsonl:2: field 'level': expected a string"),
    ],
)
def test_load_jsonl_problems_errors_name_file_line_field(tmp_path, line2, match):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": "a", "problem": "p", "answer": "1"}\n' + line2 + "\n"
                    '{"id": "c", "problem": "p", "answer": "1"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=match) as info:
        load_jsonl_problems(path)
    assert isinstance(info.value, ValueError)


def test_error_is_a_value_error_subclass():
    assert issubclass(BenchmarkError, ValueError) and issubclass(DataFormatError, ValueError)
    assert benchmarks.PAPER_BENCHMARKS is PAPER_BENCHMARKS


@pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.json").is_file(),
                    reason="the shared source data directory is not on this machine")
def test_packaged_files_reproduce_from_shared_sources(tmp_path):
    normalize.normalize_dir(SHARED_DATA, tmp_path)
    for path in sorted(benchmark_dir().iterdir()):
        if path.suffix in (".jsonl", ".json", ".md"):
            assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
