"""The replication study's report (`sftrl.study`) on hand-made sweep directories.

Each sweep is what `python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py` leaves behind
(sweep.json, per run config.json, pipeline.json and eval/*.json in the schema the pipeline
writes), and its predict run's predictor.json comes from the real predictor, so the study is
checked against its true inputs without training anything.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sftrl import predict_stage, study
from sftrl.eval import predict
from sftrl.eval.record import EvalRecordError

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [("answer_only", "diverse"), ("short_cot", "homogeneous"), ("short_cot", "diverse"),
            ("long_cot", "diverse"), ("answer_only", "homogeneous"), ("long_cot", "homogeneous")]
EPOCHS = [3, 9]


def grid_runs(variants) -> list[tuple[str, str, str, int, int]]:
    """(run, style, phrasing, SFT size, epochs) for every variant at every epoch count."""
    return [(f"{style}-{phrasing}-ep{epochs}", style, phrasing, 2000, epochs)
            for (style, phrasing), epochs in itertools.product(variants, EPOCHS)]


# The sweep's grid, then its data-size axis (named like configs/sweeps/quagmire_tiny.py's runs).
RUNS = [*grid_runs(VARIANTS),
        ("short_cot-diverse-1000-ep3", "short_cot", "diverse", 1000, 3),
        ("short_cot-diverse-6000-ep3", "short_cot", "diverse", 6000, 3)]
KS = [2**i for i in range(9)]  # 1 .. 256
N, PROMPTS = 256, 128
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
RUN_MINUTES, PREDICT_MINUTES = 10, 1
# (post-SFT pass@1, post-SFT pass@256, generalization loss, post-RL pass@1) per run, in the order
# of RUNS: pass@1 ranks against the RL result, loss and pass@256 with it.
NUMBERS = [(0.30, 0.45, 0.90, 0.35), (0.34, 0.42, 1.00, 0.33),
           (0.20, 0.70, 0.70, 0.55), (0.25, 0.65, 0.75, 0.52),
           (0.18, 0.80, 0.60, 0.62), (0.22, 0.78, 0.62, 0.60),
           (0.10, 0.85, 0.55, 0.66), (0.15, 0.83, 0.58, 0.65),
           (0.36, 0.40, 1.05, 0.30), (0.38, 0.39, 1.10, 0.28),
           (0.12, 0.82, 0.585, 0.64), (0.14, 0.81, 0.595, 0.63),
           (0.28, 0.60, 0.80, 0.45), (0.26, 0.62, 0.78, 0.50)]


def _curve(p1: float, p256: float) -> dict[str, float]:
    return {str(k): p1 + (p256 - p1) * np.log2(k) / 8 for k in KS}


def _eval(name: str, dataset: str, stage: str, p1: float, p256: float, loss: float,
          parent: str | None = None) -> dict:
    curve = _curve(p1, p256)
    bench = {"n": N, "num_prompts": PROMPTS, "pass@1": p1, "pass@k": curve,
             "pass@k_ci": {k: [v - 0.01, v + 0.01] for k, v in curve.items()},
             "ci_confidence": 0.95, "learnable_fraction": 0.5, "truncation_rate": 0.0}
    record = {"checkpoint": name, "dataset": dataset, "group": "llama-128x4", "stage": stage,
              "generalization_loss": loss, "benchmarks": {"synthetic": bench},
              "mean_over_benchmarks": {"pass@1": p1, "pass@k": curve},
              "metrics": {"heldout/loss": loss}}
    if parent:
        record["sft_checkpoint"] = parent
    return record


def _iso(minutes: float) -> str:
    return (T0 + datetime.timedelta(minutes=minutes)).isoformat(timespec="seconds")


def make_sweep(root: Path, numbers=NUMBERS, runs=RUNS) -> Path:
    """A finished quagmire_tiny-shaped sweep directory with the given numbers."""
    root.mkdir(parents=True)
    status: dict = {"sweep": "quagmire_tiny", "runs": {}}
    predict_config = {"seed": 0, "predict": {"calibration_sizes": [3, 4], "n_bootstrap": 50,
                                             "n_permutations": 200}}
    for i, (run, style, phrasing, size, epochs) in enumerate(runs):
        p1, p256, loss, rl = numbers[i]
        dataset = f"{style}-{phrasing}-{size}"
        sft_name, rl_name = f"ep{epochs}-{dataset}-sft", f"ep{epochs}-{dataset}-rl"
        run_dir = root / run
        (run_dir / "eval").mkdir(parents=True)
        config = {**predict_config, "sft": {"num_epochs": epochs},
                  "rl": {"num_steps": 30},
                  "data": {"synthetic": {"style": style, "phrasing": phrasing, "size": size}},
                  "model": {"model_type": "llama", "hidden_size": 128, "num_layers": 4,
                            "intermediate_size": 384, "vocab_size": 512, "num_heads": 4,
                            "num_kv_heads": 2, "head_dim": 32, "tie_embeddings": False}}
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / "pipeline.json").write_text(json.dumps(
            {f"{dataset}/sft": {"done": True, "final_step": 22 * epochs, "time": 0.0}}))
        (run_dir / "eval" / f"{sft_name}.json").write_text(json.dumps(
            _eval(sft_name, dataset, "sft", p1, p256, loss), indent=2))
        (run_dir / "eval" / f"{rl_name}.json").write_text(json.dumps(
            _eval(rl_name, dataset, "rl", rl, min(1.0, p256 + 0.05), loss, sft_name), indent=2))
        status["runs"][run] = {"state": "done", "returncode": 0,
                               "start": _iso(RUN_MINUTES * i), "end": _iso(RUN_MINUTES * (i + 1))}
    end = RUN_MINUTES * len(numbers)
    status["runs"]["predict"] = {"state": "done", "returncode": 0, "start": _iso(end),
                                 "end": _iso(end + PREDICT_MINUTES)}
    (root / "sweep.json").write_text(json.dumps(status, indent=2))
    (root / "predict" / "report").mkdir(parents=True)
    (root / "predict" / "config.json").write_text(json.dumps(predict_config))
    write_predictor(root)
    return root


def write_predictor(root: Path) -> dict:
    """What the sweep's predict run writes: the real predictor over every run's eval files."""
    options = predict_stage.options_from_config(json.loads(
        (root / "predict" / "config.json").read_text()))
    dirs = sorted(p for p in root.glob("*/eval") if p.parent.name != "predict")
    report = predict.evaluate(predict.load_eval_dir(dirs), options)
    predict.write_report(report, root / "predict" / "report")
    return report


def table(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The markdown table whose header starts with `first_header`, as row dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, [c.strip() for c in line.strip("|").split("|")],
                             strict=True)))
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sweep = make_sweep(root / "sweep")
    readme = study.write_study(sweep, root / "docs", sweep_spec="configs/sweeps/quagmire_tiny.py")
    return sweep, readme, readme.read_text()


def test_checkpoint_table_has_exactly_the_eval_numbers(built):
    _, _, text = built
    rows = {r["run"]: r for r in table(text, "#")}
    assert len(rows) == len(NUMBERS)
    for (run, style, phrasing, size, epochs), (p1, p256, loss, rl) in zip(RUNS, NUMBERS,
                                                                         strict=True):
        row = rows[run]
        assert row["data set"] == f"{style}-{phrasing}-{size}"
        assert int(row["epochs"]) == epochs and int(row["SFT steps"]) == 22 * epochs
        expected = {"gen. loss": loss, "SFT pass@1": p1, "SFT pass@256": p256,
                    "RL pass@1": rl, "RL gain": rl - p1}
        for column, value in expected.items():
            assert float(row[column]) == pytest.approx(value, abs=5e-5), (row["run"], column)
        se = np.hypot(*(np.sqrt(p * (1 - p) / (N * PROMPTS)) for p in (p1, rl)))
        assert float(row["2·SE(gain)"]) == pytest.approx(2 * se, abs=5e-5)
        assert row["run time"] == f"{RUN_MINUTES}m00s"


def test_predictor_table_has_the_predictors_numbers(built):
    sweep, _, text = built
    report = json.loads((sweep / "predict" / "report" / "predictor.json").read_text())
    g = report["groups"]["llama-128x4"]
    rows = {r["proxy"]: r for r in table(text, "proxy") if "data-set R² m=3" in r}
    names = {"post-SFT pass@1": "pass@1", "generalization loss": "-generalization_loss",
             "pass@256": "pass@256", "average of the three": "average"}
    assert list(rows) == list(names)  # the paper's row order
    number = r"(-?\d+\.\d+)"
    not_computable = False
    for label, name in names.items():
        for level, prefix in (("instance", "instance"), ("dataset", "data-set")):
            s = g["scores"][level][predict.OUTCOME][name]
            rho, p = re.fullmatch(rf"{number} \(p = {number}\)",
                                  rows[label][f"{prefix} Spearman ρ (p)"]).groups()
            assert float(rho) == pytest.approx(s["spearman"]["rho"], abs=5e-5)
            assert float(p) == pytest.approx(s["spearman"]["p_value"], abs=5e-5)
            for m in (3, 4):
                cell = rows[label][f"{prefix} R² m={m}"]
                if "error" in s["r2"][str(m)]:
                    assert cell == "n/a¹"  # e.g. 4 data sets leave < 2 held out at m=3
                    not_computable = True
                    continue
                mean, std = re.fullmatch(rf"{number} ± {number}", cell).groups()
                assert float(mean) == pytest.approx(s["r2"][str(m)]["mean"], abs=5e-5)
                assert float(std) == pytest.approx(s["r2"][str(m)]["std"], abs=5e-5)
    if not_computable:  # the footnote says why the n/a cells are n/a
        assert "needs m >= 2 and at least 2 held-out points" in text


def test_findings_are_computed_from_the_numbers(built):
    _, _, text = built
    findings = text.split("## Findings")[1].split("\n## ")[0]
    rl = [n[3] for n in NUMBERS]
    rhos = {"post-SFT pass@1": stats.spearmanr([n[0] for n in NUMBERS], rl)[0],
            "generalization loss": stats.spearmanr([-n[2] for n in NUMBERS], rl)[0],
            "pass@256": stats.spearmanr([n[1] for n in NUMBERS], rl)[0]}
    assert rhos["post-SFT pass@1"] < 0 < rhos["generalization loss"]
    # loss and pass@256 both rank every checkpoint perfectly here: a tie, said as one
    assert rhos["generalization loss"] == rhos["pass@256"] == pytest.approx(1.0)
    assert (f"At the instance level ({len(NUMBERS)} points) the highest Spearman ρ (1.000) is "
            "shared by generalization loss and pass@256") in findings
    assert "Significantly positive at 0.05 (instance level): generalization loss, pass@256" \
        in findings
    assert "Significantly negative (ranks in reverse) at 0.05 (instance level): post-SFT " \
        "pass@1." in findings
    gain = rhos["generalization loss"] - rhos["post-SFT pass@1"]
    assert ("Spearman ρ minus post-SFT pass@1's at the instance level (the paper's headline: up "
            f"to +0.5): generalization loss {gain:+.3f}, pass@256 {gain:+.3f}") in findings
    bad = sum((a[0] - b[0]) * (a[3] - b[3]) < 0 for a, b in itertools.combinations(NUMBERS, 2))
    assert f"both order strictly, post-SFT pass@1 orders {bad} the wrong way round" in findings
    n = len(NUMBERS)  # the best post-RL checkpoint has the lowest post-SFT pass@1
    assert f"`ep3-long_cot-diverse-2000-sft`, ranks {n} of {n} by post-SFT pass@1" in findings
    # 8 data-set points can reach p < 0.05 (2/8! = 5e-5) and leave 4 held out at m = 4, so
    # neither limitation is reported (the 4-data-set case is test_too_few_data_sets_...)
    assert "no data-set-level correlation can be significant" not in findings
    assert "No calibration R² at the data-set level" not in findings
    gains = np.array([n[3] - n[0] for n in NUMBERS])
    assert f"mean {gains.mean():+.4f}, std {gains.std():.4f}" in findings
    assert "The mean gain is beyond sampling noise" in findings
    assert "too little RL signal" not in findings
    assert "**The paper's central finding reproduces at this scale**" in findings
    margins = re.search(r"Instance-level Spearman ρ minus post-SFT pass@1's, with a 95% paired "
                        r"bootstrap interval over the checkpoints: generalization loss "
                        r"(\+\d\.\d+) \[(\+\d\.\d+), ", findings)
    assert margins and float(margins[2]) > 0  # beyond noise
    assert float(margins[1]) == pytest.approx(rhos["generalization loss"]
                                              - rhos["post-SFT pass@1"], abs=5e-4)


def test_too_few_data_sets_are_reported_as_a_limit(tmp_path):
    """Four data sets (8 checkpoints): the data-set level can never reach p < 0.05 in an exact
    permutation test (2/4! = 0.083), and calibration R² at m = 3 has < 2 held-out points."""
    sweep = make_sweep(tmp_path / "sweep", numbers=NUMBERS[:8], runs=grid_runs(VARIANTS[:4]))
    text = study.write_study(sweep, tmp_path / "docs").read_text()
    findings = text.split("## Findings")[1].split("\n## ")[0]
    assert "With 4 points even a perfect ranking has p = 0.083" in findings
    assert "No calibration R² at the data-set level: calibration size 3 needs m >= 2 and at " \
        "least 2 held-out points, have n=4" in findings


def test_time_commands_paper_table_and_plots(built):
    sweep, readme, text = built
    total = RUN_MINUTES * len(NUMBERS) + PREDICT_MINUTES
    assert f"Sweep wall-clock time (first start to last end in `sweep.json`, the predict run " \
           f"included): {total // 60}h{total % 60:02d}m00s" in text
    assert (f"python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py --workdir={sweep} "
            "--max_parallel=1") in text
    assert f"python -m sftrl.study --sweep_dir={sweep} --out={readme.parent}" in text
    paper = table(text, "model")
    assert len(paper) == 8 and {r["model"] for r in paper} == {"Llama-3-8B", "Mistral-NeMo-12B"}
    assert all(r[c] == "" for r in paper for c in r if c not in ("model", "proxy"))
    assert "**To be filled from the paper**" in text
    assert study.PAPER_HEADLINE in text
    assert f"- {len(NUMBERS)} SFT checkpoints from " in text  # no "(of N in the sweep)"
    assert " data sets of 1000, 2000 or 6000 synthetic examples." in text
    for name in ("proxies_vs_rl.png", "passk_curves.png", "rl_gain.png"):
        assert f"]({name})" in text
        assert (readme.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((readme.parent / "study.json").read_text())
    assert numbers["wall_clock_s"] == total * 60 and not numbers["partial"]


def test_rl_gain_within_noise_says_so(tmp_path):
    flat = [(p1, p256, loss, p1 + 1e-4 * (i % 3)) for i, (p1, p256, loss, _) in
            enumerate(NUMBERS)]
    text = study.write_study(make_sweep(tmp_path / "sweep", flat), tmp_path / "out").read_text()
    findings = text.split("## Findings")[1]
    assert "That is too little RL signal at this scale." in findings
    assert "does not reproduce at this scale**: too little RL signal at this scale" in findings


@pytest.fixture
def sweep_copy(built, tmp_path):
    return Path(shutil.copytree(built[0], tmp_path / "sweep"))


def test_unfinished_runs_are_listed_and_refused_or_marked(sweep_copy, tmp_path):
    status = json.loads((sweep_copy / "sweep.json").read_text())
    status["runs"]["long_cot-diverse-ep9"].update(state="running", end=None)
    status["runs"]["predict"] = {"state": "pending"}
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    (sweep_copy / "short_cot-diverse-ep3" / "eval" / "ep3-short_cot-diverse-2000-rl.json").unlink()
    with pytest.raises(study.StudyError, match=r"unfinished runs: .*short_cot-diverse-ep3 "
                       r"\(no post-RL eval file\), long_cot-diverse-ep9 \(running\)"):
        study.write_study(sweep_copy, tmp_path / "out")
    text = study.write_study(sweep_copy, tmp_path / "out", allow_partial=True).read_text()
    assert "**Partial" in text
    rows = {r["run"]: r for r in table(text, "#")}
    assert rows["long_cot-diverse-ep9"]["RL pass@1"] == "missing"
    assert rows["short_cot-diverse-ep3"]["RL pass@1"] == "missing"
    assert float(rows["short_cot-diverse-ep3"]["SFT pass@1"]) == pytest.approx(0.18)
    finished = len(NUMBERS) - 1  # long_cot-diverse-ep9 is still running
    assert (f"re-computed by `sftrl.study` with `sftrl.eval.predict` over the {finished} "
            "finished") in text
    assert f"{finished - 1} SFT checkpoints with a post-RL result" in text
    assert f"- {finished} SFT checkpoints (of {len(NUMBERS)} in the sweep) from " in text


def test_a_run_missing_from_the_sweep_file_is_unfinished(sweep_copy, tmp_path):
    status = json.loads((sweep_copy / "sweep.json").read_text())
    del status["runs"]["answer_only-diverse-ep3"]
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    with pytest.raises(study.StudyError, match=r"answer_only-diverse-ep3 \(not started\)"):
        study.write_study(sweep_copy, tmp_path / "out",
                          sweep_spec="configs/sweeps/quagmire_tiny.py")
    with pytest.raises(study.StudyError, match=r"are not in configs/sweeps/quagmire_tiny\.py:ci"):
        study.write_study(sweep_copy, tmp_path / "out",
                          sweep_spec="configs/sweeps/quagmire_tiny.py:ci")


@pytest.mark.parametrize("edit, message", [
    (lambda r: "{\n  \"checkpoint\": oops", r"ep3-long_cot-diverse-2000-sft\.json:2: not valid"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "generalization_loss"}),
     r"ep3-long_cot-diverse-2000-sft\.json: field 'generalization_loss'"),
    (lambda r: json.dumps({**r, "benchmarks": {"synthetic": {
        **r["benchmarks"]["synthetic"], "pass@k": {"1": "high"}}}}),
     r"ep3-long_cot-diverse-2000-sft\.json: benchmarks\.synthetic: field 'pass@k\[1\]'"),
    (lambda r: json.dumps({**r, "stage": "pretrain"}),
     r"ep3-long_cot-diverse-2000-sft\.json: field 'stage'"),
])
def test_a_malformed_eval_file_is_named_with_its_field(sweep_copy, tmp_path, edit, message):
    path = sweep_copy / "long_cot-diverse-ep3" / "eval" / "ep3-long_cot-diverse-2000-sft.json"
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(EvalRecordError, match=message):
        study.write_study(sweep_copy, tmp_path / "out")


def test_malformed_status_pipeline_and_stale_predictor(sweep_copy, tmp_path):
    path = sweep_copy / "predict" / "report" / "predictor.json"
    report = json.loads(path.read_text())
    report["groups"]["llama-128x4"]["candidates"][0]["outcomes"][predict.OUTCOME] += 0.1
    path.write_text(json.dumps(report))
    with pytest.raises(study.StudyError, match=r"predictor\.json is stale: checkpoint .*"
                       r"field 'outcomes\.rl_pass@1'"):
        study.write_study(sweep_copy, tmp_path / "out")
    write_predictor(sweep_copy)
    pipeline = sweep_copy / "answer_only-diverse-ep9" / "pipeline.json"
    pipeline.write_text("{}")
    with pytest.raises(study.StudyError, match=r"pipeline\.json: field "
                       r"'answer_only-diverse-2000/sft\.final_step'"):
        study.write_study(sweep_copy, tmp_path / "out")
    status = json.loads((sweep_copy / "sweep.json").read_text())
    status["runs"]["predict"]["state"] = "finished"
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    with pytest.raises(study.StudyError, match=r"sweep\.json: runs\.predict: field 'state'"):
        study.write_study(sweep_copy, tmp_path / "out")


def test_paper_numbers_fill_the_table_and_are_checked(sweep_copy, tmp_path):
    numbers = tmp_path / "paper.json"
    numbers.write_text(json.dumps({
        "source": "Table 3 of the paper.", "notes": ["k = 64 there."],
        "models": {"Llama-3-8B": {
            "generalization loss": {"instance_spearman": 0.5, "dataset_r2": "0.3 ± 0.1"},
            "post-SFT pass@1": {"instance_spearman": "0.25 (text after the number)"}}}}))
    text = study.write_study(sweep_copy, tmp_path / "out", paper_numbers=numbers).read_text()
    row = next(r for r in table(text, "model")
               if r["model"] == "Llama-3-8B" and r["proxy"] == "generalization loss")
    assert row["instance Spearman"] == "0.5" and row["data-set R²"] == "0.3 ± 0.1"
    assert row["data-set Spearman"] == ""
    assert f"Values from `{numbers}`, as typed in there; their source: Table 3 of the paper." \
        in text and "- k = 64 there." in text
    # The paper's source must not replace the predictor's in study.json (it once did).
    numbers_json = json.loads((tmp_path / "out" / "study.json").read_text())
    assert numbers_json["predictor_source"].startswith("`predict/report/predictor.json`")
    # This study's ρ next to the paper's, and both margins over post-SFT pass@1.
    g = json.loads((sweep_copy / "predict" / "report" / "predictor.json").read_text())[
        "groups"]["llama-128x4"]["scores"]["instance"][predict.OUTCOME]
    loss, pass1 = g["-generalization_loss"]["spearman"]["rho"], g["pass@1"]["spearman"]["rho"]
    assert ("- Spearman ρ at the instance level, this study's (one point per checkpoint) vs the "
            f"paper's Llama-3-8B: post-SFT pass@1 "
            f"{pass1:.2f} vs 0.25; generalization loss {loss:.2f} vs 0.50 (margin over pass@1: "
            f"{loss - pass1:+.2f} here, +0.25 there).") in text
    assert "Mistral-NeMo-12B:" not in text.split("## The paper's numbers")[1].split("## ")[0]
    for bad, message in (({"models": {}}, "field 'source' must say"),
                         ({"source": "x", "notes": "one", "models": {}},
                          "field 'notes' must be a list of strings")):
        numbers.write_text(json.dumps(bad))
        with pytest.raises(study.StudyError, match=message):
            study.write_study(sweep_copy, tmp_path / "out", paper_numbers=numbers)
    numbers.write_text(json.dumps({"source": "x", "models": {"Llama-3-8B": {
        "pass@1": {"instance_spearman": 0.5}}}}))
    with pytest.raises(study.StudyError, match=r"paper\.json: models\.Llama-3-8B\.pass@1: "
                       "unknown row"):
        study.write_study(sweep_copy, tmp_path / "out", paper_numbers=numbers)


def test_cli(sweep_copy, tmp_path, capsys):
    out = tmp_path / "docs"
    assert study.main([f"--sweep_dir={sweep_copy}", f"--out={out}"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "README.md")
    assert study.main([f"--sweep_dir={tmp_path / 'nowhere'}", f"--out={out}"]) == 2
    assert "nowhere: no such sweep directory" in capsys.readouterr().err


def test_run_time_sums_the_launchers_attempts(sweep_copy, tmp_path):
    """A resumed run's time is the launcher's elapsed_s (all attempts), not its last span."""
    status = json.loads((sweep_copy / "sweep.json").read_text())
    status["runs"]["answer_only-diverse-ep9"]["elapsed_s"] = 7 * 3600 + 1234
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    _, statuses = study.load_status(sweep_copy)
    assert statuses["answer_only-diverse-ep9"].seconds == 7 * 3600 + 1234
    status["runs"]["answer_only-diverse-ep9"]["elapsed_s"] = "long"
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    with pytest.raises(study.StudyError, match=r"runs\.answer_only-diverse-ep9: field "
                       r"'elapsed_s' is 'long'"):
        study.load_status(sweep_copy)


def test_a_run_time_with_an_estimated_attempt_is_marked(sweep_copy, tmp_path):
    """A time that includes a killed launcher's estimated attempt is shown as approximate."""
    status = json.loads((sweep_copy / "sweep.json").read_text())
    status["runs"]["answer_only-diverse-ep9"].update(elapsed_s=3600 + 120, estimated_attempts=1)
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    text = study.write_study(sweep_copy, tmp_path / "out").read_text()
    rows = {r["run"]: r for r in table(text, "#")}
    assert rows["answer_only-diverse-ep9"]["run time"] == "≈1h02m00s"
    assert not any(r["run time"].startswith("≈") for name, r in rows.items()
                   if name != "answer_only-diverse-ep9")
    assert "≈: the run was resumed after its launcher was killed" in text
    numbers = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [c["run"] for c in numbers["checkpoints"] if c["seconds_estimated"]] == \
        ["answer_only-diverse-ep9"]
    status["runs"]["answer_only-diverse-ep9"]["estimated_attempts"] = -1
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    with pytest.raises(study.StudyError, match=r"field 'estimated_attempts' is -1"):
        study.load_status(sweep_copy)


def _labeled(pass1, other, outcome):
    return [{"proxies": {"pass@1": a, "x": b}, "outcomes": {predict.OUTCOME: y}}
            for a, b, y in zip(pass1, other, outcome, strict=True)]


def test_spearman_margin_needs_a_paired_bootstrap_interval_above_zero():
    options = {"seed": 0, "n_bootstrap": 400}
    y = list(range(12))
    # a proxy that ranks perfectly against a post-SFT pass@1 that ranks in reverse
    d, low, high = study.spearman_margins(_labeled(y[::-1], y, y), ["x"], options)["x"]
    assert d == pytest.approx(2.0) and 0 < low <= high
    # the same ranking as pass@1 but one swapped pair: a small margin, inside the noise
    noisy = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10]
    better = [0, 1, 2, 3, 5, 4, 6, 8, 7, 9, 11, 10]
    d, low, high = study.spearman_margins(_labeled(noisy, better, y), ["x"], options)["x"]
    assert 0 < d < 0.05 and low <= 0 < high


def test_a_best_proxy_that_ties_pass1_within_noise_does_not_reproduce():
    facts = {"instance_best_proxies": ["average"], "instance_significant_positive":
             ["average", "pass@1"], "discordant": 3, "instance_margin_beyond_noise": []}
    signal = {"n": 10, "mean_gain": 0.01, "mean_gain_se": 0.001, "rl_std": 0.005,
              "rl_se_rms": 0.001}
    [text] = study.verdict(facts, signal, 10)
    assert text.startswith("**The paper's central finding does not reproduce at this scale**")
    assert "better than post-SFT pass@1 only within noise" in text
    [text] = study.verdict({**facts, "instance_margin_beyond_noise": ["average"]}, signal, 10)
    assert text.startswith("**The paper's central finding reproduces at this scale**")


def test_setup_facts_of_a_single_data_size(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", numbers=NUMBERS[:12], runs=grid_runs(VARIANTS))
    text = study.write_study(sweep, tmp_path / "docs").read_text()
    assert "- 12 SFT checkpoints from 6 data sets of 2000 synthetic examples." in text


def test_the_papers_two_settings_are_recomputed_on_their_subsets(built):
    """The paper's data-set level (one distribution, trained differently) and instance level
    (different data sets, one recipe), from the checkpoint numbers by an independent route."""
    _, readme, text = built
    findings = text.split("## Findings")[1].split("\n## ")[0]
    by_distribution: dict[str, list[int]] = {}
    by_recipe: dict[tuple[int, int], list[int]] = {}
    for i, (_, style, phrasing, size, epochs) in enumerate(RUNS):
        by_distribution.setdefault(f"{style}-{phrasing}", []).append(i)
        by_recipe.setdefault((size, epochs), []).append(i)
    sign = {"post-SFT pass@1": (0, 1), "generalization loss": (2, -1), "pass@256": (1, 1)}
    right = dict.fromkeys(sign, 0)
    pairs = 0
    for members in by_distribution.values():
        for a, b in itertools.combinations(members, 2):
            dy = NUMBERS[a][3] - NUMBERS[b][3]
            pairs += dy != 0
            for label, (col, s) in sign.items():
                right[label] += s * (NUMBERS[a][col] - NUMBERS[b][col]) * dy > 0
    assert pairs == 5 + 6  # five distributions with 2 checkpoints, short_cot-diverse with 4
    assert (f"of the {pairs} pairs of such checkpoints that post-RL pass@1 orders strictly, each "
            f"proxy orders the right way round post-SFT pass@1 {right['post-SFT pass@1']}, "
            f"generalization loss {right['generalization loss']}, pass@256 "
            f"{right['pass@256']}, ") in findings
    assert right["post-SFT pass@1"] == 0 and right["pass@256"] == pairs
    assert "Within `short_cot-diverse` (4 checkpoints), Spearman ρ: post-SFT pass@1 -1.000" \
        in findings and "perfect ranking has p = 0.083" in findings
    for (size, epochs), members in by_recipe.items():
        if len(members) < 3:
            assert f"{size} examples × {epochs} epochs" not in findings
            continue
        rl = [NUMBERS[i][3] for i in members]
        rho = stats.spearmanr([NUMBERS[i][0] for i in members], rl)[0]
        assert (f"one SFT recipe: {size} examples × {epochs} epochs; {len(members)} "
                f"checkpoints), Spearman ρ: post-SFT pass@1 {rho:.3f} (p = ") in findings
    numbers = json.loads((readme.parent / "study.json").read_text())
    settings = numbers["groups"]["llama-128x4"]["facts"]["paper_settings"]
    assert settings["one_distribution"]["pairs"] == pairs
    assert settings["same_recipe"]["2000 examples × 9 epochs"]["n"] == 6


def test_spearman_of_pass_at_k_is_reported_for_every_k(built):
    _, readme, text = built
    findings = text.split("## Findings")[1].split("\n## ")[0]
    rl = [n[3] for n in NUMBERS]
    rho = {k: stats.spearmanr([_curve(n[0], n[1])[str(k)] for n in NUMBERS], rl)[0] for k in KS}
    cells = [f"k = {k} {rho[k]:.3f} (" for k in KS]
    line = next(f for f in findings.splitlines() if "of post-SFT pass@k against" in f)
    assert all(cell in line for cell in cells) and line.index(cells[0]) < line.index(cells[-1])
    by_k = json.loads((readme.parent / "study.json").read_text())["groups"]["llama-128x4"][
        "facts"]["spearman_by_k"]
    assert sorted(map(int, by_k)) == KS
    assert by_k["1"]["rho"] == pytest.approx(stats.spearmanr([n[0] for n in NUMBERS], rl)[0])


@pytest.mark.slow
def test_the_ci_study_runs_end_to_end(tmp_path):
    """The study's CI-sized variant, for real: the launcher trains and evaluates 4 tiny runs
    and predicts, the report is written from what they left, and a second launch resumes
    (skips everything)."""
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "sftrl.launch", "--sweep=configs/sweeps/quagmire_tiny.py:ci",
               f"--workdir={sweep_dir}", "--max_parallel=1"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                            env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    readme = study.write_study(sweep_dir, tmp_path / "docs",
                               sweep_spec="configs/sweeps/quagmire_tiny.py:ci",
                               paper_numbers=ROOT / "docs" / "quagmire_paper_numbers.json")
    text = readme.read_text()
    assert "**Partial" not in text and not re.search(r"\bnan\b", text, re.IGNORECASE)
    rows = table(text, "#")
    assert len(rows) == 4 and all(r["RL pass@1"] != "missing" for r in rows)
    assert "- 4 SFT checkpoints from 4 data sets of 48 synthetic examples." in text
    assert "| Mistral-NeMo-12B | pass@k (large k) | 0.92 |" in text
    # Every run kept its samples, so the guessing control is there; all zero here, so no share.
    assert all(r["SFT pass@4 control"] == "0.0000" for r in rows)
    assert "0.000 to 0.000, no share (pass@4 is 0 for every checkpoint); at k = 1" in text
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0 and again.stdout.count("[skip]") == 5, again.stdout[-2000:]


def _write_samples(path: Path, prompts: int, n: int) -> tuple[list[list[str]], list[str]]:
    """A samples file whose answers partly depend on the prompt (a bit of reasoning, a lot of
    guessing from 1..500)."""
    golds = [str(p % 40 + 1) for p in range(prompts)]
    answers = [[golds[p] if j % 16 == 0 else str((p * 7 + j * 13) % 500 + 1) for j in range(n)]
               for p in range(prompts)]
    path.parent.mkdir(parents=True)
    with path.open("w") as f:
        for p in range(prompts):
            f.write(json.dumps({
                "id": f"t{p}", "problem": "q", "answer": golds[p], "responses": answers[p],
                "num_tokens": [1] * n, "finished": [True] * n,
                "correct": [a == golds[p] for a in answers[p]], "extracted": answers[p]}) + "\n")
    return answers, golds


def test_the_guessing_control_is_computed_from_the_samples(sweep_copy, tmp_path):
    from sftrl.eval import passk

    run, checkpoint = "short_cot-diverse-ep9", "ep9-short_cot-diverse-2000-sft"
    path = sweep_copy / run / "samples" / checkpoint / "synthetic.jsonl"
    answers, golds = _write_samples(path, PROMPTS, N)
    expected = {k: passk.mismatched_answer_pass_at_k(answers, golds, k, shifts=8)
                for k in (1, 256)}
    text = study.write_study(sweep_copy, tmp_path / "out").read_text()
    rows = {r["run"]: r for r in table(text, "#")}
    assert rows[run]["SFT pass@256 control"] == f"{expected[256]:.4f}"
    assert rows["answer_only-diverse-ep3"]["SFT pass@256 control"] == "no samples"
    p1, p256 = NUMBERS[[r[0] for r in RUNS].index(run)][:2]
    assert 0.1 < expected[256] < 0.9
    assert (f"pass@256 control {expected[256]:.3f} to {expected[256]:.3f} against the true "
            f"{p256:.3f} to {p256:.3f}") in text
    assert (f"on average {100 * expected[256] / p256:.0f}% of pass@256; at k = 1 the control "
            f"is on average {100 * expected[1] / p1:.0f}% of pass@1.") in text
    numbers = json.loads((tmp_path / "out" / "study.json").read_text())
    entry = next(c for c in numbers["checkpoints"] if c["run"] == run)
    assert entry["sft_pass@k_control"]["256"] == pytest.approx(expected[256])
    # Bad samples are errors that name the file and line, or the count that disagrees.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(study.StudyError, match=rf"{path}: {PROMPTS - 1} prompts, but .*"
                       r"'benchmarks\.synthetic\.num_prompts' is 128"):
        study.write_study(sweep_copy, tmp_path / "out")
    path.write_text("\n".join([*lines[:5], "{", *lines[6:]]) + "\n")
    with pytest.raises(study.StudyError, match=rf"{path}:6: not valid JSON"):
        study.write_study(sweep_copy, tmp_path / "out")
