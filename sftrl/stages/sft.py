"""The 'sft' stage: claims the run directory for SFT and runs the trainer (sftrl.train.sft)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from sftrl import atomic
from sftrl.sharding import Layout
from sftrl.train import common
from sftrl.train.sft import SFTTrainer


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Layout) -> dict[str, Any]:
    common.claim_run_dir(atomic.as_path(workdir), "sft")
    return SFTTrainer(config, workdir, layout).train()
