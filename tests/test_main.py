"""The README's main command, end to end on the tiny config (the 'model' and 'study' stages),
and its dispatch: every stage a module of sftrl.stages with run(config, workdir, layout)."""

from __future__ import annotations

import importlib
import inspect
import json
import pathlib
import subprocess
import sys

import pytest

from sftrl import config_lib

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


@pytest.mark.parametrize("stage", config_lib.STAGES)
def test_every_stage_is_a_module_with_run(stage):
    """main runs sftrl.stages.<stage>.run(config, workdir, layout) for every stage it admits."""
    run = importlib.import_module(f"sftrl.stages.{stage}").run
    assert list(inspect.signature(run).parameters)[:3] == ["config", "workdir", "layout"]
    assert sorted(p.stem for p in (ROOT / "sftrl" / "stages").glob("[!_]*.py")) == sorted(
        config_lib.STAGES)


def test_study_stage_writes_what_the_study_command_writes(tmp_path):
    """`--stage=study` passes its config through to sftrl.study: the same study.json as the
    library call with the same options, written into --workdir."""
    from test_study import make_sweep

    from sftrl import study

    sweep = make_sweep(tmp_path / "sweep")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", f"--workdir={out}",
           "--stage=study", f"--config.study.sweep_dir={sweep}",
           "--config.study.sweep=configs/sweeps/quagmire_tiny.py"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout[result.stdout.index("{"):])["readme"] == str(
        out / "README.md")
    from_stage = json.loads((out / "study.json").read_text())
    study.write_study(sweep, out, sweep_spec="configs/sweeps/quagmire_tiny.py")
    assert from_stage == json.loads((out / "study.json").read_text())
    assert "configs/sweeps/quagmire_tiny.py" in (out / "README.md").read_text()
