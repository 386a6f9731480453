"""Problem records (`id`, `problem`, `answer` + optional string fields): parsing and reading.

One schema serves the packaged benchmarks, a user's own benchmark file and RL prompt sets, so
the normalizer, the benchmark loader and the RL builder all validate through `parse_problem`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.rows import iter_rows

REQUIRED_FIELDS = ("id", "problem", "answer")
OPTIONAL_FIELDS = ("level", "solution", "source", "subject")


def _required_str(raw: dict[str, Any], field: str, loc: str) -> str:
    if field not in raw or raw[field] is None:
        raise DataFormatError(loc, "missing", field)
    value = raw[field]
    if not isinstance(value, str):
        raise DataFormatError(loc, f"expected a string, got {type(value).__name__}", field)
    if not value.strip():
        raise DataFormatError(loc, "empty", field)
    return value


def parse_problem(
    raw: dict[str, Any], loc: str, *, optional: Iterable[str] = OPTIONAL_FIELDS
) -> dict[str, str]:
    """Validates one raw record and returns its normalized form.

    The result holds the required fields (`answer` stripped, since answers are compared as
    strings) and those of `optional` that are present (strings; `None` counts as absent).
    Other fields are dropped. Raises `DataFormatError` naming `loc` and the field.
    """
    rec = {field: _required_str(raw, field, loc) for field in REQUIRED_FIELDS}
    rec["answer"] = rec["answer"].strip()
    for field in optional:
        if field not in OPTIONAL_FIELDS:
            raise ValueError(f"unknown optional field {field!r}; known: {OPTIONAL_FIELDS}")
        value = raw.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataFormatError(loc, f"expected a string, got {type(value).__name__}", field)
        rec[field] = value
    return rec


def read_problems(
    path: str | os.PathLike[str], *, optional: Iterable[str] = OPTIONAL_FIELDS,
    dropped_fields: set[str] | None = None,
) -> list[dict[str, str]]:
    """Reads a JSONL or Parquet problem file; every record is validated, ids must be unique.

    `dropped_fields`, when given, collects the names of input fields that were not kept.
    """
    optional = tuple(optional)
    records: list[dict[str, str]] = []
    first_seen: dict[str, str] = {}
    for loc, raw in iter_rows(path):
        rec = parse_problem(raw, loc, optional=optional)
        if rec["id"] in first_seen:
            raise DataFormatError(
                loc, f"duplicate id {rec['id']!r} (first at {first_seen[rec['id']]})", "id"
            )
        first_seen[rec["id"]] = loc
        if dropped_fields is not None:
            dropped_fields.update(k for k in raw if k not in rec and k not in REQUIRED_FIELDS)
        records.append(rec)
    return records


def read_rl_file(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Reads an RL prompt set (JSONL or Parquet) as `{"id", "problem", "answer"}` records."""
    return read_problems(path, optional=())
