"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

One helper for every file sftrl writes whole (JSON state, reports, plots, rewritten logs): the
data goes to a temporary file in the same folder, is flushed and fsync'd, takes the target's
permissions (a new file gets 0644, not mkstemp's 0600), and is renamed over the target; on any
error the temporary file is removed. The folder is fsync'd after the rename where the platform
allows, so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_NEW_FILE_MODE = 0o644


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform / file system; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path to write (by any means); on success it replaces `path`.

    For writers that want a file name rather than a handle (matplotlib's savefig). `suffix`
    keeps the extension such writers look at.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        mode = target.stat().st_mode & 0o777 if target.exists() else _NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with replacing(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], value: Any, *, indent: int | None = 2,
               sort_keys: bool = True) -> None:
    """`value` as JSON (UTF-8, a final newline)."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys,
                                ensure_ascii=False) + "\n")
