"""Where training metrics go: `<workdir>/metrics.jsonl`, TensorBoard events beside it, the log.

A resumed run first drops the lines of steps after the checkpoint it resumes from (they were
written by the interrupted run and will be written again), so the file ends up the same as an
uninterrupted run's. TensorBoard events are written without TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sftrl import atomic

log = logging.getLogger(__name__)

# Dense bf16 peak FLOP/s per chip, for MFU. CPUs are not listed: no meaningful peak.
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0])):
        if name.lower() in kind.lower():
            return flops
    return None


def training_flops_per_token(num_params: int, num_layers: int, hidden: int, seq_len: int) -> float:
    """6N for the matmuls plus attention's 12 * layers * hidden * seq (forward + backward)."""
    return 6.0 * num_params + 12.0 * num_layers * hidden * seq_len


class MetricsWriter:
    """Appends one JSON line per logged step; mirrors scalars to TensorBoard."""

    def __init__(self, workdir: Path, *, resume_step: int | None, tensorboard: bool = True,
                 prefix: str = ""):
        self.path = atomic.as_path(workdir) / "metrics.jsonl"
        self.prefix = prefix
        self._only_main = jax.process_index() == 0
        if self._only_main and self.path.exists():
            self._drop_after(resume_step)
        self._tb = None
        if tensorboard and self._only_main:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._tb = EventFileWriter(str(Path(workdir) / "tensorboard"))

    def _drop_after(self, resume_step: int | None) -> None:
        """Keeps lines of other stages and of steps <= resume_step (None: a fresh run, keep none
        of this stage's)."""
        kept = []
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines):
                    continue  # the half-written last line of a killed run
                raise ValueError(f"{self.path}:{number}: not valid JSON ({e.msg}); the metrics "
                                 "file is damaged") from None
            same_stage = row.get("stage") == self.prefix.rstrip("/") if self.prefix else True
            step = row.get("step")
            if same_stage and isinstance(step, int) and (resume_step is None or step > resume_step):
                continue
            kept.append(line)
        atomic.write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self._only_main:
            return
        row: dict[str, Any] = {"step": int(step)}
        if self.prefix:
            row["stage"] = self.prefix.rstrip("/")
        for key, value in metrics.items():
            # numbers (Python or numpy/jax scalars) as floats; anything else (None, text) as is
            number = isinstance(value, int | float) or (hasattr(value, "dtype")
                                                        and np.ndim(value) == 0)
            row[key] = float(value) if number else value
        atomic.append_text(self.path, json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            from tensorboard.compat.proto import event_pb2, summary_pb2

            values = [
                summary_pb2.Summary.Value(tag=self.prefix + key, simple_value=float(value))
                for key, value in row.items()
                if key not in ("step", "stage") and isinstance(value, float)
                and math.isfinite(value)
            ]
            self._tb.add_event(event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
            ))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
