"""sftrl.report: plots and summary.md from synthetic eval files and metrics.jsonl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl import report
from sftrl.eval import predict
from sftrl.eval.record import EvalRecordError

ROOT = Path(__file__).resolve().parents[1]


def _bench(p1: float, ci: bool = True) -> dict:
    curve = {str(k): min(1.0, p1 * (1 + i * 0.5)) for i, k in enumerate((1, 2, 4, 8))}
    entry = {"n": 8, "num_prompts": 10, "pass@1": p1, "pass@k": curve,
             "maj@k": {"8": p1 + 0.05}, "learnable_fraction": 0.4, "truncation_rate": 0.1,
             "mean_response_tokens": 37.5, "mean_token_entropy": 0.8,
             "extrapolation": {"fitted": True, "pass@k": {"1024": 0.97}, "max_abs_error": 0.01}}
    if ci:
        entry["pass@k_ci"] = {k: [v - 0.05, v + 0.05] for k, v in curve.items()}
    return entry


def _write_eval(workdir: Path, ckpt: str, p1: float, loss: float) -> None:
    record = {"checkpoint": ckpt, "group": "tiny", "dataset": "toy", "stage": "sft",
              "generalization_loss": loss,
              "benchmarks": {"math500": _bench(p1), "gsm8k": _bench(p1 + 0.1, ci=False)}}
    (workdir / "eval").mkdir(parents=True, exist_ok=True)
    (workdir / "eval" / f"{ckpt}.json").write_text(json.dumps(record))


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_plots_and_tables(tmp_path):
    for i, ckpt in enumerate(["sft-a", "sft-b", "sft-c"]):
        _write_eval(tmp_path, ckpt, 0.2 + 0.1 * i, 1.0 + i)
    lines = [{"step": s, "stage": "sft", "heldout/loss": 2.0 - 0.1 * s} for s in range(0, 50, 10)]
    lines.insert(2, {"step": 15, "stage": "sft", "train/loss": 1.0})  # no held-out loss: skipped
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 60, "heldo'
    (tmp_path / "metrics.jsonl").write_text(text)

    summary = report.write_report(tmp_path)
    out = tmp_path / "report"
    assert summary == out / "summary.md"
    for name in ["passk_ckpt_sft-a.png", "passk_ckpt_sft-b.png", "passk_ckpt_sft-c.png",
                 "passk_bench_math500.png", "passk_bench_gsm8k.png", "heldout_loss.png"]:
        assert _png(out / name), name
    md = summary.read_text()
    for ckpt in ("sft-a", "sft-b", "sft-c"):
        assert f"## {ckpt}" in md and f"(passk_ckpt_{ckpt}.png)" in md
    assert "Generalization loss: 2.0000 nats/token" in md
    row = next(line for line in md.splitlines() if line.startswith("| math500 |")
               and "0.200" in line)
    assert "pass@8 = 0.500 [0.450, 0.550]" in row
    assert "0.970 @1024 (err 0.010)" in row
    assert "(heldout_loss.png)" in md and "Predictor" not in md
    used: dict[str, str] = {}
    assert [report._slug(n, used) for n in ("a/b", "a_b", "a/b")] == ["a_b", "a_b-2", "a_b"]
    assert report.load_heldout(tmp_path / "metrics.jsonl") == {
        "sft": [(s, pytest.approx(2.0 - 0.1 * s)) for s in range(0, 50, 10)]}


def test_report_embeds_the_predictor_and_runs_from_the_command_line(tmp_path):
    for i, ckpt in enumerate(["a", "b", "c"]):
        _write_eval(tmp_path, ckpt, 0.1 + 0.2 * i, 2.0 - i * 0.3)
    candidates = predict.load_eval_dir(tmp_path / "eval")
    predict.write_report(predict.evaluate(candidates, predict.Options(n_bootstrap=10)),
                         tmp_path / "report")
    proc = subprocess.run([sys.executable, "-m", "sftrl.report", f"--workdir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "## a" in md and "## Predictor" in md and "## Predictor summary" in md
    assert "[`predictor.json`](predictor.json)" in md


def test_report_errors_name_the_file_and_field(tmp_path):
    (tmp_path / "eval").mkdir()
    bad = tmp_path / "eval" / "x.json"
    bad.write_text(json.dumps({"checkpoint": "x", "benchmarks": {"m": {"pass@k": {"one": 1}}}}))
    with pytest.raises(EvalRecordError, match=r"x\.json: benchmarks\.m: field 'pass@k'"):
        report.write_report(tmp_path)
    bad.write_text("{\n oops")
    with pytest.raises(EvalRecordError, match=r"x\.json:2: not valid JSON"):
        report.write_report(tmp_path)
    _write_eval(tmp_path, "x", 0.1, 1.0)
    (tmp_path / "eval" / "y.json").write_text((tmp_path / "eval" / "x.json").read_text())
    with pytest.raises(EvalRecordError, match=r"y\.json: field 'checkpoint': 'x' is also"):
        report.write_report(tmp_path)
    (tmp_path / "eval" / "y.json").unlink()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "heldout/loss": 1}\nnot json\n{}\n')
    with pytest.raises(report.ReportError, match=r"metrics\.jsonl:2: not valid JSON"):
        report.write_report(tmp_path)
    assert report.main([f"--workdir={tmp_path / 'missing'}"]) == 1
