"""Does GRPO raise test accuracy? The tiny SFT -> GRPO run with a test pass@1 curve.

What is measured
    The config's SFT run (or `--sft_workdir`, an existing one), then GRPO from its last
    checkpoint saving every `--curve_every` steps, then the eval stage on the SFT checkpoint and
    on every RL checkpoint: the first `eval.limit` prompts of the embedded task's test set
    (2-5 step problems; RL trains on 1-3 step ones), `eval.num_samples` samples each. Every
    checkpoint is sampled with the same per-prompt random keys (keyed by record id), so the
    post-SFT vs post-RL difference is paired: the same prompts with common random numbers.

Statistics (per checkpoint; P prompts, n samples, p_i = c_i / n the per-prompt accuracy)
    pass@1        mean_i p_i
    se            std_i(p_i) / sqrt(P): over prompts, i.e. another draw of test prompts and
                  samples would move pass@1 by about this much
    sampling_se   sqrt(sum_i p_i (1 - p_i) / n) / P: the binomial noise of the samples alone,
                  with the prompts fixed
    delta, delta_se   pass@1 minus the SFT checkpoint's, and std_i(p_i - p_i^SFT) / sqrt(P)
    train_accuracy    mean RL rollout accuracy over the steps since the previous point

Usage
    python benchmarks/grpo_curve.py --workdir=runs/grpo_curve
    python benchmarks/grpo_curve.py --workdir=W --config=configs/tiny.py:grpo_demo   # RL helps
    python benchmarks/grpo_curve.py --workdir=W --sft_workdir=runs/tiny/sft/short_cot-diverse-2000
    python benchmarks/grpo_curve.py --workdir=W --overrides rl.lr=3e-4 rl.num_steps=60
Every stage is skipped when its outputs exist (finished trainers return at once, eval jsons are
not recomputed), so `--workdir` of an existing run just reads it. Writes W/grpo_curve.json and
W/grpo_curve.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftrl import config_lib, launch  # noqa: E402

BENCHMARK = "synthetic"
SFT_NAME = "sft"
RL_NAME = "rl"


class CurveError(ValueError):
    """A run directory that does not hold what the curve needs; names the file and field."""


def load_config(path: str, overrides: Sequence[str], curve_every: int):
    """The config file's config, set up for a curve run, then the user's overrides."""
    try:  # "configs/tiny.py:grpo_demo" names a variant, as --config= does
        config = launch.load_config(path)
    except launch.SweepError as error:
        raise CurveError(f"--config: cannot load {path}: {error}") from None
    # The curve comes from the eval stage on saved checkpoints, so the trainer's own (small-n)
    # evaluator would only cost time; every curve checkpoint must survive max_to_keep.
    config.rl.evals = ()
    config.rl.eval_every = 0
    config.rl.save_every = curve_every
    config.sft.eval_every = 0
    config = config_lib.apply_overrides(config, overrides)
    config.checkpoint.max_to_keep = max(config.checkpoint.max_to_keep,
                                        config.rl.num_steps // max(config.rl.save_every, 1) + 2)
    config.checkpoint.async_save = False
    config_lib.validate(config)
    return config


# --- statistics -------------------------------------------------------------------------------


def per_prompt_accuracy(rows: Sequence[Mapping[str, Any]], where: str) -> dict[str, float]:
    """{prompt id: c / n} from sample-store rows (each with `id` and a list `correct`)."""
    out: dict[str, float] = {}
    for number, row in enumerate(rows, start=1):
        correct = row.get("correct")
        if not isinstance(correct, list) or not correct:
            raise CurveError(f"{where}:{number}: field 'correct' is {correct!r}, not a non-empty "
                             "list of verdicts")
        out[str(row["id"])] = float(np.mean(np.asarray(correct, bool)))
    return out


def pass1_stats(accuracy: Mapping[str, float], n: int) -> dict[str, float]:
    """pass@1 with its standard error over prompts and its binomial sampling error."""
    p = np.asarray(list(accuracy.values()), np.float64)
    if p.size == 0:
        raise CurveError("pass1_stats: no prompts")
    se = float(p.std(ddof=1) / math.sqrt(p.size)) if p.size > 1 else None
    return {"pass@1": float(p.mean()), "se": se,
            "sampling_se": float(math.sqrt(float((p * (1 - p)).sum()) / n) / p.size),
            "prompts": int(p.size), "n": int(n)}


def paired_delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """after - before pass@1 over the prompts both have, with the paired standard error."""
    ids = sorted(set(after) & set(before))
    if len(ids) != len(after) or len(ids) != len(before):
        raise CurveError(f"paired_delta: the checkpoints were evaluated on different prompts "
                         f"({len(after)} vs {len(before)}, {len(ids)} shared)")
    d = np.asarray([after[i] - before[i] for i in ids], np.float64)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    # None, not NaN, where undefined: the JSON stays strict and comparable
    return {"delta": float(d.mean()), "delta_se": se,
            "delta_z": float(d.mean() / se) if se else None}


def train_accuracy(metrics_path: Path, steps: Sequence[int]) -> dict[int, float]:
    """Mean rollout accuracy over (previous point, step] for each curve step."""
    by_step: dict[int, float] = {}
    with metrics_path.open() as f:
        for number, line in enumerate(f, start=1):
            record = json.loads(line)
            if "accuracy" not in record:
                continue
            if "step" not in record:
                raise CurveError(f"{metrics_path}:{number}: field 'step' missing")
            by_step[int(record["step"])] = float(record["accuracy"])
    out, previous = {}, 0
    for step in steps:
        window = [v for s, v in by_step.items() if previous < s <= step]
        if not window:
            raise CurveError(f"{metrics_path}: no 'accuracy' for steps {previous + 1}..{step}")
        out[step] = float(np.mean(window))
        previous = step
    return out


# --- the run ----------------------------------------------------------------------------------


def _read_rows(workdir: Path, ckpt_name: str) -> list[dict[str, Any]]:
    from sftrl.eval.sample_store import SampleStore

    path = workdir / "samples" / ckpt_name / f"{BENCHMARK}.jsonl"
    if not path.exists():
        raise CurveError(f"{path}: missing (was {ckpt_name} evaluated?)")
    with SampleStore(path) as store:
        return store.rows()


def run(config, workdir: Path, sft_workdir: Path | None = None) -> dict[str, Any]:
    """SFT (unless given) -> GRPO -> eval of every checkpoint -> the curve (json + markdown)."""
    from sftrl.stages import eval as eval_stage
    from sftrl.stages import rl, sft

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    layout = config_lib.make_layout(config)
    times: dict[str, float] = {}

    def timed(label: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[label] = round(time.perf_counter() - start, 1)
        return out

    sft_dir = Path(sft_workdir) if sft_workdir else workdir / "sft"
    if sft_workdir is None:
        timed("sft_s", sft.run, config, sft_dir, layout)
    timed("eval_sft_s", eval_stage.evaluate_run, config, sft_dir, layout, out_dir=workdir,
          name=SFT_NAME, stage="sft")
    rl_config = config.copy_and_resolve_references()
    rl_config.rl.init_workdir = str(sft_dir)
    rl_dir = workdir / "rl"
    timed("rl_s", rl.run, rl_config, rl_dir, layout)
    eval_config = rl_config.copy_and_resolve_references()
    eval_config.eval.checkpoints = "all"
    timed("eval_rl_s", eval_stage.evaluate_run, eval_config, rl_dir, layout, out_dir=workdir,
          name=RL_NAME, stage="rl", sft_checkpoint=SFT_NAME)
    result = summarize(workdir, config)
    result["wall_s"] = times
    write(workdir, result)
    return result


def summarize(workdir: Path, config) -> dict[str, Any]:
    """The curve from `workdir`'s eval samples and RL metrics."""
    workdir = Path(workdir)
    n = int(config.eval.num_samples)
    before = per_prompt_accuracy(_read_rows(workdir, SFT_NAME), f"samples/{SFT_NAME}")
    rl_steps = sorted(int(p.stem.rsplit("-step", 1)[1])
                      for p in (workdir / "eval").glob(f"{RL_NAME}-step*.json"))
    if not rl_steps:
        raise CurveError(f"{workdir / 'eval'}: no {RL_NAME}-step*.json (was GRPO evaluated?)")
    train = train_accuracy(workdir / "rl" / "metrics.jsonl", rl_steps)
    points = [{"step": 0, **pass1_stats(before, n), "delta": 0.0, "delta_se": 0.0,
               "train_accuracy": None}]
    for step in rl_steps:
        name = f"{RL_NAME}-step{step}"
        after = per_prompt_accuracy(_read_rows(workdir, name), f"samples/{name}")
        points.append({"step": step, **pass1_stats(after, n), **paired_delta(after, before),
                       "train_accuracy": train[step]})
    final = points[-1]
    return {
        "by_steps": by_steps(config, before, after),
        "benchmark": BENCHMARK, "n": n, "prompts": final["prompts"],
        "post_sft": {k: points[0][k] for k in ("pass@1", "se", "sampling_se")},
        "post_rl": {k: final[k] for k in ("pass@1", "se", "sampling_se")},
        "delta": final["delta"], "delta_se": final["delta_se"], "delta_z": final["delta_z"],
        "curve": points,
        "settings": {"sft": config.sft.to_dict(), "rl": config.rl.to_dict(),
                     "eval": config.eval.to_dict(), "data": config.data.to_dict()},
    }


def by_steps(config, before: Mapping[str, float], after: Mapping[str, float]
             ) -> dict[str, dict[str, float]]:
    """Post-SFT and post-RL pass@1 per problem length (RL trains on the short ones only)."""
    from sftrl.data import sources, synthetic

    steps = {r["id"]: r["steps"] for r in synthetic.test_records(
        sources.synthetic_task(config.data))}
    out = {}
    for k in sorted({steps[i] for i in before}):
        ids = [i for i in before if steps[i] == k]
        out[str(k)] = {"prompts": len(ids),
                       "post_sft": float(np.mean([before[i] for i in ids])),
                       "post_rl": float(np.mean([after[i] for i in ids]))}
    return out


def markdown(result: Mapping[str, Any]) -> str:
    def fmt(x: float | None, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    s, r = result["post_sft"], result["post_rl"]
    lines = [
        f"# GRPO curve: test pass@1 on {result['prompts']} `{result['benchmark']}` test prompts, "
        f"n = {result['n']}",
        "",
        f"post-SFT pass@1 {fmt(s['pass@1'])} ± {fmt(s['se'])}; post-RL pass@1 "
        f"{fmt(r['pass@1'])} ± {fmt(r['se'])} (± one SE over prompts); paired difference "
        f"{result['delta']:+.3f} ± {fmt(result['delta_se'])} (z = {fmt(result['delta_z'], 1)})",
        "",
        "| RL step | test pass@1 | SE | sampling SE | Δ vs SFT | Δ SE | train accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in result["curve"]:
        lines.append(f"| {p['step']} | {fmt(p['pass@1'])} | {fmt(p['se'])} | "
                     f"{fmt(p['sampling_se'])} | {p['delta']:+.3f} | {fmt(p['delta_se'])} | "
                     f"{fmt(p['train_accuracy'])} |")
    lines += ["", "| problem steps | prompts | post-SFT pass@1 | post-RL pass@1 |",
              "|---:|---:|---:|---:|"]
    for k, v in result["by_steps"].items():
        lines.append(f"| {k} | {v['prompts']} | {fmt(v['post_sft'])} | {fmt(v['post_rl'])} |")
    if "wall_s" in result:
        lines += ["", "wall time (s): " + ", ".join(f"{k} {v}" for k, v in
                                                    result["wall_s"].items())]
    return "\n".join(lines) + "\n"


def write(workdir: Path, result: Mapping[str, Any]) -> None:
    text = json.dumps(result, indent=2, sort_keys=True, allow_nan=False)
    (workdir / "grpo_curve.json").write_text(text + "\n")
    (workdir / "grpo_curve.md").write_text(markdown(result))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="run directory (created or read)")
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--sft_workdir", default=None,
                        help="an existing SFT run to start GRPO from (no SFT is trained)")
    parser.add_argument("--curve_every", type=int, default=10, help="RL steps between points")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides a.b=value")
    args = parser.parse_args(argv)
    if args.curve_every < 1:
        parser.error("--curve_every must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    config = load_config(args.config, args.overrides, args.curve_every)
    result = run(config, Path(args.workdir),
                 Path(args.sft_workdir) if args.sft_workdir else None)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
