"""SFT conversations from local JSONL/Parquet files, with a deterministic held-out split.

Two input forms are accepted per record: chat form (`messages`: a list of `{role, content}`)
and problem form (`problem` + `solution`, turned into one user turn and one assistant turn).
When a record has `messages` it is used and the other fields are ignored, since many public
SFT sets carry both. Turns may also be ShareGPT's `{from, value}` (human/gpt/system). Files
whose fields have other names are read through a field mapping (`data.fields`, see
`sftrl.data.builders.fields`).

The split is a function of the problem text alone: user turns joined, lowercased, whitespace
collapsed, then sha256. The same problem therefore always lands in the same split (also when
it appears with several solutions or system prompts), on every machine and Python version.
Exact duplicate conversations are dropped (first occurrence kept) and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.fields import FieldMap, parse_fields
from sftrl.data.builders.rows import iter_rows

TRAIN = "train"
HELDOUT = "heldout"
SPLITS = (TRAIN, HELDOUT)
ROLES = ("system", "user", "assistant")
_HASH_BITS = 64


@dataclasses.dataclass(frozen=True)
class SplitStats:
    """Counts of one read: `total` records read, `train + heldout == total - duplicates`."""

    total: int
    duplicates_removed: int
    train: int
    heldout: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def normalize_problem_text(text: str) -> str:
    """Lowercases and collapses every whitespace run to one space (ends stripped)."""
    return " ".join(text.lower().split())


def heldout_score(problem_text: str) -> float:
    """A stable number in [0, 1) from sha256 of the normalized text (never Python `hash`)."""
    digest = hashlib.sha256(normalize_problem_text(problem_text).encode("utf-8")).digest()
    return int.from_bytes(digest[: _HASH_BITS // 8], "big") / 2**_HASH_BITS


def is_heldout(problem_text: str, heldout_fraction: float) -> bool:
    return heldout_score(problem_text) < heldout_fraction


def _check_fraction(heldout_fraction: float) -> None:
    if isinstance(heldout_fraction, bool) or not isinstance(heldout_fraction, int | float):
        raise TypeError(f"heldout_fraction must be a number, got {heldout_fraction!r}")
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")


def _text(value: Any, loc: str, field: str) -> str:
    if value is None:
        raise DataFormatError(loc, "missing", field)
    if not isinstance(value, str):
        raise DataFormatError(loc, f"expected a string, got {type(value).__name__}", field)
    if not value.strip():
        raise DataFormatError(loc, "empty", field)
    return value


# ShareGPT-style turns (`{from, value}`, e.g. OpenThoughts' `conversations`) -> roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def _turn(turn: dict[str, Any], loc: str, field: str) -> dict[str, str]:
    if "role" not in turn and "from" in turn:
        speaker = _text(turn.get("from"), loc, f"{field}.from")
        if speaker not in SHAREGPT_ROLES:
            raise DataFormatError(loc, f"unknown speaker {speaker!r}; expected one of "
                                  f"{tuple(SHAREGPT_ROLES)}", f"{field}.from")
        return {"role": SHAREGPT_ROLES[speaker],
                "content": _text(turn.get("value"), loc, f"{field}.value")}
    role = _text(turn.get("role"), loc, f"{field}.role")
    if role not in ROLES:
        raise DataFormatError(loc, f"unknown role {role!r}; expected one of {ROLES}",
                              f"{field}.role")
    return {"role": role, "content": _text(turn.get("content"), loc, f"{field}.content")}


def _chat_messages(raw_messages: Any, loc: str, name: str = "messages") -> list[dict[str, str]]:
    if not isinstance(raw_messages, list):
        raise DataFormatError(
            loc, f"expected a list of {{role, content}}, got {type(raw_messages).__name__}",
            name,
        )
    messages = []
    for i, turn in enumerate(raw_messages):
        field = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise DataFormatError(loc, f"expected an object, got {type(turn).__name__}", field)
        messages.append(_turn(turn, loc, field))
    roles = {m["role"] for m in messages}
    if "user" not in roles:
        raise DataFormatError(loc, "conversation has no user turn", name)
    if "assistant" not in roles:
        raise DataFormatError(loc, "conversation has no assistant turn", name)
    return messages


def to_messages(raw: dict[str, Any], loc: str,
                fields: FieldMap | None = None) -> list[dict[str, str]]:
    """The conversation of one raw record in either input form, its fields named by `fields`
    (`data.fields`; None: the standard names); errors name loc and the file's field."""
    f = fields or FieldMap()
    if not f.problem_form and f.get(raw, "messages", loc) is not None:
        messages = _chat_messages(f.get(raw, "messages", loc), loc, f.source("messages"))
    else:
        problem, solution = f.source("problem"), f.source("solution")
        problem_value, solution_value = f.get(raw, "problem", loc), f.get(raw, "solution", loc)
        if problem_value is None and solution_value is None:
            raise DataFormatError(
                loc, f"record has neither {f.source('messages')!r} nor "
                f"{problem!r}/{solution!r} (map other names with data.fields)", f.source("messages")
            )
        messages = [
            {"role": "user", "content": _text(problem_value, loc, problem)},
            {"role": "assistant", "content": _text(solution_value, loc, solution)},
        ]
    if f.mapped("system"):
        system = f.get(raw, "system", loc)
        if not isinstance(system, str):
            raise DataFormatError(loc, f"expected a string, got {type(system).__name__}",
                                  f.source("system"))
        if system.strip() and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
    return messages


def problem_text(messages: Sequence[dict[str, str]]) -> str:
    """What the split hashes: the user turns, joined by newlines."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _record_id(raw: dict[str, Any], loc: str, path: Path, fields: FieldMap | None = None) -> str:
    f = fields or FieldMap()
    value = f.get(raw, "id", loc)
    if value is not None:
        return _text(value, loc, f.source("id"))
    # Without an id, the position is one: unique per file and stable across reads.
    return f"{path.name}-{loc.rsplit(':', 1)[1].replace(' ', '')}"


def read_sft_files(
    paths: Sequence[str | os.PathLike[str]], *, heldout_fraction: float = 0.05,
    fields: FieldMap | str | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], SplitStats]:
    """Reads SFT files into `{"train": [...], "heldout": [...]}` records `{"id", "messages"}`.

    Duplicates are removed across all files; ids must be unique across them too. `fields`
    (`data.fields`) names the fields of files that do not use the standard names.
    """
    _check_fraction(heldout_fraction)
    fields = parse_fields(fields)
    if isinstance(paths, str | os.PathLike):
        raise TypeError("paths must be a sequence of paths; use read_sft_file for one path")
    if not paths:
        raise ValueError("no SFT files given")
    splits: dict[str, list[dict[str, Any]]] = {TRAIN: [], HELDOUT: []}
    seen_content: set[str] = set()
    id_locations: dict[str, str] = {}
    total = duplicates = 0
    for path in map(Path, paths):
        for loc, raw in iter_rows(path):
            total += 1
            messages = to_messages(raw, loc, fields)
            record_id = _record_id(raw, loc, path, fields)
            content_key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            if content_key in seen_content:
                duplicates += 1
                continue
            seen_content.add(content_key)
            if record_id in id_locations:
                raise DataFormatError(
                    loc, f"duplicate id {record_id!r} (first at {id_locations[record_id]})", "id"
                )
            id_locations[record_id] = loc
            split = HELDOUT if is_heldout(problem_text(messages), heldout_fraction) else TRAIN
            splits[split].append({"id": record_id, "messages": messages})
    stats = SplitStats(total=total, duplicates_removed=duplicates, train=len(splits[TRAIN]),
                       heldout=len(splits[HELDOUT]))
    return splits, stats


def read_sft_file(
    path: str | os.PathLike[str], *, heldout_fraction: float = 0.05, split: str
) -> tuple[list[dict[str, Any]], SplitStats]:
    """One split (`"train"` or `"heldout"`) of one SFT file, plus the stats of the whole file."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    splits, stats = read_sft_files([path], heldout_fraction=heldout_fraction)
    return splits[split], stats


def check_sft_files(paths: Sequence[str | os.PathLike[str]],
                    fields: FieldMap | str | None = None) -> None:
    """Start-up check: the first record of every file reads as a conversation under `fields`,
    so a wrong mapping fails at once, naming file, line and field, not hours into a run."""
    fields = parse_fields(fields)
    for path in map(Path, paths):
        for loc, raw in iter_rows(path):
            to_messages(raw, loc, fields)
            _record_id(raw, loc, path, fields)
            break
        else:
            raise DataFormatError(str(path), "no records")


def read_heldout(
    paths: Sequence[str | os.PathLike[str]], *, heldout_fraction: float = 0.05,
    fields: FieldMap | str | None = None, limit: int = 0,
) -> list[dict[str, Any]]:
    """The first `limit` held-out records in file order (0: all), as `read_sft_files(...)
    ["heldout"][:limit]` gives them, reading the files only as far as needed: every process
    can afford it while the training rows are read per process."""
    _check_fraction(heldout_fraction)
    fields = parse_fields(fields)
    out: list[dict[str, Any]] = []
    seen_content: set[str] = set()
    id_locations: dict[str, str] = {}
    for path in map(Path, paths):
        for loc, raw in iter_rows(path):
            messages = to_messages(raw, loc, fields)
            if not is_heldout(problem_text(messages), heldout_fraction):
                continue
            # A duplicate has the same problem text, so it is held out too: deduplicating
            # among held-out records is deduplicating the whole set, restricted to them.
            content_key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            if content_key in seen_content:
                continue
            seen_content.add(content_key)
            record_id = _record_id(raw, loc, path, fields)
            if record_id in id_locations:
                raise DataFormatError(
                    loc, f"duplicate id {record_id!r} (first at {id_locations[record_id]})", "id"
                )
            id_locations[record_id] = loc
            out.append({"id": record_id, "messages": messages})
            if limit and len(out) >= limit:
                return out
    return out
