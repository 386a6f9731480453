"""Hand-made sweep directories for the study's tests (tests/test_study.py): what
`python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py` leaves behind, in the schema the
pipeline writes, with the real predictor's report."""

from __future__ import annotations

import datetime
import itertools
import json
from pathlib import Path

import numpy as np

from sftrl.eval import predict
from sftrl.stages import predict as predict_stage

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


def passk_curve(p1: float, p256: float) -> dict[str, float]:
    return {str(k): p1 + (p256 - p1) * np.log2(k) / 8 for k in KS}


def _eval(name: str, dataset: str, stage: str, p1: float, p256: float, loss: float,
          parent: str | None = None) -> dict:
    curve = passk_curve(p1, p256)
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


def write_samples(path: Path, prompts: int, n: int) -> tuple[list[list[str]], list[str]]:
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
