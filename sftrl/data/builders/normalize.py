"""Writes the package's normalized benchmark files from a source data directory.

    python -m sftrl.data.builders.normalize --src ../shared/data --out sftrl/data/benchmark_files

The source directory holds JSONL files and a MANIFEST.json (records, sha256, license, origin per
file). Each file is validated (errors name file:line:field), reduced to `id`, `problem`,
`answer` (stripped) and the optional string fields, and written as sorted-key UTF-8 JSON lines.
The output is a pure function of the input bytes, so re-running gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl import atomic
from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.problems import OPTIONAL_FIELDS, read_problems

MANIFEST = "MANIFEST.json"
SOURCES = "SOURCES.md"
# math_train's solutions are ~7 MB and RL only needs the gold answer; dropping them keeps the
# package data under ~10 MB.
DROP_FIELDS: dict[str, tuple[str, ...]] = {"math_train.jsonl": ("solution",)}
_REQUIRED_MANIFEST_KEYS = ("records", "sha256", "license", "origin")
_COPIED_MANIFEST_KEYS = ("license", "origin", "repo", "path", "commit")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def normalize_file(
    path: str | os.PathLike[str], *, drop: Sequence[str] = ()
) -> tuple[list[dict[str, str]], list[str]]:
    """Validated, normalized records of one JSONL file, and the sorted names of dropped fields."""
    keep = tuple(f for f in OPTIONAL_FIELDS if f not in drop)
    dropped: set[str] = set()
    records = read_problems(path, optional=keep, dropped_fields=dropped)
    if not records:
        raise DataFormatError(str(path), "no records")
    return records, sorted(dropped)


def render_jsonl(records: Sequence[dict[str, Any]]) -> bytes:
    lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records)
    return "".join(lines).encode("utf-8")


def _write_bytes(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data)


def _read_source_manifest(src: Path) -> dict[str, dict[str, Any]]:
    path = src / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataFormatError(str(path), f"cannot read: {e}") from e
    except json.JSONDecodeError as e:
        raise DataFormatError(str(path), f"malformed JSON ({e})") from e
    if not isinstance(manifest, dict) or not manifest:
        raise DataFormatError(str(path), "expected a non-empty object of file -> entry")
    for name, entry in manifest.items():
        if not isinstance(entry, dict):
            raise DataFormatError(str(path), "expected an object", name)
        for key in _REQUIRED_MANIFEST_KEYS:
            if key not in entry:
                raise DataFormatError(str(path), "missing", f"{name}.{key}")
    unlisted = sorted(p.name for p in src.glob("*.jsonl") if p.name not in manifest)
    if unlisted:
        raise DataFormatError(str(path), f"JSONL files not in the manifest: {unlisted}")
    return manifest


def _sources_md(manifest: dict[str, dict[str, Any]], upstream_notes: str | None) -> str:
    lines = [
        "# Packaged benchmark files",
        "",
        "Normalized copies written by `python -m sftrl.data.builders.normalize`: one JSON object",
        "per line, sorted keys, UTF-8, `\\n` endings; fields `id`, `problem`, `answer` (stripped)",
        f"and the optional string fields {', '.join(f'`{f}`' for f in OPTIONAL_FIELDS)}.",
        "Other source fields are dropped (listed per file in MANIFEST.json under",
        "`dropped_fields`). Research evaluation use only; see each file's licence.",
        "",
        "| file | records | sha256 (this copy) | bytes | licence | origin |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(manifest):
        e = manifest[name]
        lines.append(
            f"| `{name}` | {e['records']} | `{e['sha256']}` | {e['bytes']} | {e['license']} "
            f"| {e['origin']} |"
        )
    total = sum(e["bytes"] for e in manifest.values())
    lines += ["", f"Total: {total} bytes.", ""]
    if upstream_notes is not None:
        lines += [
            "## Upstream notes",
            "",
            "Verbatim copy of the source directory's SOURCES.md. Its sha256 values and byte",
            "counts are those of the source files, not of the normalized copies above.",
            "",
            upstream_notes.rstrip("\n"),
            "",
        ]
    return "\n".join(lines)


def normalize_dir(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Normalizes every file of `src`'s manifest into `out`; returns the written manifest."""
    src, out = Path(src), Path(out)
    source_manifest = _read_source_manifest(src)
    # Validate everything before writing anything, so a bad input never leaves a half update.
    rendered: dict[str, bytes] = {}
    manifest: dict[str, dict[str, Any]] = {}
    for name in sorted(source_manifest):
        entry = source_manifest[name]
        path = src / name
        if not path.is_file():
            raise DataFormatError(str(path), "listed in MANIFEST.json but missing")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise DataFormatError(
                str(path), f"sha256 {digest} does not match MANIFEST.json ({entry['sha256']})"
            )
        records, dropped = normalize_file(path, drop=DROP_FIELDS.get(name, ()))
        if len(records) != entry["records"]:
            raise DataFormatError(
                str(path), f"{len(records)} records, MANIFEST.json says {entry['records']}"
            )
        data = render_jsonl(records)
        rendered[name] = data
        manifest[name] = {
            **{k: entry[k] for k in _COPIED_MANIFEST_KEYS if k in entry},
            "records": len(records),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "source_sha256": digest,
            "dropped_fields": dropped,
        }
    out.mkdir(parents=True, exist_ok=True)
    for name, data in rendered.items():
        _write_bytes(out / name, data)
    _write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True,
                                             ensure_ascii=False) + "\n").encode("utf-8"))
    notes_path = src / SOURCES
    notes = notes_path.read_text(encoding="utf-8") if notes_path.is_file() else None
    _write_bytes(out / SOURCES, _sources_md(manifest, notes).encode("utf-8"))
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", required=True, help="source directory with MANIFEST.json")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        manifest = normalize_dir(args.src, args.out)
    except DataFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name in sorted(manifest):
        e = manifest[name]
        print(f"{name}: {e['records']} records, {e['bytes']} bytes, sha256 {e['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
