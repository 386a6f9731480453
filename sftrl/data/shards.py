"""Which part of the SFT data each process reads: logical shards and their hosts.

The training data is cut into `num_shards` logical shards (`data.shards`). Each shard is an
independent stream (its own shuffle, packing and rows), and a global batch is the shards'
rows side by side, shard 0 first. Which process reads which shard is decided here:

- `num_shards` a multiple of the process count: process i reads shards
  [i*S/P, (i+1)*S/P) and contributes all their rows;
- the process count a multiple of `num_shards`: P/S processes read the same shard and each
  keeps its own 1/(P/S) of that shard's rows.

Either way the global batch is a function of the data, the seed and `num_shards` only, not of
the process count, so a run continues bit-identically on another number of hosts as long as
the count divides (or is a multiple of) `num_shards`.

Within a file, shard j covers the units [j*U/S, (j+1)*U/S) (`split_range`): rows of a Parquet
file or an array_record split, bytes of a JSONL file (a line belongs to the shard its first
byte lies in), so a process never reads the other shards' bytes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class HostShare:
    """The shards one process reads and which of their rows it keeps."""

    shards: tuple[int, ...]
    # Several processes share one shard: this process keeps part `part` of `parts` of each
    # batch's rows. (0, 1) when it keeps them all.
    part: int = 0
    parts: int = 1


def resolve_num_shards(num_shards: int, process_count: int) -> int:
    """`data.shards`: 0 means one shard per process."""
    return num_shards if num_shards > 0 else process_count


def host_share(num_shards: int, process_index: int, process_count: int) -> HostShare:
    """The shards process `process_index` of `process_count` reads (see the module doc)."""
    if num_shards < 1 or process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count}, {num_shards} shards")
    if num_shards % process_count == 0:
        per = num_shards // process_count
        return HostShare(tuple(range(process_index * per, (process_index + 1) * per)))
    if process_count % num_shards == 0:
        parts = process_count // num_shards
        return HostShare((process_index // parts,), process_index % parts, parts)
    raise ValueError(f"{num_shards} shards do not split over {process_count} processes "
                     "(one must be a multiple of the other)")


def split_range(total: int, shard: int, num_shards: int) -> tuple[int, int]:
    """[lo, hi) of shard `shard` when `total` units are cut into `num_shards` near-equal
    contiguous ranges (the first ones get no fewer units than the last ones)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return total * shard // num_shards, total * (shard + 1) // num_shards


_CHUNK = 1 << 20


def line_starts(path: str | os.PathLike[str], lo: int, hi: int) -> np.ndarray:
    """Byte offsets of the lines of `path` whose first byte lies in [lo, hi), reading only
    bytes lo-1 .. hi-1 (a line starts at 0 or right after a newline; a final newline at the
    end of the file starts no line)."""
    size = Path(path).stat().st_size
    hi = min(hi, size)
    if lo >= hi:
        return np.zeros(0, np.int64)
    starts: list[np.ndarray] = [np.zeros(1, np.int64)] if lo == 0 else []
    with open(path, "rb") as f:
        pos = max(lo - 1, 0)  # the byte before lo tells whether a line starts at lo
        f.seek(pos)
        while pos < hi - 1:  # a newline at hi-1 would start a line at hi: not ours
            chunk = f.read(min(_CHUNK, hi - 1 - pos))
            if not chunk:
                break
            newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
            starts.append(pos + newlines.astype(np.int64) + 1)
            pos += len(chunk)
    out = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    return out[(out >= lo) & (out < hi)]


def line_number(path: str | os.PathLike[str], offset: int) -> int:
    """1-based line number of the line starting at `offset` (counts newlines before it; only
    called to name a line in an error)."""
    count = 0
    with open(path, "rb") as f:
        left = offset
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            count += chunk.count(b"\n")
            left -= len(chunk)
    return count + 1


__all__ = ["HostShare", "host_share", "line_number", "line_starts", "resolve_num_shards",
           "split_range"]
