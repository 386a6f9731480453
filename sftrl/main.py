"""sftrl entry point: flags, config, mesh, then one stage.

python -m sftrl.main --config=configs/tiny.py --workdir=runs/tiny [--stage=model]
                     [--config.model.num_layers=8 ...]
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from sftrl import config_lib

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
        raise app.UsageError(
            f"--coordinator_address={address} needs --num_processes >= 1 and --process_id in "
            f"[0, num_processes), got {num} and {pid}")
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        # CPU processes exchange data over gloo (the default CPU backend has no collectives)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=num, process_id=pid)

log = logging.getLogger("sftrl")


def _model_stage(config, workdir: Path, layout) -> dict:
    from sftrl import model_check

    return model_check.run(config, workdir, layout)


def _predict_stage(config, workdir: Path, layout) -> dict:
    from sftrl import predict_stage

    return predict_stage.run(config, workdir, layout)


def _sft_stage(config, workdir: Path, layout) -> dict:
    from sftrl.train import sft

    return sft.run(config, workdir, layout)


def _rl_stage(config, workdir: Path, layout) -> dict:
    from sftrl.train import grpo

    return grpo.run(config, workdir, layout)


def _eval_stage(config, workdir: Path, layout) -> dict:
    from sftrl import eval_stage

    return eval_stage.run(config, workdir, layout)


def _pipeline_stage(config, workdir: Path, layout) -> dict:
    from sftrl import pipeline

    return pipeline.run(config, workdir, layout)


STAGE_FUNCTIONS: dict[str, Callable] = {
    "model": _model_stage, "sft": _sft_stage, "rl": _rl_stage, "eval": _eval_stage,
    "predict": _predict_stage, "pipeline": _pipeline_stage,
}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # orbax logs every save/restore detail through absl at INFO; keep the console readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/tiny.py")
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    if _STAGE.value is not None:
        config.stage = _STAGE.value
    _init_distributed()
    try:
        config_lib.validate(config)
        config_lib.check_full_size_run(config)
    except config_lib.ConfigError as e:
        print(f"sftrl: invalid config: {e}", file=sys.stderr)
        return 2
    stage = STAGE_FUNCTIONS.get(config.stage)
    if stage is None:
        print(
            f"sftrl: stage {config.stage!r} is not implemented yet "
            f"(available: {', '.join(STAGE_FUNCTIONS)})",
            file=sys.stderr,
        )
        return 2
    workdir = Path(_WORKDIR.value).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    import jax

    if jax.process_index() == 0:
        (workdir / "config.json").write_text(
            config.to_json_best_effort(indent=2, sort_keys=True))
    layout = config_lib.make_layout(config)
    log.info("mesh %s on %d %s devices", dict(layout.mesh.shape), layout.mesh.size,
             layout.mesh.devices.flat[0].platform)
    result = stage(config, workdir, layout)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
