"""The replication study (`sftrl.study`) on hand-made sweep directories.

Each sweep is what `python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py` leaves behind
(sweep.json, per run config.json, pipeline.json and eval/*.json in the schema the pipeline
writes), and its predict run's predictor.json comes from the real predictor, so the study is
checked against its true inputs without training anything. The findings are asserted as the
numbers of the study's data (study.json), against scipy, numpy or counts made here; two tests
check the rendered README (the predictor table, and the committed report re-rendered).
"""

from __future__ import annotations

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

from sftrl import study
from sftrl.eval import predict
from sftrl.eval.record import EvalRecordError
from sftrl.study import render
from tests.study_sweeps import (
    KS,
    NUMBERS,
    PREDICT_MINUTES,
    PROMPTS,
    ROOT,
    RUN_MINUTES,
    RUNS,
    VARIANTS,
    N,
    grid_runs,
    make_sweep,
    passk_curve,
    table,
    write_predictor,
    write_samples,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sweep = make_sweep(root / "sweep")
    readme = study.write_study(sweep, root / "docs", sweep_spec="configs/sweeps/quagmire_tiny.py")
    data = json.loads((readme.parent / "study.json").read_text())
    return sweep, readme, readme.read_text(), data


def data_of(sweep: Path, **kwargs) -> dict:
    """The study's data without writing it (no plots)."""
    return study.study_data(sweep, sweep.parent / "out", **kwargs)


def names(labels: dict[str, str]) -> dict[str, str]:
    """The predictor's proxy names of the report's labels."""
    proxy = {"post-SFT pass@1": "pass@1", "generalization loss": "-generalization_loss",
             "pass@256": "pass@256", "average of the three": "average"}
    return {proxy[label]: value for label, value in labels.items()}


def test_checkpoint_records_hold_exactly_the_eval_numbers(built):
    *_, data = built
    records = {c["run"]: c for c in data["checkpoints"]}
    assert len(records) == len(NUMBERS)
    for (run, style, phrasing, size, epochs), (p1, p256, loss, rl) in zip(RUNS, NUMBERS,
                                                                         strict=True):
        c = records[run]
        assert c["dataset"] == f"{style}-{phrasing}-{size}" and c["data_size"] == size
        assert c["epochs"] == epochs and c["sft_steps"] == 22 * epochs
        assert c["generalization_loss"] == pytest.approx(loss)
        assert c["sft_pass@k"]["1"] == pytest.approx(p1)
        assert c["sft_pass@k"]["256"] == pytest.approx(p256)
        assert c["rl_pass@k"]["1"] == pytest.approx(rl)
        assert c["gain"] == pytest.approx(rl - p1)
        # sqrt(p (1 - p) / (n P)) per evaluation, the two added in quadrature
        sft_se, rl_se = (np.sqrt(p * (1 - p) / (N * PROMPTS)) for p in (p1, rl))
        assert c["rl_se"] == pytest.approx(rl_se)
        assert c["gain_se"] == pytest.approx(np.hypot(sft_se, rl_se))
        assert c["seconds"] == RUN_MINUTES * 60 and not c["seconds_estimated"]
        assert c["sft_pass@k_control"] is None and c["missing"] == ""


def test_predictor_table_has_the_predictors_numbers(built):
    sweep, _, text, _ = built
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
    *_, data = built
    f = data["groups"]["llama-128x4"]
    rl = [n[3] for n in NUMBERS]
    rhos = names({"post-SFT pass@1": stats.spearmanr([n[0] for n in NUMBERS], rl)[0],
                  "generalization loss": stats.spearmanr([-n[2] for n in NUMBERS], rl)[0],
                  "pass@256": stats.spearmanr([n[1] for n in NUMBERS], rl)[0]})
    assert rhos["pass@1"] < 0 < rhos["-generalization_loss"]
    # loss and pass@256 both rank every checkpoint perfectly here: a tie, both best
    assert rhos["-generalization_loss"] == rhos["pass@256"] == pytest.approx(1.0)
    assert (f["k"], f["n"], f["n_datasets"]) == (256, len(NUMBERS), 8)
    instance = f["levels"]["instance"]
    assert instance["points"] == len(NUMBERS)
    for proxy, rho in rhos.items():
        assert instance["scores"][proxy]["rho"] == pytest.approx(rho)
    assert sorted(instance["best"]) == ["-generalization_loss", "pass@256"]
    assert instance["order"][-1] == "pass@1"
    assert set(instance["significant_positive"]) >= {"-generalization_loss", "pass@256"}
    assert instance["significant_negative"] == ["pass@1"]
    for proxy in ("-generalization_loss", "pass@256"):
        assert instance["minus_pass1"][proxy] == pytest.approx(rhos[proxy] - rhos["pass@1"])
    bad = sum((a[0] - b[0]) * (a[3] - b[3]) < 0 for a, b in itertools.combinations(NUMBERS, 2))
    strict = sum((a[0] - b[0]) * (a[3] - b[3]) != 0 for a, b in itertools.combinations(NUMBERS, 2))
    m = f["misranking"]
    assert (m["discordant"], m["pairs"], m["n_best_rl"]) == (bad, strict, 1)
    # the best post-RL checkpoint has the lowest post-SFT pass@1
    assert m["top_rl"] == "ep3-long_cot-diverse-2000-sft"
    assert (m["top_rl_sft_rank"], m["top_rl_sft_ties"]) == (len(NUMBERS), 0)
    # 8 data-set points can reach p < 0.05 (2/8! = 5e-5) and leave 4 held out at m = 4
    dataset = f["levels"]["dataset"]
    assert dataset["points"] == 8 and dataset["min_p"] < 0.05
    assert dataset["r2"]["m"] == 4 and "proxy" in dataset["r2"]
    gains = np.array([n[3] - n[0] for n in NUMBERS])
    signal = data["rl_signal"]
    assert signal["n"] == len(NUMBERS)
    assert signal["mean_gain"] == pytest.approx(gains.mean())
    assert signal["std_gain"] == pytest.approx(gains.std())
    assert signal["rl_min"] == min(rl) and signal["rl_max"] == max(rl)
    se = [c["gain_se"] for c in data["checkpoints"]]
    assert signal["mean_gain_se"] == pytest.approx(np.sqrt(np.mean(np.square(se)) / len(se)))
    assert abs(signal["mean_gain"]) > 2 * signal["mean_gain_se"]  # beyond sampling noise
    margins = {m["proxy"]: m for m in f["margins"]}
    assert margins["-generalization_loss"]["diff"] == pytest.approx(
        rhos["-generalization_loss"] - rhos["pass@1"])
    assert margins["-generalization_loss"]["low"] > 0  # beyond noise
    assert f["verdict"] == {"judged": True, "reproduces": True, "reasons": [],
                            "n": len(NUMBERS)}


def test_too_few_data_sets_are_reported_as_a_limit(tmp_path):
    """Four data sets (8 checkpoints): the data-set level can never reach p < 0.05 in an exact
    permutation test (2/4! = 0.083), and calibration R² at m = 3 has < 2 held-out points."""
    sweep = make_sweep(tmp_path / "sweep", numbers=NUMBERS[:8], runs=grid_runs(VARIANTS[:4]))
    dataset = data_of(sweep)["groups"]["llama-128x4"]["levels"]["dataset"]
    assert dataset["points"] == 4
    assert dataset["min_p"] == pytest.approx(2 / 24, abs=0.03)  # 200 permutations here
    assert dataset["min_p"] >= 0.05
    assert "calibration size 3 needs m >= 2 and at least 2 held-out points, have n=4" in \
        dataset["r2"]["errors"]


def test_time_commands_paper_table_plots_and_the_readme_from_the_data(built):
    sweep, readme, text, data = built
    total = RUN_MINUTES * len(NUMBERS) + PREDICT_MINUTES
    assert data["wall_clock_s"] == total * 60 and not data["partial"]
    assert data["runs_total_s"] == 60 * (RUN_MINUTES * len(NUMBERS) + PREDICT_MINUTES)
    assert data["commands"] == [
        f"python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py --workdir={sweep} "
        "--max_parallel=1",
        f"python -m sftrl.study --sweep_dir={sweep} --out={readme.parent} "
        "--sweep=configs/sweeps/quagmire_tiny.py"]
    assert data["paper"] == {"path": None, "source": "", "notes": [], "table": {},
                             "differences": []}
    assert data["setup"] == {
        "model_type": "llama", "hidden_size": 128, "num_layers": 4,
        # embeddings in and out, per layer q, o (4 heads × 32) + k, v (2 × 32) + MLP + 2 norms,
        # and the final norm
        "params": 2 * 512 * 128 + 4 * (2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 384 + 2 * 128)
        + 128,
        "checkpoints": len(NUMBERS), "rows": len(NUMBERS), "datasets": 8,
        "data_sizes": [1000, 2000, 6000], "rl_steps": 30, "benchmarks": ["synthetic"],
        "samples": N, "prompts": PROMPTS}
    assert data["plots"] == ["proxies_vs_rl.png", "passk_curves.png", "rl_gain.png"]
    for name in data["plots"]:
        assert (readme.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the README is a function of the data alone
    assert render.readme(data) == text


def test_the_committed_report_renders_from_its_study_json():
    """docs/quagmire_tiny/README.md is what its study.json renders to (inputs not in the repo:
    the sweep ran elsewhere, so its data is the record)."""
    out = ROOT / "docs" / "quagmire_tiny"
    assert render.readme(json.loads((out / "study.json").read_text())) == \
        (out / "README.md").read_text()


def test_rl_gain_within_noise_says_so(tmp_path):
    flat = [(p1, p256, loss, p1 + 1e-4 * (i % 3)) for i, (p1, p256, loss, _) in
            enumerate(NUMBERS)]
    data = data_of(make_sweep(tmp_path / "sweep", flat))
    signal = data["rl_signal"]
    assert signal["mean_gain"] == pytest.approx(np.mean([1e-4 * (i % 3) for i in range(14)]))
    assert abs(signal["mean_gain"]) <= 2 * signal["mean_gain_se"]
    verdict = data["groups"]["llama-128x4"]["verdict"]
    assert not verdict["reproduces"] and verdict["reasons"][0] == "no_rl_signal"


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
    data = data_of(sweep_copy, allow_partial=True)
    assert data["partial"]
    records = {c["run"]: c for c in data["checkpoints"]}
    assert records["long_cot-diverse-ep9"]["missing"] == "run running"
    assert records["long_cot-diverse-ep9"]["sft_pass@k"] is None
    assert records["short_cot-diverse-ep3"]["missing"] == "no post-RL eval file"
    assert records["short_cot-diverse-ep3"]["rl_pass@k"] is None
    assert records["short_cot-diverse-ep3"]["sft_pass@k"]["1"] == pytest.approx(0.18)
    finished = len(NUMBERS) - 1  # long_cot-diverse-ep9 is still running
    assert data["predictor_source"].startswith(
        f"re-computed by `sftrl.study` with `sftrl.eval.predict` over the {finished} finished")
    assert data["groups"]["llama-128x4"]["n"] == finished - 1
    assert (data["setup"]["checkpoints"], data["setup"]["rows"]) == (finished, len(NUMBERS))
    assert data["rl_signal"]["n"] == finished - 1


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
    data = data_of(sweep_copy, paper_numbers=numbers)
    paper = data["paper"]
    assert paper["table"]["Llama-3-8B"]["generalization loss"] == {
        "instance_spearman": 0.5, "dataset_r2": "0.3 ± 0.1"}
    assert (paper["path"], paper["source"], paper["notes"]) == (
        str(numbers), "Table 3 of the paper.", ["k = 64 there."])
    # The paper's source must not replace the predictor's (it once did).
    assert data["predictor_source"].startswith("`predict/report/predictor.json`")
    # This study's ρ next to the paper's, and both margins over post-SFT pass@1.
    g = json.loads((sweep_copy / "predict" / "report" / "predictor.json").read_text())[
        "groups"]["llama-128x4"]["scores"]["instance"][predict.OUTCOME]
    loss, pass1 = g["-generalization_loss"]["spearman"]["rho"], g["pass@1"]["spearman"]["rho"]
    [difference] = paper["differences"]  # only Llama-3-8B, only the instance level has cells
    assert (difference["group"], difference["level"], difference["model"]) == (
        "llama-128x4", "instance", "Llama-3-8B")
    first, second = difference["cells"]
    assert first == {"proxy": "pass@1", "ours": pytest.approx(pass1), "theirs": 0.25}
    assert second == {"proxy": "-generalization_loss", "ours": pytest.approx(loss),
                      "theirs": 0.5, "margin_here": pytest.approx(loss - pass1),
                      "margin_there": pytest.approx(0.25)}
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


def test_python_m_sftrl_study_runs_the_package(tmp_path):
    """The documented command (`python -m sftrl.study ...`) reaches the package's main."""
    result = subprocess.run([sys.executable, "-m", "sftrl.study",
                             f"--sweep_dir={tmp_path / 'nowhere'}", f"--out={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"sftrl.study: {tmp_path / 'nowhere'}: no such sweep directory"


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
    """A time that includes a killed launcher's estimated attempt is marked as approximate."""
    status = json.loads((sweep_copy / "sweep.json").read_text())
    status["runs"]["answer_only-diverse-ep9"].update(elapsed_s=3600 + 120, estimated_attempts=1)
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    data = data_of(sweep_copy)
    assert [(c["run"], c["seconds"]) for c in data["checkpoints"] if c["seconds_estimated"]] == \
        [("answer_only-diverse-ep9", 3600 + 120)]
    assert render.duration(3600 + 120) == "1h02m00s"
    status["runs"]["answer_only-diverse-ep9"]["estimated_attempts"] = -1
    (sweep_copy / "sweep.json").write_text(json.dumps(status))
    with pytest.raises(study.StudyError, match=r"field 'estimated_attempts' is -1"):
        study.load_status(sweep_copy)


def test_setup_of_a_single_data_size(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", numbers=NUMBERS[:12], runs=grid_runs(VARIANTS))
    setup = data_of(sweep)["setup"]
    assert (setup["checkpoints"], setup["datasets"], setup["data_sizes"]) == (12, 6, [2000])


def test_the_papers_two_settings_are_recomputed_on_their_subsets(built):
    """The paper's data-set level (one distribution, trained differently) and instance level
    (different data sets, one recipe), from the checkpoint numbers by an independent route."""
    *_, data = built
    settings = data["groups"]["llama-128x4"]["paper_settings"]
    by_distribution: dict[str, list[int]] = {}
    by_recipe: dict[tuple[int, int], list[int]] = {}
    for i, (_, style, phrasing, size, epochs) in enumerate(RUNS):
        by_distribution.setdefault(f"{style}-{phrasing}", []).append(i)
        by_recipe.setdefault((size, epochs), []).append(i)
    sign = {"pass@1": (0, 1), "-generalization_loss": (2, -1), "pass@256": (1, 1)}
    right = dict.fromkeys(sign, 0)
    pairs = 0
    for members in by_distribution.values():
        for a, b in itertools.combinations(members, 2):
            dy = NUMBERS[a][3] - NUMBERS[b][3]
            pairs += dy != 0
            for proxy, (col, s) in sign.items():
                right[proxy] += s * (NUMBERS[a][col] - NUMBERS[b][col]) * dy > 0
    assert pairs == 5 + 6  # five distributions with 2 checkpoints, short_cot-diverse with 4
    assert settings["pairs"] == pairs
    assert {p: settings["ordered_right"][p] for p in sign} == right
    assert right["pass@1"] == 0 and right["pass@256"] == pairs
    [within] = settings["distributions"]  # the only distribution with >= 3 checkpoints
    assert (within["name"], within["n"]) == ("short_cot-diverse", 4)
    assert within["scores"]["pass@1"]["rho"] == pytest.approx(-1.0)
    assert within["min_p"] == pytest.approx(2 / 24, abs=0.03) and within["min_p"] >= 0.05
    recipes = {(r["data_size"], r["epochs"]): r for r in settings["same_recipe"]}
    assert set(recipes) == {key for key, members in by_recipe.items() if len(members) >= 3}
    for key, recipe in recipes.items():
        members = by_recipe[key]
        rl = [NUMBERS[i][3] for i in members]
        assert recipe["n"] == len(members) == 6
        assert recipe["scores"]["pass@1"]["rho"] == pytest.approx(
            stats.spearmanr([NUMBERS[i][0] for i in members], rl)[0])
        assert recipe["scores"]["pass@256"]["rho"] == pytest.approx(
            stats.spearmanr([NUMBERS[i][1] for i in members], rl)[0])


def test_spearman_of_pass_at_k_is_reported_for_every_k(built):
    *_, data = built
    rl = [n[3] for n in NUMBERS]
    by_k = data["groups"]["llama-128x4"]["spearman_by_k"]
    assert [s["k"] for s in by_k] == KS
    for s in by_k:
        assert s["rho"] == pytest.approx(
            stats.spearmanr([passk_curve(n[0], n[1])[str(s["k"])] for n in NUMBERS], rl)[0])
        assert 0 < s["p_value"] <= 1


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
    data = json.loads((readme.parent / "study.json").read_text())
    assert not data["partial"] and not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert len(data["checkpoints"]) == 4
    assert all(c["rl_pass@k"] is not None for c in data["checkpoints"])
    setup = data["setup"]
    assert (setup["checkpoints"], setup["datasets"], setup["data_sizes"]) == (4, 4, [48])
    assert data["paper"]["table"]["Mistral-NeMo-12B"]["pass@k"]["dataset_spearman"] == "0.92"
    # Every run kept its samples, so the guessing control is there; all zero here, so no share.
    assert all(set(c["sft_pass@k_control"]) == {"1", "4"} and
               c["sft_pass@k_control"]["4"] == pytest.approx(0, abs=5e-5)
               for c in data["checkpoints"])
    control = data["groups"][next(iter(data["groups"]))]["control"]
    assert control["k"] == 4 and control["share_k"] is None  # pass@4 is 0 everywhere
    assert control["control_max"] == pytest.approx(0, abs=5e-4)
    assert render.readme(data) == text
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode == 0 and again.stdout.count("[skip]") == 5, again.stdout[-2000:]


def test_the_guessing_control_is_computed_from_the_samples(sweep_copy, tmp_path):
    from sftrl.eval import passk

    run, checkpoint = "short_cot-diverse-ep9", "ep9-short_cot-diverse-2000-sft"
    path = sweep_copy / run / "samples" / checkpoint / "synthetic.jsonl"
    answers, golds = write_samples(path, PROMPTS, N)
    expected = {k: passk.mismatched_answer_pass_at_k(answers, golds, k, shifts=8)
                for k in (1, 256)}
    assert 0.1 < expected[256] < 0.9
    data = data_of(sweep_copy)
    records = {c["run"]: c for c in data["checkpoints"]}
    assert records[run]["sft_pass@k_control"] == {"1": pytest.approx(expected[1]),
                                                  "256": pytest.approx(expected[256])}
    assert records["answer_only-diverse-ep3"]["sft_pass@k_control"] is None
    p1, p256 = NUMBERS[[r[0] for r in RUNS].index(run)][:2]
    control = data["groups"]["llama-128x4"]["control"]
    assert (control["k"], control["shifts"]) == (256, 8)
    assert control["control_min"] == control["control_max"] == pytest.approx(expected[256])
    assert control["true_min"] == control["true_max"] == pytest.approx(p256)
    assert control["share_k"] == pytest.approx(expected[256] / p256)
    assert control["share_1"] == pytest.approx(expected[1] / p1)
    assert control["minus_control"] is None  # one checkpoint: no ranking
    # Bad samples are errors that name the file and line, or the count that disagrees.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(study.StudyError, match=rf"{path}: {PROMPTS - 1} prompts, but .*"
                       r"'benchmarks\.synthetic\.num_prompts' is 128"):
        study.write_study(sweep_copy, tmp_path / "out")
    path.write_text("\n".join([*lines[:5], "{", *lines[6:]]) + "\n")
    with pytest.raises(study.StudyError, match=rf"{path}:6: not valid JSON"):
        study.write_study(sweep_copy, tmp_path / "out")
