"""benchmarks/grpo_curve.py: its statistics, and a smoke run of SFT -> GRPO -> eval curve."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from tests.scripts import load_benchmark

ROOT = pathlib.Path(__file__).resolve().parents[1]
curve = load_benchmark("grpo_curve")

TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.intermediate_size=64",
    "model.head_dim=8", "data.max_length=128", "data.max_heldout_examples=8",
    "data.synthetic.size=48", "sft.batch_size=4", "sft.num_steps=3", "sft.save_every=3",
    "sft.heldout_batch_size=8", "rl.num_steps=2", "rl.prompts_per_step=2", "rl.group_size=2",
    "rl.max_new_tokens=8", "eval.limit=3", "eval.num_samples=4", "eval.max_new_tokens=8",
    "eval.prompts_per_wave=3", "eval.heldout=False",
]


def test_pass1_stats_and_paired_delta():
    before = {"a": 0.0, "b": 0.5, "c": 0.25, "d": 0.25}
    after = {"a": 0.25, "b": 0.75, "c": 0.25, "d": 0.75}
    s = curve.pass1_stats(before, n=4)
    assert s["pass@1"] == pytest.approx(0.25)
    assert s["se"] == pytest.approx(math.sqrt(1 / 24) / 2)  # sample var of (0,.5,.25,.25) = 1/24
    assert s["sampling_se"] == pytest.approx(math.sqrt((0.25 + 2 * 0.1875) / 4) / 4)
    d = curve.paired_delta(after, before)
    assert d["delta"] == pytest.approx(0.25)  # differences .25 .25 0 .5: var 1/24
    assert d["delta_se"] == pytest.approx(math.sqrt(1 / 24) / 2)
    assert curve.paired_delta({"a": 0.5}, {"a": 0.0})["delta_se"] is None  # one prompt
    with pytest.raises(curve.CurveError, match="different prompts"):
        curve.paired_delta({"a": 1.0}, before)


def test_bad_rows_and_metrics_name_the_field(tmp_path):
    with pytest.raises(curve.CurveError, match=r"samples/x:2: field 'correct'"):
        curve.per_prompt_accuracy([{"id": "a", "correct": [True]}, {"id": "b", "correct": []}],
                                  "samples/x")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "accuracy": 0.5}\n{"step": 2, "accuracy": 1.0}\n'
                       '{"step": 3, "accuracy": 0.0}\n')
    assert curve.train_accuracy(metrics, [2, 3]) == {2: 0.75, 3: 0.0}
    with pytest.raises(curve.CurveError, match=r"steps 4\.\.5"):
        curve.train_accuracy(metrics, [3, 5])
    metrics.write_text('{"accuracy": 0.5}\n')
    with pytest.raises(curve.CurveError, match=r"metrics.jsonl:1: field 'step'"):
        curve.train_accuracy(metrics, [1])


@pytest.mark.slow
def test_smoke_run_writes_the_curve_and_rereads_it(tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    command = [sys.executable, "benchmarks/grpo_curve.py", f"--workdir={workdir}",
               "--curve_every=2", "--overrides", *TINY]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((workdir / "grpo_curve.json").read_text())
    assert [p["step"] for p in result["curve"]] == [0, 2]
    assert result["n"] == 4 and result["prompts"] == 3
    for point in result["curve"]:
        assert 0.0 <= point["pass@1"] <= 1.0 and point["prompts"] == 3
    assert all(0.0 <= p["train_accuracy"] <= 1.0 for p in result["curve"][1:])
    assert result["post_rl"]["pass@1"] == result["curve"][-1]["pass@1"]
    assert result["delta"] == pytest.approx(
        result["post_rl"]["pass@1"] - result["post_sft"]["pass@1"])
    table = (workdir / "grpo_curve.md").read_text()
    assert table.count("\n| ") == 3 + 1 + len(result["by_steps"])  # two tables
    assert sum(v["prompts"] for v in result["by_steps"].values()) == 3

    # reading the finished run gives the same curve without training again
    config = curve.load_config("configs/tiny.py", TINY, curve_every=2)
    again = curve.summarize(workdir, config)
    assert again["curve"] == result["curve"]


def test_config_variant_grpo_demo_loads_with_curve_settings():
    """--config=configs/tiny.py:grpo_demo: the variant's SFT/RL settings, then the curve's own."""
    config = curve.load_config("configs/tiny.py:grpo_demo", ["rl.num_steps=40"], curve_every=20)
    assert (config.data.synthetic.size, config.sft.num_steps) == (8000, 1500)
    assert (config.data.synthetic.rl_min_steps, config.data.synthetic.rl_max_steps) == (2, 5)
    assert config.rl.num_steps == 40 and config.rl.save_every == 20
    with pytest.raises(curve.CurveError, match=r"cannot load configs/nope\.py"):
        curve.load_config("configs/nope.py", [], curve_every=10)
