"""SFT conversations from local JSONL/Parquet files, with a deterministic held-out split.

Two input forms are accepted per record: chat form (`messages`: a list of `{role, content}`)
and problem form (`problem` + `solution`, turned into one user turn and one assistant turn).
When a record has `messages` it is used and the other fields are ignored, since many public
SFT sets carry both.

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


def _chat_messages(raw_messages: Any, loc: str) -> list[dict[str, str]]:
    if not isinstance(raw_messages, list):
        raise DataFormatError(
            loc, f"expected a list of {{role, content}}, got {type(raw_messages).__name__}",
            "messages",
        )
    messages = []
    for i, turn in enumerate(raw_messages):
        field = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise DataFormatError(loc, f"expected an object, got {type(turn).__name__}", field)
        role = _text(turn.get("role"), loc, f"{field}.role")
        if role not in ROLES:
            raise DataFormatError(loc, f"unknown role {role!r}; expected one of {ROLES}",
                                  f"{field}.role")
        messages.append({"role": role, "content": _text(turn.get("content"), loc,
                                                        f"{field}.content")})
    roles = {m["role"] for m in messages}
    if "user" not in roles:
        raise DataFormatError(loc, "conversation has no user turn", "messages")
    if "assistant" not in roles:
        raise DataFormatError(loc, "conversation has no assistant turn", "messages")
    return messages


def to_messages(raw: dict[str, Any], loc: str) -> list[dict[str, str]]:
    """The conversation of one raw record in either input form; errors name loc and field."""
    if "messages" in raw:
        return _chat_messages(raw["messages"], loc)
    if "problem" not in raw and "solution" not in raw:
        raise DataFormatError(
            loc, "record has neither 'messages' nor 'problem'/'solution'", "messages"
        )
    return [
        {"role": "user", "content": _text(raw.get("problem"), loc, "problem")},
        {"role": "assistant", "content": _text(raw.get("solution"), loc, "solution")},
    ]


def problem_text(messages: Sequence[dict[str, str]]) -> str:
    """What the split hashes: the user turns, joined by newlines."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def _record_id(raw: dict[str, Any], loc: str, path: Path) -> str:
    if "id" in raw and raw["id"] is not None:
        return _text(raw["id"], loc, "id")
    # Without an id, the position is one: unique per file and stable across reads.
    return f"{path.name}-{loc.rsplit(':', 1)[1].replace(' ', '')}"


def read_sft_files(
    paths: Sequence[str | os.PathLike[str]], *, heldout_fraction: float = 0.05
) -> tuple[dict[str, list[dict[str, Any]]], SplitStats]:
    """Reads SFT files into `{"train": [...], "heldout": [...]}` records `{"id", "messages"}`.

    Duplicates are removed across all files; ids must be unique across them too.
    """
    _check_fraction(heldout_fraction)
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
            messages = to_messages(raw, loc)
            record_id = _record_id(raw, loc, path)
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
