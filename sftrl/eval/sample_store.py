"""A resumable per-benchmark samples file: one JSON line per prompt, stored durably as it is
sampled, on a local disk or on any `etils.epath` path (an object store such as `gs://...`).

`samples/<ckpt>/<benchmark>.jsonl` holds, for every finished prompt, its id, problem, gold
answer, the n decoded responses, their token counts, finished flags (ended on a stop token),
verdicts, extracted answers and (when the sampler gave log-probs) each response's mean
-log-prob per token. Every finished samples file has that one format, wherever it was written.

Local disk: rows are appended to that file, one `write` each, flushed and fsync'd before the
row is reported durable, so after a crash the file holds every finished prompt, plus at most
one partial line at the end. Opening repairs exactly that case: an unterminated or unparsable
LAST line is what a kill mid-write leaves; it is cut off (and logged), so it is neither counted
nor regenerated twice. Any other damage (a bad line in the middle, a missing or ill-typed field,
a repeated id) is not something a kill produces, so it is an error naming the file, line and
field.

Object store (no append, no rename): rows are held until `flush` (the eval runner flushes once
per wave of prompts) and then uploaded whole as one part file, `<benchmark>.parts/<n>.jsonl`
(through `sftrl.atomic`), so a kill loses at most the wave being sampled, which a resume
samples again. When the benchmark is complete, `consolidate` writes every row as the one
samples file above and removes the parts. Readers (`read_rows`, `SampleStore`) read the file
and then the parts in order, so a run stopped anywhere reads back whole; a part row that the
file already holds, identical, is what a stop between writing the file and removing the parts
leaves, and is skipped.

Several processes: one writes (`writer=True`, process 0); the others read the same store and
keep their rows in memory only, so each file is written once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from etils import epath

from sftrl import atomic

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
_PART_NAME = re.compile(r"^(\d+)\.jsonl$")

AnyPath = Path | epath.Path
_Where = tuple[str, int]  # (file, line) of a stored row, for messages


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


def parts_dir(path: str | os.PathLike[str]) -> AnyPath:
    """The folder of a samples file's part files: `<benchmark>.parts/` beside `<benchmark>.jsonl`
    (not itself `*.jsonl`, so a glob for samples files does not match it)."""
    path = atomic.to_path(path)
    return path.parent / f"{path.stem}.parts"


def part_files(path: str | os.PathLike[str]) -> list[AnyPath]:
    """The part files of samples file `path`, in the order they were written."""
    folder = parts_dir(path)
    if not folder.exists():
        return []
    numbered = [(int(m[1]), child) for child in folder.iterdir()
                if (m := _PART_NAME.match(child.name))]
    return [child for _, child in sorted(numbered, key=lambda item: item[0])]


def _line(row: Mapping[str, Any]) -> bytes:
    # allow_nan=False: a NaN is a bug upstream and strict JSON readers reject it.
    return json.dumps(row, ensure_ascii=False, allow_nan=False).encode("utf-8") + b"\n"


def _parse(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleStoreError(f"{where}: not valid JSON ({error})") from None


def _repeats(first: _Where, file: str) -> str:
    return f"line {first[1]}" if first[0] == file else f"{first[0]}:{first[1]}"


class _Rows:
    """Rows in the order stored, each id once, with where each was stored (for messages)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.where: dict[str, _Where] = {}  # id -> (file, line)

    def admit(self, row: Any, file: str, number: int) -> None:
        """Checks a parsed line (fields, and an id no earlier line has) and keeps it."""
        where = f"{file}:{number}"
        check_row(row, where)
        if row["id"] in self.where:
            raise SampleStoreError(f"{where}: field 'id': {row['id']!r} repeats "
                                   f"{_repeats(self.where[row['id']], file)}")
        self.where[row["id"]] = (file, number)
        self.rows.append(row)

    def admit_parts(self, path: AnyPath, main_ids: set[str]) -> list[AnyPath]:
        """Every row of `path`'s part files; a row the samples file itself holds, identical, is
        left over from a consolidation stopped before it removed the parts, and is skipped.
        Returns the part files read."""
        by_id = {row["id"]: row for row in self.rows if row["id"] in main_ids}
        files = part_files(path)
        for part in files:
            for number, raw in enumerate(part.read_bytes().splitlines(), start=1):
                row = _parse(raw, f"{part}:{number}")
                if (isinstance(row, dict) and isinstance(row.get("id"), str)
                        and by_id.get(row["id"]) == row):
                    continue
                self.admit(row, str(part), number)
        return files


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row of a samples file and of its part files (an object-store run still sampling),
    read-only: `SampleStore` repairs a torn last line in place, and a reader must not write. So
    here every bad line, the last included, is an error naming the file, line and field."""
    path = atomic.to_path(path)
    found = _Rows()
    parts = part_files(path)
    if path.exists() or not parts:  # neither: FileNotFoundError, naming the file
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            found.admit(_parse(raw, f"{path}:{number}"), str(path), number)
    found.admit_parts(path, set(found.where))
    return found.rows


class SampleStore:
    """The rows of one samples file (and its part files); see the module docstring.

    `append` stores a row and returns the rows that became durable by it: on a local disk the
    row itself, on an object store none until `flush` uploads the held rows as one part (and
    returns them). `consolidate` makes the parts one samples file once every row is in.

    Use as a context manager (or call `close`): a clean exit flushes held rows and releases the
    append handle; an exit by an exception uploads nothing more. One writer per file: opening
    repairs a torn last line, so do not open a file another process is still appending to (read
    it with `read_rows`, or open it with `writer=False`, which never writes).
    """

    def __init__(self, path: str | os.PathLike[str], *, writer: bool = True):
        self.remote = atomic.is_remote(path)
        self.path = atomic.to_path(path)
        self.writer = writer
        self._found = _Rows()
        self._held: list[dict[str, Any]] = []  # object store: rows not yet in a part
        self._main_rows = 0  # rows in the samples file itself (local appends number from here)
        if writer and not self.remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        self._main_rows = len(self._found.rows)
        parts = self._found.admit_parts(self.path, set(self._found.where))
        self._num_parts = len(parts)
        self._next_part = int(_PART_NAME.match(parts[-1].name)[1]) + 1 if parts else 1
        self._handle = self.path.open("ab") if writer and not self.remote else None

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # After the last "\n" comes b"" for a clean file, else an unterminated line.
        complete, tail = lines[:-1], lines[-1]
        keep_bytes = len(data) - len(tail)
        if tail:
            self._cut(data, keep_bytes, len(complete) + 1, "unterminated")
        for number, raw in enumerate(complete, start=1):
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                if number == len(complete) and not tail:
                    # A torn last line can end in a newline when the kill hit a page boundary
                    # after the newline's page reached the disk; drop it like a partial one.
                    self._cut(data, keep_bytes - len(raw) - 1, number,
                              f"not valid JSON ({error})")
                    break
                raise SampleStoreError(
                    f"{self.path}:{number}: not valid JSON ({error})") from None
            self._found.admit(row, str(self.path), number)

    def _cut(self, data: bytes, size: int, line: int, why: str) -> None:
        """Drops a torn last line: from the file when this process writes, else only from what
        it reads (the writer repairs the file)."""
        if not self.writer:
            log.info("%s:%d: last line %s (an interrupted write); not read", self.path, line, why)
            return
        log.warning("%s:%d: last line %s (an interrupted write); truncating it away",
                    self.path, line, why)
        if self.remote:  # an object is replaced whole
            atomic.write_bytes(self.path, data[:size])
            return
        with self.path.open("r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:  # rows of an unfinished wave are sampled again on resume
            self._held.clear()
            self._release()

    def close(self) -> None:
        self.flush()
        self._release()

    def _release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __len__(self) -> int:
        return len(self._found.rows)

    def done_ids(self) -> set[str]:
        return set(self._found.where)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._found.rows)

    def _next_where(self) -> _Where:
        if self.remote:
            return (str(parts_dir(self.path) / f"{self._next_part:06d}.jsonl"),
                    len(self._held) + 1)
        return (str(self.path), self._main_rows + 1)

    def append(self, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Stores `row`; returns the rows now durable (see the class docstring)."""
        file, number = self._next_where()
        check_row(row, f"{file}:{number} (new row)")
        if row["id"] in self._found.where:
            raise SampleStoreError(
                f"{self.path}: field 'id': {row['id']!r} is already stored "
                f"({_repeats(self._found.where[row['id']], str(self.path))})")
        row = dict(row)
        line = _line(row)
        if self.remote:
            self._held.append(row)
            durable = []
        else:
            if self._handle is not None:
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            self._main_rows += 1
            durable = [row]
        self._found.where[row["id"]] = (file, number)
        self._found.rows.append(row)
        return durable

    def flush(self) -> list[dict[str, Any]]:
        """Object store: uploads the held rows as the next part file (whole, or not at all) and
        returns them. Local disk: nothing to do (each append is already durable)."""
        if not self._held:
            return []
        rows = list(self._held)
        if self.writer:
            part = parts_dir(self.path) / f"{self._next_part:06d}.jsonl"
            atomic.write_bytes(part, b"".join(_line(r) for r in rows))
            self._num_parts += 1
        self._next_part += 1
        self._held.clear()
        return rows

    def consolidate(self) -> None:
        """Writes every row, in the order stored, as the one samples file (atomically) and
        removes the part files; nothing to do when there are none (a local run appends to the
        file itself). Call it once every row is in: a stop before or during it leaves the parts,
        which are read again."""
        self.flush()
        if not self.writer or not self._num_parts:
            return
        data = b"".join(_line(r) for r in self._found.rows)
        reopen = self._handle is not None
        self._release()  # a local append handle would point at the replaced file
        atomic.write_bytes(self.path, data)
        folder = parts_dir(self.path)
        if self.remote:
            folder.rmtree(missing_ok=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        log.info("%s: %d rows from %d part file(s) consolidated", self.path,
                 len(self._found.rows), self._num_parts)
        self._num_parts, self._next_part = 0, 1
        self._main_rows = len(self._found.rows)
        self._found.where = {row["id"]: (str(self.path), i)
                             for i, row in enumerate(self._found.rows, start=1)}
        if reopen:
            self._handle = self.path.open("ab")


def rows_in_order(store: SampleStore, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The stored rows in the order of `ids` (the benchmark's order, not completion order)."""
    by_id = {row["id"]: row for row in store.rows()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SampleStoreError(f"{store.path}: no row for id(s) {missing[:5]}")
    return [by_id[i] for i in ids]
