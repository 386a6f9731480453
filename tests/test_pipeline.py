"""The whole pipeline on a very small tiny config: every file of the run directory, and an
interrupted run re-run to the same final numbers."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

OVERRIDES = [
    "model.hidden_size=32", "model.num_layers=1", "model.intermediate_size=64",
    "model.head_dim=8", "data.max_length=128", "data.max_heldout_examples=8",
    "pipeline.sft_variants=('answer_only-diverse-48','short_cot-diverse-48',"
    "'short_cot-homogeneous-48')",
    "sft.batch_size=4", "sft.num_steps=3", "sft.log_every=1", "sft.eval_every=3",
    "sft.save_every=3", "sft.heldout_batch_size=8",
    "rl.num_steps=2", "rl.prompts_per_step=2", "rl.group_size=2", "rl.max_new_tokens=8",
    "rl.evals=()", "rl.save_every=1",
    "eval.limit=3", "eval.num_samples=4", "eval.max_new_tokens=8",
    "predict.n_permutations=50", "predict.n_bootstrap=20", "predict.calibration_sizes=(2,)",
    "checkpoint.async_save=False",
]


def _command(workdir: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py",
            f"--workdir={workdir}", *[f"--config.{o}" for o in OVERRIDES]]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _numbers(workdir: pathlib.Path) -> dict:
    out = {}
    for path in sorted((workdir / "eval").glob("*.json")):
        record = json.loads(path.read_text())
        record.pop("sampling", None)
        for bench in record["benchmarks"].values():
            bench.pop("timing", None)
        out[path.name] = record
    return out


@pytest.mark.slow
def test_pipeline_end_to_end_and_interrupted_rerun(tmp_path):
    full = tmp_path / "full"
    result = subprocess.run(_command(full), cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report written to" in result.stdout
    variants = ["answer_only-diverse-48", "short_cot-diverse-48", "short_cot-homogeneous-48"]
    for v in variants:
        for stage in ("sft", "rl"):
            assert (full / stage / v / "metrics.jsonl").is_file()
            assert (full / stage / v / "checkpoints" / "index.json").is_file()
            assert (full / "eval" / f"{v}-{stage}.json").is_file()
            assert (full / "samples" / f"{v}-{stage}" / "synthetic.jsonl").is_file()
    rl_eval = json.loads((full / "eval" / f"{variants[0]}-rl.json").read_text())
    assert rl_eval["stage"] == "rl" and rl_eval["sft_checkpoint"] == f"{variants[0]}-sft"
    assert "generalization_loss" in json.loads(
        (full / "eval" / f"{variants[0]}-sft.json").read_text())
    for name in ("summary.md", "predictor.json", "predictor.md", "heldout_loss.png"):
        assert (full / "report" / name).is_file(), name
    assert list((full / "report").glob("passk_*.png"))
    assert json.loads((full / "pipeline.json").read_text())["report"]["done"]

    # killed in the middle (the second variant's GRPO has started), then re-run
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = killed / "rl" / variants[1] / "checkpoints" / "1"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "report" / "predictor.json").exists()
    again = subprocess.run(_command(killed), cwd=ROOT, env=ENV, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _numbers(killed) == _numbers(full)
    a = json.loads((full / "report" / "predictor.json").read_text())
    b = json.loads((killed / "report" / "predictor.json").read_text())
    assert a["groups"].keys() == b["groups"].keys()
    for group in a["groups"]:
        assert a["groups"][group]["scores"] == b["groups"][group]["scores"]


def test_progress_keeps_the_time_a_step_first_finished(tmp_path, monkeypatch):
    """A resumed pipeline passes its finished steps again; their stamps must not move to the
    resume (study_v2's per-step run times are measured from them)."""
    from sftrl.stages import pipeline

    clock = iter([100.0, 900.0, 950.0])
    monkeypatch.setattr(pipeline.time, "time", lambda: next(clock))
    pipeline.Progress(tmp_path).done("sft", final_step=4)
    resumed = pipeline.Progress(tmp_path)  # a new process reads pipeline.json
    resumed.done("sft", final_step=4)
    resumed.done("eval")
    steps = json.loads((tmp_path / "pipeline.json").read_text())
    assert steps == {"sft": {"done": True, "time": 100.0, "final_step": 4},
                     "eval": {"done": True, "time": 900.0}}
