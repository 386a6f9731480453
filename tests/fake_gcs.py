"""A fake GCS for etils.epath: `gs://bucket/key` objects kept under a local folder, with an
object store's rules, so that code which only works on a local disk fails here as it would on
GCS.

Rules enforced (those of GCS that a local disk would let slip): no append and no read-write
open (`a`, `+` modes raise), no rename or replace (GCS has none; a copy-and-delete is not
atomic), and a written object appears only when its handle closes, whole. Folders are implicit
(mkdir is a no-op that needs nothing).

In-process: `with installed(root): ...`. In a subprocess (the two-process test), run
`python tests/fake_gcs.py <sftrl.main flags>` with SFTRL_FAKE_GCS_ROOT set: it installs the fake
and runs sftrl.main. Orbax writes checkpoint arrays through tensorstore's own GCS driver, which
no epath backend reaches, so here its CheckpointManager is handed the bucket's local folder: the
checkpoint files land where the fake keeps the bucket, and sftrl's own reads of them go through
the fake.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils.epath import backend as backend_lib
from etils.epath import gpath

PREFIX = "gs://"
WRITES_LOG = "fake_gcs_writes.log"  # beside the root, not inside the bucket


class ObjectStoreError(OSError):
    """What the fake raises for an operation GCS does not have."""


class FakeGcsBackend(backend_lib._OsPathBackend):  # the local backend, on mapped paths
    def __init__(self, root: Path, log: Path | None = None) -> None:
        self.root = Path(root)
        self.writes: list[str] = []  # every object written by this process, in order
        self.log = log  # if set, a line `<pid> <uri>` per object written, shared by processes

    def _written(self, uri: str) -> None:
        self.writes.append(uri)
        if self.log is not None:
            with self.log.open("a") as handle:
                handle.write(f"{os.getpid()} {uri}\n")

    def local(self, path: Any) -> str:
        text = os.fspath(path)
        if not text.startswith(PREFIX):
            raise ValueError(f"not a gs:// path: {text}")
        return str(self.root / text.removeprefix(PREFIX))

    def uri(self, local: Any) -> str:
        return PREFIX + str(Path(local).relative_to(self.root))

    def open(self, path: Any, mode: str) -> Any:
        if "a" in mode or "+" in mode:
            raise ObjectStoreError(f"{path}: GCS objects cannot be opened in mode {mode!r}")
        target = Path(self.local(path))
        if "r" in mode:
            return super().open(target, mode)
        return _Upload(target, mode, on_close=lambda: self._written(os.fspath(path)))

    def exists(self, path: Any) -> bool:
        return super().exists(self.local(path))

    def isdir(self, path: Any) -> bool:
        return super().isdir(self.local(path))

    def listdir(self, path: Any) -> list[str]:
        return super().listdir(self.local(path))

    def glob(self, path: Any) -> list[str]:
        return [self.uri(p) for p in super().glob(self.local(path))]

    def walk(self, top: Any, **kwargs: Any) -> Iterator[tuple[Any, list[str], list[str]]]:
        for folder, dirs, files in super().walk(self.local(top), **kwargs):
            yield self.uri(folder), dirs, files

    def makedirs(self, path: Any, **kwargs: Any) -> None:
        os.makedirs(self.local(path), exist_ok=True)  # implicit folders: always fine

    def mkdir(self, path: Any, **kwargs: Any) -> None:
        os.makedirs(self.local(path), exist_ok=True)

    def rmtree(self, path: Any) -> None:
        super().rmtree(self.local(path))

    def remove(self, path: Any) -> None:
        super().remove(self.local(path))

    def rename(self, path: Any, dst: Any) -> None:
        raise ObjectStoreError(f"{path}: GCS has no rename")

    def replace(self, path: Any, dst: Any) -> None:
        raise ObjectStoreError(f"{path}: GCS has no rename")

    def copy(self, path: Any, dst: Any, overwrite: bool) -> None:
        super().copy(self.local(path), self.local(dst), overwrite=overwrite)

    def stat(self, path: Any) -> Any:
        return super().stat(self.local(path))


class _Upload:
    """A write handle whose object appears at `target` only on close, whole."""

    def __init__(self, target: Path, mode: str, on_close: Any) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=".upload.")
        self._tmp, self._target, self._on_close = name, target, on_close
        self._handle = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))

    def write(self, data: Any) -> int:
        return self._handle.write(data)

    def close(self) -> None:
        if self._handle.closed:
            return
        self._handle.close()
        os.replace(self._tmp, self._target)
        self._on_close()

    def __enter__(self) -> _Upload:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:  # a failed upload leaves no object
            self._handle.close()
            os.unlink(self._tmp)
            return
        self.close()


@contextlib.contextmanager
def installed(root: Path, log: Path | None = None) -> Iterator[FakeGcsBackend]:
    """Within the block, `epath.Path('gs://...')` is the fake rooted at `root`."""
    fake = FakeGcsBackend(root, log)
    saved = gpath._PREFIX_TO_BACKEND.get("gs")
    gpath._PREFIX_TO_BACKEND["gs"] = fake
    try:
        yield fake
    finally:
        gpath._PREFIX_TO_BACKEND["gs"] = saved


def orbax_manager(fake: FakeGcsBackend, original: Any) -> Any:
    """orbax's CheckpointManager (`original`) handed the bucket's local folder for a gs:// one;
    in-process, a test installs it with monkeypatch.setattr(ocp, "CheckpointManager", ...)."""
    from etils import epath

    def manager(directory: Any, *args: Any, **kwargs: Any) -> Any:
        if os.fspath(directory).startswith(PREFIX):
            directory = epath.Path(fake.local(directory))
        return original(directory, *args, **kwargs)

    return manager


def _route_orbax(fake: FakeGcsBackend) -> None:
    import orbax.checkpoint as ocp

    ocp.CheckpointManager = orbax_manager(fake, ocp.CheckpointManager)


def main() -> None:
    root = Path(os.environ["SFTRL_FAKE_GCS_ROOT"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sftrl import main as sftrl_main

    with installed(root, log=root.parent / WRITES_LOG) as fake:
        _route_orbax(fake)
        sftrl_main.run()


if __name__ == "__main__":
    main()
