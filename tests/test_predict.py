"""The predictor: a synthetic group with a known answer, the report (its statistics: test_stats)."""

from __future__ import annotations

import csv
import json
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sftrl.eval import predict
from sftrl.eval.record import EvalRecordError
from sftrl.stages import predict as predict_stage

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_clear_errors():
    cands = predict.candidates_from_rows(
        [{"group": "g", "dataset": "d", "checkpoint": "a", "pass@1": 0.1},
         {"group": "g", "dataset": "d", "checkpoint": "b", "pass@1": 0.2, "pass@8": 0.5,
          "generalization_loss": 1.0}], "t.csv")
    with pytest.raises(predict.PredictError, match=r"'generalization_loss' missing .*a \(t.csv"):
        predict.evaluate(cands, predict.Options(k=8))
    with pytest.raises(EvalRecordError, match=r"f.json: field 'stage'"):
        predict.candidates_from_records([("f.json", {"checkpoint": "a", "stage": "x"})])
    rl = {"checkpoint": "r", "stage": "rl", "sft_checkpoint": "nope",
          "benchmarks": {"m": {"pass@1": 0.3}}}
    with pytest.raises(predict.PredictError, match=r"r\.json: sft_checkpoint 'nope'"):
        predict.candidates_from_records([("r.json", rl)])


def _synthetic_rows(n_datasets=5, per_dataset=3, n_unlabeled=3, seed=0):
    """A group whose outcome is 0.8 * good_metric + 0.1 + noise; other proxies are noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_datasets):
        for e in range(per_dataset):
            good = rng.uniform(0, 1)
            rows.append({"group": "base", "dataset": f"ds{d}", "checkpoint": f"ds{d}-ep{e}",
                         "pass@1": rng.uniform(0, 0.5), "pass@64": rng.uniform(0.5, 1),
                         "generalization_loss": rng.uniform(1, 2), "good_metric": good,
                         "rl_pass@1": 0.8 * good + 0.1 + rng.normal(scale=0.02)})
    for u in range(n_unlabeled):
        good = 0.2 + 0.3 * u
        rows.append({"group": "base", "dataset": "new", "checkpoint": f"new-{u}",
                     "pass@1": rng.uniform(0, 0.5), "pass@64": rng.uniform(0.5, 1),
                     "generalization_loss": rng.uniform(1, 2), "good_metric": good,
                     "rl_pass@1": None})
    return rows


def test_synthetic_group_recovers_slope_and_ranks_the_true_proxy_first():
    cands = predict.candidates_from_rows(_synthetic_rows(), "synthetic")
    report = predict.evaluate(cands, predict.Options(proxies=("good_metric",), n_bootstrap=200))
    g = report["groups"]["base"]
    assert g["k"] == 64 and g["n_labeled"] == 15 and g["n_candidates"] == 18
    inst = g["scores"]["instance"]["rl_pass@1"]
    assert set(inst) == {"pass@1", "-generalization_loss", "pass@64", "average", "good_metric"}
    assert inst["good_metric"]["fit"]["slope"] == pytest.approx(0.8, abs=0.05)
    best = max(inst, key=lambda p: inst[p]["spearman"]["rho"])
    assert best == "good_metric"
    assert inst["good_metric"]["spearman"]["p_value"] < 1e-3
    assert inst["good_metric"]["r2"]["3"]["mean"] > 0.9
    assert g["scores"]["dataset"]["rl_pass@1"]["good_metric"]["n"] == 5
    pred = g["prediction"]
    assert pred["proxy"] == "good_metric"
    assert [c["checkpoint"] for c in pred["candidates"]] == ["new-2", "new-1", "new-0"]
    for c in pred["candidates"]:
        truth = 0.8 * c["proxy_value"] + 0.1
        assert c["lower"] < truth < c["upper"]
        assert c["predicted"] == pytest.approx(truth, abs=0.03)


def test_loss_is_negated_and_average_is_zscored():
    rows = _synthetic_rows(n_unlabeled=0)
    cands = predict.candidates_from_rows(rows, "synthetic")
    g = predict.evaluate(cands, predict.Options(n_bootstrap=50))["groups"]["base"]
    first = g["candidates"][0]["proxies"]
    assert first["-generalization_loss"] == -rows[0]["generalization_loss"]
    z = []
    for name in ("pass@1", "-generalization_loss", "pass@64"):
        v = np.array([c["proxies"][name] for c in g["candidates"]])
        z.append((v - v.mean()) / v.std())
    np.testing.assert_allclose([c["proxies"]["average"] for c in g["candidates"]],
                               np.mean(z, axis=0))


def _eval_record(name, dataset, stage, rng, parent=None, quality=0.5):
    curve = {str(k): min(1.0, quality * (1 + 0.1 * i)) for i, k in enumerate([1, 2, 4, 16])}
    record = {"checkpoint": name, "group": "tiny", "dataset": dataset, "stage": stage,
              "benchmarks": {b: {"pass@1": curve["1"] + 0.01 * j, "pass@k": curve}
                             for j, b in enumerate(["gsm8k", "math"])}}
    if stage == "sft":
        record["generalization_loss"] = 2.0 - quality + rng.normal(scale=0.01)
        record["metrics"] = {"entropy": float(rng.uniform())}
    else:
        record["sft_checkpoint"] = parent
    return record


def _write_fixture_workdir(workdir: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    (workdir / "eval").mkdir(parents=True)
    for i in range(6):
        q = 0.2 + 0.1 * i + rng.normal(scale=0.02)
        name = f"sft-d{i % 3}-{i}"
        files = [_eval_record(name, f"d{i % 3}", "sft", rng, quality=q)]
        if i < 5:  # the last checkpoint has no RL result yet
            files.append(_eval_record(f"rl-{i}", f"d{i % 3}", "rl", rng, name, q + 0.2))
        for rec in files:
            (workdir / "eval" / f"{rec['checkpoint']}.json").write_text(json.dumps(rec))
    rows = _synthetic_rows(n_datasets=3, per_dataset=2, n_unlabeled=1, seed=2)
    for r in rows:
        r["group"] = "other"
    with (workdir / "predict_inputs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_stage_writes_report_from_fixture_results(tmp_path):
    _write_fixture_workdir(tmp_path)
    config = ml_collections.ConfigDict({"seed": 0, "stage": "predict"})
    headline = predict_stage.run(config, tmp_path, None)
    report = json.loads((tmp_path / "report" / "predictor.json").read_text())
    assert set(report["groups"]) == {"tiny", "other"}
    tiny = report["groups"]["tiny"]
    assert tiny["k"] == 16 and tiny["n_labeled"] == 5
    assert tiny["prediction"]["candidates"][0]["checkpoint"] == "sft-d2-5"
    assert "predicted" in tiny["prediction"]["candidates"][0]
    # 3 data sets is exactly enough for Spearman, not for a held-out R² with m=3
    ds = tiny["scores"]["dataset"]["rl_pass@1"]["pass@1"]
    assert ds["n"] == 3 and "error" in ds["r2"]["3"]
    summary = (tmp_path / "report" / "predictor.md").read_text()
    for text in ("## Group `tiny`", "## Group `other`", "| -generalization_loss |",
                 "R² m=3", "R² m=4", "sft-d2-5", "negated", "R² n/a: calibration size 3"):
        assert text in summary
    assert headline["groups"]["tiny"]["top_unlabeled"] == "sft-d2-5"
    assert not list((tmp_path / "report").glob("*.tmp"))


def test_stage_runs_from_main(tmp_path):
    _write_fixture_workdir(tmp_path)
    cmd = [sys.executable, "-m", "sftrl.main", "--config=configs/tiny.py",
           f"--workdir={tmp_path}", "--stage=predict"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "report" / "predictor.md").is_file()
    assert '"top_unlabeled": "sft-d2-5"' in result.stdout


def test_stage_reads_a_sweeps_run_directories(tmp_path):
    from sftrl import config_lib

    _write_fixture_workdir(tmp_path / "all")
    for i, path in enumerate(sorted((tmp_path / "all" / "eval").glob("*.json"))):
        run = tmp_path / "sweep" / f"run{i % 3}" / "eval"
        run.mkdir(parents=True, exist_ok=True)
        path.rename(run / path.name)
    config = config_lib.apply_overrides(
        config_lib.base_config(),
        [f"predict.workdirs=('{tmp_path}/sweep/run*',)", "predict.n_bootstrap=50"],
    )
    headline = predict_stage.run(config, tmp_path / "report_dir")
    assert headline["groups"]["tiny"]["top_unlabeled"] == "sft-d2-5"
    config = config_lib.apply_overrides(config, [f"predict.workdirs=('{tmp_path}/nope*',)"])
    with pytest.raises(predict.PredictError, match="matches no directory"):
        predict_stage.run(config, tmp_path / "report_dir")


def test_per_benchmark_outcomes_and_extra_proxy_from_eval_files(tmp_path):
    _write_fixture_workdir(tmp_path)
    cands = predict.load_eval_dir(tmp_path / "eval")
    options = predict.Options(proxies=("entropy",), per_benchmark=True, n_bootstrap=50)
    g = predict.evaluate(cands, options)["groups"]["tiny"]
    inst = g["scores"]["instance"]
    assert set(inst) == {"rl_pass@1", "rl_pass@1:gsm8k", "rl_pass@1:math"}
    assert "entropy" in inst["rl_pass@1"]
    with pytest.raises(predict.PredictError, match="benchmark 'aime' missing"):
        predict.load_eval_dir(tmp_path / "eval", benchmarks=("aime",))
    with pytest.raises(predict.PredictError, match="proxy 'pass@256' missing"):
        predict.evaluate(cands, predict.Options(k=256))


def test_without_rl_results_candidates_are_ranked_by_average():
    rows = _synthetic_rows(n_datasets=0, n_unlabeled=3)
    g = predict.evaluate(predict.candidates_from_rows(rows, "s"),
                         predict.Options(n_bootstrap=10))["groups"]["base"]
    pred = g["prediction"]
    assert pred["proxy"] == "average" and "predicted" not in pred["candidates"][0]
    values = [c["proxy_value"] for c in pred["candidates"]]
    assert values == sorted(values, reverse=True)
    assert "needs at least 3 points" in g["scores"]["instance"]["rl_pass@1"]["pass@1"]["error"]


def test_options_from_config_section():
    config = ml_collections.ConfigDict({"seed": 5, "predict": {
        "k": 64, "calibration_sizes": [3], "benchmarks": None, "per_benchmark": True}})
    options = predict_stage.options_from_config(config)
    assert options == predict.Options(k=64, calibration_sizes=(3,), per_benchmark=True, seed=5)


def test_scatter_plots_when_matplotlib_is_importable(tmp_path):
    pytest.importorskip("matplotlib")  # an optional dependency: the report works without it
    _write_fixture_workdir(tmp_path)
    predict_stage.run(ml_collections.ConfigDict({"seed": 0}), tmp_path)
    assert {p.name for p in (tmp_path / "report").glob("*.png")} == {"scatter_tiny.png",
                                                                     "scatter_other.png"}
