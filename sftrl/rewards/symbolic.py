"""The symbolic check: math-verify (sympy) comparing two normalised answers, in a worker process.

Everything here runs in spawned workers: `worker_init` prepares a process, `worker_run` gets a
chunk of (candidate, gold) jobs and returns their outcomes (`CORRECT`, `WRONG`, `UNPARSABLE`,
...). Workers find these functions by their module path, so they must stay importable as
`sftrl.rewards.symbolic.<name>`. Each check is made a function of its inputs alone: sympy's RNG is
reseeded before it, and workers run with a fixed hash seed (`SEED`, set by `sftrl.rewards.pool`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from typing import Any

from sftrl.rewards.guards import Limits, refusal

CORRECT, WRONG, UNPARSABLE, TIMEOUT, CRASHED, ERROR = (
    "correct", "wrong", "unparsable", "timeout", "crashed", "error"
)


@functools.cache
def _math_verify() -> Any:
    """math-verify, imported on first use: only worker processes need sympy."""
    import math_verify

    return math_verify


@functools.cache
def _latex_only_extraction() -> tuple[Any, ...]:
    # LaTeX extraction only: math-verify's plain-expression extraction goes through sympy's
    # `parse_expr`, which evaluates Python, and must never see model text.
    mv = _math_verify()
    return (mv.LatexExtractionConfig(boxed_match_priority=-1),)


@functools.lru_cache(maxsize=8192)
def _parse_symbolic(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of a normalised answer; () when it does not parse."""
    mv = _math_verify()
    parsed = mv.parse(
        "$" + answer + "$",
        extraction_config=_latex_only_extraction(),
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=None,  # the parent's per-check limit kills this process instead
    )
    return tuple(parsed)


def check_symbolic(candidate: str, gold: str, limits: Limits) -> str:
    """Outcome of comparing one normalised candidate with a normalised gold using math-verify."""
    if refusal(candidate, limits) is not None:
        return UNPARSABLE
    try:
        answer = _parse_symbolic(candidate)
    except Exception:  # a parser bug on hostile text is "does not parse", not a crash
        return UNPARSABLE
    if not answer:
        return UNPARSABLE
    try:
        target = _parse_symbolic(gold) if refusal(gold, limits) is None else ()
        if not target:
            return WRONG
        same = _math_verify().verify(list(target), list(answer), timeout_seconds=None)
    except Exception:
        return ERROR
    return CORRECT if same else WRONG


# Fixed seeds for the workers' hashing and sympy's RNG: see _reseed_sympy and
# pool._spawning_workers.
SEED = 20250101

# A job whose "candidate" is this asks for the gold's numeric value instead of a comparison
# (no real candidate is empty: empty candidates are dropped at extraction).
GOLD_VALUE_JOB = ""
NO_VALUE = "no value"


def _gold_value(gold: str, limits: Limits) -> str:
    """The gold's value as a 30-digit decimal if it is one real constant (`\\frac{\\pi}{6}`,
    `x = 2\\sqrt{3}`), else `NO_VALUE`. Lets the parent rule out plain numbers far from it."""
    if refusal(gold, limits) is not None:
        return NO_VALUE
    try:
        parsed = _parse_symbolic(gold)
        if len(parsed) != 1:
            return NO_VALUE
        import sympy

        expr = parsed[0]
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs  # an assignment is compared by its right-hand side, as math-verify does
        if (not isinstance(expr, sympy.Expr) or getattr(expr, "is_Matrix", False)
                or isinstance(expr, sympy.Tuple) or expr.free_symbols):
            return NO_VALUE
        value = expr.evalf(30)
        if not isinstance(value, sympy.Float) or not value.is_finite:
            return NO_VALUE
        return str(value)
    except Exception:
        return NO_VALUE


def _exit_when_orphaned(parent_pid: int, poll_s: float = 0.5) -> None:
    """Ends this worker once its parent is gone (the parent's pid is no longer our parent's).

    A SIGKILLed parent (a preempted job, kill -9) runs no clean-up, and an idle worker blocked on
    the executor's queue would wait forever. Polling the parent pid works on every POSIX system
    and, unlike Linux's PR_SET_PDEATHSIG, does not fire when merely the thread that happened to
    start the worker ends.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="sftrl-orphan-watch", daemon=True).start()


def worker_init(memory_bytes: int | None, parent_pid: int | None = None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which cleans up
    if parent_pid is not None:
        _exit_when_orphaned(parent_pid)
    if memory_bytes:
        try:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass  # not on this platform: the time limit still bounds a runaway check
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _latex_only_extraction()  # import sympy now, so no timed check pays for it
    _parse_symbolic("1")


def worker_ping(delay_s: float) -> int:
    time.sleep(delay_s)
    return os.getpid()


def _reseed_sympy() -> None:
    """Make the next check a function of its inputs alone.

    sympy decides some equalities at random points and shuffles its assumption facts with a
    module-level RNG seeded from entropy, so the same check could come out differently in another
    worker, or after other checks in the same one (seen with answers such as `\\pi\\pi\\infty`
    against `2`). Reseeding before every check is what lets a cached outcome stand for a fresh
    one, and makes reruns reproduce.
    """
    import random

    import sympy.core.random

    sympy.core.random.seed(SEED)
    random.seed(SEED)


def worker_run(jobs: tuple[tuple[str, str], ...], limits: Limits) -> list[str]:
    outcomes = []
    for candidate, gold in jobs:
        _reseed_sympy()
        outcomes.append(_gold_value(gold, limits) if candidate == GOLD_VALUE_JOB
                        else check_symbolic(candidate, gold, limits))
    return outcomes
