"""A progress line for the log: step, chosen metrics, rate and ETA.

tqdm draws a bar only on a terminal; a sweep's `launch.log`, CI and batch jobs see nothing from
it. Training therefore also logs one plain line every `log_every` steps, with an ETA taken from
the steps done in this process (a resumed run does not count the steps it skipped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("sftrl.progress")


def format_duration(seconds: float) -> str:
    """3723 -> '1h02m03s', 65 -> '1m05s', 4.2 -> '4s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressLog:
    """Logs `<name> step 40/300 (13%) loss 0.512 | 1.9 step/s, elapsed 21s, ETA 2m17s`."""

    def __init__(self, name: str, total_steps: int, start_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.total_steps = total_steps
        self.start_step = start_step
        self._clock = clock
        self._start = self._clock()

    def eta_s(self, step: int) -> float | None:
        """Seconds left at the rate of this process's steps so far; None before the first."""
        done = step - self.start_step
        if done <= 0:
            return None
        return (self._clock() - self._start) / done * max(self.total_steps - step, 0)

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        elapsed = self._clock() - self._start
        done = step - self.start_step
        parts = [f"{self.name} step {step}/{self.total_steps} "
                 f"({100 * step / max(self.total_steps, 1):.0f}%)"]
        parts += [f"{key} {value:.4g}" for key, value in metrics.items()]
        text = " ".join(parts)
        eta = self.eta_s(step)
        rate = f"{done / elapsed:.3g} step/s, " if done > 0 and elapsed > 0 else ""
        eta_text = format_duration(eta) if eta is not None else "unknown"
        return f"{text} | {rate}elapsed {format_duration(elapsed)}, ETA {eta_text}"

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        log.info("%s", self.line(step, metrics))
