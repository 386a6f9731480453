"""The process pool: symbolic checks in spawned workers, each check under a wall-clock limit.

A busy sympy cannot be interrupted, so a check that runs past its limit is a TIMEOUT and the
pool's processes are killed and replaced; a worker that dies costs only the check that killed it
(CRASHED). Workers are spawned, not forked: fork is unsafe once JAX threads exist.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool

from sftrl.rewards.guards import Limits
from sftrl.rewards.symbolic import (
    CRASHED,
    ERROR,
    SEED,
    TIMEOUT,
    worker_init,
    worker_ping,
    worker_run,
)


@contextlib.contextmanager
def _spawning_workers() -> Iterator[None]:
    """What worker processes are started with: no `__main__` of ours, a fixed hash seed.

    A 'spawn' child imports the parent's main module, to find what was pickled from it. Our
    workers need only `sftrl.rewards`; importing, say, the training entry point there would cost
    seconds and a JAX import per worker (and every restart), and a script without an
    `if __name__ == "__main__"` guard would re-run itself. A fixed PYTHONHASHSEED makes set and
    dict iteration inside sympy the same in every worker and every run (with
    `symbolic._reseed_sympy`, the same check gives the same outcome anywhere). Processes are only
    started inside this block, so both are changed just for that moment.
    """
    main, hash_seed = sys.modules["__main__"], os.environ.get("PYTHONHASHSEED")
    sys.modules["__main__"] = types.ModuleType("__main__")
    os.environ["PYTHONHASHSEED"] = str(SEED)
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed


@dataclasses.dataclass
class _Task:
    indices: tuple[int, ...]
    suspect: bool = False  # was in flight when a worker died: runs alone until cleared
    deadline: float = 0.0
    started: float = 0.0


class WorkerPool:
    """Runs symbolic checks in spawned processes, each check under a wall-clock limit.

    Work goes out in chunks, at most one per worker, so a chunk that is submitted is running and
    its deadline means something. A chunk gets the limit of one check: if it finishes in time,
    every check in it did; if not, it is split and rerun one check at a time, and a single check
    that runs out of time is a TIMEOUT. Either way the processes are killed and replaced, because
    a busy sympy cannot be interrupted. When a worker dies, the checks that were in flight are
    rerun alone, so a second death names its check (CRASHED).
    """

    def __init__(self, workers: int, timeout_s: float, limits: Limits,
                 memory_bytes: int | None, startup_timeout_s: float = 120.0,
                 worker_fn: Callable[[tuple[tuple[str, str], ...], Limits], list[str]] = (
                     worker_run)) -> None:
        # worker_fn: what a worker runs on a chunk of jobs; must be importable by name (spawn).
        self.worker_fn = worker_fn
        self.workers = workers
        self.timeout_s = timeout_s
        self.limits = limits
        self.memory_bytes = memory_bytes
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        self._executor: cf.ProcessPoolExecutor | None = None
        self._seconds_per_check = 0.01  # running estimate, sizes the chunks

    # -- lifecycle --------------------------------------------------------------------------

    def _start(self) -> cf.ProcessPoolExecutor:
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:  # fail here, not in a worker
            raise ImportError("symbolic answer checks need math-verify: pip install math-verify")
        executor = cf.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=worker_init, initargs=(self.memory_bytes, os.getpid()),
        )
        # Wait until every worker has started and imported sympy, so that no check's deadline
        # includes a process start-up.
        deadline = time.monotonic() + self.startup_timeout_s
        pids: set[int] = set()
        try:
            with _spawning_workers():  # each submit here starts one process
                pings = [executor.submit(worker_ping, 0.05) for _ in range(self.workers)]
            while True:
                for ping in pings:
                    pids.add(ping.result(timeout=max(0.1, deadline - time.monotonic())))
                if len(pids) >= self.workers:
                    break
                pings = [executor.submit(worker_ping, 0.05) for _ in range(self.workers)]
        except BaseException:
            self._kill(executor)
            raise
        self._executor = executor
        return executor

    # Only the executor's manager thread reaps worker processes: joining (polling) them from
    # here as well races with its waitpid and can report a reaped worker as alive.

    @staticmethod
    def _kill(executor: cf.ProcessPoolExecutor) -> None:
        # ProcessPoolExecutor has no public way to stop a busy worker before Python 3.14
        # (`kill_workers`), hence the private `_processes`. kill() only signals; it never reaps.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.kill()
        executor.shutdown(wait=True, cancel_futures=True)  # the manager thread reaps them

    def _restart(self) -> None:
        if self._executor is not None:
            self._kill(self._executor)
            self._executor = None
            self.restarts += 1

    def close(self) -> None:
        """Stop the workers: politely if they are idle, by force if one is still busy."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)  # idle workers exit, manager reaps
        if manager is not None:
            manager.join(timeout=5)
        if manager is None or manager.is_alive():
            for process in processes:
                process.kill()
            if manager is not None:
                manager.join(timeout=10)

    @property
    def started(self) -> bool:
        return self._executor is not None

    # -- running checks ---------------------------------------------------------------------

    def _chunk_size(self) -> int:
        # A chunk must finish well inside one check's limit, or it is split and rerun.
        return max(1, min(32, int(0.1 * self.timeout_s / self._seconds_per_check)))

    def run(self, jobs: Sequence[tuple[str, str]], *,
            on_done: Callable[[int], None] | None = None) -> tuple[list[str], int, int]:
        """Outcomes of `jobs` (candidate, gold), plus the number of timeouts and crashes."""
        try:
            return self._run(jobs, on_done)
        except BaseException:
            # Ctrl-C or a bug: checks may still be running, and a later call must not inherit
            # busy workers (its deadlines would be wrong).
            self._restart()
            raise

    def _run(self, jobs: Sequence[tuple[str, str]],
             on_done: Callable[[int], None] | None) -> tuple[list[str], int, int]:
        outcomes: list[str | None] = [None] * len(jobs)
        fresh = deque(range(len(jobs)))
        retry: deque[_Task] = deque()
        in_flight: dict[cf.Future[list[str]], _Task] = {}
        timeouts = crashes = 0

        def finish(index: int, outcome: str) -> None:
            outcomes[index] = outcome
            if on_done is not None:
                on_done(1)

        while fresh or retry or in_flight:
            executor = self._executor or self._start()
            self._fill(executor, jobs, fresh, retry, in_flight)
            wait_s = max(0.0, min(t.deadline for t in in_flight.values()) - time.monotonic())
            done, _ = cf.wait(in_flight, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in done:
                task = in_flight.pop(future)
                try:
                    results = future.result()
                except BrokenProcessPool:
                    broken = True
                    crashes += self._after_crash(task, retry, finish)
                    continue
                self._learn_speed(task, len(results))
                for index, outcome in zip(task.indices, results, strict=True):
                    finish(index, outcome)
            now = time.monotonic()
            expired = [f for f, t in in_flight.items() if t.deadline <= now]
            if not broken and not expired:
                continue
            for future in expired:
                task = in_flight.pop(future)
                if len(task.indices) == 1:
                    timeouts += 1
                    finish(task.indices[0], TIMEOUT)
                else:
                    retry.extendleft(_Task((i,)) for i in reversed(task.indices))
            for task in in_flight.values():
                if broken:  # cannot tell which in-flight check killed the worker
                    crashes += self._after_crash(task, retry, finish)
                else:  # innocent bystander of a kill: rerun as it was
                    retry.appendleft(_Task(task.indices, suspect=task.suspect))
            in_flight.clear()
            self._restart()
        return [o if o is not None else ERROR for o in outcomes], timeouts, crashes

    def _fill(self, executor: cf.ProcessPoolExecutor, jobs: Sequence[tuple[str, str]],
              fresh: deque[int], retry: deque[_Task],
              in_flight: dict[cf.Future[list[str]], _Task]) -> None:
        while len(in_flight) < self.workers and (fresh or retry):
            if any(t.suspect for t in in_flight.values()):
                return  # a suspect runs alone
            if retry:
                if retry[0].suspect and in_flight:
                    return
                task = retry.popleft()
            else:
                size = self._chunk_size()
                task = _Task(tuple(fresh.popleft() for _ in range(min(size, len(fresh)))))
            future = executor.submit(self.worker_fn, tuple(jobs[i] for i in task.indices),
                                     self.limits)
            task.started = time.monotonic()
            task.deadline = task.started + self.timeout_s
            in_flight[future] = task
            if task.suspect:
                return

    def _after_crash(self, task: _Task, retry: deque[_Task],
                     finish: Callable[[int, str], None]) -> int:
        if task.suspect and len(task.indices) == 1:
            finish(task.indices[0], CRASHED)
            return 1
        retry.extendleft(_Task((i,), suspect=True) for i in reversed(task.indices))
        return 0

    def _learn_speed(self, task: _Task, n: int) -> None:
        per_check = (time.monotonic() - task.started) / max(1, n)
        self._seconds_per_check = 0.8 * self._seconds_per_check + 0.2 * max(per_check, 1e-4)
