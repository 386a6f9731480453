"""Two CPU processes (gloo collectives) train and evaluate exactly like one process."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

OVERRIDES = [
    "data.synthetic.size=96", "data.max_heldout_examples=16", "data.max_length=160",
    "sft.batch_size=8", "sft.num_steps=4", "sft.log_every=1", "sft.eval_every=2",
    "sft.save_every=2", "sft.heldout_batch_size=8", "sft.tensorboard=False",
    "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
    "model.head_dim=16",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir: pathlib.Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", "--stage=sft",
            f"--workdir={workdir}", *[f"--config.{o}" for o in OVERRIDES], *extra]


def _rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _streamed_files(tmp_path: pathlib.Path) -> list[str]:
    """The embedded task's records as a JSONL file in OpenMathInstruct-2's shape, read per
    process (data.shards=2: one shard each on two processes, both on one)."""
    from test_sft import _config

    from sftrl.data import sources, synthetic

    config = _config(*OVERRIDES[:2])
    path = tmp_path / "omi.jsonl"
    rows = []
    for record in sources.sft_splits(config.data).train:
        turns = {m["role"]: m["content"] for m in record["messages"]}
        rows.append({"problem": turns["user"], "generated_solution": turns["assistant"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--config.data.source=files", f"--config.data.train_files=('{path}',)",
            "--config.data.fields=solution=generated_solution", "--config.data.shards=2",
            f"--config.data.tokenizer={synthetic.tokenizer_dir()}"]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["synthetic", "streamed_files"])
def test_two_processes_equal_one(tmp_path, data):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    extra = _streamed_files(tmp_path) if data == "streamed_files" else []
    one = tmp_path / "one"
    subprocess.run(_command(one, *extra), cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=600)

    two = tmp_path / "two"
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _command(two, *extra, f"--coordinator_address={address}", "--num_processes=2",
                     f"--process_id={i}"),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "'data': 1, 'fsdp': 2" in outputs[0][1]  # one mesh over both processes

    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss", "grad_norm", "heldout/loss", "heldout/num_tokens"):
        x = [r[key] for r in a if key in r]
        y = [r[key] for r in b if key in r]
        assert len(x) == len(y) > 0, key
        np.testing.assert_allclose(x, y, rtol=2e-5, err_msg=key)
    steps = sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
