"""Two CPU processes (gloo collectives) train and evaluate exactly like one process: with the run
directory on a local disk or on an object store (the fake GCS of tests/fake_gcs.py: no append,
no rename, objects appear whole), where each file is written by process 0 only (the eval stage's
samples too); and with SFT files read per process (data.shards=2: one shard each on two
processes, both on one)."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import fake_gcs

ROOT = pathlib.Path(__file__).resolve().parents[1]

OVERRIDES = [
    "data.synthetic.size=96", "data.max_heldout_examples=16", "data.max_length=160",
    "sft.batch_size=8", "sft.num_steps=4", "sft.log_every=1", "sft.eval_every=2",
    "sft.save_every=2", "sft.heldout_batch_size=8", "sft.tensorboard=False",
    "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
    "model.head_dim=16",
]
# the eval stage at its smallest: 2 prompts, 2 samples of 4 tokens, one prompt per wave
EVAL_OVERRIDES = ["eval.limit=2", "eval.num_samples=2", "eval.max_new_tokens=4",
                  "eval.prompts_per_wave=1"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir: str | pathlib.Path, *extra: str, entry: tuple[str, ...] = ("-m", "sftrl.main")
             ) -> list[str]:
    return [sys.executable, *entry, "--config=configs/tiny.py", "--stage=sft",
            f"--workdir={workdir}", *[f"--config.{o}" for o in OVERRIDES], *extra]


def _rows(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> pathlib.Path:
    one = tmp_path_factory.mktemp("one")
    subprocess.run(_command(one), cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=600)
    return one


def _two_processes(workdir: str | pathlib.Path, env: dict, entry: tuple[str, ...],
                   *extra: str) -> list[tuple[str, str]]:
    address = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _command(workdir, *extra, f"--coordinator_address={address}", "--num_processes=2",
                     f"--process_id={i}", entry=entry),
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "'data': 1, 'fsdp': 2" in outputs[0][1]  # one mesh over both processes
    return outputs


def _assert_same_run(one: pathlib.Path, two: pathlib.Path) -> None:
    a, b = _rows(one), _rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for key in ("loss", "grad_norm", "heldout/loss", "heldout/num_tokens"):
        x = [r[key] for r in a if key in r]
        y = [r[key] for r in b if key in r]
        assert len(x) == len(y) > 0, key
        np.testing.assert_allclose(x, y, rtol=2e-5, err_msg=key)
    steps = sorted(int(p.name) for p in (two / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]
    index = json.loads((two / "checkpoints" / "index.json").read_text())
    assert sorted(index, key=int) == ["2", "4"]
    assert json.loads((two / "config.json").read_text())["sft"]["num_steps"] == 4


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, one_process):
    two = tmp_path / "two"
    _two_processes(two, ENV, ("-m", "sftrl.main"))
    _assert_same_run(one_process, two)


def _streamed_files(tmp_path: pathlib.Path) -> list[str]:
    """The embedded task's records as a JSONL file in OpenMathInstruct-2's shape."""
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
def test_two_processes_reading_their_own_shards_equal_one(tmp_path):
    extra = _streamed_files(tmp_path)
    one = tmp_path / "one"
    subprocess.run(_command(one, *extra), cwd=ROOT, env=ENV, check=True, capture_output=True,
                   timeout=600)
    two = tmp_path / "two"
    _two_processes(two, ENV, ("-m", "sftrl.main"), *extra)
    _assert_same_run(one, two)


@pytest.mark.slow
def test_two_processes_on_an_object_store_equal_one(tmp_path, one_process):
    root = tmp_path / "gcs"
    env = {**ENV, "SFTRL_FAKE_GCS_ROOT": str(root)}
    _two_processes("gs://bucket/two", env, (str(ROOT / "tests" / "fake_gcs.py"),))
    _assert_same_run(one_process, root / "bucket" / "two")
    assert not (ROOT / "gs:").exists()  # never the local ./gs:/bucket/two

    # Every file of the run directory is written by one process (process 0), whole.
    writers: dict[str, set[str]] = collections.defaultdict(set)
    counts: collections.Counter = collections.Counter()
    for line in (root.parent / fake_gcs.WRITES_LOG).read_text().splitlines():
        pid, uri = line.split(" ", 1)
        writers[uri].add(pid)
        counts[uri] += 1
    base = "gs://bucket/two/"
    assert {base + "config.json", base + "metrics.jsonl", base + "checkpoints/index.json",
            base + "checkpoints/stage.json"} <= set(writers)
    assert len(set().union(*writers.values())) == 1, dict(writers)
    assert counts[base + "config.json"] == 1
    # metrics.jsonl: one whole rewrite per logged row (no append on an object store)
    assert counts[base + "metrics.jsonl"] == len(_rows(root / "bucket" / "two"))

    # The eval stage on that run: both processes sample every wave, process 0 alone writes
    # (one part file per wave, then the samples file), and the files are one process's.
    log = root.parent / fake_gcs.WRITES_LOG
    log.write_text("")
    evals = ["--stage=eval", *[f"--config.{o}" for o in EVAL_OVERRIDES]]
    _two_processes("gs://bucket/two", env, (str(ROOT / "tests" / "fake_gcs.py"),), *evals,
                   "--config.eval.name=two")
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert len({pid for pid, _ in lines}) == 1
    assert [uri for _, uri in lines if "samples/" in uri] == [
        base + "samples/two/synthetic.spec.json",
        *[base + f"samples/two/synthetic.parts/00000{i}.jsonl" for i in (1, 2)],
        base + "samples/two/synthetic.jsonl"]
    subprocess.run([*_command("gs://bucket/two", *evals, "--config.eval.name=one",
                              entry=(str(ROOT / "tests" / "fake_gcs.py"),))],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    samples = root / "bucket" / "two" / "samples"
    assert (samples / "two" / "synthetic.jsonl").read_bytes() == (
        samples / "one" / "synthetic.jsonl").read_bytes()  # two processes sample as one
