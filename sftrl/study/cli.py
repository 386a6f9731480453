"""`python -m sftrl.study`: flags -> `sftrl.study.build.write_study`; bad input is one line on
stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sftrl.eval.record import EvalRecordError
from sftrl.study.build import write_study
from sftrl.study.sweep import StudyError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sftrl.study",
        description="The replication study's report: a sweep directory -> "
                    "`docs/<study>/README.md` and plots.")
    parser.add_argument("--sweep_dir", required=True, type=Path, help="the sweep's --workdir")
    parser.add_argument("--out", required=True, type=Path, help="e.g. docs/quagmire_tiny")
    parser.add_argument("--sweep", default=None,
                        help="the sweep file (path[:arg]): checks the runs and completes the "
                             "regeneration command")
    parser.add_argument("--allow_partial", action="store_true",
                        help="mark unfinished runs as missing instead of refusing")
    parser.add_argument("--paper_numbers", type=Path, default=None,
                        help="JSON of the paper's table (see load_paper_numbers)")
    args = parser.parse_args(argv)
    try:
        path = write_study(args.sweep_dir, args.out, allow_partial=args.allow_partial,
                           sweep_spec=args.sweep, paper_numbers=args.paper_numbers)
    except (StudyError, EvalRecordError) as e:
        print(f"sftrl.study: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
