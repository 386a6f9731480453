"""The 'eval' stage: held-out loss and pass@k curves for a run's checkpoints, from the sharded
params (no export), into `<workdir>/eval/<ckpt>.json` and `<workdir>/samples/<ckpt>/`.

Which checkpoints: `eval.checkpoints` ("latest", "all" or a list of steps) of `<workdir>`'s
orbax checkpoints; a workdir without checkpoints but with `model.hf_path` evaluates that model
("base"). Sampling resumes per prompt from the sample files, and a checkpoint whose eval json
already exists is skipped, so an interrupted eval re-run continues where it stopped. The run
directory (and `out_dir`) may be any `etils.epath` path (gs://...): see sftrl.eval.sample_store
for how samples are stored where a file cannot be appended to.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections

from sftrl import atomic
from sftrl.data import sources
from sftrl.data.prompts import BENCHMARK_TEMPLATES, format_prompt
from sftrl.data.tokenizer import Tokenizer, load_tokenizer
from sftrl.errors import UserError
from sftrl.eval.benchmarks import SamplingSpec, evaluate_checkpoint
from sftrl.eval.heldout import HeldoutEvaluator
from sftrl.models.transformer import Model
from sftrl.sampling import make_sampler_params
from sftrl.sharding import SAMPLING_RULES, Layout
from sftrl.train import common
from sftrl.train import state as state_lib

log = logging.getLogger(__name__)


def benchmark_records(config: ml_collections.ConfigDict) -> dict[str, list[dict[str, Any]]]:
    from sftrl.data.benchmarks import load_benchmark

    out = {}
    limit = config.eval.limit or None
    for name in config.eval.benchmarks:
        if name == "synthetic":
            records = sources.synthetic_test_records(config.data)
            out[name] = records[:limit] if limit else records
        else:
            out[name] = load_benchmark(name, limit=limit)
    return out


def sampling_spec(config: ml_collections.ConfigDict) -> SamplingSpec:
    e = config.eval
    return SamplingSpec(
        num_samples=e.num_samples, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
        top_p=e.top_p, top_k=e.top_k, seed=config.seed, prompts_per_wave=e.prompts_per_wave,
        max_kv_tokens=e.max_kv_tokens or None,
    )


def prompt_formatter(config: ml_collections.ConfigDict, benchmark: str):
    template = config.eval.prompt_template or BENCHMARK_TEMPLATES.get(benchmark, "boxed")

    def render(record: dict[str, Any]) -> str:
        return format_prompt(record["problem"], template)

    return render


def group_name(config: ml_collections.ConfigDict) -> str:
    if config.eval.group:
        return config.eval.group
    if config.model.hf_path:
        return Path(config.model.hf_path).name
    return f"{config.model.model_type}-{config.model.hidden_size}x{config.model.num_layers}"


def steps_to_evaluate(config: ml_collections.ConfigDict, run_dir: Path) -> list[int]:
    directory = atomic.as_path(run_dir) / "checkpoints"
    if not directory.exists():
        return []
    with state_lib.Checkpointer(directory, async_save=False) as ckpt:
        steps = ckpt.all_steps()
    if not steps:
        return []
    which = config.eval.checkpoints
    if which == "latest":
        return [steps[-1]]
    if which == "all":
        return steps
    wanted = [int(part) for part in which.split(",")]
    missing = [s for s in wanted if s not in steps]
    if missing:
        # a user's request (a flag or sweep entry), not a bug: one line, exit 2
        raise UserError(f"eval.checkpoints: steps {missing} not in {directory} (has {steps})")
    return wanted


def heldout_metrics(config: ml_collections.ConfigDict, model: Model, tokenizer: Tokenizer
                    ) -> dict[str, float]:
    from sftrl.data.sft import heldout_batches

    def loss_on(records: list[dict[str, Any]]) -> dict[str, float]:
        evaluator = HeldoutEvaluator(model, heldout_batches(
            records, tokenizer, batch_size=config.sft.heldout_batch_size,
            max_length=config.data.max_length, shard_index=jax.process_index(),
            shard_count=jax.process_count()))
        return evaluator.evaluate(model.params).metrics()

    own = loss_on(sources.sft_splits(config.data).heldout)
    common = sources.common_heldout(config)
    if common is None:
        return own
    # With a common held-out set, "heldout/*" (whose loss becomes the eval file's
    # generalization_loss) is measured on it, so every checkpoint of a study is scored on the
    # same examples; the data set's own held-out split stays beside it as "own_heldout/*".
    return {**loss_on(common),
            **{"own_heldout/" + k.removeprefix("heldout/"): v for k, v in own.items()}}


def evaluate_params(
    config: ml_collections.ConfigDict, model: Model, tokenizer: Tokenizer, out_dir: Path,
    ckpt_name: str, meta: dict[str, Any],
) -> dict[str, Any]:
    """One checkpoint: held-out loss (train layout) and every benchmark (sampling layout)."""
    heldout = heldout_metrics(config, model, tokenizer) if config.eval.heldout else None
    # no remat for sampling (nothing is differentiated; see sftrl.train.grpo)
    module = model.module.clone(layout=Layout(model.module.layout.mesh, SAMPLING_RULES),
                                remat="none")
    sampler = Model(module, make_sampler_params(module)(model.params))
    records = benchmark_records(config)
    formatters = {name: prompt_formatter(config, name) for name in records}

    def render(record: dict[str, Any]) -> str:  # each benchmark keeps its own prompt template
        return formatters[record["_benchmark"]](record)

    tagged = {name: [{**r, "_benchmark": name} for r in recs] for name, recs in records.items()}
    return evaluate_checkpoint(
        sampler, tokenizer, tagged, workdir=out_dir, ckpt_name=ckpt_name,
        spec=sampling_spec(config), meta=meta, format_prompt=render, heldout_metrics=heldout,
    )


def evaluate_run(
    config: ml_collections.ConfigDict, run_dir: Path, layout: Layout, *,
    out_dir: Path | None = None, name: str | None = None, stage: str | None = None,
    sft_checkpoint: str | None = None, dataset: str | None = None, step: int | None = None,
) -> dict[str, Any]:
    """Evaluates the checkpoints of `run_dir` into `out_dir` (default: run_dir); with `step`,
    exactly that checkpoint, named `name`."""
    run_dir = atomic.as_path(run_dir)
    out_dir = atomic.as_path(out_dir or run_dir)
    stage = stage or config.eval.stage
    name = name or config.eval.name or run_dir.name
    tokenizer = load_tokenizer(sources.tokenizer_path(config))
    meta = {"group": group_name(config), "stage": stage,
            "dataset": dataset or sources.dataset_name(config.data)}
    if stage == "rl":
        meta["sft_checkpoint"] = sft_checkpoint or config.eval.sft_checkpoint
        if not meta["sft_checkpoint"]:
            raise UserError("eval.sft_checkpoint: an RL checkpoint needs the name of the SFT "
                            "checkpoint it started from")
    steps = steps_to_evaluate(config, run_dir) if step is None else [step]
    written: dict[str, Any] = {}
    if not steps:
        if not config.model.hf_path:
            raise UserError(f"{run_dir}: no checkpoints to evaluate and no model.hf_path")
        ckpt_name = f"{name}-base"
        if not (out_dir / "eval" / f"{ckpt_name}.json").exists():
            model = common.load_model(config, layout)
            evaluate_params(config, model, tokenizer, out_dir, ckpt_name, meta)
        written[ckpt_name] = str(out_dir / "eval" / f"{ckpt_name}.json")
        return {"stage": "eval", "evaluated": written}
    module = common.training_module(config, layout)
    for ckpt_step in steps:
        ckpt_name = (name if config.eval.checkpoints == "latest" or step is not None
                     else f"{name}-step{ckpt_step}")
        path = out_dir / "eval" / f"{ckpt_name}.json"
        if path.exists():
            log.info("%s exists; skipping", path)
        else:
            params, _ = common.restore_params(config, run_dir, module, layout, ckpt_step,
                                              section=stage)
            result = evaluate_params(config, Model(module, params), tokenizer, out_dir,
                                     ckpt_name, meta)
            log.info("%s: %s", ckpt_name, json.dumps(
                {b: r["pass@1"] for b, r in result["benchmarks"].items()}))
        written[ckpt_name] = str(path)
    return {"stage": "eval", "evaluated": written}


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Layout) -> dict[str, Any]:
    return evaluate_run(config, workdir, layout)
