"""The verifier: judging (response, gold) pairs; the shared verifier behind `verify` / `reward`.

`Verifier` walks each response's candidate answers in order, decides what string and plain-number
rules can, and sends the rest to its worker pool, caching the outcomes (the `sftrl.rewards`
docstring says why the cache changes no verdict). The module-level `verify`, `verify_batch`,
`reward` and `reward_batch` share one `Verifier`, stopped by `close` or at exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

from sftrl.rewards.extraction import (
    EXTRACTORS,
    MAX_EXTRACT_CHARS,
    ExtractionConfig,
    extract_answer,
    get_config,
)
from sftrl.rewards.guards import Limits, refusal
from sftrl.rewards.normalize import normalize_answer
from sftrl.rewards.numbers import (
    FAR,
    Number,
    as_number,
    assignment_rhs,
    decimal_fraction,
    is_relation,
    numbers_equal,
)
from sftrl.rewards.pool import WorkerPool
from sftrl.rewards.symbolic import CORRECT, GOLD_VALUE_JOB, NO_VALUE, UNPARSABLE

log = logging.getLogger(__name__)


@dataclasses.dataclass
class VerifierStats:
    """Counters since the verifier was made (see `Verifier.stats`)."""

    checks: int = 0  # (response, gold) pairs judged
    fast: int = 0  # decided without sympy (no answer, equal strings, plain numbers)
    cache_hits: int = 0  # decided by sympy outcomes all already cached when the batch came
    symbolic: int = 0  # symbolic checks run in workers (each distinct one once, when cached)
    timeouts: int = 0  # symbolic checks that ran out of time (verdict: incorrect)
    crashes: int = 0  # symbolic checks that killed their worker (verdict: incorrect)
    refused: int = 0  # candidates kept from sympy by the static guards
    restarts: int = 0  # times the worker processes were killed and replaced

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def gold_text(gold: object) -> str:
    if isinstance(gold, bool) or not isinstance(gold, str | int | float):
        raise TypeError(f"gold answer must be a str (or a number), got {type(gold).__name__}")
    text = str(gold)
    if not text.strip():
        raise ValueError("gold answer is empty")
    return text


_Lookup = Callable[[str, str], str | None]


class _Candidates:
    """A response's normalised candidate answers, extracted only as far as a verdict needs.

    Most responses are decided by their first candidate, so the later patterns (the case-
    insensitive anchor searches) usually never run. The sequence is the same as extracting
    everything up front; it is just computed lazily.
    """

    __slots__ = ("_config", "_next_pattern", "_tail", "found")

    def __init__(self, response: str, config: ExtractionConfig) -> None:
        if not isinstance(response, str):
            raise TypeError(f"response must be a str, got {type(response).__name__}")
        self._tail = response[-config.max_response_chars :]
        self._config = config
        self._next_pattern = 0
        self.found: list[str] = []

    def get(self, position: int) -> str | None:
        """The candidate at `position`, or None when there are no more."""
        patterns = self._config.patterns
        while len(self.found) <= position and self._next_pattern < len(patterns):
            if self.found and not self._config.fallback:
                break
            raw = (EXTRACTORS[patterns[self._next_pattern]](self._tail) or "").strip()
            self._next_pattern += 1
            if raw and len(raw) <= MAX_EXTRACT_CHARS:
                candidate = normalize_answer(raw)
                if candidate and candidate not in self.found:
                    self.found.append(candidate)
        return self.found[position] if position < len(self.found) else None


class _Outcomes(dict[tuple[str, str], str]):
    """One item's own symbolic outcomes (the uncached path)."""

    def get_pair(self, candidate: str, gold: str) -> str | None:
        return self.get((candidate, gold))


class Verifier:
    """Judges responses against gold answers; owns the worker processes and the caches.

    Args:
        config: default extraction config (an `ExtractionConfig` or a preset name).
        workers: worker processes for symbolic checks (default: up to 4, no more than the CPUs).
        timeout_s: wall-clock limit of one symbolic check; past it the check is incorrect.
        cache: reuse symbolic outcomes across identical (candidate, gold) pairs; it changes no
            verdict (see the `sftrl.rewards` docstring), only the time taken.
        max_answer_chars, max_depth, max_exponent: the static guards on what reaches sympy.
        worker_memory_bytes: data-segment limit of each worker (None: unlimited).

    Use as a context manager, or call `close()`; the processes start on the first check that
    needs sympy and are reused across calls.
    """

    def __init__(self, config: ExtractionConfig | str | None = None, *,
                 workers: int | None = None, timeout_s: float = 5.0, cache: bool = True,
                 max_answer_chars: int = 1000, max_depth: int = 24, max_exponent: int = 10_000,
                 worker_memory_bytes: int | None = 4 << 30, cache_entries: int = 500_000
                 ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.config = get_config(config)
        self.cache = cache
        self.limits = Limits(max_answer_chars, max_depth, max_exponent)
        self._pool = WorkerPool(workers or _default_workers(), timeout_s, self.limits,
                                worker_memory_bytes)
        self._outcomes: dict[tuple[str, str], str] = {}
        self._numbers: dict[str, Number | None] = {}
        # gold -> its numeric value (None: not one real constant); gold preparation, kept with
        # or without `cache` -- it can only rule out what sympy would rule out too
        self._gold_values: dict[str, Fraction | None] = {}
        self._cache_entries = cache_entries
        self._stats = VerifierStats()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._pool.close)

    # -- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> VerifierStats:
        return dataclasses.replace(self._stats, restarts=self._pool.restarts)

    def verify(self, response: str, gold: str, *,
               config: ExtractionConfig | str | None = None) -> bool:
        """Whether `response`'s final answer equals `gold`."""
        return self.verify_batch([(response, gold)], config=config)[0]

    def verify_batch(self, pairs: Iterable[tuple[str, str]], *,
                     config: ExtractionConfig | str | None = None,
                     progress: bool = False) -> list[bool]:
        """Verdicts for (response, gold) pairs, in order."""
        cfg = get_config(config) if config is not None else self.config
        items = []
        for index, (response, gold) in enumerate(pairs):
            try:
                items.append(self._prepare(response, gold_text(gold), cfg))
            except (TypeError, ValueError) as error:
                raise type(error)(f"pair {index}: {error}") from None
        with self._lock:
            return self._judge(items, progress)

    def reward(self, response: str, gold: str, *, format_bonus: float = 0.0,
               config: ExtractionConfig | str | None = None) -> float:
        """1.0 for a correct answer, plus `format_bonus` when the first pattern finds an answer."""
        return self.reward_batch([(response, gold)], format_bonus=format_bonus, config=config)[0]

    def reward_batch(self, pairs: Iterable[tuple[str, str]], *, format_bonus: float = 0.0,
                     config: ExtractionConfig | str | None = None) -> list[float]:
        """`reward` for many (response, gold) pairs; identical answers are checked once."""
        cfg = get_config(config) if config is not None else self.config
        pairs = list(pairs)
        verdicts = self.verify_batch(pairs, config=cfg)
        return rewards_from_verdicts([r for r, _ in pairs], verdicts, format_bonus=format_bonus,
                                     config=cfg)

    def close(self) -> None:
        """Stop the worker processes (they start again if needed)."""
        self._pool.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one item ---------------------------------------------------------------------------

    def _prepare(self, response: str, gold: str,
                 config: ExtractionConfig) -> tuple[_Candidates, str]:
        return _Candidates(response, config), normalize_answer(gold)

    def _number(self, s: str) -> Number | None:
        if not self.cache:
            return as_number(s)
        if s not in self._numbers:
            if len(self._numbers) >= self._cache_entries:
                self._numbers.clear()
            self._numbers[s] = as_number(s)
        return self._numbers[s]

    def _fast_verdict(self, candidate: str, gold: str) -> bool | None:
        """True/False when string and plain-number rules decide; None when sympy must."""
        if candidate == gold:
            return True
        if is_relation(candidate) != is_relation(gold):
            # `x=3` against `3` (or the reverse): compare the right-hand side, as math-verify does
            if (rhs := assignment_rhs(candidate)) is not None and not is_relation(gold):
                candidate = rhs
            elif (rhs := assignment_rhs(gold)) is not None and not is_relation(candidate):
                gold = rhs
            else:
                return None
            if candidate == gold:
                return True
        a, b = self._number(candidate), self._number(gold)
        if a is not None and b is not None:
            return numbers_equal(a, b)
        return None

    def _far_from_gold(self, candidate: str, gold: str) -> bool | None:
        """For a plain-number candidate and a gold that is not one: True when the gold's value
        (computed once per gold, in a worker) is far from it, None while the value is unknown.

        "Far" is more than 1e-6 relative. Every way math-verify can call a number equal to an
        expression (same value, equal to 6 decimal places, a zero difference) is within that,
        so this rules out only what sympy would: a shortcut, not a different verdict.
        """
        number = self._number(candidate)
        if number is None or self._number(gold) is not None:
            return False
        if gold not in self._gold_values:
            return None
        value = self._gold_values[gold]
        return value is not None and abs(number.value - value) > FAR * max(1, abs(value))

    def _walk(self, candidates: _Candidates, gold: str, start: int,
              lookup: _Lookup) -> tuple[bool | None, int, bool, tuple[str, str] | None]:
        """(verdict, position, by_sympy, job): a verdict, or None and the worker job it waits
        for. Candidates before `start` are known not to parse."""
        position = start - 1
        while (candidate := candidates.get(position := position + 1)) is not None:
            fast = self._fast_verdict(candidate, gold)
            if fast is not None:
                return fast, position, False, None
            far = self._far_from_gold(candidate, gold)
            if far is None:
                return None, position, False, (GOLD_VALUE_JOB, gold)
            if far:
                return False, position, False, None
            if refusal(candidate, self.limits) is not None:
                continue  # never parsed, so "does not parse": on to the next candidate
            outcome = lookup(candidate, gold)
            if outcome is None:
                return None, position, True, (candidate, gold)
            if outcome != UNPARSABLE:
                return outcome == CORRECT, position, True, None
        return False, position, False, None  # no candidate parses: incorrect

    # -- batches ----------------------------------------------------------------------------

    def _judge(self, items: list[tuple[_Candidates, str]], progress: bool) -> list[bool]:
        """Walk every item's candidates; run the symbolic checks the walks stop at; repeat.

        Cached: a check is keyed by (candidate, gold) and shared by every item that needs it,
        now and in later batches. Uncached: each item keeps its own outcomes, so identical items
        are checked separately -- the reference the cached path must reproduce.
        """
        verdicts: list[bool] = [False] * len(items)
        positions = [0] * len(items)
        own = [_Outcomes() for _ in items] if not self.cache else []
        waiting = list(range(len(items)))
        waited = [False] * len(items)  # needed a check that was not cached yet
        by_sympy = [False] * len(items)
        while waiting:
            still: list[int] = []
            jobs: list[tuple[str, str]] = []
            for index in waiting:
                candidates, gold = items[index]
                lookup = self._cached_outcome if self.cache else own[index].get_pair
                verdict, position, by_sympy[index], job = self._walk(
                    candidates, gold, positions[index], lookup)
                positions[index] = position
                if job is not None:
                    still.append(index)
                    jobs.append(job)
                    waited[index] = True
                else:
                    verdicts[index] = bool(verdict)
            if jobs:
                self._record(jobs, still, own, progress)
            waiting = still
        self._count(items, positions, waited, by_sympy)
        return verdicts

    def _record(self, jobs: list[tuple[str, str]], indices: list[int],
                own: list[_Outcomes], progress: bool) -> None:
        values = list(dict.fromkeys(job for job in jobs if job[0] == GOLD_VALUE_JOB))
        if values:  # one per gold, even uncached: gold preparation, not a shared verdict
            for (_, gold), value in zip(values, self._run(values, progress), strict=True):
                self._gold_values[gold] = decimal_fraction(value) if value != NO_VALUE else None
            kept = [(i, job) for i, job in zip(indices, jobs, strict=True)
                    if job[0] != GOLD_VALUE_JOB]
            indices, jobs = [i for i, _ in kept], [job for _, job in kept]
            if not jobs:
                return
        if not self.cache:
            for index, job, outcome in zip(indices, jobs, self._run(jobs, progress),
                                           strict=True):
                own[index][job] = outcome
            return
        distinct = list(dict.fromkeys(jobs))
        outcomes = self._run(distinct, progress)
        if len(self._outcomes) + len(distinct) > self._cache_entries:
            self._outcomes.clear()
        self._outcomes.update(zip(distinct, outcomes, strict=True))

    def _cached_outcome(self, candidate: str, gold: str) -> str | None:
        return self._outcomes.get((candidate, gold))

    def _count(self, items: list[tuple[_Candidates, str]], positions: list[int],
               waited: list[bool], by_sympy: list[bool]) -> None:
        self._stats.checks += len(items)
        self._stats.fast += sum(not b for b in by_sympy)
        self._stats.cache_hits += sum(b and not w for b, w in zip(by_sympy, waited, strict=True))
        for (candidates, _), position in zip(items, positions, strict=True):
            self._stats.refused += sum(
                refusal(c, self.limits) is not None for c in candidates.found[: position + 1])

    def _run(self, jobs: list[tuple[str, str]], progress: bool) -> list[str]:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="symbolic checks", unit="check", leave=False)
        try:
            outcomes, timeouts, crashes = self._pool.run(
                jobs, on_done=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        self._stats.symbolic += len(jobs)
        self._stats.timeouts += timeouts
        self._stats.crashes += crashes
        if timeouts or crashes:
            log.warning("%d symbolic checks timed out and %d crashed a worker (both: incorrect)",
                        timeouts, crashes)
        return outcomes


# ---------------------------------------------------------------------------------------------
# Module-level entry points: one shared verifier
# ---------------------------------------------------------------------------------------------


_shared: Verifier | None = None
_shared_lock = threading.Lock()


def _shared_verifier() -> Verifier:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Verifier()
        return _shared


def verify(response: str, gold: str, *, config: ExtractionConfig | str | None = None) -> bool:
    """Whether `response`'s final answer equals `gold` (the shared `Verifier`)."""
    return _shared_verifier().verify(response, gold, config=config)


def verify_batch(pairs: Iterable[tuple[str, str]], *,
                 config: ExtractionConfig | str | None = None,
                 progress: bool = False) -> list[bool]:
    """Verdicts for (response, gold) pairs (the shared `Verifier`)."""
    return _shared_verifier().verify_batch(pairs, config=config, progress=progress)


def format_found(response: str, config: ExtractionConfig | str | None = None) -> bool:
    """Whether the config's first pattern (e.g. `\\boxed{}`) finds an answer, right or wrong."""
    cfg = get_config(config)
    return extract_answer(
        response, dataclasses.replace(cfg, patterns=cfg.patterns[:1], fallback=False)
    ) is not None


def rewards_from_verdicts(responses: Sequence[str], verdicts: Sequence[bool], *,
                          format_bonus: float = 0.0,
                          config: ExtractionConfig | str | None = None) -> list[float]:
    """GRPO rewards from verdicts already computed: 1.0 if correct, plus `format_bonus` when
    `format_found` (so a caller that needs both verdicts and rewards verifies once)."""
    return [
        float(correct) + (format_bonus if format_bonus and format_found(response, config)
                          else 0.0)
        for response, correct in zip(responses, verdicts, strict=True)
    ]


def reward(response: str, gold: str, *, format_bonus: float = 0.0,
           config: ExtractionConfig | str | None = None) -> float:
    """GRPO reward: 1.0 if `verify`, plus `format_bonus` when the config's first pattern (e.g.
    `\\boxed{}`) finds an answer, right or wrong."""
    return _shared_verifier().reward(response, gold, format_bonus=format_bonus, config=config)


def reward_batch(pairs: Iterable[tuple[str, str]], *, format_bonus: float = 0.0,
                 config: ExtractionConfig | str | None = None) -> list[float]:
    """`reward` for many (response, gold) pairs at once (shares the symbolic checks)."""
    return _shared_verifier().reward_batch(pairs, format_bonus=format_bonus, config=config)


def close() -> None:
    """Stop the shared verifier's worker processes (also done at exit)."""
    global _shared
    with _shared_lock:
        shared, _shared = _shared, None
    if shared is not None:
        shared.close()


atexit.register(close)
