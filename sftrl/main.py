"""sftrl entry point: flags, config, mesh, then one stage.

python -m sftrl.main --config=configs/tiny.py --workdir=runs/tiny [--stage=model]
                     [--config.model.num_layers=8 ...]
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from sftrl import accelerators, atomic, config_lib, errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; everything a run writes goes here.")
_STAGE = flags.DEFINE_enum("stage", None, config_lib.STAGES, "Overrides config.stage.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "Multi-host: host:port of process 0 (also env SFTRL_COORDINATOR_ADDRESS). 'auto' lets JAX "
    "detect the cluster (TPU pods, SLURM, ...).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-host: number of processes (env SFTRL_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-host: this process's index (env SFTRL_PROCESS_ID).")
_VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show the traceback of a user error (bad config, flag, file) instead of "
    "one line; also env SFTRL_VERBOSE=1.")


def _init_distributed() -> None:
    """jax.distributed.initialize from the flags or SFTRL_* env vars; nothing when unset."""
    address = _COORDINATOR.value or os.environ.get("SFTRL_COORDINATOR_ADDRESS")
    if not address:
        return
    import jax

    if address == "auto":
        jax.distributed.initialize()
        return
    num = _NUM_PROCESSES.value or int(os.environ.get("SFTRL_NUM_PROCESSES", "0"))
    pid = _PROCESS_ID.value
    if pid is None and "SFTRL_PROCESS_ID" in os.environ:
        pid = int(os.environ["SFTRL_PROCESS_ID"])
    if num < 1 or pid is None or not 0 <= pid < num:
        raise config_lib.ConfigError(
            f"--coordinator_address={address} needs --num_processes >= 1 and --process_id in "
            f"[0, num_processes), got {num} and {pid}")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        # CPU processes exchange data over gloo (the default CPU backend has no collectives)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=num, process_id=pid)

log = logging.getLogger("sftrl")


def stage_run(name: str) -> Callable:
    """`run(config, workdir, layout)` of stage `name`: `sftrl.stages.<name>` for every name in
    config_lib.STAGES, imported only now (each stage pulls in JAX and its own layers)."""
    return importlib.import_module(f"sftrl.stages.{name}").run


def main(argv: list[str]) -> int:
    """Runs the stage; a user's mistake is one line on stderr and exit status 2."""
    try:
        return _main(argv)
    except Exception as error:
        if errors.is_user_error(error) and not errors.verbose_requested():
            return errors.report(error)
        raise


def _main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise config_lib.ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # orbax logs every save/restore detail through absl at INFO; keep the console readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        config = _CONFIG.value
        if config is not None:
            # a file that failed to load is a placeholder raising on first attribute access
            _ = config.to_dict
    except OSError as error:
        # its message lists every path it tried, over several lines; the last names the cause
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise config_lib.ConfigError(f"--config: {lines[-1]}") from error
    if config is None:
        raise config_lib.ConfigError("--config is required, e.g. --config=configs/tiny.py")
    if _WORKDIR.value is None:
        raise config_lib.ConfigError("--workdir is required")
    if _STAGE.value is not None:
        config.stage = _STAGE.value
    _init_distributed()
    config_lib.validate(config)
    try:
        accelerators.parse(config.accelerator)
    except accelerators.AcceleratorError as e:
        raise config_lib.ConfigError(f"accelerator: {e}") from e
    config_lib.check_full_size_run(config)
    config_lib.check_inputs(config)
    stage = stage_run(config.stage)  # validate() admits only config_lib.STAGES
    workdir = run_dir(_WORKDIR.value, config)
    import jax

    if jax.process_index() == 0:
        atomic.write_text(workdir / "config.json",
                          config.to_json_best_effort(indent=2, sort_keys=True))
    layout = config_lib.make_layout(config)
    log.info("mesh %s on %d %s devices", dict(layout.mesh.shape), layout.mesh.size,
             layout.mesh.devices.flat[0].platform)
    result = stage(config, workdir, layout)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def run_dir(text: str, config) -> epath.Path:
    """The --workdir as an epath (a URI stays a URI), created; a remote one is checked at
    start-up against what the stage writes, and reached once, so that a missing GCS client or
    bucket is one line naming the path rather than a traceback hours into the run."""
    workdir = atomic.as_path(text)
    if atomic.is_remote(workdir):
        if config.stage not in config_lib.REMOTE_STAGES:
            raise errors.UserError(
                f"--workdir={text}: the {config.stage} stage writes its run directory on a "
                f"local disk only (stages {', '.join(config_lib.REMOTE_STAGES)} accept a remote "
                "one); use a local --workdir or a mounted bucket (gcsfuse)")
        for section in config_lib.TRAINERS.get(config.stage, ()):
            if config[section].tensorboard:
                raise config_lib.ConfigError(
                    f"{section}.tensorboard: TensorBoard event files cannot be written to "
                    f"{text}; set --config.{section}.tensorboard=False")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.exists()
    except (ImportError, OSError) as error:
        cause = " ".join(str(error).split()) or type(error).__name__
        raise errors.UserError(f"--workdir={text}: cannot be reached: {cause}") from error
    return workdir


def _flag_error_line(error: BaseException, argv: list[str]) -> str:
    """One line for an error raised while parsing the command line, naming the flag."""
    cause = error
    # absl wraps what a flag's parser raised; the original names the key
    while isinstance(cause, flags.Error) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause.args[0]) if len(cause.args) == 1 else str(cause)
    if isinstance(cause, AttributeError | KeyError):
        # ml_collections: str(KeyError) of "'key'\nDid you mean ..." for an unknown override key
        try:
            text = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            pass
        key, _, hint = str(text).partition("\n")
        key = key.strip("'\"")
        flag = next((a.split("=", 1)[0] for a in argv[1:]
                     if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")),
                    f"--config...{key}")
        return f"sftrl: error: {flag}: unknown config key {key!r}" + (
            f" ({hint.strip()})" if hint.strip() else "")
    if "Traceback (most recent call last)" in text:
        # ml_collections puts the config file's whole traceback into the message; its last line
        # is the error, and what precedes the traceback names the flag
        head = text.split("Traceback (most recent call last)")[0].strip().rstrip(":")
        last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
        last = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ")[0] else last
        head = head.removesuffix(" Error whilst parsing config file").rstrip(":")
        return f"sftrl: error: {head}: {last}"
    return errors.one_line(cause)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config override reported in one line.

    ml_collections raises plain AttributeError / ValueError / ConfigError from inside flag
    parsing (a typo'd `--config.sft.num_stepz`, a variant `:llama31` that does not exist), which
    absl would print as a 50-line traceback.
    """
    try:
        return flags.FLAGS(argv)
    except Exception as error:
        if errors.verbose_requested(argv):
            raise
        print(_flag_error_line(error, argv), file=sys.stderr)
        sys.exit(errors.EXIT_USER_ERROR)


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
    run()
