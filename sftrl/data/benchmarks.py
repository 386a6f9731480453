"""Offline reader for the packaged math benchmarks and for users' own problem files.

The package ships normalized copies of the evaluation sets and the RL prompt set under
`sftrl/data/benchmark_files/` (written by `python -m sftrl.data.builders.normalize`), each with a
sha256 in MANIFEST.json, so evaluation never needs the network and a corrupt install is caught.

`PAPER_BENCHMARKS` uses AIME 2024 (`aime24`, 30 problems), not the 1983-2024 set: 65 of those
933 problems appear verbatim (after whitespace/case normalization) in `math_train`, the RL
prompt set, because the MATH dataset itself draws on old AIME papers, so post-RL scores on it
would partly measure memorised training prompts. `aime_1983_2024` stays loadable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.problems import read_problems


class BenchmarkError(ValueError):
    """A packaged benchmark is unknown, missing or does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class BenchmarkInfo:
    """One packaged problem set: its file, expected record count and licence summary."""

    name: str
    filename: str
    records: int
    license: str
    split: str  # "test" for evaluation sets, "train" for RL prompts


BENCHMARKS: dict[str, BenchmarkInfo] = {
    info.name: info
    for info in (
        BenchmarkInfo("math500", "math500.jsonl", 500, "MIT (PRM800K / MATH)", "test"),
        BenchmarkInfo("gsm8k", "gsm8k_test.jsonl", 1319, "MIT (openai/grade-school-math)", "test"),
        BenchmarkInfo("aime_1983_2024", "aime_1983_2024.jsonl", 933,
                      "MIT file licence; problems (c) MAA", "test"),
        BenchmarkInfo("aime24", "aime24.jsonl", 30, "MIT file licence; problems (c) MAA", "test"),
        BenchmarkInfo("aime25", "aime25.jsonl", 30, "MIT file licence; problems (c) MAA", "test"),
        BenchmarkInfo("amc23", "amc23.jsonl", 40, "MIT file licence; problems (c) MAA", "test"),
        BenchmarkInfo("olympiadbench", "olympiadbench.jsonl", 675,
                      "MIT file licence; OlympiadBench Apache-2.0", "test"),
        BenchmarkInfo("minerva_math", "minerva_math.jsonl", 272,
                      "MIT file licence; problems MIT OCW (CC BY-NC-SA 4.0)", "test"),
        BenchmarkInfo("math_train", "math_train.jsonl", 11996, "MIT (MATH, Hendrycks et al.)",
                      "train"),
    )
}

EVAL_BENCHMARKS: tuple[str, ...] = tuple(n for n, i in BENCHMARKS.items() if i.split == "test")
PAPER_BENCHMARKS: tuple[str, ...] = (
    "math500", "gsm8k", "aime24", "aime25", "amc23", "olympiadbench", "minerva_math",
)
MANIFEST = "MANIFEST.json"


def benchmark_dir() -> Path:
    """The installed `benchmark_files` directory."""
    return Path(str(resources.files("sftrl.data") / "benchmark_files"))


def benchmark_path(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> Path:
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return Path(data_dir or benchmark_dir()) / BENCHMARKS[name].filename


def _manifest_entry(directory: Path, filename: str) -> dict[str, Any]:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read the benchmark manifest ({e})") from e
    if filename not in manifest:
        raise BenchmarkError(f"{path}: no entry for {filename}")
    return manifest[filename]


def _verify(path: Path, info: BenchmarkInfo) -> None:
    entry = _manifest_entry(path.parent, info.filename)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BenchmarkError(f"{path}: cannot read benchmark file ({e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("sha256"):
        raise BenchmarkError(
            f"{path}: sha256 {digest} does not match {MANIFEST} ({entry.get('sha256')}); the "
            "installed benchmark file is corrupt or was edited"
        )
    if entry.get("records") != info.records:
        raise BenchmarkError(
            f"{path}: {MANIFEST} says {entry.get('records')} records, expected {info.records}"
        )


def load_jsonl_problems(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """A user's own benchmark or RL prompt file (JSONL, same schema as the packaged files).

    Records keep `id`, `problem`, `answer` (stripped) and the optional string fields `level`,
    `solution`, `source`, `subject`. Errors (a `ValueError` subclass) name path:line:field.
    """
    if Path(path).suffix.lower() != ".jsonl":
        raise DataFormatError(str(path), "expected a .jsonl file")
    return read_problems(path)


def load_benchmark(
    name: str,
    *,
    limit: int | None = None,
    verify: bool = True,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, str]]:
    """Records `{"id", "problem", "answer", ...}` of a packaged benchmark, in file order.

    `verify` checks the file's sha256 and record count against MANIFEST.json and raises
    `BenchmarkError` naming the file on mismatch. `limit` keeps the first `limit` records.
    `data_dir` replaces the installed directory (tests, or a copy elsewhere).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    path = benchmark_path(name, data_dir=data_dir)  # rejects unknown names
    info = BENCHMARKS[name]
    if not path.is_file():
        raise BenchmarkError(f"{path}: benchmark file {name!r} is not installed")
    if verify:
        _verify(path, info)
    records = read_problems(path)
    if verify and len(records) != info.records:
        raise BenchmarkError(f"{path}: {len(records)} records, expected {info.records}")
    return records if limit is None else records[:limit]
