"""The v2 replication sweep (configs/sweeps/quagmire_v2.py): each axis differs from its control
only where it should, the plan's sizes hold, and the CI-sized variant runs end to end."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sp_stats

from sftrl import launch, study_v2, study_v2_plots

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
    assert base["data.synthetic.counters"] == 2  # the task of PLAN.md's second change
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
    # binomial sampling SE of the mean with the prompts fixed: each prompt 2 of 4 right
    assert g["pass@1_sampling_se"] == pytest.approx(np.sqrt(4 * 0.5 * 0.5 / 3) / 4)
    uneven = [{"answer": "7", "extracted": ["7"] * 8, "correct": [True] * 8},
              {"answer": "8", "extracted": ["8", "1"], "correct": [True, False]}]
    assert study_v2.gates(uneven)["pass@1_sampling_se"] == pytest.approx(
        np.sqrt(0 + 0.25 / 1) / 2)


@pytest.mark.slow
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
    assert (sweep_dir / "predict").is_dir()
    # the report, from what the runs left (a 1-layer model after 4 steps: every gate that
    # needs a working model fails, so the verdict names them)
    readme = study_v2.write_report(sweep_dir, tmp_path / "docs", n_bootstrap=50)
    text = readme.read_text()
    assert "**Verdict: inconclusive: gate" in text and "| base | done |" in text
    assert "| G4 RL signal | **no** |" in text  # no gain at all is no RL signal
    assert len(json.loads((tmp_path / "docs" / "study.json").read_text())["checkpoints"]) == 4


def _fake_rows(seed: int = 0) -> list[dict]:
    """16 checkpoints (4 runs x 4 steps) whose post-RL result follows the combination of
    loss and pass@64 more closely than pass@1."""
    rng = np.random.default_rng(seed)
    rows = []
    for run in ("base", "repeat", "short", "homogeneous"):
        for step in (150, 300, 600, 900):
            quality = rng.uniform(0, 1)
            p1 = 0.05 + 0.5 * rng.uniform(0, 1)
            curve = {str(k): min(1.0, p1 + quality * (1 - p1) * np.log2(k) / 6)
                     for k in (1, 2, 4, 8, 16, 32, 64)}
            rl = {s: {"pass@1": 0.1 + 0.05 * p1 + 0.5 * quality + rng.normal(0, 0.003),
                      "learnable_groups_share": 0.6,
                      "gates": {"k": 16.0, "control_share@16": 0.01,
                                "pass@1_sampling_se": 0.004}} for s in ("1", "2")}
            rows.append({"checkpoint": f"{run}-v2-x-step{step}-sft", "run": run,
                         "dataset": "v2-x", "step": step, "pass@k": curve,
                         "generalization_loss": 1.0 - quality + rng.normal(0, 0.01),
                         "own_heldout_loss": 0.5 + rng.uniform(0, 0.1), "rl": rl,
                         "gates": {"k": 64.0, "control_share@64": 0.02,
                                   "best_constant": 1 / 128}})
    return rows


def test_findings_verdict_and_report_from_data():
    rows = _fake_rows()
    data = study_v2.findings(rows, n_bootstrap=200)
    assert all(g["pass"] for name, g in data["gates"].items() if name != "G3 SFT strength")
    assert data["gates"]["G4 RL signal"]["rl_eval_sampling_se"] == pytest.approx(0.004)
    primary = data["tests"][study_v2.PRIMARY]
    assert primary["delta"] > 0 and primary["sign_test"]["pairs"] > 0
    assert data["verdict"].startswith(("reproduces", "inconclusive: gate G3"))
    assert len(data["axes"]) == 12 and len(data["over_training"]) == 4
    for axis in data["axes"]:  # the winner is the side with the higher pass@1
        for level in ("sft", "rl"):
            treatment, control = axis[f"{level}_pass@1"]
            assert axis[f"{level}_winner"] == ("treatment" if treatment > control else "control")
    assert set(data["instance"][study_v2.BASELINE]["r2"]) == {"3", "4"}
    assert "median" in data["instance"][study_v2.BASELINE]["r2"]["4"]
    text = study_v2.render(data)
    assert "**Verdict:" in text and "nan" not in text.lower()
    # a failed gate makes the verdict inconclusive, naming the gate
    for row in rows:
        row["gates"]["control_share@64"] = 0.5
    assert study_v2.findings(rows, n_bootstrap=50)["verdict"].startswith(
        "inconclusive: gate G1 guessing")


def test_the_mixed_reward_share_is_reported_but_does_not_decide_the_verdict():
    """PLAN.md, change (3): G5 became descriptive; G4 still gates the RL signal."""
    rows = _fake_rows()
    for row in rows:
        for seed in row["rl"].values():
            seed["learnable_groups_share"] = 0.3
    data = study_v2.findings(rows, n_bootstrap=50)
    g5 = data["gates"]["G5 RL prompts"]
    assert not g5["pass"] and g5["descriptive"] and g5["mean_learnable_share"] == 0.3
    assert "G5" not in data["verdict"]
    assert "| G5 RL prompts | no (reported only) |" in study_v2.render(data)


def test_sign_test_and_paired_delta():
    y = np.arange(6.0)
    x = y.copy()
    base = np.array([0.0, 2.0, 1.0, 4.0, 3.0, 5.0])  # two pairs swapped
    st = study_v2.sign_test(x, base, y)
    assert st == {"pairs": 2, "proxy_right": 2, "p_one_sided": 0.25}
    d = study_v2.paired_delta(x, base, y, n_bootstrap=100)
    assert d["delta"] == pytest.approx(1 - sp_stats.spearmanr(base, y)[0])


def test_checkpoints_without_rl_still_count_for_the_sft_gates():
    rows = _fake_rows()
    for row in rows[:14]:  # the compute-saving rule skipped GRPO from these
        row["rl"] = {}
        row["pass@k"]["1"] = 0.01
    data = study_v2.findings(rows, n_bootstrap=50)
    assert not data["gates"]["G3 SFT strength"]["pass"]
    assert data["gates"]["G3 SFT strength"]["min"] == 0.01
    assert data["verdict"].startswith("inconclusive: gate G3 SFT strength")
    assert len(data["checkpoints"]) == 16 and data["checkpoints"][0]["rl_pass@1"] is None
    assert "| n/a |" in study_v2.render(data)


def test_figures_and_plan_quote_from_the_findings(tmp_path):
    rows = _fake_rows()
    data = study_v2.findings(rows, n_bootstrap=50)
    with_rl = [r for r in rows if r["rl"]]
    # the plotted values are the proxies the statistics used, one per checkpoint with RL
    assert data["proxies"][study_v2.BASELINE] == [r["pass@k"]["1"] for r in with_rl]
    written = study_v2_plots.write_figures(data, tmp_path)
    assert [p.name for p in written] == list(study_v2_plots.FIGURES)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    plan = ("# Plan\n\n## Hypotheses\n\n* H1: x.\n\n## Design\n\nnot quoted\n\n"
            "## Gates (all must pass)\n\n| G1 | x |\n\n"
            "## Primary statistic and decision rule\n\nrule text\n\n"
            "## Change after the start (one)\n\nsteps changed\n\n"
            "## Change after the start (two)\n\ntask changed\n")
    parts = study_v2.plan_sections(plan)
    assert [b.splitlines()[0] for b in parts["quoted"]] == [
        "### Hypotheses", "### Gates (all must pass)", "### Primary statistic and decision rule"]
    assert [b.splitlines()[-1] for b in parts["deviations"]] == ["steps changed", "task changed"]
    text = study_v2.render_plan(plan)
    assert "> * H1: x." in text and "not quoted" not in text


def test_gates_command_names_a_missing_or_malformed_file(tmp_path, capsys):
    assert study_v2.main(["--gates", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"answer": "1", "extracted": ["1"]}\n')
    assert study_v2.main(["--gates", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl: line 1 has no field 'correct'" in err
    # the report: a missing sweep directory, and one with nothing evaluated yet
    assert study_v2.main(["--sweep_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "nowhere: no such sweep directory" in capsys.readouterr().err
    (tmp_path / "sweep" / "base" / "eval").mkdir(parents=True)
    assert study_v2.main(["--sweep_dir", str(tmp_path / "sweep"), "--out", str(tmp_path)]) == 2
    assert "sweep: no SFT checkpoint evaluated yet" in capsys.readouterr().err


def _status(runs: dict[str, dict]) -> dict:
    return {"sweep": "quagmire_v2", "runs": {"predict": {"state": "pending"}, **runs}}


def test_sweep_wall_time_is_the_union_of_attempts_and_a_partial_sweep_gives_no_verdict(tmp_path):
    day = "2026-12-04T"
    # base: one attempt 00:00-02:00; repeat beside it 00:00-01:00, killed, resumed 03:00-03:30
    # (the last attempt written by a launcher that kept no attempts list): 2 h + 0.5 h of wall
    status = _status({
        "base": {"state": "done", "start": f"{day}00:00:00+00:00", "end": f"{day}02:00:00+00:00",
                 "elapsed_s": 7200.0,
                 "attempts": [[f"{day}00:00:00+00:00", f"{day}02:00:00+00:00"]]},
        "repeat": {"state": "running", "start": f"{day}03:00:00+00:00",
                   "end": f"{day}03:30:00+00:00", "elapsed_s": 5400.0,
                   "attempts": [[f"{day}00:00:00+00:00", f"{day}01:00:00+00:00"]]}})
    (tmp_path / "sweep.json").write_text(json.dumps(status))
    times = study_v2.run_times(tmp_path)
    assert times["wall_s"] == 2.5 * 3600
    assert times["runs"]["repeat"]["elapsed_s"] == 5400.0
    data = study_v2.findings(_fake_rows(), times, n_bootstrap=50)
    assert data["gates"]["G0 sweep complete"] == {"pass": False, "runs_done": 1, "runs": 2}
    assert data["verdict"] == "inconclusive: gate G0 sweep complete failed"
    assert "The sweep end to end: 2.50 h" in study_v2.render(data)
    status["runs"]["repeat"]["state"] = "done"
    (tmp_path / "sweep.json").write_text(json.dumps(status))
    data = study_v2.findings(_fake_rows(), study_v2.run_times(tmp_path), n_bootstrap=50)
    assert data["gates"]["G0 sweep complete"]["pass"] and "G0" not in data["verdict"]


def test_a_failed_gate_names_its_checkpoints_and_an_axis_without_rl_keeps_its_sft_side():
    rows = _fake_rows()
    for row in rows:  # the sweep's outcome: homogeneous data never leaves the guessing floor
        if row["run"] == "homogeneous":
            row["pass@k"] = {k: 0.0 if row["step"] == 900 else 0.0004 for k in row["pass@k"]}
            row["gates"]["control_share@64"] = 0.0 if row["step"] == 900 else 0.125
            row["rl"] = {}
    rows[0]["gates"]["control_share@64"] = float("nan")  # pass@64 of 0: nothing to compare
    data = study_v2.findings(rows, n_bootstrap=50)
    homogeneous = [r["checkpoint"] for r in rows if r["run"] == "homogeneous"]
    assert data["gates"]["G3 SFT strength"]["below_floor"] == homogeneous
    assert data["gates"]["G1 guessing"]["failing"] == [rows[0]["checkpoint"], *homogeneous[:3]]
    assert data["verdict"] == "inconclusive: gate G1 guessing, G3 SFT strength failed"
    assert data["with_rl"] == 12 and len(data["checkpoints"]) == 16
    failed = {c["checkpoint"]: c["gates_failed"] for c in data["checkpoints"]}
    assert failed[rows[0]["checkpoint"]] == ["G1"] and failed[rows[1]["checkpoint"]] == []
    assert [failed[name] for name in homogeneous] == [["G1", "G3"]] * 3 + [["G3"]]
    no_rl = [a for a in data["axes"] if a["treatment"] == "homogeneous"]
    assert [a["rl_winner"] for a in no_rl] == [study_v2.NO_RL] * 4
    assert all(a["sft_winner"] == "control" for a in no_rl)
    text = study_v2.render(data)
    assert "over the 12 checkpoints with post-RL results, of 16" in text
    assert "decide nothing" in text and homogeneous[0] in text


def test_a_resumed_runs_step_times_leave_out_the_gap_between_attempts(tmp_path):
    def at(hour: float) -> float:
        return datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC).timestamp() + hour * 3600

    day = "2026-12-04T"
    # short: sft done at 01:00, rl at 01:30, killed at 02:00; resumed at 05:00, eval done 05:10
    status = _status({"short": {
        "state": "done", "start": f"{day}05:00:00+00:00", "end": f"{day}05:10:00+00:00",
        "attempts": [[f"{day}00:00:00+00:00", f"{day}02:00:00+00:00"]]}})
    (tmp_path / "sweep.json").write_text(json.dumps(status))
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "pipeline.json").write_text(json.dumps({
        "eval": {"done": True, "time": at(5 + 1 / 6)}, "sft": {"done": True, "time": at(1)},
        "rl": {"done": True, "time": at(1.5)}}))
    times = study_v2.run_times(tmp_path)
    assert times["runs"]["short"]["steps_s"] == {"sft": 3600.0, "rl": 1800.0, "eval": 600.0}
    assert times["stages"] == {
        "sft": {"count": 1, "total_s": 3600.0}, "rl": {"count": 1, "total_s": 1800.0},
        "eval": {"count": 1, "total_s": 600.0}}


def test_every_rho_and_r2_recomputes_from_the_study_json(tmp_path):
    """Issue 21's "done when": from study.json's per-checkpoint values alone, scipy's Spearman
    and a by-hand leave-out line fit give the report's ρ and R² (instance and between runs)."""
    data = study_v2.findings(_fake_rows(seed=3), n_bootstrap=50)
    _recompute_every_rho_and_r2(json.loads(json.dumps(data, default=float)))


def test_the_shipped_reports_rho_and_r2_recompute_from_its_study_json():
    saved = json.loads((ROOT / "docs" / "quagmire_v2" / "study.json").read_text())
    assert saved["instance"], "the shipped study has no statistics"
    _recompute_every_rho_and_r2(saved)


def _spearman_or_none(x, y):
    return None if min(np.ptp(x), np.ptp(y)) == 0 else pytest.approx(sp_stats.spearmanr(x, y)[0])


def _recompute_every_rho_and_r2(saved: dict) -> None:
    with_rl = [c for c in saved["checkpoints"] if c["rl_pass@1"] is not None]
    y = np.array([c["rl_pass@1"] for c in with_rl])
    assert np.allclose(y, [np.mean(list(c["rl_pass@1_by_seed"].values())) for c in with_rl])

    def z(v):
        return (v - v.mean()) / v.std()

    loss = -np.array([c["generalization_loss"] for c in with_rl])
    p64 = np.array([c["sft_pass@k"]["64"] for c in with_rl])
    proxies = {"post-SFT pass@1": np.array([c["sft_pass@1"] for c in with_rl]),
               "-generalization loss (common)": loss, "pass@64": p64,
               "combination (loss + pass@k, no pass@1)": (z(loss) + z(p64)) / 2,
               "-own held-out loss": -np.array([c["own_heldout_loss"] for c in with_rl])}
    assert set(proxies) == set(saved["instance"])
    for name, x in proxies.items():
        assert saved["instance"][name]["rho"] == _spearman_or_none(x, y)
        for m in (3, 4):
            scores = []
            for cal in itertools.combinations(range(len(y)), m):
                rest = [i for i in range(len(y)) if i not in cal]
                slope, intercept, *_ = sp_stats.linregress(x[list(cal)], y[list(cal)])
                pred = slope * x[rest] + intercept
                scores.append(1 - np.sum((y[rest] - pred) ** 2)
                              / np.sum((y[rest] - y[rest].mean()) ** 2))
            r2 = saved["instance"][name]["r2"][str(m)]
            assert r2["mean"] == pytest.approx(np.mean(scores))
            assert r2["median"] == pytest.approx(np.median(scores))
        runs = sorted({c["run"] for c in with_rl})
        means = [(np.mean([x[i] for i, c in enumerate(with_rl) if c["run"] == r]),
                  np.mean([y[i] for i, c in enumerate(with_rl) if c["run"] == r])) for r in runs]
        between = sp_stats.spearmanr([a for a, _ in means], [b for _, b in means])[0]
        assert saved["between_runs"][name]["rho"] == pytest.approx(between)
        for run in runs:
            idx = [i for i, c in enumerate(with_rl) if c["run"] == run]
            assert saved["within_run"][run][name] == _spearman_or_none(x[idx], y[idx])
