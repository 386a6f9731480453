"""The SFT stage end to end on the embedded task: learning, run directory, NaN guard, sharding,
and kill-and-resume equal to an uninterrupted run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sftrl import config_lib
from sftrl.sharding import Layout, make_mesh, single_device_layout
from sftrl.train import common
from sftrl.train import state as state_lib
from sftrl.train.sft import SFTTrainer

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMALL = [
    "data.synthetic.size=160", "data.max_heldout_examples=48", "data.max_length=192",
    "sft.batch_size=8", "sft.num_steps=12", "sft.log_every=4", "sft.eval_every=6",
    "sft.save_every=4", "sft.heldout_batch_size=8", "sft.lr=3e-3", "sft.warmup_steps=0",
    "sft.tensorboard=False",
    "checkpoint.async_save=False", "model.hidden_size=64", "model.num_layers=2",
    "model.intermediate_size=128", "model.head_dim=16",
]


def _config(*extra: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_lib.apply_overrides(module.get_config(), [*SMALL, *extra])
    config.stage = "sft"
    return config


def _metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_sft_learns_and_writes_the_run_directory(tmp_path):
    summary = SFTTrainer(_config(), tmp_path, single_device_layout()).train()
    rows = _metrics(tmp_path)
    heldout = [r["heldout/loss"] for r in rows if "heldout/loss" in r]
    assert [r["step"] for r in rows if "heldout/loss" in r] == [0, 6, 12]
    assert heldout[-1] < heldout[0] - 1.0  # clearly lower than at initialisation
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [4, 8, 12]
    assert all(r["tokens_per_s"] > 0 and np.isfinite(r["grad_norm"]) for r in train)
    assert summary["final_step"] == 12 and summary["checkpoints"][-1] == 12
    index = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    assert sorted(int(k) for k in index) == [4, 8, 12]
    assert index["12"]["metrics"]["heldout/loss"] == pytest.approx(heldout[-1])
    # a finished run re-run does nothing and keeps its files
    again = SFTTrainer(_config(), tmp_path, single_device_layout()).train()
    assert again["final_step"] == 12 and _metrics(tmp_path) == rows


def test_every_sft_evaluator_the_config_admits_is_built():
    """sft.evals names exactly what the trainer builds: nothing validates and then does nothing."""
    from sftrl.train import sft

    assert set(sft.EVALUATORS) == set(config_lib.SFT_EVALS)


def test_non_finite_loss_stops_before_any_save(tmp_path):
    trainer = SFTTrainer(_config("sft.save_every=1"), tmp_path, single_device_layout())
    params = trainer.setup.state.params
    params["lm_head"] = params["lm_head"].at[0, 0].set(np.nan)
    with pytest.raises(common.NonFiniteLossError, match="step 1: non-finite") as info:
        trainer.train()
    assert "batch examples [" in str(info.value)
    assert state_lib.Checkpointer(tmp_path / "checkpoints").all_steps() == []


def test_sharded_training_matches_one_device(tmp_path):
    extra = ("sft.num_steps=3", "sft.eval_every=3", "sft.log_every=1")
    SFTTrainer(_config(*extra), tmp_path / "one", single_device_layout()).train()
    mesh = Layout(make_mesh(data=2, fsdp=2, tensor=2))
    SFTTrainer(_config(*extra), tmp_path / "eight", mesh).train()
    one, eight = _metrics(tmp_path / "one"), _metrics(tmp_path / "eight")
    for key in ("loss", "heldout/loss"):
        a = [r[key] for r in one if key in r]
        b = [r[key] for r in eight if key in r]
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a, b, rtol=2e-4)


def _final_params(workdir: pathlib.Path, step: int):
    config = _config()
    trainer = SFTTrainer(config, workdir, single_device_layout())
    assert trainer.setup.start_step == step
    return jax.tree.map(np.asarray, trainer.setup.state.params), trainer.pipeline.get_state()


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    cmd = [
        sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", "--stage=sft",
        *[f"--config.{o}" for o in SMALL], "--config.sft.num_steps=16",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    full = tmp_path / "full"
    done = subprocess.run([*cmd, f"--workdir={full}"], cwd=ROOT, env=env, check=True,
                          capture_output=True, timeout=600)
    # output is not a terminal here (as in a sweep's launch.log): progress is still logged
    log_text = done.stderr.decode()
    assert "sft step 16/16 (100%)" in log_text and "ETA 0s" in log_text, log_text[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"--workdir={killed}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "8").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoints" / "16").exists(), "the run ended before it was killed"
    subprocess.run([*cmd, f"--workdir={killed}"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)

    for a, b in zip(_metrics(full), _metrics(killed), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if "per_s" not in key and not key.startswith("time/"):
                assert a[key] == b[key], key
    ckpt_full = state_lib.Checkpointer(full / "checkpoints").all_steps()
    ckpt_killed = state_lib.Checkpointer(killed / "checkpoints").all_steps()
    assert ckpt_full[-1] == ckpt_killed[-1] == 16
    params_full, data_full = _final_params(full, 16)
    params_killed, data_killed = _final_params(killed, 16)
    assert data_full == data_killed
    for x, y in zip(jax.tree.leaves(params_full), jax.tree.leaves(params_killed), strict=True):
        np.testing.assert_array_equal(x, y)  # bit-identical on CPU


def test_metrics_file_torn_last_line_dropped_damaged_middle_refused(tmp_path):
    from sftrl.train.metrics_log import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    MetricsWriter(tmp_path, resume_step=1, tensorboard=False).close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not valid JSON"):
        MetricsWriter(tmp_path, resume_step=1, tensorboard=False)


def test_metrics_rows_keep_numbers_as_floats_and_the_rest_as_is(tmp_path):
    from sftrl.train.metrics_log import MetricsWriter

    writer = MetricsWriter(tmp_path, resume_step=None, tensorboard=False)
    writer.write(3, {"loss": np.float32(1.5), "tokens": 7, "mfu": None, "note": "warmup",
                     "finite": jax.numpy.asarray(True)})
    writer.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row == {"step": 3, "loss": 1.5, "tokens": 7.0, "mfu": None, "note": "warmup",
                   "finite": 1.0}
