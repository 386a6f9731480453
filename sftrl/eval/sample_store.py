"""A resumable per-benchmark samples file: one JSON line per prompt, appended durably.

`samples/<ckpt>/<benchmark>.jsonl` holds, for every finished prompt, its id, problem, gold
answer, the n decoded responses, their token counts, finished flags (ended on a stop token),
verdicts, extracted answers and (when the sampler gave log-probs) each response's mean
-log-prob per token. A line is written in one `write`, flushed and fsync'd before the next
prompt is reported done, so after a crash the file holds every finished prompt, plus at most one
partial line at the end.

Opening repairs exactly that case: an unterminated or unparsable LAST line is what a kill
mid-write leaves; it is cut off (and logged), so it is neither counted nor regenerated twice. Any
other damage (a bad line in the middle, a missing or ill-typed field, a repeated id) is not
something a kill produces, so it is an error naming the file, line and field.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

# field -> (type of the value, or of each list element; whether it is a per-response list)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), False),
    "problem": ((str,), False),
    "answer": ((str,), False),
    "responses": ((str,), True),
    "num_tokens": ((int,), True),
    "finished": ((bool,), True),
    "correct": ((bool,), True),
    "extracted": ((str, type(None)), True),
}
_OPTIONAL_PER_RESPONSE = {"entropy": (int, float)}


class SampleStoreError(ValueError):
    """A samples file or row that cannot be trusted; the message names file, line and field."""


def check_row(row: Mapping[str, Any], where: str) -> None:
    """Raises SampleStoreError (naming `where` and the field) unless `row` is a valid row."""
    if not isinstance(row, Mapping):
        raise SampleStoreError(f"{where}: expected a JSON object, got {type(row).__name__}")
    n = None
    for field, (types, per_response) in _FIELDS.items():
        if field not in row:
            raise SampleStoreError(f"{where}: missing field {field!r}")
        value = row[field]
        items = value if per_response else [value]
        if per_response and not isinstance(value, list):
            raise SampleStoreError(f"{where}: field {field!r} must be a list")
        for item in items:
            # bool is an int subclass: a count must not be a bool
            if not isinstance(item, types) or (bool not in types and isinstance(item, bool)):
                names = "/".join(t.__name__ for t in types)
                raise SampleStoreError(f"{where}: field {field!r} holds {item!r}, not {names}")
        if per_response:
            if n is None:
                n = len(value)
            elif len(value) != n:
                raise SampleStoreError(
                    f"{where}: field {field!r} has {len(value)} entries, 'responses' has {n}")
    if not row["id"]:
        raise SampleStoreError(f"{where}: field 'id' is empty")
    if not n:
        raise SampleStoreError(f"{where}: field 'responses' is empty")
    for field, types in _OPTIONAL_PER_RESPONSE.items():
        value = row.get(field)
        if value is None:
            continue
        if (not isinstance(value, list) or len(value) != n
                or not all(isinstance(v, types) and not isinstance(v, bool) for v in value)):
            raise SampleStoreError(f"{where}: field {field!r} must be a list of {n} numbers")


def _admit(row: Any, where: str, number: int, ids: dict[str, int]) -> None:
    """Checks a parsed line (fields, and an id no earlier line has) and records its id."""
    check_row(row, where)
    if row["id"] in ids:
        raise SampleStoreError(f"{where}: field 'id': {row['id']!r} repeats line {ids[row['id']]}")
    ids[row["id"]] = number


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a finished samples file, read-only: `SampleStore` repairs a torn last line
    in place, and a reader must not write. So here every bad line, the last included, is an
    error naming the file, line and field."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SampleStoreError(f"{where}: not valid JSON ({error})") from None
        _admit(row, where, number, seen)
        rows.append(row)
    return rows


class SampleStore:
    """The rows of one samples file; `append` makes a row durable before returning.

    Use as a context manager (or call `close`) so the append handle is released. One writer
    per file: opening repairs a torn last line, so do not open a file another process is
    still appending to (read it with `read_rows` instead).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._ids: dict[str, int] = {}  # id -> line number
        if self.path.exists():
            self._load()
        self._handle = self.path.open("ab")

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After the last "\n" comes b"" for a clean file, else an unterminated line.
        complete, tail = lines[:-1], lines[-1]
        keep_bytes = len(data) - len(tail)
        if tail:
            self._truncate(keep_bytes, len(complete) + 1, "unterminated")
        for number, raw in enumerate(complete, start=1):
            where = f"{self.path}:{number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                if number == len(complete) and not tail:
                    # A torn last line can end in a newline when the kill hit a page boundary
                    # after the newline's page reached the disk; drop it like a partial one.
                    self._truncate(keep_bytes - len(raw) - 1, number, f"not valid JSON ({error})")
                    break
                raise SampleStoreError(f"{where}: not valid JSON ({error})") from None
            _admit(row, where, number, self._ids)
            self._rows.append(row)

    def _truncate(self, size: int, line: int, why: str) -> None:
        log.warning("%s:%d: last line %s (an interrupted write); truncating it away",
                    self.path, line, why)
        with self.path.open("r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    def __len__(self) -> int:
        return len(self._rows)

    def done_ids(self) -> set[str]:
        return set(self._ids)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def append(self, row: Mapping[str, Any]) -> None:
        number = len(self._rows) + 1
        check_row(row, f"{self.path}:{number} (new row)")
        if row["id"] in self._ids:
            raise SampleStoreError(f"{self.path}: field 'id': {row['id']!r} is already stored "
                                   f"(line {self._ids[row['id']]})")
        # allow_nan=False: a NaN is a bug upstream and strict JSON readers reject it.
        line = json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"
        self._handle.write(line)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._ids[row["id"]] = number
        self._rows.append(dict(row))


def rows_in_order(store: SampleStore, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The stored rows in the order of `ids` (the benchmark's order, not completion order)."""
    by_id = {row["id"]: row for row in store.rows()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SampleStoreError(f"{store.path}: no row for id(s) {missing[:5]}")
    return [by_id[i] for i in ids]
