"""Row iteration over JSONL and Parquet files, each row paired with its location string.

Locations read `path:line` (1-based) for JSONL and `path:row N` (0-based) for Parquet, so every
later error can point at the exact record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sftrl.data.builders.errors import DataFormatError

JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(location, object)` per line; blank lines, bad JSON and non-objects are errors."""
    path = Path(path)
    try:
        f = path.open("rb")  # decoded per line: text mode decodes in chunks, losing the line
    except OSError as e:
        raise DataFormatError(str(path), f"cannot open: {e}") from e
    with f:
        for lineno, raw_line in enumerate(f, 1):
            loc = f"{path}:{lineno}"
            yield loc, parse_line(raw_line, loc)


def parse_line(raw_line: bytes, loc: str) -> dict[str, Any]:
    """One JSONL line as an object; errors name `loc`."""
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(loc, f"not valid UTF-8 ({e})") from e
    if not line.strip():
        raise DataFormatError(loc, "blank line (one JSON object per line expected)")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(loc, f"malformed JSON ({e})") from e
    if not isinstance(obj, dict):
        raise DataFormatError(loc, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_parquet(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(location, row dict)` per Parquet row, reading one row group at a time."""
    import pyarrow.parquet as pq  # deferred: only Parquet callers pay for pyarrow

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) on bad files
        raise DataFormatError(str(path), f"cannot read as Parquet: {e}") from e
    row = 0
    for group in range(pf.num_row_groups):
        for obj in pf.read_row_group(group).to_pylist():
            yield f"{path}:row {row}", obj
            row += 1


def iter_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(location, record)` from a JSONL or Parquet file, chosen by the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return iter_jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        return iter_parquet(path)
    raise DataFormatError(
        str(path),
        f"unknown file type {suffix!r}; expected one of {JSONL_SUFFIXES + PARQUET_SUFFIXES}",
    )
