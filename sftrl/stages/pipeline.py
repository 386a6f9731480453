"""The 'pipeline' stage: SFT (each variant) -> eval -> GRPO -> eval -> predict -> report.

Run directory:
  <workdir>/sft/<variant>/     the SFT run (checkpoints, metrics.jsonl, tensorboard)
  <workdir>/rl/<variant>/      GRPO from that SFT run's last checkpoint
  <workdir>/eval/<variant>-sft.json, <variant>-rl.json    (sftrl.eval.record)
  <workdir>/samples/<variant>-{sft,rl}/<benchmark>.jsonl  every sample with its verdict
  <workdir>/report/            summary.md, plots, predictor tables
  <workdir>/pipeline.json      which steps are done

Every step is skipped when its outputs exist (a finished trainer returns at once, an eval json
is not recomputed, sampling resumes per prompt), so re-running the command after an interruption
anywhere continues where it stopped and ends with the same numbers. The run directory may be any
`etils.epath` path (gs://...); with several processes, process 0 writes pipeline.json and the
report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from sftrl import atomic, report
from sftrl.data import sources
from sftrl.eval import record as eval_record
from sftrl.sharding import Layout
from sftrl.stages import eval as eval_stage
from sftrl.stages import predict as predict_stage

log = logging.getLogger(__name__)


def variant_configs(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
    """{variant name: the config of its SFT run}; one entry for the config's own data."""
    from sftrl.data import synthetic

    if not config.pipeline.sft_variants:
        return {sources.dataset_name(config.data): config}
    out = {}
    for name in config.pipeline.sft_variants:
        variant = synthetic.SFTVariant.parse(name)
        c = config.copy_and_resolve_references()
        c.data.synthetic.style = variant.style
        c.data.synthetic.phrasing = variant.phrasing
        c.data.synthetic.size = variant.size
        out[variant.name] = c
    return out


class Progress:
    """`pipeline.json`: the steps done so far (informational; outputs decide what is skipped)."""

    def __init__(self, workdir: Path):
        self.path = atomic.as_path(workdir) / "pipeline.json"
        self.steps: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.steps = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.steps = {}

    def done(self, step: str, **info: Any) -> None:
        # A resumed pipeline passes its finished steps again (their outputs make them no-ops);
        # they keep the time they first finished, which run-time reports measure from.
        first = self.steps.get(step, {})
        stamp = first["time"] if first.get("done") and "time" in first else time.time()
        self.steps[step] = {"done": True, "time": stamp, **info}
        if jax.process_index() == 0:
            atomic.write_json(self.path, self.steps, indent=1)


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Layout) -> dict[str, Any]:
    from sftrl.stages import sft as sft_stage

    workdir = atomic.as_path(workdir)
    progress = Progress(workdir)
    variants = variant_configs(config)
    log.info("pipeline: %d SFT variant(s): %s", len(variants), ", ".join(variants))
    results: dict[str, Any] = {"stage": "pipeline", "variants": {}}
    for name, vconfig in variants.items():
        sft_dir = workdir / "sft" / name
        log.info("[%s] SFT -> %s", name, sft_dir)
        sft_summary = sft_stage.run(vconfig, sft_dir, layout)
        progress.done(f"{name}/sft", final_step=sft_summary["final_step"])

        # eval.name (e.g. a sweep's run name) keeps checkpoint names unique across a sweep
        base = f"{config.eval.name}-{name}" if config.eval.name else name
        entry: dict[str, Any] = {"sft": str(sft_dir), "checkpoints": {}}
        for step in list(config.pipeline.sft_steps) or [None]:
            entry["checkpoints"][f"step{step}" if step else "last"] = _branch(
                config, vconfig, layout, workdir, progress, name, base, sft_dir, step)
        results["variants"][name] = entry

    results["predict"] = _predict(config, workdir)
    summary = workdir / "report" / "summary.md"
    if jax.process_index() == 0:  # the report is read from the files every process sees
        summary = report.write_report(workdir)
    progress.done("report", path=str(summary))
    results["report"] = str(summary)
    print(f"sftrl: report written to {summary}", flush=True)
    return results


def _branch(config: ml_collections.ConfigDict, vconfig: ml_collections.ConfigDict,
            layout: Layout, workdir: Path, progress: Progress, name: str, base: str,
            sft_dir: Path, step: int | None) -> dict[str, Any]:
    """Eval of one SFT checkpoint (`step`, None: the last), then GRPO from it once per RL seed,
    each followed by its eval. Names: <base>[-step<N>]-sft, <base>[-step<N>]-rl[-seed<S>]."""
    from sftrl.stages import rl as rl_stage

    tag = f"-step{step}" if step else ""
    sft_ckpt = f"{base}{tag}-sft"
    log.info("[%s] eval of the SFT checkpoint%s", name, tag)
    eval_stage.evaluate_run(vconfig, sft_dir, layout, out_dir=workdir, name=sft_ckpt,
                            stage="sft", dataset=name, step=step)
    progress.done(f"{name}{tag}/eval-sft")
    entry: dict[str, Any] = {"eval_sft": str(workdir / "eval" / f"{sft_ckpt}.json")}
    if not config.pipeline.rl:
        return entry
    if config.pipeline.min_sft_pass_at_1 > 0:
        record = eval_record.read(workdir / "eval" / f"{sft_ckpt}.json", ("pass@1",))
        pass1 = record.mean_curve()[1]
        if pass1 < config.pipeline.min_sft_pass_at_1:
            log.warning("[%s] post-SFT pass@1 %.4f < pipeline.min_sft_pass_at_1 %.4f: no GRPO "
                        "from %s", name, pass1, config.pipeline.min_sft_pass_at_1, sft_ckpt)
            entry["rl_skipped"] = f"post-SFT pass@1 {pass1:.4f}"
            progress.done(f"{name}{tag}/rl-skipped", pass_at_1=pass1)
            return entry
    for seed in list(config.pipeline.rl_seeds) or [None]:
        seed_tag = "" if seed is None else f"-seed{seed}"
        sub = "-".join(part for part in (tag[1:], seed_tag[1:]) if part)
        rl_dir = workdir / "rl" / name / sub if sub else workdir / "rl" / name
        rl_config = vconfig.copy_and_resolve_references()
        rl_config.rl.init_workdir = str(sft_dir)
        rl_config.rl.init_step = step or 0
        if seed is not None:
            rl_config.seed = seed
        log.info("[%s] GRPO%s%s -> %s", name, tag, seed_tag, rl_dir)
        rl_stage.run(rl_config, rl_dir, layout)
        progress.done(f"{name}{tag}{seed_tag}/rl")
        rl_ckpt = f"{base}{tag}-rl{seed_tag}"
        # The eval samples with the SFT eval's seed (paired sampling keys; only the policy
        # differs), and with eval.rl_num_samples when set (post-RL pass@1 needs fewer samples).
        eval_config = rl_config.copy_and_resolve_references()
        eval_config.seed = vconfig.seed
        if config.eval.rl_num_samples:
            eval_config.eval.num_samples = config.eval.rl_num_samples
        log.info("[%s] eval of the RL checkpoint%s%s", name, tag, seed_tag)
        eval_stage.evaluate_run(eval_config, rl_dir, layout, out_dir=workdir, name=rl_ckpt,
                                stage="rl", sft_checkpoint=sft_ckpt, dataset=name)
        progress.done(f"{name}{tag}{seed_tag}/eval-rl")
        entry[f"rl{seed_tag}"] = str(rl_dir)
        entry[f"eval_rl{seed_tag}"] = str(workdir / "eval" / f"{rl_ckpt}.json")
    return entry


def _predict(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """The predictor over this run's checkpoints; too few of them is reported, not fatal."""
    from sftrl.eval.predict import PredictError

    try:
        return predict_stage.run(config, workdir)
    except PredictError as e:
        log.warning("predict skipped: %s", e)
        return {"skipped": str(e)}
