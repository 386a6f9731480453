"""The README's main command, end to end on the tiny config (the 'model' stage)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_model_stage_end_to_end_and_rerun(tmp_path):
    cmd = [
        sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", f"--workdir={tmp_path}",
        "--stage=model", "--config.model_check.seq_len=16", "--config.model_check.batch_size=2",
    ]
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    for run in (1, 2):  # a second run in the same workdir continues the checkpoint steps
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == run
        metrics = json.loads(lines[-1])
        assert metrics["orbax_step"] == run
    assert metrics["num_params"] == 918_656
    assert metrics["kv_cache_max_abs_diff"] < 1e-4
    assert metrics["hf_round_trip_max_abs_diff"] < 1e-4
    assert (tmp_path / "hf_export" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["num_layers"] == 4
