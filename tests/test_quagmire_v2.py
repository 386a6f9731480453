"""The v2 replication sweep (configs/sweeps/quagmire_v2.py): each axis differs from its control
only where it should, the plan's sizes hold, and the CI-sized variant runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl import launch, study_v2

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "configs/sweeps/quagmire_v2.py"


def _runs(spec: str) -> dict[str, dict]:
    sweep, _ = launch.load_sweep(spec)
    return {run.name: run.overrides for run in sweep.runs}


def _difference(a: dict, b: dict) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} - {"eval.name"}


def test_each_axis_differs_from_its_control_only_in_its_own_field(tmp_path):
    sweep, path = launch.load_sweep(SWEEP)
    jobs = launch.plan(sweep, tmp_path, where=str(path), num_devices=1)
    assert [j.name for j in jobs] == ["base", "repeat", "short", "homogeneous", "predict"]
    runs = _runs(SWEEP)
    base = runs["base"]
    assert _difference(runs["repeat"], base) == {"data.synthetic.size"}
    assert runs["repeat"]["data.synthetic.size"] * 2 == base["data.synthetic.size"]
    assert _difference(runs["short"], base) == {"data.synthetic.length", "data.synthetic.size"}
    assert _difference(runs["homogeneous"], base) == {"data.synthetic.structure"}
    # >= 16 SFT checkpoints, >= 2 RL seeds each, a constant LR (intermediate steps are valid
    # end points), every branch step saved and kept, one common held-out set.
    steps = base["pipeline.sft_steps"]
    assert len(runs) * len(steps) >= 16 and len(base["pipeline.rl_seeds"]) >= 2
    assert base["sft.schedule"] == "constant" and steps[-1] == base["sft.num_steps"]
    assert all(s % base["sft.save_every"] == 0 for s in steps)
    assert base["checkpoint.max_to_keep"] >= base["sft.num_steps"] // base["sft.save_every"]
    assert base["eval.common_heldout"] == "synthetic" and base["data.synthetic.version"] == 2
    # pass@64 on >= 128 prompts; the GRPO settings the plan names
    assert base["eval.num_samples"] >= 64 and base["eval.limit"] >= 128
    assert (base["rl.aggregation"], base["rl.grad_accum"], base["rl.filter_truncated"],
            base["rl.top_p"], base["rl.top_k"], base["rl.kl_coef"]) == (
        "token-mean", 1, False, 1.0, 0, 0.0)
    with pytest.raises(launch.SweepError, match="unknown arg"):
        launch.load_sweep(SWEEP + ":big")


def test_gates_on_hand_made_samples():
    rows = [{"answer": str(100 + p), "extracted": [str(100 + p)] * 2 + [str(101 + p)] * 2,
             "correct": [True, True, False, False]} for p in range(4)]
    g = study_v2.gates(rows, k=4)
    assert g["pass@1"] == pytest.approx(0.5) and g["pass@4"] == 1.0 and g["mixed_groups"] == 1.0
    # prompt p's wrong answers (101 + p) are prompt p+1's gold: of the 4 x 3 shifted pairs, only
    # shift 1 of prompts 0-2 matches (prompt 3's shift 1 wraps round to gold 100)
    assert g["control@4"] == pytest.approx(3 / 12) and g["best_constant"] == 0.25


def test_the_ci_sweep_runs_end_to_end(tmp_path):
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "sftrl.launch", f"--sweep={SWEEP}:ci",
               f"--workdir={sweep_dir}", "--max_parallel=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for run in ("base", "short"):
        evals = {p.stem: json.loads(p.read_text()) for p in (sweep_dir / run / "eval").glob("*")}
        sft = sorted(n for n in evals if n.endswith("-sft"))
        rl = sorted(n for n in evals if "-rl-seed" in n)
        assert len(sft) == 2 and len(rl) == 4, sorted(evals)  # 2 SFT steps x 2 RL seeds
        for name in sft:
            record = evals[name]
            # the common held-out loss and the data set's own one
            assert record["generalization_loss"] == record["metrics"]["heldout/loss"]
            assert "own_heldout/loss" in record["metrics"]
            assert record["metrics"]["heldout/num_examples"] == 8
        for name in rl:
            assert evals[name]["sft_checkpoint"] in sft
        samples = sorted((sweep_dir / run / "samples").glob("*/synthetic.jsonl"))
        assert len(samples) == 6
        study_v2.gates(study_v2.read_samples(samples[0]))
    predictor = sweep_dir / "predict" / "predict" / "report" / "predictor.json"
    assert (sweep_dir / "predict").is_dir(), predictor
