"""Random access to one logical shard of the SFT training data, read lazily (see `shards`).

A source (`RecordSource`, `FileSource`, `TfdsSource`) cuts itself into shards; a shard
(`ShardReader`) knows how many rows it holds and turns row i into a conversation on demand:
nothing is parsed or tokenized before the pipeline asks for it, and a process opens only the
bytes (JSONL) or rows (Parquet, array_record) of its own shards.

Rows that are not training examples come back as None: the held-out rows of a file (chosen by
the hash of the problem text, `sftrl.data.builders.sft.is_heldout`, so every process agrees
without reading the others' rows). Unlike the whole-file reader, a shard does not remove
duplicate conversations (that needs every row); deduplicate when preparing the data (the
`sftrl_sft` TFDS builder does).

`example_id(i)` is a number unique over the whole data, the same whichever process reads it:
(file number << 40) + the row's byte offset (JSONL) or row number (Parquet, array_record).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.fields import FieldMap, parse_fields
from sftrl.data.builders.rows import JSONL_SUFFIXES, PARQUET_SUFFIXES, parse_line
from sftrl.data.builders.sft import is_heldout, problem_text, to_messages
from sftrl.data.shards import line_number, line_starts, split_range

Messages = list[dict[str, str]]
_FILE_SHIFT = 40


class ShardReader(Protocol):
    def __len__(self) -> int: ...

    def example(self, i: int) -> Messages | None:
        """Row i's conversation; None when the row is not a training example."""

    def example_id(self, i: int) -> int: ...

    def location(self, i: int) -> str:
        """Where row i is, for error messages (`file:line`, `file:row N`)."""


class SFTSource(Protocol):
    name: str

    def shard(self, index: int, num_shards: int) -> ShardReader: ...

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (a saved position is refused for other data)."""


# --- in-memory records ---------------------------------------------------------------------------


class RecordSource:
    """Chat records already in memory (`{"id", "messages"}`), e.g. the synthetic task's."""

    def __init__(self, records: Sequence[Mapping[str, Any]], name: str = "records"):
        self.records = records
        self.name = name

    def shard(self, index: int, num_shards: int) -> _RecordShard:
        return _RecordShard(self, *split_range(len(self.records), index, num_shards))

    def fingerprint(self) -> dict[str, Any]:
        return {"records": len(self.records)}


class _RangeShard:
    """Rows [lo, hi) of a source indexed by row number (records, an array_record split); a row's
    example_id is its number in the whole source."""

    source: Any

    def __init__(self, source: Any, lo: int, hi: int):
        self.source, self.lo, self.hi = source, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def example_id(self, i: int) -> int:
        return self.lo + i


class _RecordShard(_RangeShard):
    source: RecordSource

    def example(self, i: int) -> Messages | None:
        from sftrl.data.sft import validate_sft_record

        record = self.source.records[self.lo + i]
        validate_sft_record(record, self.lo + i, self.source.name)
        return [dict(m) for m in record["messages"]]

    def location(self, i: int) -> str:
        return f"{self.source.name}: record {self.lo + i}"


# --- JSONL / Parquet files -----------------------------------------------------------------------


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataFormatError(str(path), f"unsupported file type {suffix!r} (expected "
                          f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)})")


class FileSource:
    """JSONL and Parquet SFT files (chat or problem form, fields named by `fields`); the rows
    that hash into the held-out split are skipped."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *,
                 fields: FieldMap | str | None = None, heldout_fraction: float = 0.05):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no SFT files given")
        self.kinds = [_kind(p) for p in self.paths]
        self.fields = parse_fields(fields)
        self.heldout_fraction = heldout_fraction
        self.name = "+".join(p.stem for p in self.paths)
        self._units = [self._count_units(p, k) for p, k in zip(self.paths, self.kinds,
                                                               strict=True)]

    @staticmethod
    def _count_units(path: Path, kind: str) -> int:
        if kind == "jsonl":
            return path.stat().st_size
        import pyarrow.parquet as pq  # deferred: only Parquet callers pay for pyarrow

        try:
            return int(pq.ParquetFile(path).metadata.num_rows)
        except (OSError, ValueError) as e:
            raise DataFormatError(str(path), f"cannot read as Parquet: {e}") from e

    def shard(self, index: int, num_shards: int) -> _FileShard:
        parts: list[_Part] = []
        for number, (path, kind, units) in enumerate(
                zip(self.paths, self.kinds, self._units, strict=True)):
            lo, hi = split_range(units, index, num_shards)
            part = _JsonlPart(number, path, lo, hi) if kind == "jsonl" else _ParquetPart(
                number, path, lo, hi)
            if len(part):
                parts.append(part)
        return _FileShard(self, parts)

    def fingerprint(self) -> dict[str, Any]:
        return {"files": [[p.name, u] for p, u in zip(self.paths, self._units, strict=True)],
                "fields": self.fields.spec(), "heldout_fraction": self.heldout_fraction}

    def conversation(self, raw: dict[str, Any], loc: str) -> Messages | None:
        messages = to_messages(raw, loc, self.fields)
        if is_heldout(problem_text(messages), self.heldout_fraction):
            return None
        return messages


class _Part(Protocol):
    number: int

    def __len__(self) -> int: ...

    def row(self, k: int) -> tuple[str, dict[str, Any]]: ...

    def unit(self, k: int) -> int: ...

    def location(self, k: int) -> str: ...


class _JsonlPart:
    """The lines of one JSONL file whose first byte lies in [lo, hi): offsets, read on demand."""

    def __init__(self, number: int, path: Path, lo: int, hi: int):
        self.number, self.path = number, path
        self.offsets = line_starts(path, lo, hi)
        self._file: Any = None

    def __len__(self) -> int:
        return len(self.offsets)

    def unit(self, k: int) -> int:
        return int(self.offsets[k])

    def location(self, k: int) -> str:
        return f"{self.path}:{line_number(self.path, int(self.offsets[k]))}"

    def row(self, k: int) -> tuple[str, dict[str, Any]]:
        if self._file is None:
            self._file = open(self.path, "rb")  # kept open: rows are read in random order
        self._file.seek(int(self.offsets[k]))
        line = self._file.readline()
        # Rows are named by byte offset; a bad one is renamed file:line (`_FileShard.example`),
        # which costs a count of the newlines before it.
        return f"{self.path}:byte {int(self.offsets[k])}", parse_line(line, "")


class _ParquetPart:
    """Rows [lo, hi) of one Parquet file: only the row groups that hold them are read."""

    def __init__(self, number: int, path: Path, lo: int, hi: int):
        import pyarrow.parquet as pq

        self.number, self.path, self.lo = number, path, lo
        self.table = None
        self._n = hi - lo
        if self._n <= 0:
            return
        pf = pq.ParquetFile(path)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows
                                  for g in range(pf.num_row_groups)])
        groups = [g for g in range(pf.num_row_groups) if starts[g] < hi and starts[g + 1] > lo]
        first = int(starts[groups[0]])
        self.table = pf.read_row_groups(groups).slice(lo - first, self._n)

    def __len__(self) -> int:
        return self._n

    def unit(self, k: int) -> int:
        return self.lo + k

    def location(self, k: int) -> str:
        return f"{self.path}:row {self.lo + k}"

    def row(self, k: int) -> tuple[str, dict[str, Any]]:
        assert self.table is not None
        return self.location(k), self.table.slice(k, 1).to_pylist()[0]


class _FileShard:
    def __init__(self, source: FileSource, parts: list[_Part]):
        self.source, self.parts = source, parts
        self._ends = np.cumsum([len(p) for p in parts]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _find(self, i: int) -> tuple[_Part, int]:
        p = bisect.bisect_right(self._ends, i)
        return self.parts[p], i - (self._ends[p - 1] if p else 0)

    def example(self, i: int) -> Messages | None:
        part, k = self._find(i)
        try:
            loc, raw = part.row(k)
            return self.source.conversation(raw, loc)
        except DataFormatError as e:
            raise DataFormatError(part.location(k), e.problem, e.field) from e

    def example_id(self, i: int) -> int:
        part, k = self._find(i)
        return (part.number << _FILE_SHIFT) + part.unit(k)

    def location(self, i: int) -> str:
        part, k = self._find(i)
        return part.location(k)


# --- a prepared TFDS dataset (array_record) ------------------------------------------------------


class TfdsSource:
    """The `train` split of a prepared `sftrl_sft` TFDS dataset directory (array_record, read
    by index without TensorFlow; split and deduplicated when it was built)."""

    def __init__(self, directory: str | os.PathLike[str], split: str = "train"):
        import tensorflow_datasets as tfds

        self.directory = str(directory)
        self.split = split
        self.name = Path(self.directory.rstrip("/")).parent.parent.name or "tfds"
        try:
            builder = tfds.builder_from_directory(self.directory)
        except Exception as e:  # tfds raises several types for a folder that is not a dataset
            raise DataFormatError(self.directory, f"not a prepared TFDS dataset ({e})") from e
        self.data = builder.as_data_source(split=split)

    def shard(self, index: int, num_shards: int) -> _TfdsShard:
        return _TfdsShard(self, *split_range(len(self.data), index, num_shards))

    def fingerprint(self) -> dict[str, Any]:
        return {"tfds": self.directory, "split": self.split, "rows": len(self.data)}


class _TfdsShard(_RangeShard):
    source: TfdsSource

    def example(self, i: int) -> Messages | None:
        from sftrl.data.builders.tfds_builders import decode_conversation

        return decode_conversation(self.source.data[self.lo + i])["messages"]

    def location(self, i: int) -> str:
        return f"{self.source.directory}[{self.source.split}][{self.lo + i}]"


__all__ = ["FileSource", "RecordSource", "SFTSource", "ShardReader", "TfdsSource"]
