"""Reading and writing the safetensors format without whole-file copies.

Reading maps the file and hands out views, so slicing a tensor reads only that slice from disk
(each device's shard of an 8B model, never the model at once). Writing streams one tensor at a
time. The format: 8-byte little-endian header length, a JSON header of
{name: {dtype, shape, data_offsets: [begin, end]}} (offsets relative to the data section),
then the data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {dtype: code for code, dtype in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file that is truncated, malformed or inconsistent; names the file."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


class SafetensorsFile:
    """Header of one file plus memory-mapped, read-only views of its tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such safetensors file")
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{self.path}: truncated ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(_MAX_HEADER, size - 8):
                raise SafetensorsError(
                    f"{self.path}: header length {header_len} does not fit in a {size}-byte file "
                    "(truncated or not a safetensors file)"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SafetensorsError(f"{self.path}: header is not valid JSON: {e}") from e
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        data_size = size - self.data_start
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = self._parse_entry(name, entry)
        needed = max((t.end for t in self.tensors.values()), default=0)
        if needed > data_size:
            raise SafetensorsError(
                f"{self.path}: truncated: the header needs {needed} data bytes, the file has "
                f"{data_size}"
            )
        self._mmap: np.memmap | None = None

    def _parse_entry(self, name: str, entry: Any) -> TensorInfo:
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{self.path}: bad header entry for tensor {name!r}: {e}") from e
        if end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
            raise SafetensorsError(
                f"{self.path}: tensor {name!r}: offsets [{begin}, {end}) do not match "
                f"shape {list(shape)} of {entry['dtype']}"
            )
        return TensorInfo(dtype, shape, begin, end)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def array(self, name: str) -> np.ndarray:
        """A read-only view; indexing it reads only the touched pages."""
        if name not in self.tensors:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        info = self.tensors[name]
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        flat = self._mmap[self.data_start + info.begin: self.data_start + info.end]
        return flat.view(info.dtype).reshape(info.shape)


@dataclass(frozen=True)
class TensorToWrite:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    produce: Callable[[], np.ndarray]  # called once, when the tensor's turn comes


def write_safetensors(
    path: str | Path, tensors: Iterable[TensorToWrite], metadata: dict[str, str] | None = None
) -> int:
    """Streams tensors into `path`; returns the bytes of tensor data written."""
    tensors = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for t in tensors:
        if t.dtype not in _CODES:
            raise SafetensorsError(f"{path}: tensor {t.name!r}: dtype {t.dtype} not writable")
        nbytes = math.prod(t.shape) * t.dtype.itemsize
        header[t.name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            array = np.ascontiguousarray(t.produce(), dtype=t.dtype)
            if array.shape != t.shape:
                raise SafetensorsError(
                    f"{path}: tensor {t.name!r} produced shape {array.shape}, expected {t.shape}"
                )
            f.write(array.tobytes())
    return offset
