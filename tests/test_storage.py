"""Run directories on any etils.epath path: sftrl.atomic on an object store (the fake GCS of
tests/fake_gcs.py, which refuses appends and renames as GCS does) and the start-up checks of
`--workdir=gs://...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from etils import epath

from sftrl import atomic
from tests import fake_gcs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gcs(tmp_path: Path):
    with fake_gcs.installed(tmp_path / "bucket-root") as fake:
        yield fake


def test_the_fake_refuses_what_gcs_lacks(gcs):
    path = epath.Path("gs://b/x.txt")
    path.write_text("one")
    with pytest.raises(fake_gcs.ObjectStoreError, match="mode 'a'"):
        path.open("a")
    with pytest.raises(fake_gcs.ObjectStoreError, match="no rename"):
        path.rename("gs://b/y.txt")
    assert (gcs.root / "b" / "x.txt").read_text() == "one"


def test_a_uri_stays_a_uri_and_a_local_path_becomes_absolute(tmp_path, monkeypatch):
    assert str(atomic.as_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(atomic.as_path("gs://bucket/run") / "config.json") == "gs://bucket/run/config.json"
    monkeypatch.chdir(tmp_path)
    assert os.fspath(atomic.as_path("runs/a")) == str(tmp_path / "runs" / "a")
    assert atomic.is_remote("s3://b/k") and not atomic.is_remote(tmp_path / "gs:")


def test_whole_file_writes_on_the_object_store(gcs):
    atomic.write_json("gs://b/run/eval/ckpt.json", {"b": 1, "a": [1, 2]})
    atomic.write_text(epath.Path("gs://b/run/report.md"), "# r\n")
    local = gcs.root / "b" / "run"
    assert json.loads((local / "eval" / "ckpt.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (local / "report.md").read_text() == "# r\n"
    assert gcs.writes == ["gs://b/run/eval/ckpt.json", "gs://b/run/report.md"]
    # a writer that fails uploads nothing: the old object stays
    with pytest.raises(RuntimeError), atomic.replacing("gs://b/run/report.md") as tmp:
        tmp.write_text("half")
        raise RuntimeError("the writer died")
    assert (local / "report.md").read_text() == "# r\n"
    assert len(gcs.writes) == 2


def test_append_rewrites_the_object_whole(gcs):
    for step in range(3):
        atomic.append_text("gs://b/run/metrics.jsonl", json.dumps({"step": step}) + "\n")
    lines = (gcs.root / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert len(gcs.writes) == 3  # one whole upload per append, never an append


def test_append_on_a_local_disk_appends(tmp_path):
    path = tmp_path / "deep" / "metrics.jsonl"
    atomic.append_text(path, "a\n")
    atomic.append_text(os.fspath(path), "b\n")
    assert path.read_text() == "a\nb\n"


def _main(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--stage=eval"], "--workdir=gs://bucket/x: the eval stage writes its run directory on a "
                       "local disk only"),
    (["--stage=sft"], "sft.tensorboard: TensorBoard event files cannot be written to "
                      "gs://bucket/x; set --config.sft.tensorboard=False"),
    # no GCS client here: reaching the bucket fails at start-up, naming the path
    (["--stage=sft", "--config.sft.tensorboard=False"], "--workdir=gs://bucket/x: cannot be "
                                                         "reached"),
    # checked before the workdir: what a launcher would ask a scheduler for
    (["--stage=sft", "--config.accelerator=h100"], "accelerator: 'h100' is not a TPU slice"),
])
def test_a_remote_workdir_fails_at_start_up_in_one_line(tmp_path, args, message):
    result = _main("--workdir=gs://bucket/x", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("sftrl: error: ") and message in line, line
    assert not (ROOT / "gs:").exists()  # never the local ./gs:/bucket/x
