"""The 'study' stage: a finished sweep's report, the same as `python -m sftrl.study`.

Reads the sweep named by `study.sweep_dir` and writes README.md, study.json and the plots into
the workdir (what it reads and writes: sftrl.study). Bad input is a user error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from sftrl import study
from sftrl.errors import UserError
from sftrl.eval.record import EvalRecordError


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Any = None) -> dict[str, Any]:
    s = config.study
    try:
        readme = study.write_study(
            Path(s.sweep_dir), Path(workdir), allow_partial=s.allow_partial,
            sweep_spec=s.sweep or None,
            paper_numbers=Path(s.paper_numbers) if s.paper_numbers else None)
    except EvalRecordError as e:  # a run's eval file, named in the message (as sftrl.study's CLI)
        raise UserError(str(e)) from e
    return {"stage": "study", "readme": str(readme)}
