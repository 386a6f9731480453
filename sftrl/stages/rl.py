"""The 'rl' stage: where GRPO writes and starts from, then the trainer (sftrl.train.grpo)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ml_collections

from sftrl import atomic
from sftrl.sharding import Layout
from sftrl.train import common
from sftrl.train.grpo import GRPOTrainer

log = logging.getLogger(__name__)


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Layout) -> dict[str, Any]:
    workdir, config = rl_run_dir(config, atomic.as_path(workdir))
    common.claim_run_dir(workdir, "rl")
    return GRPOTrainer(config, workdir, layout).train()


def rl_run_dir(config: ml_collections.ConfigDict, workdir: Path
               ) -> tuple[Path, ml_collections.ConfigDict]:
    """Where GRPO writes, and where it starts when no rl.init_* is given.

    `--stage=sft` then `--stage=rl` with one --workdir: GRPO starts from that SFT run and writes
    into `<workdir>/rl/`, beside (not into) the SFT checkpoints. Otherwise, with no start given,
    a sibling SFT run `<workdir>/../sft` is the start if there is one.
    """
    no_start = not (config.rl.init_workdir or config.rl.init_hf_path)
    config = config.copy_and_resolve_references()
    if common.run_stage(workdir) == "sft":
        if no_start:
            config.rl.init_workdir = str(workdir)
        log.info("rl: %s holds an SFT run; GRPO writes to %s", workdir, workdir / "rl")
        return workdir / "rl", config
    sibling = workdir.parent / "sft"
    if no_start and common.run_stage(sibling) == "sft":
        config.rl.init_workdir = str(sibling)
        log.info("rl: starting from the SFT run in %s", sibling)
    return workdir, config
