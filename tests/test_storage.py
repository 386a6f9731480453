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
    (["--stage=model"], "--workdir=gs://bucket/x: the model stage writes its run directory on "
                        "a local disk only"),
    (["--stage=eval"], "--workdir=gs://bucket/x: cannot be reached"),
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


def test_start_up_takes_a_remote_workdir_for_each_stage_that_writes_through_atomic(gcs):
    from sftrl import config_lib, errors
    from sftrl import main as sftrl_main

    config = config_lib.apply_overrides(config_lib.base_config(),
                                        ["sft.tensorboard=False", "rl.tensorboard=False"])
    for stage in ("sft", "rl", "eval", "predict", "pipeline"):
        config.stage = stage
        assert str(sftrl_main.run_dir("gs://b/x", config)) == "gs://b/x"
    config.rl.tensorboard = True  # the pipeline trains GRPO too
    with pytest.raises(config_lib.ConfigError, match=r"^rl\.tensorboard: TensorBoard event"):
        sftrl_main.run_dir("gs://b/x", config)
    config.stage = "eval"  # no trainer: its tensorboard keys do not matter
    sftrl_main.run_dir("gs://b/x", config)
    config.stage = "study"
    with pytest.raises(errors.UserError, match="the study stage writes its run directory on a "
                                               "local disk only"):
        sftrl_main.run_dir("gs://b/x", config)


# --- eval samples on an object store (sftrl.eval.sample_store) ----------------------------------


def _row(i: int) -> dict:
    return {"id": f"r{i}", "problem": "p", "answer": "1", "responses": ["1", "x"],
            "num_tokens": [1, 1], "finished": [True, False], "correct": [True, False],
            "extracted": ["1", None], "entropy": [0.5, 0.25]}


def test_samples_are_part_files_then_one_file_on_the_object_store(gcs, tmp_path):
    from sftrl.eval.sample_store import SampleStore, SampleStoreError, read_rows

    uri = "gs://b/run/samples/ck/toy.jsonl"
    local = gcs.root / "b" / "run" / "samples" / "ck"
    with SampleStore(uri) as store:
        assert store.append(_row(0)) == [] and store.append(_row(1)) == []  # held: no append
        assert [r["id"] for r in store.flush()] == ["r0", "r1"]  # one part, uploaded whole
        store.append(_row(2))
        assert store.done_ids() == {"r0", "r1", "r2"}
    # the clean exit flushed the held row as the second part
    assert gcs.writes == [f"gs://b/run/samples/ck/toy.parts/{n:06d}.jsonl" for n in (1, 2)]
    assert not (local / "toy.jsonl").exists()
    assert [r["id"] for r in read_rows(uri)] == ["r0", "r1", "r2"]  # a reader merges the parts

    with SampleStore(uri) as store:  # resumes from the parts
        assert store.done_ids() == {"r0", "r1", "r2"}
        store.append(_row(3))
        assert store.flush() and len(gcs.writes) == 3
        with pytest.raises(SampleStoreError, match=r"'r1' is already stored \(gs://b/run/"
                                                    r"samples/ck/toy\.parts/000001\.jsonl:2\)"):
            store.append(_row(1))
        store.consolidate()
    assert not (local / "toy.parts").exists()
    # the one file has the format, and the bytes, of a local store's file
    with SampleStore(tmp_path / "toy.jsonl") as plain:
        for i in range(4):
            plain.append(_row(i))
    assert (local / "toy.jsonl").read_bytes() == (tmp_path / "toy.jsonl").read_bytes()
    assert gcs.writes[-1] == uri

    # stopped between writing the file and removing the parts: the parts' rows are skipped
    (local / "toy.parts").mkdir()
    (local / "toy.parts" / "000001.jsonl").write_text(json.dumps(_row(3)) + "\n")
    assert [r["id"] for r in read_rows(uri)] == ["r0", "r1", "r2", "r3"]
    with SampleStore(uri) as store:
        assert len(store) == 4
        store.consolidate()
    assert not (local / "toy.parts").exists()
    # ... unless a part row differs from the file's: not what a stop leaves
    (local / "toy.parts").mkdir()
    (local / "toy.parts" / "000001.jsonl").write_text(json.dumps({**_row(3), "answer": "2"})
                                                      + "\n")
    with pytest.raises(SampleStoreError, match=r"toy\.parts/000001\.jsonl:1: field 'id': 'r3' "
                                                r"repeats gs://b/run/samples/ck/toy\.jsonl:4"):
        read_rows(uri)


def test_a_process_other_than_0_writes_no_samples(gcs):
    from sftrl.eval.sample_store import SampleStore

    with SampleStore("gs://b/run/s.jsonl") as store:
        store.append(_row(0))
    with SampleStore("gs://b/run/s.jsonl", writer=False) as store:
        assert store.done_ids() == {"r0"}  # reads what process 0 wrote
        store.append(_row(1))
        assert [r["id"] for r in store.flush()] == ["r1"]  # held in memory only
        store.consolidate()
    assert gcs.writes == ["gs://b/run/s.parts/000001.jsonl"]


# --- the eval, predict and pipeline stages on the object store ----------------------------------

STAGES_SMALL = [
    "model.hidden_size=32", "model.num_layers=1", "model.intermediate_size=64",
    "model.head_dim=8", "data.synthetic.size=48", "data.max_length=128",
    "data.max_heldout_examples=8", "sft.batch_size=4", "sft.num_steps=2", "sft.log_every=1",
    "sft.eval_every=2", "sft.save_every=2", "sft.heldout_batch_size=8", "sft.tensorboard=False",
    "rl.tensorboard=False", "pipeline.rl=False", "checkpoint.async_save=False",
    "eval.limit=3", "eval.num_samples=2", "eval.max_new_tokens=6", "eval.prompts_per_wave=1",
    "predict.n_permutations=50", "predict.n_bootstrap=20",
]


class _Killed(Exception):
    pass


def _without_timing(record: dict) -> dict:
    return {name: {k: v for k, v in bench.items() if k != "timing"}
            for name, bench in record["benchmarks"].items()}


@pytest.mark.slow
def test_eval_predict_and_pipeline_stages_on_the_object_store(gcs, monkeypatch):
    """The stages that once refused a gs:// workdir: the pipeline (SFT, eval, predict, report)
    end to end, the eval stage killed after its first wave and resumed (to the pipeline's
    samples of the same checkpoint), and predict over a sweep's gs:// run directories."""
    import orbax.checkpoint as ocp
    from test_predict import _write_fixture_workdir
    from test_sft import _config

    from sftrl import config_lib
    from sftrl import main as sftrl_main
    from sftrl.eval import benchmarks as bench
    from sftrl.eval import sample_store
    from sftrl.sharding import single_device_layout
    from sftrl.stages import eval as eval_stage
    from sftrl.stages import pipeline as pipeline_stage
    from sftrl.stages import predict as predict_stage

    monkeypatch.setattr(ocp, "CheckpointManager",
                        fake_gcs.orbax_manager(gcs, ocp.CheckpointManager))
    config = _config(*STAGES_SMALL)
    config.stage = "pipeline"
    workdir = sftrl_main.run_dir("gs://b/run", config)  # accepted at start-up
    layout = single_device_layout()
    result = pipeline_stage.run(config, workdir, layout)
    [variant] = result["variants"]
    bucket = gcs.root / "b" / "run"
    for name in (f"eval/{variant}-sft.json", f"samples/{variant}-sft/synthetic.jsonl",
                 f"samples/{variant}-sft/synthetic.spec.json", f"sft/{variant}/metrics.jsonl",
                 "report/summary.md", "report/predictor.json", "pipeline.json"):
        assert (bucket / name).is_file(), name
    assert result["report"] == "gs://b/run/report/summary.md"
    assert not list(bucket.glob("samples/*/*.parts"))  # consolidated

    # the eval stage on the SFT run: killed once its first wave is stored, then run again
    config.stage, config.eval.name = "eval", "again"
    flush, kill = sample_store.SampleStore.flush, [True]

    def flush_then_die(store):
        rows = flush(store)
        if rows and kill[0]:
            raise _Killed
        return rows

    monkeypatch.setattr(sample_store.SampleStore, "flush", flush_then_die)
    sft_dir = sftrl_main.run_dir(f"gs://b/run/sft/{variant}", config)
    with pytest.raises(_Killed):
        eval_stage.run(config, sft_dir, layout)
    samples = bucket / "sft" / variant / "samples" / "again"
    assert [p.name for p in (samples / "synthetic.parts").iterdir()] == ["000001.jsonl"]
    assert not (samples / "synthetic.jsonl").exists()
    kill[0] = False
    generate, prompts = bench.sampling.generate, []

    def counted(model, batch, **kwargs):
        prompts.extend(batch)
        return generate(model, batch, **kwargs)

    monkeypatch.setattr(bench.sampling, "generate", counted)
    eval_stage.run(config, sft_dir, layout)
    assert len(prompts) == 2  # of eval.limit=3: the stored one was not sampled again
    assert not (samples / "synthetic.parts").exists()
    pipeline_samples = bucket / "samples" / f"{variant}-sft" / "synthetic.jsonl"
    assert (samples / "synthetic.jsonl").read_bytes() == pipeline_samples.read_bytes()
    again = json.loads((bucket / "sft" / variant / "eval" / "again.json").read_text())
    first = json.loads((bucket / "eval" / f"{variant}-sft.json").read_text())
    assert _without_timing(again) == _without_timing(first)

    # predict over a sweep's run directories on the bucket (a glob of gs:// paths)
    _write_fixture_workdir(gcs.root / "b" / "all")
    for i, path in enumerate(sorted((gcs.root / "b" / "all" / "eval").glob("*.json"))):
        run = gcs.root / "b" / "sweep" / f"run{i % 3}" / "eval"
        run.mkdir(parents=True, exist_ok=True)
        path.rename(run / path.name)
    config = config_lib.apply_overrides(config, [
        "predict.workdirs=('gs://b/sweep/run*',)", "predict.inputs=gs://b/all/predict_inputs.csv"])
    config.stage = "predict"
    headline = predict_stage.run(config, sftrl_main.run_dir("gs://b/pred", config))
    assert set(headline["groups"]) == {"tiny", "other"}  # eval files and the flat table
    assert headline["groups"]["tiny"]["top_unlabeled"] == "sft-d2-5"
    assert headline["report"] == "gs://b/pred/report/predictor.md"
    assert {"gs://b/pred/report/predictor.json", "gs://b/pred/report/predictor.md"} <= set(
        gcs.writes)
    assert not (ROOT / "gs:").exists()  # never the local ./gs:/...
