"""Sweeps: many runs of one base config, launched as local processes or through XManager.

python -m sftrl.launch --sweep=configs/sweeps/sft_variants_tiny.py[:arg] --workdir=SWEEPDIR
                       [--launcher=local|xm] [--max_parallel=N] [--dry_run] [--only=a,b]
                       [--xm_executor=local|vertex|kubernetes] [--xm_image=IMAGE]

A sweep file defines `get_sweep(arg=None) -> Sweep`: a base config ("configs/tiny.py[:variant]")
and a list of `Run`s, each a name and config overrides. Every run's config is built and
validated before anything starts. Run `<name>` gets `SWEEPDIR/<name>/` as its workdir and the
same command line under both launchers:

    python -m sftrl.main --config=<base> --workdir=SWEEPDIR/<name> [--stage=S] --config.k=v ...

With `Sweep.predict`, a last job runs the predict stage in `SWEEPDIR/predict` over all runs'
directories, once every run is done. The local launcher keeps `SWEEPDIR/sweep.json` (per run:
command, state, return code, times) so a re-launch skips runs that are already done.

The xm launcher makes the sweep one XManager experiment: one work unit per run, on the
accelerator its `config.accelerator` names, and the predict unit added once the runs it needs
have completed. SWEEPDIR may then be any epath URI (gs://...), and must be one for the cloud
executors.

One concept, hence one module over 700 lines: the sweep launcher (a sweep made into validated
jobs, then run by one of two backends that share the jobs, the status file and the CLI).
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from etils import epath

from sftrl import accelerators, atomic, config_lib

ROOT = config_lib.REPO_ROOT  # the source tree (the repo root)
DEFAULT_PREFIX = (sys.executable, "-m", "sftrl.main")
STATUS_FILE = "sweep.json"
PREDICT_RUN = "predict"
STATES = ("pending", "running", "done", "failed")
# Run names become directory names, `--only` items and `predict.workdirs` glob patterns, so
# they exclude path separators, commas and glob characters.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,99}")
_RESERVED_NAMES = (STATUS_FILE, PREDICT_RUN)


class SweepError(ValueError):
    """An invalid sweep; the message names the sweep file, the run and the config key."""


# ------------------------------------------------------------------ sweep definition


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: a directory name, config overrides ('a.b' -> value), a stage."""

    name: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    stage: str | None = None


@dataclasses.dataclass
class Sweep:
    """What a sweep file's `get_sweep` returns."""

    name: str
    base_config: str  # "configs/tiny.py" or "configs/llama8b.py:tiny", relative to the repo
    runs: list[Run]
    predict: bool = False  # run the predict stage over all runs at the end
    predict_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # predict.*


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """The product of the axes, the last axis varying fastest.

    grid(**{"data.synthetic.style": ["answer_only", "short_cot"], "sft.num_epochs": [1, 2]})
    gives 4 override dicts. Each axis is a list of values (a tuple-valued field takes a list of
    tuples, so a tuple is not accepted as the axis itself).
    """
    for key, values in axes.items():
        if not isinstance(values, list | range):
            raise SweepError(f"grid axis {key!r}: expected a list of values, got "
                             f"{type(values).__name__} {values!r}")
        if not values:
            raise SweepError(f"grid axis {key!r}: no values")
    keys = list(axes)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(axes[k] for k in keys))]


def _name_part(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "+".join(_name_part(v) for v in value) or "none"
    if isinstance(value, str) and "/" in value:
        value = Path(value).stem  # a file: its stem says enough, a full path is not a name
    text = re.sub(r"[^A-Za-z0-9._+-]+", "-", str(value)).strip("-")
    return text or "empty"


def name_for(overrides: Mapping[str, Any], short: Mapping[str, str] | None = None) -> str:
    """A filesystem-safe run name like 'style=short_cot-size=1000-num_epochs=2'.

    Each key is shortened to its last component unless that collides within `overrides`;
    `short` maps keys to names of one's own choosing.
    """
    short = dict(short or {})
    last = [key.rsplit(".", 1)[-1] for key in overrides]
    parts = []
    for key, tail in zip(overrides, last, strict=True):
        label = short.get(key) or (tail if last.count(tail) == 1 else key)
        parts.append(f"{label}={_name_part(overrides[key])}")
    name = "-".join(parts) or "base"
    return name[:100]


def load_sweep(spec: str) -> tuple[Sweep, Path]:
    """`path[:arg]` -> (the Sweep its get_sweep(arg) returns, the file)."""
    path_text, _, arg = spec.partition(":")
    path = config_lib.find_config_file(path_text)
    if path is None:
        raise SweepError(f"{path_text}: no such sweep file (looked in {Path.cwd()} and {ROOT})")
    module_name = "_sftrl_sweep_" + re.sub(r"\W", "_", path.stem)
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses in the file look their module up
    module_spec.loader.exec_module(module)
    get_sweep = getattr(module, "get_sweep", None)
    if not callable(get_sweep):
        raise SweepError(f"{path}: defines no get_sweep(arg=None) function")
    sweep = get_sweep(arg or None)
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep returned {type(sweep).__name__}, not a Sweep")
    return sweep, path


# ------------------------------------------------------------------ overrides and validation


def render_value(key: str, value: Any, field_type: type | None) -> str:
    """`value` as the text after `--config.<key>=`, read back exactly by both ml_collections'
    flag parsers (chosen by the field's type) and `config_lib.apply_overrides` (literal_eval,
    else the raw string)."""
    if value is None:
        raise SweepError(f"{key}: None cannot be given on the command line")
    if isinstance(value, list) and field_type is tuple:
        value = tuple(value)
    if isinstance(value, dict | ml_collections.ConfigDict):
        raise SweepError(f"{key}: a group of fields cannot be overridden whole; "
                         "override its fields one by one")
    # The flag parser is chosen by the field's type, so the value must already have it (a
    # placeholder field holding None still has a type).
    accepted = {int: (int,), float: (int, float), bool: (bool,), str: (str,), tuple: (tuple,)}
    allowed = accepted.get(field_type) if isinstance(field_type, type) else None
    if allowed is not None and (not isinstance(value, allowed) or (
            isinstance(value, bool) and field_type is not bool)):
        raise SweepError(f"{key}: expected {field_type.__name__}, got "
                         f"{type(value).__name__} {value!r}")
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) and field_type is float:
        value = float(value)  # the float flag parser and literal_eval then agree on the type
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SweepError(f"{key}: {value} cannot be read back by literal_eval")
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        text = repr(value)
        try:
            ok = ast.literal_eval(text) == value
        except (ValueError, SyntaxError):
            ok = False
        if not ok:
            raise SweepError(f"{key}: {value!r} holds values that are not Python literals")
        return text
    if isinstance(value, str):
        # The str flag parser keeps the raw text while apply_overrides literal_evals it, so a
        # string is only safe when it does not parse as a literal.
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        raise SweepError(f"{key}: string {value!r} looks like a Python literal, so the "
                         "command line would read it back as another type")
    raise SweepError(f"{key}: unsupported value type {type(value).__name__} {value!r}")


def _field_type(config: ml_collections.ConfigDict, key: str) -> type | None:
    try:
        node, name = config_lib.parent_of(config, key)
    except config_lib.ConfigError as e:
        raise SweepError(str(e)) from None
    return node.get_type(name)


def render_overrides(config: ml_collections.ConfigDict,
                     overrides: Mapping[str, Any]) -> list[str]:
    """`--config.k=v` arguments for `overrides`, checked to read back to the same values."""
    args = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise SweepError(f"{key!r}: an override key must be a dotted name like 'sft.lr'")
        text = render_value(key, value, _field_type(config, key))
        args.append(f"--config.{key}={text}")
    return args


def load_config(base: str) -> ml_collections.ConfigDict:
    """The config a `path[:variant]` names, as `--config=` would load it."""
    try:
        return config_lib.load_config_file(base)
    except config_lib.ConfigError as e:
        raise SweepError(f"base_config {e}") from e


@dataclasses.dataclass(frozen=True)
class Job:
    """A run made concrete: its workdir, the arguments after the command prefix and the
    accelerator its config asks for (`config.accelerator`, "" for none)."""

    name: str
    workdir: Path | epath.Path
    args: tuple[str, ...]
    accelerator: str = ""

    def command(self, prefix: Sequence[str]) -> list[str]:
        return [*prefix, *self.args]


def check_names(sweep: Sweep, where: str) -> None:
    if not sweep.runs:
        raise SweepError(f"{where}: sweep {sweep.name!r} has no runs")
    seen: set[str] = set()
    for i, run in enumerate(sweep.runs):
        if not isinstance(run, Run):
            raise SweepError(f"{where}: runs[{i}] is a {type(run).__name__}, not a Run")
        if not isinstance(run.name, str) or not _NAME_RE.fullmatch(run.name):
            raise SweepError(
                f"{where}: runs[{i}] name {run.name!r} is not a safe directory name "
                "(letters, digits and . _ = + -, starting with a letter or digit, <= 100 chars)"
            )
        if run.name in _RESERVED_NAMES:
            raise SweepError(f"{where}: runs[{i}] name {run.name!r} is reserved")
        if run.name in seen:
            raise SweepError(f"{where}: runs[{i}] name {run.name!r} is used twice")
        seen.add(run.name)


def plan(sweep: Sweep, sweep_dir: Path | epath.Path, where: str = "sweep",
         num_devices: int | None = None) -> list[Job]:
    """Validates every run's config (base + overrides + stage) and returns the jobs, the
    predict job last when the sweep asks for it. Fails naming the run and the key.

    Each run's mesh is checked against `num_devices`, else the device count of the run's
    `config.accelerator`, else this host's."""
    check_names(sweep, where)
    base = load_config(sweep.base_config)
    # An absolute path, so the command works from any directory (xm_local keeps our cwd).
    path_text, sep, variant = sweep.base_config.partition(":")
    config_arg = f"{config_lib.find_config_file(path_text)}{sep}{variant}"
    runs = list(sweep.runs)
    if sweep.predict:
        dirs = tuple(str(sweep_dir / run.name) for run in sweep.runs)
        overrides = {**sweep.predict_overrides, "predict.workdirs": dirs}
        runs.append(Run(PREDICT_RUN, overrides, stage="predict"))
    jobs = []
    for run in runs:
        context = f"{where}: run {run.name!r}"
        if not isinstance(run.overrides, Mapping):
            raise SweepError(f"{context}: overrides must be a dict of 'a.b' keys to values")
        try:
            args = render_overrides(base, run.overrides)
            config = config_lib.apply_overrides(base, [a.removeprefix("--config.")
                                                       for a in args])
            for key, value in run.overrides.items():
                got = _get(config, key)
                expected = tuple(value) if isinstance(value, list) else value
                same_type = type(got) is type(expected) or (
                    isinstance(got, float) and isinstance(expected, int))
                if got != expected or not same_type:
                    raise SweepError(f"{key}: {value!r} reads back as {got!r}")
            if run.stage is not None:
                if run.stage not in config_lib.STAGES:
                    raise SweepError(f"stage: {run.stage!r} is not one of "
                                     f"{', '.join(config_lib.STAGES)}")
                config.stage = run.stage
            accelerator = _accelerator(config.accelerator)
            devices = num_devices
            if devices is None and accelerator is not None:
                devices = accelerator.num_devices
            config_lib.validate(config, devices)
            if atomic.is_remote(sweep_dir) and config.stage not in config_lib.REMOTE_STAGES:
                raise SweepError(f"stage {config.stage!r} writes its run directory on a local "
                                 f"disk only, not under {sweep_dir}; give a local or mounted "
                                 "(/gcs/<bucket>/...) --workdir")
        except (SweepError, config_lib.ConfigError) as e:
            raise SweepError(f"{context}: {e}") from e
        workdir = sweep_dir / run.name
        head = [f"--config={config_arg}", f"--workdir={workdir}"]
        if run.stage is not None:
            head.append(f"--stage={run.stage}")
        jobs.append(Job(run.name, workdir, tuple(head + args), config.accelerator))
    return jobs


def _accelerator(text: str) -> accelerators.Accelerator | None:
    try:
        return accelerators.parse(text)
    except accelerators.AcceleratorError as e:
        raise config_lib.ConfigError(f"accelerator: {e}") from e


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


# ------------------------------------------------------------------ status file


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Status:
    """`SWEEPDIR/sweep.json`: per run its command, state, return code and times; rewritten
    atomically on every change so a crash never leaves half a file."""

    def __init__(self, path: Path, sweep_name: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"sweep": sweep_name, "runs": {}}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
                runs = self.data["runs"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SweepError(f"{path}: not a sweep status file ({e})") from e
            for name, entry in runs.items():
                if not isinstance(entry, dict):
                    raise SweepError(f"{path}: run {name!r}: expected an object, got {entry!r}")
                if entry.get("state") not in STATES:
                    raise SweepError(f"{path}: run {name!r}: field 'state' is "
                                     f"{entry.get('state')!r}, not one of {STATES}")

    def entry(self, name: str) -> dict[str, Any]:
        return self.data["runs"].setdefault(name, {"state": "pending"})

    def update(self, name: str, **fields: Any) -> None:
        self.entry(name).update(fields)
        self.save()

    def save(self) -> None:
        atomic.write_json(self.path, self.data)


# ------------------------------------------------------------------ local launcher


def child_env() -> dict[str, str]:
    """The launcher's environment with the repo importable, so `-m sftrl.main` works from
    any directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_local(jobs: Sequence[Job], status: Status, prefix: Sequence[str],
              max_parallel: int = 1, poll_s: float = 0.05,
              echo: Callable[[str], None] = print,
              predict_needs: Sequence[str] | None = None) -> dict[str, str]:
    """Runs the jobs as subprocesses, at most `max_parallel` at once; the predict job (if
    any) only once every run in `predict_needs` (default: the other jobs) is done, which may
    include runs of the sweep that `--only` left out. Returns each job's final state."""
    if max_parallel < 1:
        raise SweepError(f"--max_parallel: must be at least 1, got {max_parallel}")
    runs = [j for j in jobs if j.name != PREDICT_RUN]
    predict = [j for j in jobs if j.name == PREDICT_RUN]
    queue = [j for j in runs if status.entry(j.name)["state"] != "done"]
    for job in runs:
        if status.entry(job.name)["state"] == "done":
            echo(f"[skip] {job.name}: already done")
        else:
            _close_stale_attempt(status, job)
            status.update(job.name, state="pending", command=job.command(prefix),
                          workdir=str(job.workdir))
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    try:
        while queue or running or predict:
            while queue and len(running) < max_parallel:
                job = queue.pop(0)
                running[job.name] = _start(job, status, prefix, echo)
            for name, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[name]
                    state = "done" if proc.returncode == 0 else "failed"
                    _end_attempt(status, name, state=state, returncode=proc.returncode)
                    echo(f"[{state}] {name} (exit {proc.returncode})")
            if predict and not queue and not running:
                job = predict.pop()
                needs = [j.name for j in runs] if predict_needs is None else predict_needs
                bad = [n for n in needs if status.entry(n)["state"] != "done"]
                if bad:
                    echo(f"[skip] {PREDICT_RUN}: runs not done: {', '.join(bad)}")
                    status.update(PREDICT_RUN, state="pending", command=job.command(prefix),
                                  workdir=str(job.workdir))
                elif status.entry(PREDICT_RUN)["state"] == "done":
                    echo(f"[skip] {PREDICT_RUN}: already done")
                else:
                    running[job.name] = _start(job, status, prefix, echo)
            _pause(poll_s)
    except KeyboardInterrupt:
        echo(f"interrupted: terminating {len(running)} run(s)")
        _terminate([proc for proc, _ in running.values()])
        for name, (proc, log) in running.items():
            log.close()
            _end_attempt(status, name, state="failed", returncode=proc.returncode,
                         error="interrupted")
        raise
    return {j.name: status.entry(j.name)["state"] for j in jobs}


def _end_attempt(status: Status, name: str, **fields: Any) -> None:
    """Marks a run's attempt ended and adds its duration to the run's `elapsed_s` (the time
    summed over every attempt: a resumed run's `start` is only its last attempt's)."""
    start, end = status.entry(name).get("start"), _now()
    _add_elapsed(status, name, _seconds_between(start, end) if start else 0.0,
                 (start, end) if start else None, end=end, **fields)


def _close_stale_attempt(status: Status, job: Job) -> None:
    """A run left 'running' by a launcher that was killed: its attempt's end is unknown, so it
    is taken as the run's last write to its directory (launch.log, or a file a stage writes as
    it goes: a long generation stores each wave of samples but may log nothing for an hour),
    and the duration is added to `elapsed_s` with the estimate recorded."""
    entry = status.entry(job.name)
    if entry.get("state") != "running" or not entry.get("start"):
        return
    writes = [path.stat().st_mtime for path in job.workdir.rglob("*") if path.is_file()]
    if not writes:
        return
    last_write = datetime.datetime.fromtimestamp(max(writes), datetime.UTC)
    end = last_write.isoformat(timespec="seconds")
    seconds = max(0.0, _seconds_between(entry["start"], end))
    _add_elapsed(status, job.name, seconds, (entry["start"], end),
                 estimated_attempts=int(entry.get("estimated_attempts") or 0) + 1)


def _add_elapsed(status: Status, name: str, seconds: float,
                 interval: tuple[str, str] | None, **fields: Any) -> None:
    """Adds an attempt's duration to `elapsed_s` and its [start, end] to `attempts`: a sweep's
    wall time is the union of its runs' attempts (parallel runs overlap; resumes leave gaps)."""
    entry = status.entry(name)
    elapsed = float(entry.get("elapsed_s") or 0.0) + seconds
    if interval is not None:
        fields["attempts"] = [*entry.get("attempts", []), list(interval)]
    status.update(name, elapsed_s=elapsed, **fields)


def _seconds_between(start: str, end: str) -> float:
    return (datetime.datetime.fromisoformat(end)
            - datetime.datetime.fromisoformat(start)).total_seconds()


def _start(job: Job, status: Status, prefix: Sequence[str],
           echo: Callable[[str], None]) -> tuple[subprocess.Popen, Any]:
    job.workdir.mkdir(parents=True, exist_ok=True)
    log = (job.workdir / "launch.log").open("ab")
    command = job.command(prefix)
    # A new session: Ctrl-C reaches only the launcher, which then stops each child itself.
    proc = subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    status.update(job.name, state="running", command=command, workdir=str(job.workdir),
                  pid=proc.pid, returncode=None, start=_now(), end=None)
    echo(f"[start] {job.name}: {shlex.join(command)}")
    return proc, log


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _terminate(procs: Sequence[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM to every child's process group at once, SIGKILL to those still alive after
    `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        for proc in alive:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for proc in alive:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


def summary_table(jobs: Sequence[Job], status: Status) -> str:
    rows = [("run", "state", "exit", "start", "end")]
    for job in jobs:
        e = status.entry(job.name)
        rc = e.get("returncode")
        rows.append((job.name, e["state"], "" if rc is None else str(rc),
                     e.get("start") or "", e.get("end") or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


# ------------------------------------------------------------------ XManager launcher
#
# Two parts: `build_xm_experiment` turns the validated jobs into xmanager's own objects (the
# packageable executable, one executor with its resource requirements per work unit, the
# predict unit's dependencies) and starts nothing, so a test inspects exactly what would be
# launched; `launch_xm` hands them to an experiment and waits where a unit needs others.


XM_MISSING = "the xm launcher needs XManager: pip install sftrl[xm]"
XM_EXECUTORS = ("local", "vertex", "kubernetes")
DEFAULT_IMAGE = "python:3.11-slim"
# xmanager's Vertex AI backend (xmanager/cloud/vertex.py) maps only these TPUs to machines.
_VERTEX_TPUS = ("tpu_v2", "tpu_v3")


def _xm() -> tuple[Any, Any]:
    try:
        from xmanager import xm, xm_local
    except ImportError as e:
        raise SweepError(XM_MISSING) from e
    return xm, xm_local


@dataclasses.dataclass(frozen=True)
class XmUnit:
    """One work unit: a run, or the predict job with the runs it needs."""

    name: str
    executor: Any  # xm_local.Local / Vertex / Kubernetes, with the run's JobRequirements
    args: Any  # xm.SequentialArgs: the arguments after the entry point
    env_vars: dict[str, str]
    needs: tuple[str, ...] = ()  # units that must have completed before this one is added

    def job(self, executable: Any) -> Any:
        xm, _ = _xm()
        return xm.Job(executable=executable, executor=self.executor, name=self.name,
                      args=self.args, env_vars=self.env_vars)


@dataclasses.dataclass(frozen=True)
class XmExperiment:
    """One XManager experiment for one sweep."""

    title: str
    packageable: Any  # xm.Packageable: the entry point and where it is packaged for
    units: tuple[XmUnit, ...]  # in launch order: a unit's needs come before it


def requirements(accelerator: accelerators.Accelerator | None) -> Any:
    """xm.JobRequirements for a run: a TPU slice by its chip grid, GPUs by count (x hosts), or
    none (the scheduler's default machine: the predict job, CPU-only runs)."""
    xm, _ = _xm()
    if accelerator is None:
        return xm.JobRequirements()
    if accelerator.kind == "tpu":
        return xm.JobRequirements({accelerator.resource: xm.Topology(accelerator.topology)})
    return xm.JobRequirements({accelerator.resource: accelerator.topology})


def build_xm_experiment(jobs: Sequence[Job], title: str, *, executor: str = "local",
                        image: str = DEFAULT_IMAGE,
                        prefix: Sequence[str] = DEFAULT_PREFIX) -> XmExperiment:
    """The experiment for `jobs` as xmanager objects, launching nothing.

    executor "local": this host runs each job as a process (`prefix` + the job's arguments);
    requirements are not asked for, the host has what it has. "vertex" / "kubernetes": each job
    runs in a container built from this repository (`image` + `pip install .[tpu|gpu]`) on the
    accelerator its config names; a multi-host one gets SFTRL_COORDINATOR_ADDRESS=auto so that
    jax.distributed finds its peers. The predict job needs every run of the sweep.
    """
    xm, xm_local = _xm()
    if executor not in XM_EXECUTORS:
        raise SweepError(f"--xm_executor: {executor!r} is not one of {', '.join(XM_EXECUTORS)}")
    parsed = {job.name: _accelerator(job.accelerator) for job in jobs}
    if executor == "local":
        packageable = xm.binary(executor_spec=xm_local.Local.Spec(), path=prefix[0],
                                args=list(prefix[1:]),
                                # xm_local adds the launcher's environment; make sftrl importable
                                env_vars={"PYTHONPATH": child_env()["PYTHONPATH"]})
    else:
        kinds = sorted({a.kind for a in parsed.values() if a is not None})
        if len(kinds) > 1:
            raise SweepError(f"sweep {title!r}: runs ask for both {' and '.join(kinds)}; one "
                             "experiment builds one image, so launch them as two sweeps")
        spec_class = xm_local.Vertex.Spec if executor == "vertex" else xm_local.Kubernetes.Spec
        packageable = xm.python_container(
            executor_spec=spec_class(), path=str(ROOT), base_image=image,
            entrypoint=xm.ModuleName("sftrl.main"),
            docker_instructions=_docker_instructions(ROOT.name, kinds[0] if kinds else ""))
    units = []
    for job in jobs:
        accelerator = parsed[job.name]
        if executor == "local":
            job_executor = xm_local.Local()
        elif executor == "vertex":
            if accelerator is not None and accelerator.resource.startswith("tpu") and (
                    accelerator.resource not in _VERTEX_TPUS):
                raise SweepError(
                    f"run {job.name!r}: accelerator {job.accelerator!r}: xmanager's Vertex "
                    f"executor offers TPU v2/v3 only; use --xm_executor=kubernetes (GKE)")
            job_executor = xm_local.Vertex(requirements=requirements(accelerator))
        else:
            job_executor = xm_local.Kubernetes(requirements=requirements(accelerator))
        multi_host = accelerator is not None and accelerator.num_hosts > 1
        env = {"SFTRL_COORDINATOR_ADDRESS": "auto"} if multi_host else {}
        needs = tuple(j.name for j in jobs if j.name != PREDICT_RUN) if (
            job.name == PREDICT_RUN) else ()
        # Plain strings: xm_local quotes each for its shell, the cloud backends pass argv.
        units.append(XmUnit(job.name, job_executor, xm.merge_args(list(job.args)), env, needs))
    return XmExperiment(title, packageable, tuple(units))


def _docker_instructions(folder: str, kind: str) -> list[str]:
    extra = {"tpu": "[tpu]", "gpu": "[gpu]"}.get(kind, "")
    return ["ENV LANG=C.UTF-8", f"COPY {folder}/ /sftrl/", "WORKDIR /sftrl",
            f'RUN python -m pip install --no-cache-dir ".{extra}"']


def describe_xm(experiment: XmExperiment) -> list[str]:
    """One line per work unit: name, executor, requirements, dependencies (for --dry_run)."""
    lines = [f"experiment {experiment.title!r}: "
             f"{type(experiment.packageable.executable_spec).__name__} for "
             f"{type(experiment.packageable.executor_spec).__name__}"]
    for unit in experiment.units:
        wants = getattr(unit.executor, "requirements", None)
        lines.append(f"  {unit.name}: {type(unit.executor).__name__} {wants!r}"
                     + (f" after {', '.join(unit.needs)}" if unit.needs else ""))
    return lines


def launch_xm(experiment: XmExperiment, create_experiment: Callable[[str], Any] | None = None,
              echo: Callable[[str], None] = print) -> dict[str, str]:
    """Launches `experiment` (default: an xm_local experiment); each unit is added once the
    units it needs have completed, and skipped if one failed. Returns each unit's state:
    'done', 'failed', 'skipped', or 'launched' (added, not waited for)."""
    import asyncio

    xm, xm_local = _xm()
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # xm_local reads its --xm_* flags: their defaults
    create = create_experiment or xm_local.create_experiment
    states: dict[str, str] = {}

    async def finished(name: str, unit: Any) -> str:
        if states[name] == "launched":
            try:
                await unit.wait_until_complete()
                states[name] = "done"
            except xm.ExperimentUnitError as e:
                states[name] = "failed"
                echo(f"[failed] {name}: {e}")
        return states[name]

    async def run() -> None:
        async with create(experiment.title) as xp:
            [executable] = xp.package([experiment.packageable])
            added: dict[str, Any] = {}
            for unit in experiment.units:
                needed = [(n, await finished(n, added[n])) for n in unit.needs]
                bad = [n for n, state in needed if state != "done"]
                if bad:
                    states[unit.name] = "skipped"
                    echo(f"[skip] {unit.name}: runs not done: {', '.join(bad)}")
                    continue
                added[unit.name] = await xp.add(unit.job(executable))
                states[unit.name] = "launched"
                echo(f"[add] {unit.name}")
            if all(isinstance(u.executor, xm_local.Local) for u in experiment.units):
                for name, handle in added.items():
                    await finished(name, handle)

    try:
        asyncio.run(run())
    except (RuntimeError, xm.ExperimentUnitError):
        # xm_local re-raises a failed local job when the experiment closes; it is recorded
        if "failed" not in states.values():
            raise
    return states


# ------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str]) -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="python -m sftrl.launch", description=__doc__.split("\n")[0])
    p.add_argument("--sweep", required=True, help="sweep file, path[:arg]")
    p.add_argument("--workdir", required=True, help="sweep directory; run <name> -> <dir>/<name>")
    p.add_argument("--launcher", choices=("local", "xm"), default="local")
    p.add_argument("--xm_executor", choices=XM_EXECUTORS, default="local",
                   help="xm: where jobs run (local processes, Vertex AI, GKE)")
    p.add_argument("--xm_image", default=DEFAULT_IMAGE,
                   help="xm vertex/kubernetes: the base image the repository is installed in")
    p.add_argument("--max_parallel", type=int, default=1, help="local: runs at once")
    p.add_argument("--dry_run", action="store_true", help="validate, print commands, exit")
    p.add_argument("--only", default="", help="comma-separated run names to launch")
    p.add_argument("--num_devices", type=int, default=None,
                   help="devices each run will see, for config validation (default: this host's)")
    p.add_argument("--command_prefix", default="",
                   help="replaces 'python -m sftrl.main' (shell-split); for tests and wrappers")
    return p.parse_args(list(argv))


def _sweep_dir(args: Any) -> Path | epath.Path:
    """The sweep directory: a local path, or (xm launcher) any epath URI such as gs://..."""
    remote = atomic.is_remote(args.workdir)
    if args.launcher == "local":
        if remote:
            raise SweepError(f"--workdir={args.workdir}: the local launcher keeps sweep.json and "
                             "each run's launch.log on a local disk; use a local --workdir "
                             "(or --launcher=xm)")
        return Path(args.workdir).absolute()
    mounted = Path(args.workdir).is_absolute() and Path(args.workdir).parts[1:2] == ("gcs",)
    if args.xm_executor != "local" and not (remote or mounted):
        raise SweepError(f"--workdir={args.workdir}: --xm_executor={args.xm_executor} runs jobs "
                         "on other machines, which cannot see this one's disk; give a gs:// "
                         "--workdir or a bucket mounted at /gcs/<bucket>/ (Cloud Storage FUSE)")
    return atomic.as_path(args.workdir)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    prefix = shlex.split(args.command_prefix) or list(DEFAULT_PREFIX)
    try:
        sweep_dir = _sweep_dir(args)
        sweep, path = load_sweep(args.sweep)
        jobs = plan(sweep, sweep_dir, where=str(path), num_devices=args.num_devices)
        if args.only:
            wanted = [n for n in args.only.split(",") if n]
            known = {j.name for j in jobs}
            unknown = [n for n in wanted if n not in known]
            if unknown:
                raise SweepError(f"--only: unknown run(s) {unknown} (known: {sorted(known)})")
            jobs = [j for j in jobs if j.name in wanted]
        if args.launcher == "xm":
            experiment = build_xm_experiment(jobs, sweep.name, executor=args.xm_executor,
                                             image=args.xm_image, prefix=prefix)
            if args.dry_run:
                print("\n".join(describe_xm(experiment)))
                return 0
            states = launch_xm(experiment)
            bad = sorted(name for name, state in states.items() if state in ("failed", "skipped"))
            if bad:
                print(f"{len(bad)} unit(s) failed or skipped: {', '.join(bad)}", file=sys.stderr)
            return 1 if bad else 0
        if args.dry_run:
            for job in jobs:
                print(shlex.join(job.command(prefix)))
            return 0
        status = Status(sweep_dir / STATUS_FILE, sweep.name)
        for job in jobs:
            old = status.entry(job.name)
            if old["state"] != "done" or old.get("command", [])[-len(job.args):] == list(
                    job.args):
                continue
            if job.name == PREDICT_RUN:
                status.update(job.name, state="pending")  # the group changed: predict again
            else:
                raise SweepError(
                    f"{sweep_dir / STATUS_FILE}: run {job.name!r} is done with other "
                    "arguments; use a new --workdir or remove the run's entry"
                )
        try:
            states = run_local(jobs, status, prefix, args.max_parallel,
                               predict_needs=[run.name for run in sweep.runs])
        except KeyboardInterrupt:
            print(summary_table(jobs, status))
            return 130
    except SweepError as e:
        print(f"sftrl.launch: {e}", file=sys.stderr)
        return 2
    print(summary_table(jobs, status))
    failed = [name for name, state in states.items() if state == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Sweep files import `sftrl.launch`; under `-m` this file is `__main__`, a second copy whose
    # Sweep class would not match theirs, so hand over to the importable module.
    from sftrl import launch

    sys.exit(launch.main())
