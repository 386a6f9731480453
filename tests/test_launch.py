"""Sweeps (sftrl.launch): validation, override round trips, the local and XManager launchers.

The local launcher runs a small fake entry point (`--command_prefix`) instead of sftrl.main, so
concurrency, logs, the status file, resume and failure handling are tested in seconds.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from sftrl import config_lib, launch
from sftrl.launch import Run, Sweep, SweepError

ROOT = Path(__file__).resolve().parents[1]
TINY = "configs/tiny.py"

FAKE_MAIN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    workdir = Path(next(a for a in args if a.startswith("--workdir=")).split("=", 1)[1])
    workdir.mkdir(parents=True, exist_ok=True)  # as sftrl.main does
    start = time.time()
    print("hello from", workdir.name, flush=True)
    time.sleep(0.4)
    with open(workdir / "calls.jsonl", "a") as f:
        f.write(json.dumps({"args": args, "start": start, "end": time.time()}) + "\\n")
    if (workdir.parent / ("FAIL_" + workdir.name)).exists():
        print("failing on purpose", file=sys.stderr)
        sys.exit(3)
""")


def write_sweep(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_sweep.py"
    path.write_text("from sftrl.launch import Run, Sweep, grid, name_for\n\n"
                    + textwrap.dedent(body))
    return path


def fake_prefix(tmp_path: Path) -> str:
    script = tmp_path / "fake_main.py"
    script.write_text(FAKE_MAIN)
    return f"{sys.executable} {script}"


# ------------------------------------------------------------------ definitions


def test_grid_is_the_product_in_order():
    points = launch.grid(**{"a.x": [1, 2], "b.y": ["p", "q", "r"]})
    assert len(points) == 6
    assert points[0] == {"a.x": 1, "b.y": "p"} and points[1] == {"a.x": 1, "b.y": "q"}
    assert points[-1] == {"a.x": 2, "b.y": "r"}
    with pytest.raises(SweepError, match=r"grid axis 'a.x': expected a list"):
        launch.grid(**{"a.x": (1, 2)})
    with pytest.raises(SweepError, match="no values"):
        launch.grid(**{"a.x": []})


def test_name_for_is_safe_and_shortens_keys():
    name = launch.name_for({"data.synthetic.style": "short_cot", "sft.num_epochs": 2,
                            "data.train_files": ("/d/a.jsonl", "/d/b.jsonl"),
                            "data.packing": False})
    assert name == "style=short_cot-num_epochs=2-train_files=a+b-packing=false"
    assert launch._NAME_RE.fullmatch(name)
    # Keys whose last part collides keep their full name; `short` wins over both.
    assert launch.name_for({"sft.lr": 1e-05, "rl.lr": 0.5}) == "sft.lr=1e-05-rl.lr=0.5"
    assert launch.name_for({"sft.lr": 0.1}, short={"sft.lr": "LR"}) == "LR=0.1"


@pytest.mark.parametrize("runs, message", [
    ([Run("a", {}), Run("a", {})], r"runs\[1\] name 'a' is used twice"),
    ([Run("a/b", {})], r"runs\[0\] name 'a/b' is not a safe directory name"),
    ([Run("x,y", {})], "not a safe directory name"),
    ([Run("predict", {})], "'predict' is reserved"),
    ([Run("ok", {"sft.nope": 1})], r"run 'ok': sft.nope: unknown config key"),
    ([Run("ok", {"nothere.lr": 1})], r"run 'ok': nothere.lr: unknown config key"),
    ([Run("ok", {"sft.num_epochs": "many"})], r"run 'ok': sft.num_epochs:"),
    ([Run("ok", {"sft.batch_size": 0})], r"run 'ok': sft.batch_size: must be positive"),
    ([Run("ok", {"sft.num_epochs": True})], r"run 'ok': sft.num_epochs: expected int, got bool"),
    ([Run("ok", {"sft.lr": "0.1x"})], r"run 'ok': sft.lr: expected float, got str"),
    ([Run("ok", {"model.hf_path": "123"})], r"run 'ok': model.hf_path: string '123' looks"),
    ([Run("ok", {"sft.lr": float("inf")})], r"run 'ok': sft.lr: inf cannot"),
    ([Run("ok", {"predict.k": None})], r"run 'ok': predict.k: None cannot"),
    ([Run("ok", {"model.rope_scaling": {"factor": 8.0}})], "model.rope_scaling: a group"),
    ([Run("ok", {}, stage="bogus")], r"run 'ok': stage: 'bogus' is not one of"),
    ([Run("ok", {}, stage=3)], r"run 'ok': stage: 3 is not one of"),
    ([Run("ok", {3: 1})], r"run 'ok': 3: an override key must be"),
    ([Run("ok", ["sft.lr"])], r"run 'ok': overrides must be a dict"),
    ([], "has no runs"),
])
def test_plan_rejects_bad_runs_naming_run_and_key(tmp_path, runs, message):
    sweep = Sweep("s", TINY, runs)
    with pytest.raises(SweepError, match=message) as info:
        launch.plan(sweep, tmp_path, where="my_sweep.py")
    assert str(info.value).startswith("my_sweep.py: ")


def test_plan_rejects_a_missing_base_config(tmp_path):
    with pytest.raises(SweepError, match=r"base_config 'configs/nope.py': no such config"):
        launch.plan(Sweep("s", "configs/nope.py", [Run("a")]), tmp_path)


def test_plan_builds_commands_with_stage_and_predict_job(tmp_path):
    sweep = Sweep("s", TINY, [Run("a", {"sft.num_epochs": 2}, stage="sft"), Run("b")],
                  predict=True, predict_overrides={"predict.n_bootstrap": 50})
    jobs = launch.plan(sweep, tmp_path)
    assert [j.name for j in jobs] == ["a", "b", "predict"]
    assert jobs[0].command(["py"]) == [
        "py", f"--config={ROOT / TINY}", f"--workdir={tmp_path / 'a'}", "--stage=sft",
        "--config.sft.num_epochs=2",
    ]
    assert jobs[2].args[-1] == (
        f"--config.predict.workdirs={(str(tmp_path / 'a'), str(tmp_path / 'b'))!r}")
    assert "--stage=predict" in jobs[2].args
    assert "--config.predict.n_bootstrap=50" in jobs[2].args
    bad = Sweep("s", TINY, [Run("a")], predict=True, predict_overrides={"predict.k": 0.5})
    with pytest.raises(SweepError, match=r"run 'predict': predict.k: expected int, got float"):
        launch.plan(bad, tmp_path)


# ------------------------------------------------------------------ round trip

ROUND_TRIP = {
    "seed": 7,  # int
    "sft.lr": 3e-05,  # float
    "rl.clip_high": 1,  # an int given to a float field is sent as 1.0
    "rl.temperature": 0.1,
    "data.packing": False,  # bool
    "sft.tensorboard": True,
    "data.synthetic.style": "long_cot",  # str
    "model.hf_path": "/models/x y/Llama-3.json",
    "data.tokenizer": "",
    "data.train_files": ("/d/a.jsonl", "b c.parquet"),  # tuples
    "rl.prompt_files": ("/only/one.jsonl",),
    "sft.evals": (),
    "predict.calibration_sizes": (2, 5),
    "predict.k": 64,  # a placeholder (None by default) int field
}


def _parse_with_config_flags(args: list[str]) -> object:
    """What `python -m sftrl.main` does with these arguments: ml_collections' flag parsing
    (which finds the `--config.*` overrides in sys.argv itself)."""
    argv = ["prog", f"--config={ROOT / TINY}", *args]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=fv)
    saved, sys.argv = sys.argv, argv
    try:
        fv(argv)
    finally:
        sys.argv = saved
    return fv.config


def test_rendered_overrides_read_back_exactly_both_ways():
    base = launch.load_config(TINY)
    args = launch.render_overrides(base, ROUND_TRIP)
    assert "--config.rl.clip_high=1.0" in args and "--config.data.packing=False" in args
    via_overrides = config_lib.apply_overrides(base, [a.removeprefix("--config.")
                                                      for a in args])
    via_flags = _parse_with_config_flags(args)
    for key, value in ROUND_TRIP.items():
        for config in (via_overrides, via_flags):
            got = launch._get(config, key)
            expected = float(value) if key == "rl.clip_high" else value
            assert got == expected and type(got) is type(expected), (key, got)


def test_lists_for_tuple_fields_are_sent_as_tuples():
    base = launch.load_config(TINY)
    [arg] = launch.render_overrides(base, {"data.train_files": ["a.jsonl", "b.jsonl"]})
    assert launch._get(_parse_with_config_flags([arg]), "data.train_files") == (
        "a.jsonl", "b.jsonl")


# ------------------------------------------------------------------ local launcher

SWEEP_BODY = """
    def get_sweep(arg=None):
        runs = [Run(name_for(p), p) for p in grid(**{"sft.num_epochs": [1, 2, 3]})]
        return Sweep(name="t", base_config="configs/tiny.py", runs=runs, predict=True)
"""
NAMES = ["num_epochs=1", "num_epochs=2", "num_epochs=3"]


def _calls(workdir: Path) -> list[dict]:
    path = workdir / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_local_launcher_concurrency_logs_status_failure_and_resume(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / f"FAIL_{NAMES[1]}").touch()
    argv = [f"--sweep={sweep_file}", f"--workdir={out}", "--max_parallel=2",
            f"--command_prefix={fake_prefix(tmp_path)}"]

    assert launch.main(argv) == 1  # one run failed, the others still ran
    status = json.loads((out / "sweep.json").read_text())["runs"]
    assert {n: status[n]["state"] for n in NAMES} == {
        NAMES[0]: "done", NAMES[1]: "failed", NAMES[2]: "done"}
    assert status[NAMES[1]]["returncode"] == 3 and status[NAMES[0]]["returncode"] == 0
    assert status["predict"]["state"] == "pending"  # not run over an incomplete group
    assert not (out / "predict").exists()
    for name in NAMES:
        assert status[name]["start"] and status[name]["end"]
        assert status[name]["command"][-1] == f"--config.sft.num_epochs={name[-1]}"
        assert f"hello from {name}" in (out / name / "launch.log").read_text()
    assert "failing on purpose" in (out / NAMES[1] / "launch.log").read_text()
    # Concurrency: never more than 2 at once, and 2 did overlap.
    spans = sorted((c["start"], c["end"]) for n in NAMES for c in _calls(out / n))
    overlaps = [max(sum(s <= t < e for s, e in spans) for t in (s for s, _ in spans))]
    assert overlaps == [2]
    text = capsys.readouterr()
    assert "1 run(s) failed: num_epochs=2" in text.err
    assert "failed" in text.out and "state" in text.out  # the summary table

    # Resume: done runs are skipped, the failed one reruns, then predict runs over all.
    (out / f"FAIL_{NAMES[1]}").unlink()
    assert launch.main(argv) == 0
    assert [len(_calls(out / n)) for n in NAMES] == [1, 2, 1]
    status = json.loads((out / "sweep.json").read_text())["runs"]
    assert all(status[n]["state"] == "done" for n in [*NAMES, "predict"])
    [predict_call] = _calls(out / "predict")
    assert "--stage=predict" in predict_call["args"]
    assert predict_call["args"][-1] == (
        f"--config.predict.workdirs={tuple(str(out / n) for n in NAMES)!r}")
    assert "[skip] num_epochs=1: already done" in capsys.readouterr().out

    # A third launch has nothing left to do.
    assert launch.main(argv) == 0
    assert [len(_calls(out / n)) for n in [*NAMES, "predict"]] == [1, 2, 1, 1]
    # elapsed_s sums the attempts: the rerun run's is at least its last attempt's span
    status = json.loads((out / "sweep.json").read_text())["runs"]
    for name in NAMES:
        last = launch._seconds_between(status[name]["start"], status[name]["end"])
        assert status[name]["elapsed_s"] >= last >= 0
        # every attempt's span is kept: the failed-then-rerun run has two, the others one
        attempts = status[name]["attempts"]
        assert len(attempts) == (2 if name == NAMES[1] else 1)
        assert attempts[-1] == [status[name]["start"], status[name]["end"]]
        assert status[name]["elapsed_s"] == pytest.approx(
            sum(launch._seconds_between(s, e) for s, e in attempts))


def test_a_run_left_running_by_a_killed_launcher_keeps_its_time(tmp_path):
    """The attempt a killed launcher left 'running' counts up to the run's last write to its
    directory: here a samples file written after the last line of the log."""
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    argv = [f"--sweep={sweep_file}", f"--workdir={out}", "--max_parallel=1",
            f"--command_prefix={fake_prefix(tmp_path)}"]
    status = launch.Status(out / "sweep.json", "s")
    status.update(NAMES[0], state="running", start="2026-01-01T00:00:00+00:00", elapsed_s=5.0)
    (out / NAMES[0]).mkdir(parents=True)
    log = out / NAMES[0] / "launch.log"
    log.write_text("stage output\n")
    stamp = datetime.datetime(2026, 1, 1, 0, 10, tzinfo=datetime.UTC).timestamp()
    os.utime(log, (stamp, stamp))
    samples = out / NAMES[0] / "samples" / "ckpt" / "bench.jsonl"
    samples.parent.mkdir(parents=True)
    samples.write_text("{}\n")
    os.utime(samples, (stamp + 600, stamp + 600))

    assert launch.main(argv) == 0
    entry = json.loads((out / "sweep.json").read_text())["runs"][NAMES[0]]
    assert entry["state"] == "done" and entry["estimated_attempts"] == 1
    last = launch._seconds_between(entry["start"], entry["end"])
    assert entry["elapsed_s"] == pytest.approx(5.0 + 1200.0 + last)
    # the killed attempt's span ends at that last write
    assert entry["attempts"][0] == ["2026-01-01T00:00:00+00:00", "2026-01-01T00:20:00+00:00"]


def test_relaunch_with_changed_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    prefix = f"--command_prefix={fake_prefix(tmp_path)}"
    first = write_sweep(tmp_path, SWEEP_BODY)
    assert launch.main([f"--sweep={first}", f"--workdir={out}", prefix,
                        f"--only={NAMES[0]}"]) == 0
    changed = first.read_text().replace("Run(name_for(p), p)",
                                        "Run(name_for(p), {**p, 'seed': 1})")
    first.write_text(changed)
    assert launch.main([f"--sweep={first}", f"--workdir={out}", prefix,
                        f"--only={NAMES[0]}"]) == 2
    assert "is done with other arguments" in capsys.readouterr().err


def test_predict_reruns_when_the_group_grows(tmp_path):
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    argv = [f"--sweep={sweep_file}", f"--workdir={out}", "--max_parallel=3",
            f"--command_prefix={fake_prefix(tmp_path)}"]
    assert launch.main(argv) == 0
    sweep_file.write_text(sweep_file.read_text().replace("[1, 2, 3]", "[1, 2, 3, 4]"))
    assert launch.main(argv) == 0
    assert [len(_calls(out / n)) for n in [*NAMES, "num_epochs=4", "predict"]] == [1, 1, 1, 1, 2]
    assert "num_epochs=4" in _calls(out / "predict")[-1]["args"][-1]


def test_only_selects_runs_and_rejects_unknown_names(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    base = [f"--sweep={sweep_file}", f"--workdir={out}",
            f"--command_prefix={fake_prefix(tmp_path)}"]
    assert launch.main([*base, "--only=nope"]) == 2
    assert "--only: unknown run(s) ['nope']" in capsys.readouterr().err
    assert launch.main([*base, f"--only={NAMES[2]},predict"]) == 0
    assert [len(_calls(out / n)) for n in [*NAMES, "predict"]] == [0, 0, 1, 0]
    assert f"[skip] predict: runs not done: {NAMES[0]}, {NAMES[1]}" in capsys.readouterr().out


def test_ctrl_c_terminates_children_and_marks_them(tmp_path, monkeypatch):
    status = launch.Status(tmp_path / "sweep.json", "t")
    job = launch.Job("slow", tmp_path / "slow", ("-c", "import time; time.sleep(60)"))

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch, "_pause", interrupt)
    started = time.time()
    with pytest.raises(KeyboardInterrupt):
        launch.run_local([job], status, [sys.executable], echo=lambda _: None)
    assert time.time() - started < 10
    entry = json.loads((tmp_path / "sweep.json").read_text())["runs"]["slow"]
    assert entry["state"] == "failed" and entry["error"] == "interrupted"
    assert entry["returncode"] is not None and entry["returncode"] < 0  # killed by a signal
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(entry["pid"], 0)


def test_a_corrupt_status_file_is_an_error_naming_it(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": {"a": {"state": "weird"}}}))
    with pytest.raises(SweepError, match=r"sweep.json: run 'a': field 'state' is 'weird'"):
        launch.Status(tmp_path / "sweep.json", "t")


def test_dry_run_prints_commands_and_launches_nothing(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    assert launch.main([f"--sweep={sweep_file}:x", f"--workdir={out}", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{sys.executable} -m sftrl.main --config={ROOT / TINY} ")
    assert lines[0].endswith(f"--workdir={out / NAMES[0]} --config.sft.num_epochs=1")
    assert "--stage=predict" in lines[3]
    assert not out.exists()


def test_cli_module_entry_point_dry_run(tmp_path):
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    result = subprocess.run(
        [sys.executable, "-m", "sftrl.launch", f"--sweep={sweep_file}",
         f"--workdir={tmp_path / 'o'}", "--dry_run", "--only=" + NAMES[0]],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("-m sftrl.main") == 1


def test_shipped_sweeps_validate(tmp_path):
    for spec, count in (("configs/sweeps/sft_variants_tiny.py", 24),
                        ("configs/sweeps/sft_variants_tiny.py:small", 6),
                        ("configs/sweeps/llama8b_sft_data.py:/data,/models/l8b", 12),
                        ("configs/sweeps/quagmire_tiny.py", 14),
                        ("configs/sweeps/quagmire_tiny.py:ci", 4),
                        ("configs/sweeps/quagmire_v2.py", 4),
                        ("configs/sweeps/quagmire_v2.py:ci", 2)):
        sweep, path = launch.load_sweep(spec)
        jobs = launch.plan(sweep, tmp_path, where=str(path))
        assert len(jobs) == count + 1 and jobs[-1].name == "predict", spec
    sweep, _ = launch.load_sweep("configs/sweeps/llama8b_sft_data.py:/data,/models/l8b")
    assert sweep.runs[0].overrides["data.train_files"] == ("/data/numina_cot.jsonl",)
    assert sweep.runs[0].overrides["model.hf_path"] == "/models/l8b"
    with pytest.raises(SweepError, match="unknown arg 'big'"):
        launch.load_sweep("configs/sweeps/sft_variants_tiny.py:big")
    # The study's data-size axis: the same GRPO budget and evaluation, only the size differs.
    sweep, _ = launch.load_sweep("configs/sweeps/quagmire_tiny.py")
    runs = {run.name: run.overrides for run in sweep.runs}
    small, large = runs["short_cot-diverse-1000-ep3"], runs["short_cot-diverse-6000-ep3"]
    assert (small["data.synthetic.size"], large["data.synthetic.size"]) == (1000, 6000)
    base = runs["short_cot-diverse-ep3"]
    for overrides in (small, large):
        assert {k: v for k, v in overrides.items() if k != "data.synthetic.size"} == {
            k: v for k, v in base.items() if k != "data.synthetic.size"}


# ------------------------------------------------------------------ XManager launcher
# Against the installed xmanager package's own objects: the experiment is built (not launched)
# and inspected; the one launch is xm_local's, running this host's processes.

XM_SWEEP = """
    def get_sweep(arg=None):
        runs = [Run(name_for(p), {**p, "accelerator": arg or ""})
                for p in grid(**{"sft.num_epochs": [1, 2, 3]})]
        return Sweep(name="t", base_config="configs/tiny.py", runs=runs, predict=True)
"""


def _xm_experiment(tmp_path, accelerator, executor, sweep_dir="/gcs/bucket/sweep"):
    sweep, _ = launch.load_sweep(f"{write_sweep(tmp_path, XM_SWEEP)}:{accelerator}")
    jobs = launch.plan(sweep, launch.atomic.as_path(sweep_dir))
    return jobs, launch.build_xm_experiment(jobs, sweep.name, executor=executor)


def _argv(unit, executable=None):
    from xmanager import xm
    from xmanager.xm import utils

    job = unit.job(executable)
    assert isinstance(job, xm.Job) and job.name == unit.name
    return job.args.to_list(utils.ARGV_ESCAPER)


def test_xm_tpu_sweep_is_one_experiment_with_slices_and_predict_after_the_runs(tmp_path):
    from xmanager import xm, xm_local

    jobs, experiment = _xm_experiment(tmp_path, "v5p-64", "kubernetes")
    assert experiment.title == "t"
    packaged = experiment.packageable
    assert isinstance(packaged, xm.Packageable)
    assert isinstance(packaged.executable_spec, xm.PythonContainer)
    assert packaged.executable_spec.entrypoint == xm.ModuleName("sftrl.main")
    assert packaged.executable_spec.path == str(ROOT)
    assert any('pip install --no-cache-dir ".[tpu]"' in line
               for line in packaged.executable_spec.docker_instructions)
    assert isinstance(packaged.executor_spec, xm_local.KubernetesSpec)

    runs, [predict] = experiment.units[:-1], experiment.units[-1:]
    assert [u.name for u in runs] == NAMES and predict.name == "predict"
    for unit, job in zip(runs, jobs, strict=False):
        assert isinstance(unit.executor, xm_local.Kubernetes)
        wants = unit.executor.requirements
        # Cloud TPU: v5p-64 is 64 TensorCores, 32 chips in a 2x4x4 slice
        assert wants.accelerator == xm.ResourceType.TPU_V5P
        assert wants.topology == xm.Topology("2x4x4") and wants.topology.chip_count == 32
        assert unit.needs == ()
        assert unit.env_vars == {"SFTRL_COORDINATOR_ADDRESS": "auto"}  # 8 hosts
        assert _argv(unit) == list(job.args)
        assert f"--workdir=/gcs/bucket/sweep/{unit.name}" in _argv(unit)
    # predict: after every run, on no accelerator, over the runs' directories
    assert predict.needs == tuple(NAMES)
    assert predict.executor.requirements.accelerator is None
    assert _argv(predict)[-1] == "--config.predict.workdirs=" + repr(
        tuple(f"/gcs/bucket/sweep/{n}" for n in NAMES))


def test_a_gs_sweep_takes_only_stages_that_write_remotely(tmp_path):
    sweep = Sweep("s", TINY, [Run("a", {"accelerator": "v5p-8"}, stage="sft")])
    [job] = launch.plan(sweep, launch.atomic.as_path("gs://bucket/s"))
    assert str(job.workdir) == "gs://bucket/s/a" and "--workdir=gs://bucket/s/a" in job.args
    # predict (like eval and pipeline) writes through sftrl.atomic too
    _, predict = launch.plan(dataclasses.replace(sweep, predict=True),
                             launch.atomic.as_path("gs://bucket/s"))
    assert str(predict.workdir) == "gs://bucket/s/predict"
    assert "--config.predict.workdirs=('gs://bucket/s/a',)" in predict.args
    with pytest.raises(SweepError, match=r"run 'm': stage 'model' writes its run "
                                         r"directory on a local disk only, not under gs://"):
        launch.plan(dataclasses.replace(sweep, runs=[Run("m", {}, stage="model")]),
                    launch.atomic.as_path("gs://bucket/s"))


@pytest.mark.parametrize("accelerator, count, hosts", [("h100:8", 8, 1), ("h200:8x2", 16, 2)])
def test_xm_gpu_runs_ask_for_their_gpus(tmp_path, accelerator, count, hosts):
    from xmanager import xm, xm_local

    _, experiment = _xm_experiment(tmp_path, accelerator, "vertex")
    assert isinstance(experiment.packageable.executor_spec, xm_local.VertexSpec)
    wants = experiment.units[0].executor.requirements
    assert isinstance(experiment.units[0].executor, xm_local.Vertex)
    gpu = xm.ResourceType[accelerator.split(":")[0]]
    # xmanager's convention: the topology is <GPUs per host>x<hosts>, one replica a host
    assert wants.accelerator == gpu and wants.topology.chip_count == count
    assert wants.topology.dimensions[0] == 8 and wants.replicas == hosts


def test_every_gpu_name_is_an_xmanager_gpu():
    from xmanager import xm

    for name in launch.accelerators.GPU_TYPES:
        assert xm.ResourceType[name] in xm.GpuType, name


def test_xm_refusals_name_the_run_the_key_or_the_flag(tmp_path, capsys):
    with pytest.raises(SweepError, match=r"run 'num_epochs=1': accelerator 'v5p-64': xmanager's "
                                         r"Vertex executor offers TPU v2/v3 only"):
        _xm_experiment(tmp_path, "v5p-64", "vertex")
    with pytest.raises(SweepError, match=r"run 'num_epochs=1': accelerator: 'h100' is not"):
        _xm_experiment(tmp_path, "h100", "kubernetes")
    # the mesh is validated against the slice's devices, not this host's
    sweep = Sweep("s", TINY, [Run("a", {"accelerator": "v5p-8", "mesh.tensor": 8})])
    with pytest.raises(SweepError, match=r"run 'a': .*mesh"):
        launch.plan(sweep, tmp_path)
    assert launch.plan(Sweep("s", TINY, [Run("a", {"accelerator": "v5p-8", "mesh.tensor": 4})]),
                       tmp_path)[0].accelerator == "v5p-8"
    sweep_file = write_sweep(tmp_path, XM_SWEEP)
    assert launch.main([f"--sweep={sweep_file}", f"--workdir={tmp_path}", "--launcher=xm",
                        "--xm_executor=vertex"]) == 2
    assert "--xm_executor=vertex runs jobs on other machines" in capsys.readouterr().err
    assert launch.main([f"--sweep={sweep_file}", "--workdir=gs://b/s"]) == 2
    assert "the local launcher keeps sweep.json" in capsys.readouterr().err


def test_xm_dry_run_lists_units_requirements_and_dependencies(tmp_path, capsys):
    sweep_file = write_sweep(tmp_path, XM_SWEEP)
    assert launch.main([f"--sweep={sweep_file}:v5e-16", "--workdir=/gcs/b/s", "--launcher=xm",
                        "--xm_executor=kubernetes", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "experiment 't': PythonContainer for KubernetesSpec"
    assert "tpu_v5e=xm.Topology('4x4')" in lines[1]
    assert lines[-1].endswith(f"after {', '.join(NAMES)}")


def test_xm_local_launch_runs_predict_only_after_its_runs(tmp_path, monkeypatch, capsys):
    """xm_local for real (this host's processes, its sqlite store under a temporary HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    out = tmp_path / "sweep"
    out.mkdir()
    argv = [f"--sweep={sweep_file}", f"--workdir={out}", "--launcher=xm",
            f"--command_prefix={fake_prefix(tmp_path)}"]
    assert launch.main([*argv, "--dry_run"]) == 0
    assert "experiment 't': Binary for LocalSpec" in capsys.readouterr().out
    assert launch.main(argv) == 0
    calls = {n: _calls(out / n) for n in [*NAMES, "predict"]}
    assert all(len(c) == 1 for c in calls.values())
    assert calls["predict"][0]["start"] >= max(calls[n][0]["end"] for n in NAMES)
    # the same arguments as the local launcher's
    assert calls[NAMES[0]][0]["args"] == list(launch.plan(*launch.load_sweep(str(sweep_file))[:1],
                                                          out)[0].args)

    # a failed run: predict is not added
    for name in NAMES:
        (out / name / "calls.jsonl").unlink()
    (out / "predict" / "calls.jsonl").unlink()
    (out / f"FAIL_{NAMES[1]}").touch()
    assert launch.main(argv) == 1
    assert not _calls(out / "predict")
    assert "[skip] predict: runs not done: num_epochs=2" in capsys.readouterr().out


def test_xm_launcher_without_xmanager_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "xmanager", None)  # import fails
    sweep_file = write_sweep(tmp_path, SWEEP_BODY)
    assert launch.main([f"--sweep={sweep_file}", f"--workdir={tmp_path}", "--launcher=xm"]) == 2
    assert "pip install sftrl[xm]" in capsys.readouterr().err


def test_sweep_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_sweep(arg=None):\n    return {'runs': []}\n")
    with pytest.raises(SweepError, match=r"bad.py: get_sweep returned dict, not a Sweep"):
        launch.load_sweep(str(bad))
    (tmp_path / "none.py").write_text("X = 1\n")
    with pytest.raises(SweepError, match=r"none.py: defines no get_sweep"):
        launch.load_sweep(str(tmp_path / "none.py"))
    with pytest.raises(SweepError, match="no such sweep file"):
        launch.load_sweep(str(tmp_path / "missing.py"))
