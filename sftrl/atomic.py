"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

One helper for every file sftrl writes whole (JSON state, reports, plots, rewritten logs), on a
local disk or on any `etils.epath` path (`gs://bucket/run/...`).

Local: the data goes to a temporary file in the same folder, is flushed and fsync'd, takes the
target's permissions (a new file gets 0644, not mkstemp's 0600), and is renamed over the target;
on any error the temporary file is removed. The folder is fsync'd after the rename where the
platform allows, so the rename itself survives a power cut.

Remote (an object store: GCS, S3): there is no rename and no append, but an object appears
whole when its upload completes, so the data is staged in a local temporary file and uploaded
in one write; on an error nothing is uploaded and the old object stays.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils import epath

_NEW_FILE_MODE = 0o644
PathLike = str | os.PathLike[str]


def is_remote(path: PathLike) -> bool:
    """True for a URI path (`gs://...`, `s3://...`): an object store, not the local disk."""
    return "://" in os.fspath(path)


def as_path(path: PathLike) -> epath.Path:
    """`path` as an `epath.Path`: a URI stays a URI (never the local `./gs:/...`), a local path
    becomes absolute."""
    text = os.fspath(path)
    if is_remote(text):
        return epath.Path(text)
    return epath.Path(Path(text).expanduser().absolute())


def to_path(path: PathLike) -> Path | epath.Path:
    """`path` kept as written: an epath for a URI, a plain local `Path` otherwise (unlike
    `as_path`, not made absolute, so that messages name a local file as the caller did)."""
    return epath.Path(os.fspath(path)) if is_remote(path) else Path(path)


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
def replacing(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary local path to write (by any means); on success it replaces `path`.

    For writers that want a file name rather than a handle (matplotlib's savefig). `suffix`
    keeps the extension such writers look at.
    """
    if is_remote(path):
        with _uploading(epath.Path(os.fspath(path)), suffix) as tmp:
            yield tmp
        return
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


@contextlib.contextmanager
def _uploading(target: epath.Path, suffix: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        target.parent.mkdir(parents=True, exist_ok=True)  # a no-op on object stores
        target.write_bytes(tmp.read_bytes())  # one upload: the object appears whole
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: PathLike, data: bytes) -> None:
    with replacing(path) as tmp, tmp.open("wb") as handle:
        handle.write(data)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: PathLike, value: Any, *, indent: int | None = 2,
               sort_keys: bool = True) -> None:
    """`value` as JSON (UTF-8, a final newline)."""
    write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys,
                                ensure_ascii=False) + "\n")


def append_text(path: PathLike, text: str) -> None:
    """Appends `text` (whole lines) to a log such as metrics.jsonl.

    Local: an append, flushed (a killed run leaves at most a half last line, which readers
    skip). Remote: object stores cannot append, so the object is read and rewritten whole with
    the new lines; one rewrite per logged step keeps a run's metrics log (kilobytes to a few
    megabytes) cheap, and a reader never sees a half line.
    """
    if not is_remote(path):
        local = Path(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        with local.open("a", encoding="utf-8") as handle:
            handle.write(text)
        return
    target = epath.Path(os.fspath(path))
    old = target.read_bytes() if target.exists() else b""
    write_bytes(target, old + text.encode("utf-8"))
