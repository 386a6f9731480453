"""Command line: rescore a samples file with the current verifier (`python -m sftrl.rewards`).

One JSON object per line, its response field a string or a list of strings; the verdicts are
written to a new file (or the input, `--in-place`) through a temporary file beside it, renamed
into place at the end. A malformed line or a missing field stops it with the file, line and field
named (`SamplesFileError`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sftrl import atomic
from sftrl.rewards.extraction import PRESETS, ExtractionConfig, get_config
from sftrl.rewards.verifier import Verifier, gold_text

log = logging.getLogger(__name__)


class SamplesFileError(ValueError):
    """A samples file that cannot be rescored; the message names file, line and field."""


@dataclasses.dataclass
class _Record:
    line: int
    data: dict[str, Any]
    responses: list[str]
    many: bool  # the response field held a list
    gold: str


def _read_records(path: Path, response_field: str,
                  gold_field: str) -> Iterator[_Record]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SamplesFileError(f"{where}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise SamplesFileError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(data, dict):
                raise SamplesFileError(f"{where}: expected a JSON object")
            if response_field not in data:
                raise SamplesFileError(f"{where}: missing field {response_field!r}")
            if gold_field not in data:
                raise SamplesFileError(f"{where}: missing field {gold_field!r}")
            value = data[response_field]
            many = isinstance(value, list)
            responses = value if many else [value]
            if not all(isinstance(r, str) for r in responses):
                raise SamplesFileError(
                    f"{where}: field {response_field!r} must be a string or a list of strings")
            gold = data[gold_field]
            try:
                gold = gold_text(gold)
            except (TypeError, ValueError) as error:
                raise SamplesFileError(f"{where}: field {gold_field!r}: {error}") from None
            yield _Record(line_number, data, responses, many, gold)


def _chunks(records: Iterator[_Record], responses_per_chunk: int) -> Iterator[list[_Record]]:
    chunk: list[_Record] = []
    size = 0
    for record in records:
        chunk.append(record)
        size += len(record.responses)
        if size >= responses_per_chunk:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclasses.dataclass
class CheckSummary:
    """What `rescore_file` did."""

    records: int = 0
    responses: int = 0
    correct: int = 0
    changed: int = 0  # verdicts that differ from the ones already in the file
    compared: int = 0  # responses that had an old verdict to compare with


# (responses, gold) field names: sftrl's own sample store first, then the one-response layout
_FIELD_LAYOUTS = (("responses", "answer"), ("response", "gold"))


def detect_fields(path: Path) -> tuple[str, str]:
    """The (response, gold) field names of `path`, read from its first record.

    sftrl's eval stage writes `responses` / `answer` (`sftrl.eval.sample_store`); other tools
    often write one `response` and a `gold`. A file with neither is reported by the reader, which
    names the missing field of the default layout.
    """
    with path.open("rb") as handle:
        for raw in handle:
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break  # the reader reports it with the line number
            if not isinstance(data, dict):
                break
            for response_field, gold_field in _FIELD_LAYOUTS:
                if response_field in data and gold_field in data:
                    return response_field, gold_field
            break
    return _FIELD_LAYOUTS[-1]


def rescore_file(path: Path, out: Path, *, verifier: Verifier,
                 config: ExtractionConfig, response_field: str | None = None,
                 gold_field: str | None = None, verdict_field: str = "correct",
                 responses_per_chunk: int = 20_000) -> CheckSummary:
    """Writes `path`'s records with fresh verdicts to `out`, atomically (temp file + rename).

    Field names left as None are detected from the first record (`detect_fields`).
    """
    from tqdm import tqdm

    if response_field is None or gold_field is None:
        detected = detect_fields(path)
        response_field = response_field or detected[0]
        gold_field = gold_field or detected[1]

    summary = CheckSummary()
    bar = tqdm(desc=f"rescoring {path.name}", unit="response", disable=None)
    try:
        with atomic.replacing(out) as tmp, tmp.open("w", encoding="utf-8") as handle:
            records = _read_records(path, response_field, gold_field)
            for chunk in _chunks(records, responses_per_chunk):
                pairs = [(r, record.gold) for record in chunk for r in record.responses]
                verdicts = iter(verifier.verify_batch(pairs, config=config))
                for record in chunk:
                    mine = [next(verdicts) for _ in record.responses]
                    _count_changes(summary, record, mine, verdict_field)
                    record.data[verdict_field] = mine if record.many else mine[0]
                    handle.write(json.dumps(record.data, ensure_ascii=False) + "\n")
                    summary.records += 1
                    summary.responses += len(mine)
                    summary.correct += sum(mine)
                handle.flush()
                bar.update(len(pairs))
                log.info("%s: %d records, %d responses rescored", path, summary.records,
                         summary.responses)
    finally:
        bar.close()
    return summary


def _count_changes(summary: CheckSummary, record: _Record, mine: list[bool],
                   verdict_field: str) -> None:
    old = record.data.get(verdict_field)
    if old is None:
        return
    old_list = old if isinstance(old, list) else [old]
    if len(old_list) != len(mine):
        return
    summary.compared += len(mine)
    summary.changed += sum(bool(o) != m for o, m in zip(old_list, mine, strict=True))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sftrl.rewards",
        description="Rescore a samples file with the current answer verifier.")
    parser.add_argument("--check", type=Path, required=True, metavar="FILE.jsonl",
                        help="samples file: one JSON object per line")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="output file (default: FILE.rescored.jsonl)")
    where.add_argument("--in-place", action="store_true",
                       help="replace the input file (atomically) instead of writing a new one")
    parser.add_argument("--benchmark", default=None,
                        help=f"extraction preset {sorted(PRESETS)} (default: the file's name "
                             "if it is a preset, else 'default')")
    parser.add_argument("--response-field", default=None,
                        help="default: 'responses' (sftrl's samples files) if the first record "
                             "has it, else 'response'")
    parser.add_argument("--gold-field", default=None,
                        help="default: 'answer' with 'responses', else 'gold'")
    parser.add_argument("--verdict-field", default="correct")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path: Path = args.check
    if not path.is_file():
        print(f"sftrl: error: {path}: no such file", file=sys.stderr)
        return 2
    preset = args.benchmark or (path.stem if path.stem in PRESETS else "default")
    out = path if args.in_place else (args.out or path.with_suffix(".rescored.jsonl"))
    if not args.in_place and out.resolve() == path.resolve():
        print(f"sftrl: error: --out {out} is the input file; pass --in-place to replace it",
              file=sys.stderr)
        return 2
    try:
        config = get_config(preset)
    except KeyError as error:
        print(f"sftrl: error: --benchmark: {error.args[0]}", file=sys.stderr)
        return 2
    with Verifier(config, workers=args.workers, timeout_s=args.timeout_s) as verifier:
        try:
            summary = rescore_file(path, out, verifier=verifier, config=config,
                                   response_field=args.response_field,
                                   gold_field=args.gold_field, verdict_field=args.verdict_field)
        except SamplesFileError as error:
            print(f"sftrl: error: {error}", file=sys.stderr)
            return 2
        stats = verifier.stats
    accuracy = summary.correct / summary.responses if summary.responses else 0.0
    print(f"{out}: {summary.records} records, {summary.responses} responses, "
          f"{summary.correct} correct ({accuracy:.4f}); preset {preset!r}")
    if summary.compared:
        print(f"verdicts changed: {summary.changed} of {summary.compared}")
    print(f"symbolic checks {stats.symbolic}, timeouts {stats.timeouts}, "
          f"crashes {stats.crashes}")
    return 0
