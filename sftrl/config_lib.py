"""The config schema, its validation, and overrides.

Every config file starts from `base_config()` and changes values; `validate` then checks the
result once at start-up: unknown keys, wrong types, impossible values and a mesh that does not fit
the devices all fail here with the key named, never later inside XLA.

One concept, the run config, at ~800 lines: a key's default (base_config and the paper/CPU
scales), its check (validate, check_inputs) and the ':variant' / 'a.b=value' ways to change it
are read together, and the stages take their typed pieces from here (model_config, mesh_sizes,
make_layout, policy_loss_config). The optimizer keys are `sftrl.optim`'s (config_defaults).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections

from sftrl import optim, sharding
from sftrl.models.attention import ATTENTION_IMPLS
from sftrl.models.model_config import ModelConfig, ModelConfigError

STAGES = ("model", "sft", "rl", "eval", "predict", "pipeline", "study")
# Stages whose run directory may be an object store (--workdir=gs://...): every write they make
# goes through sftrl.atomic or orbax (eval samples: one part file per wave there, see
# sftrl.eval.sample_store). The model and study stages write their folder on a local disk.
REMOTE_STAGES = ("sft", "rl", "eval", "predict", "pipeline")
# The trainer sections whose run (and TensorBoard files) a stage writes.
TRAINERS = {"sft": ("sft",), "rl": ("rl",), "pipeline": ("sft", "rl")}
DTYPES = ("auto", "float32", "bfloat16")
REMAT = ("none", "full", "dots", "dots_no_batch")
DATA_SOURCES = ("synthetic", "files")
# evaluators each trainer runs every eval_every steps (anything else is refused at validation)
SFT_EVALS = ("heldout",)
RL_EVALS = ("passk",)


class ConfigError(ValueError):
    """An invalid config; the message starts with the offending key."""


def _rope_scaling(
    factor: float, low: float, high: float, original: int
) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(factor=factor, low_freq_factor=low, high_freq_factor=high,
             original_max_position_embeddings=original)
    )


LLAMA3_1_ROPE_SCALING = dict(factor=8.0, low=1.0, high=4.0, original=8192)


def llama3_rope_scaling(**kwargs: Any) -> ml_collections.ConfigDict:
    return _rope_scaling(**{**LLAMA3_1_ROPE_SCALING, **kwargs})


def base_config() -> ml_collections.ConfigDict:
    """The full schema with defaults. A key that is not here is not a config key."""
    c = ml_collections.ConfigDict()
    c.stage = "pipeline"
    # True for a released model's architecture at paper scale (full_size_config): such a run
    # must bring its own SFT data (check_full_size_run), the embedded task is CPU-sized.
    c.full_size = False
    c.seed = 0
    c.dtype = "auto"  # params and compute: bfloat16 on accelerators, float32 on CPU
    c.remat = "none"
    # training self-attention: auto = cuDNN on GPU for unpacked bf16 batches, else flash
    c.attention = "auto"

    c.model = ml_collections.ConfigDict()
    c.model.model_type = "llama"
    c.model.vocab_size = 256
    c.model.hidden_size = 128
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.num_kv_heads = 2
    c.model.head_dim = 32
    c.model.intermediate_size = 384
    c.model.rope_theta = 10000.0
    # None, or a ConfigDict made by llama3_rope_scaling().
    c.model.rope_scaling = ml_collections.config_dict.placeholder(ml_collections.ConfigDict)
    c.model.rms_norm_eps = 1e-5
    c.model.qk_norm = False
    c.model.tie_embeddings = False
    c.model.max_position_embeddings = 8192
    c.model.sliding_window = ml_collections.config_dict.placeholder(int)
    # A local Hugging Face folder: when set, weights and architecture come from it (its config.json
    # wins; a difference from the fields above is logged); when empty, the model is initialised at
    # random from `seed` with the fields above.
    c.model.hf_path = ""

    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # What the run asks a scheduler for (sftrl.launch --launcher=xm): "" (the host it starts
    # on), a TPU slice "v5p-64" / "v5p:2x4x4", or GPUs "h100:8" ("h100:8x2": 2 hosts).
    # sftrl.accelerators parses it; the launcher validates the mesh against its devices.
    c.accelerator = ""

    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True))

    # SFT data: the embedded synthetic task, or local JSONL/Parquet files (chat `messages` or
    # `problem`/`solution` records); the held-out split (generalization loss) comes from the same
    # data.
    c.data = ml_collections.ConfigDict()
    c.data.source = "synthetic"  # "synthetic" | "files"
    # A Hugging Face tokenizer folder. "": the synthetic task's own tokenizer for source
    # "synthetic", else model.hf_path.
    c.data.tokenizer = ""
    c.data.synthetic = ml_collections.ConfigDict(
        dict(style="short_cot", phrasing="diverse", size=2000, seed=0,
             # difficulty (number of steps) of the RL prompts; SFT data has 1-3, the test 2-5
             rl_min_steps=1, rl_max_steps=3,
             # 1: task v1 (style x phrasing); 2: task v2 (sftrl.data.synthetic_v2: unguessable
             # answers, one CoT style; structure x length; style/phrasing/rl_*_steps unused)
             version=1, structure="diverse", length="varied",
             # task v2 only (sftrl.data.synthetic_v2.TaskConfigV2): the operations, how many
             # quantities a problem tracks (2: both counts boxed together), the start range and
             # the largest value along the way
             ops="add,sub,double,halve", counters=1, min_start=100, max_start=999,
             max_value=4999,
             # task v2's chain-of-thought style: "equations" | "state" (TaskConfigV2.cot), and
             # the largest add/subtract operand
             cot="equations", max_operand=20)
    )
    c.data.train_files = ()
    c.data.heldout_fraction = 0.05
    c.data.max_heldout_examples = 512  # 0: the whole held-out split
    c.data.max_length = 512
    c.data.packing = True
    c.data.overlong = "drop"  # "drop" | "truncate" examples longer than max_length (counted)
    # Source "files" only. Fields of files that use other names, "target=field,...": targets
    # id, problem, solution, messages (turns {role, content} or ShareGPT {from, value}) and
    # system, e.g. "solution=generated_solution" (OpenMathInstruct-2),
    # "problem=query,solution=response" (MetaMathQA), "messages=conversations,system=system"
    # (OpenThoughts). Checked on every file's first record at start-up (file:line:field).
    c.data.fields = ""
    # Source "files" only. True: each process reads only its shards' rows of the files and
    # tokenizes examples as batches need them (sftrl.data.sft_stream; no cross-file dedup);
    # False: every process reads, deduplicates and tokenizes all files (sftrl.data.sft).
    c.data.stream = True
    # Logical data shards when streaming (0: one per process). The global batch depends on
    # this number, not on the process count: a run resumes bit-identically on any process
    # count that divides it or is a multiple of it. sft.batch_size must be a multiple of it.
    c.data.shards = 0

    # The 'sft' stage (sftrl.stages.sft; the loop: sftrl.train.sft).
    c.sft = ml_collections.ConfigDict()
    c.sft.batch_size = 16  # global, in rows (packed rows when data.packing)
    c.sft.num_epochs = 1
    c.sft.num_steps = 0  # 0: as many as num_epochs gives; else stop after this many steps
    c.sft.grad_accum = 1
    c.sft.loss_normalization = "token"  # "token" | "sequence"
    c.sft.loss_chunk = 512  # LM head + NLL in chunks of this many positions (no [B, L, V] kept)
    # the optimizer keys (lr, warmup_steps, b2, ...): sftrl.optim.OptimizerConfig defines them
    c.sft.update(optim.config_defaults())
    c.sft.log_every = 10
    c.sft.eval_every = 100  # 0: only at the end
    c.sft.save_every = 100  # 0: only at the end
    c.sft.evals = ("heldout",)
    c.sft.heldout_batch_size = 16
    c.sft.tensorboard = True

    # The 'rl' stage (sftrl.stages.rl; the loop: sftrl.train.grpo): GRPO from an SFT checkpoint.
    c.rl = ml_collections.ConfigDict()
    # Where the policy starts: an SFT run directory (its latest checkpoint's params), else a
    # Hugging Face folder; "" with neither: <workdir> itself if it holds an SFT run (GRPO then
    # writes to <workdir>/rl), else <workdir>/../sft if it holds one, else model.hf_path.
    c.rl.init_workdir = ""
    c.rl.init_step = 0  # > 0: start from this step's checkpoint of init_workdir (0: its latest)
    c.rl.init_hf_path = ""
    # "synthetic" (the task's RL prompts) | "files" | "math_train" (ships with the package)
    c.rl.prompt_source = "synthetic"
    c.rl.prompt_files = ()  # JSONL with id/problem/answer
    c.rl.prompt_template = "plain"
    c.rl.num_steps = 20
    c.rl.prompts_per_step = 8
    c.rl.group_size = 8
    c.rl.max_new_tokens = 128
    c.rl.temperature = 1.0
    c.rl.top_p = 1.0
    c.rl.top_k = 0
    c.rl.updates_per_rollout = 1  # optimizer steps per rollout batch (mini-batches)
    c.rl.ppo_epochs = 1  # passes over the rollout batch
    c.rl.grad_accum = 1
    # the optimizer keys of sftrl.optim, as sft's; GRPO: a small constant lr, Adam's usual b2
    c.rl.update(optim.config_defaults(lr=1e-5, schedule="constant", min_lr_ratio=1.0, b2=0.999))
    c.rl.normalize_std = True  # GRPO; False: Dr. GRPO
    # The group std's ddof: 0 (population std; a single valid sample is all-equal anyway) or 1
    # (the sample std of TRL / verl). 0 keeps earlier runs' numbers (docs/design.md, "GRPO
    # variants": each rl.* loss option's paper, formula and default).
    c.rl.std_ddof = 0
    c.rl.clip_low = 0.2
    c.rl.clip_high = 0.28
    c.rl.aggregation = "token-mean"  # | "seq-mean-token-sum" | "seq-mean-token-mean"
    # Dr. GRPO's ("seq-mean-token-sum") per-row generation budget C: a mini-batch of B rows is
    # divided by B * C, a constant of the run. 0: rl.max_new_tokens (TRL's choice).
    c.rl.max_tokens_for_norm = 0
    c.rl.kl_estimator = "none"  # | "k1" | "k3"
    c.rl.kl_coef = 0.0  # 0 with an estimator: the KL to the start is measured, not penalised
    c.rl.kl_mode = "loss"  # | "reward"
    c.rl.tis_cap = 0.0  # > 0: truncated importance weights against the sampler's log-probs
    c.rl.dynamic_sampling = False  # drop groups whose rewards are all equal, refill
    c.rl.max_refill_rounds = 3
    c.rl.overlong_buffer = 0  # > 0: DAPO soft overlong penalty over the last N tokens
    c.rl.overlong_penalty = 1.0
    # DAPO overlong filtering: truncated samples get no gradient and are left out of their
    # group's mean / std and of the dynamic-sampling keep test.
    c.rl.filter_truncated = False
    c.rl.format_bonus = 0.0
    c.rl.log_every = 1
    c.rl.eval_every = 0  # 0: only at the end
    c.rl.save_every = 10  # 0: only at the end
    c.rl.evals = ("passk",)
    c.rl.eval_prompts = 64  # test prompts for the in-training pass@k evaluator
    c.rl.eval_samples = 4
    c.rl.max_kv_tokens = 0  # 0: no wave limit on the sampler
    # the trainer's log-probs: LM head in chunks of this many positions, float32 logits per chunk
    c.rl.logprob_chunk = 512
    # > 0: the old/reference log-prob pass runs this many rollout rows at a time (in one
    # program; must divide prompts_per_step x group_size); 0: all rows at once
    c.rl.logprob_rows = 0
    c.rl.share_prefix = True  # False: each prompt repeated group_size times (for comparison)
    c.rl.tensorboard = True

    # The 'eval' stage (sftrl.stages.eval): held-out loss and pass@k of a run's checkpoints.
    c.eval = ml_collections.ConfigDict()
    # "synthetic": the embedded task's (harder) test set; else names in sftrl.data.benchmarks.
    c.eval.benchmarks = ("synthetic",)
    c.eval.limit = 0  # > 0: at most this many prompts per benchmark (the first ones)
    c.eval.num_samples = 256
    c.eval.max_new_tokens = 1024
    c.eval.temperature = 1.0
    c.eval.top_p = 1.0
    c.eval.top_k = 0
    c.eval.prompts_per_wave = 8
    c.eval.max_kv_tokens = 0  # 0: no extra bound on one generate call's cache
    c.eval.prompt_template = ""  # "": per benchmark (sftrl.data.prompts.BENCHMARK_TEMPLATES)
    c.eval.checkpoints = "latest"  # "latest" | "all" | comma-separated steps
    c.eval.heldout = True  # the generalization loss on the SFT data's held-out split
    # "": generalization_loss on each data set's own held-out split; "synthetic" (task v2's
    # common held-out split) or a JSONL path of chat records: on that one set, shared by every
    # checkpoint of a study (the own split's loss is kept as metrics "own_heldout/*")
    c.eval.common_heldout = ""
    c.eval.rl_num_samples = 0  # pipeline: samples per prompt for RL checkpoints (0: num_samples)
    c.eval.stage = "sft"  # which stage wrote the checkpoints: "sft" | "rl"
    c.eval.group = ""  # the predictor's group ("": the model's name)
    c.eval.name = ""  # checkpoint name prefix ("": the workdir's name)
    c.eval.sft_checkpoint = ""  # for stage "rl": the SFT checkpoint's eval name

    # The 'pipeline' stage (sftrl.stages.pipeline): SFT -> eval -> GRPO -> eval -> predict ->
    # report.
    c.pipeline = ml_collections.ConfigDict()
    # SFT data variants, each trained separately: synthetic variant names
    # ("<style>-<phrasing>-<size>"); () trains once on the config's data section.
    c.pipeline.sft_variants = ()
    c.pipeline.rl = True  # GRPO from every SFT checkpoint (then its eval)
    # SFT steps to evaluate and start GRPO from (each must be a saved checkpoint: see
    # sft.save_every and checkpoint.max_to_keep); (): the last one. With a constant learning
    # rate every saved step is a valid end point of SFT, so one run gives an over-training axis.
    c.pipeline.sft_steps = ()
    # GRPO seeds per SFT checkpoint (each a separate RL run and eval; the predictor averages
    # them); (): one run with the config's seed
    c.pipeline.rl_seeds = ()
    # > 0: no GRPO from an SFT checkpoint whose post-SFT pass@1 (mean over benchmarks) is below
    # this (a study's pre-registered SFT-strength gate: RL from a checkpoint that already fails
    # it cannot change the verdict, so its compute is saved)
    c.pipeline.min_sft_pass_at_1 = 0.0

    # The 'predict' stage (sftrl.stages.predict; statistics in sftrl.eval.predict): proxies vs
    # post-RL outcomes, and a ranking.
    c.predict = ml_collections.ConfigDict()
    c.predict.k = ml_collections.config_dict.placeholder(int)  # None: largest k all share
    c.predict.proxies = ()  # extra metric names used as proxies beside the defaults
    c.predict.benchmarks = ml_collections.config_dict.placeholder(tuple)  # None: all
    c.predict.per_benchmark = False
    c.predict.calibration_sizes = (3, 4)
    c.predict.max_subsets = 500
    c.predict.n_permutations = 10_000
    c.predict.n_bootstrap = 1000
    c.predict.confidence = 0.95
    # A flat CSV/JSON table of results from elsewhere (schema in sftrl/eval/predict.py), read
    # besides <workdir>/eval/*.json and <workdir>/predict_inputs.{csv,json}.
    c.predict.inputs = ""
    # Other run directories of the sweep (glob patterns allowed) whose eval/*.json are read too.
    c.predict.workdirs = ()

    # The 'study' stage (sftrl.stages.study; the analysis: sftrl.study): a finished sweep's
    # report (README.md, study.json, plots) written into --workdir, as `python -m sftrl.study`.
    c.study = ml_collections.ConfigDict()
    c.study.sweep_dir = ""  # the sweep's --workdir (required by the stage)
    c.study.sweep = ""  # the sweep file (path[:arg]): checks the runs, completes the commands
    c.study.allow_partial = False  # unfinished runs shown as missing instead of refused
    c.study.paper_numbers = ""  # JSON of the paper's table (sftrl.study.load_paper_numbers)

    # The 'model' stage (sftrl.stages.model): load or init, forward, orbax save/restore, HF
    # export round trip.
    c.model_check = ml_collections.ConfigDict(dict(batch_size=4, seq_len=64, export_hf=True))
    cpu_scale_training(c)
    return c


def full_size_config(**model_fields: Any) -> ml_collections.ConfigDict:
    """base_config() for a released model: its architecture, bf16 on accelerators, remat of
    activations (dots without batch dims kept), FSDP over all devices."""
    c = base_config()
    c.full_size = True
    c.model.update(**model_fields)
    c.dtype = "auto"
    c.remat = "dots_no_batch"
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    paper_scale_training(c)
    return c


def paper_scale_training(c: ml_collections.ConfigDict) -> None:
    """SFT / GRPO / eval settings for 4B-12B models, as the paper's setting suggests.

    Which values are guesses: the SFT batch/length/lr/epochs follow common practice for
    long-CoT SFT of 8B models (the paper's exact values are not in this repo); the GRPO values
    follow DAPO/Dr. GRPO defaults (clip-higher 0.28, no KL, token-mean, 8 samples per prompt,
    MATH-train prompts); eval n = 256 and the 7 benchmarks are the paper's; its sampling
    temperature is a guess (0.6 with top-p 0.95). Bring data with data.source="files".
    """
    c.data.max_length = 8192
    c.data.max_heldout_examples = 1000
    # num_steps 0: the epochs decide the SFT length (cpu_scale_training's 300 must not leak in)
    c.sft.update(batch_size=64, num_epochs=3, num_steps=0, lr=1e-5, warmup_steps=30,
                 schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01, b2=0.95, grad_clip=1.0,
                 log_every=10, eval_every=200, save_every=200, heldout_batch_size=32)
    c.rl.update(prompt_source="math_train", prompt_template="boxed", num_steps=500,
                prompts_per_step=128, group_size=8, max_new_tokens=4096, temperature=1.0,
                updates_per_rollout=4, lr=1e-6, clip_low=0.2, clip_high=0.28,
                aggregation="token-mean", kl_estimator="none", kl_coef=0.0, save_every=50,
                eval_every=50, evals=(), max_kv_tokens=2**22)
    from sftrl.data.benchmarks import PAPER_BENCHMARKS

    # limit 0: every prompt of every benchmark (cpu_scale_training's 128 must not leak in)
    c.eval.update(benchmarks=tuple(PAPER_BENCHMARKS), limit=0, num_samples=256,
                  max_new_tokens=4096, temperature=0.6, top_p=0.95, prompts_per_wave=4,
                  max_kv_tokens=2**22)


REPO_ROOT = Path(__file__).resolve().parents[1]


def find_config_file(path_text: str) -> Path | None:
    """A config file as given, else relative to the repo root (commands run from anywhere)."""
    path = Path(path_text)
    for candidate in (path, REPO_ROOT / path) if not path.is_absolute() else (path,):
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """The config a `path[:variant]` names, as `--config=` would load it; ConfigError names
    the spec."""
    import importlib.util

    path_text, _, arg = spec.partition(":")
    path = find_config_file(path_text)
    if path is None:
        raise ConfigError(f"{spec!r}: no such config file")
    module_spec = importlib.util.spec_from_file_location(f"_sftrl_config_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg or None)
    except ConfigError as e:
        raise ConfigError(f"{spec!r}: {e}") from e


def cpu_scale_training(c: ml_collections.ConfigDict) -> None:
    """The embedded task at CPU scale (configs/tiny.py and every ':tiny' variant)."""
    c.data.source = "synthetic"
    c.data.tokenizer = ""
    c.data.max_length = 384
    c.data.max_heldout_examples = 200
    c.sft.update(batch_size=16, num_epochs=1, num_steps=300, lr=3e-3, warmup_steps=20,
                 schedule="cosine", min_lr_ratio=0.1, weight_decay=0.0, b2=0.95,
                 log_every=10, eval_every=100, save_every=100, heldout_batch_size=16)
    c.rl.update(prompt_source="synthetic", prompt_template="plain", num_steps=30,
                prompts_per_step=16, group_size=8, max_new_tokens=96, temperature=1.0,
                updates_per_rollout=1, lr=1e-4, clip_low=0.2, clip_high=0.28,
                aggregation="token-mean", kl_estimator="none", kl_coef=0.0, save_every=10,
                eval_every=10, evals=("passk",), eval_prompts=64, eval_samples=8,
                max_kv_tokens=0)
    c.eval.update(benchmarks=("synthetic",), limit=128, num_samples=32, max_new_tokens=96,
                  temperature=1.0, top_p=1.0, prompts_per_wave=16, max_kv_tokens=0)


def _check_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                prefix: str) -> None:
    for key in config.keys():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"{name}: unknown config key (known: {', '.join(sorted(schema))})")
        value, reference = config[key], schema[key]
        if isinstance(reference, ml_collections.ConfigDict) and key != "rope_scaling":
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f"{name}: expected a group of fields, got {value!r}")
            _check_keys(value, reference, name + ".")
            continue
        expected = schema.get_type(key) if hasattr(schema, "get_type") else type(reference)
        if value is None or reference is None:
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{name}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
            )


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    fields = {k: v for k, v in config.model.to_dict().items() if k != "hf_path"}
    try:
        return ModelConfig.from_dict(fields)
    except ModelConfigError as e:
        raise ConfigError(f"model: {e}") from e


def mesh_sizes(config: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
    """The mesh sizes with -1 resolved; fails naming `mesh` when they do not fit the devices."""
    try:
        return sharding.resolve_mesh_shape(num_devices=num_devices, **config.mesh.to_dict())
    except sharding.MeshError as e:
        raise ConfigError(str(e)) from e


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> ModelConfig:
    """Checks the whole config; returns the model architecture it describes."""
    _check_keys(config, base_config(), "")
    if config.stage not in STAGES:
        raise ConfigError(f"stage: {config.stage!r} is not one of {', '.join(STAGES)}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"dtype: {config.dtype!r} is not one of {', '.join(DTYPES)}")
    if config.remat not in REMAT:
        raise ConfigError(f"remat: {config.remat!r} is not one of {', '.join(REMAT)}")
    if config.attention not in ATTENTION_IMPLS:
        raise ConfigError(
            f"attention: {config.attention!r} is not one of {', '.join(ATTENTION_IMPLS)}")
    if config.sft.loss_chunk < 1:
        raise ConfigError(f"sft.loss_chunk: must be >= 1, got {config.sft.loss_chunk}")
    arch = model_config(config)
    mesh_sizes(config, jax.device_count() if num_devices is None else num_devices)
    if config.checkpoint.max_to_keep < 1:
        raise ConfigError("checkpoint.max_to_keep: must be at least 1")
    _validate_data(config)
    _validate_sft(config, arch)
    _validate_rl(config)
    _validate_eval(config)
    if config.stage == "study" and not config.study.sweep_dir:
        raise ConfigError("study.sweep_dir: the study stage needs the sweep's --workdir")
    for key in ("batch_size", "seq_len"):
        if config.model_check[key] < 1:
            raise ConfigError(f"model_check.{key}: must be positive")
    if config.model_check.seq_len > arch.max_position_embeddings:
        raise ConfigError(
            f"model_check.seq_len: {config.model_check.seq_len} exceeds "
            f"model.max_position_embeddings {arch.max_position_embeddings}"
        )
    return arch


def _validate_data(config: ml_collections.ConfigDict) -> None:
    d = config.data
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"data.source: {d.source!r} is not one of {', '.join(DATA_SOURCES)}")
    if d.source == "files" and not d.train_files:
        raise ConfigError("data.train_files: source 'files' needs at least one file")
    if d.overlong not in ("drop", "truncate"):
        raise ConfigError(f"data.overlong: {d.overlong!r} is not 'drop' or 'truncate'")
    if not 0 < d.heldout_fraction < 1:
        raise ConfigError(f"data.heldout_fraction: {d.heldout_fraction} is not in (0, 1)")
    if d.max_length < 2:
        raise ConfigError("data.max_length: must be at least 2")
    if d.max_heldout_examples < 0:
        raise ConfigError("data.max_heldout_examples: must be >= 0")
    from sftrl.data.builders.fields import parse_fields

    try:
        parse_fields(d.fields)
    except ValueError as error:
        raise ConfigError(f"data.fields: {error}") from error
    if d.fields and d.source != "files":
        raise ConfigError("data.fields: only for data.source 'files'")
    if d.shards < 0:
        raise ConfigError(f"data.shards: {d.shards} is negative (0: one per process)")
    if d.shards and config.sft.batch_size % d.shards:
        raise ConfigError(f"data.shards: sft.batch_size {config.sft.batch_size} is not a "
                          f"multiple of {d.shards}")
    if d.synthetic.size < 1:
        raise ConfigError("data.synthetic.size: must be positive")
    if d.synthetic.version not in (1, 2):
        raise ConfigError(f"data.synthetic.version: {d.synthetic.version!r} is not 1 or 2")
    from sftrl.data import sources, synthetic

    try:
        sources.synthetic_task(d)
    except synthetic.TaskConfigError as error:
        raise ConfigError(f"data.synthetic: {error}") from error


def _validate_sft(config: ml_collections.ConfigDict, arch: ModelConfig) -> None:
    s = config.sft
    for key in ("batch_size", "grad_accum", "log_every", "heldout_batch_size"):
        if s[key] < 1:
            raise ConfigError(f"sft.{key}: must be positive")
    for key in ("num_steps", "eval_every", "save_every", "warmup_steps"):
        if s[key] < 0:
            raise ConfigError(f"sft.{key}: must be >= 0")
    if s.num_epochs < 1 and s.num_steps == 0:
        raise ConfigError("sft.num_epochs: must be positive when sft.num_steps is 0")
    if s.batch_size % s.grad_accum:
        raise ConfigError(
            f"sft.grad_accum: {s.grad_accum} does not divide sft.batch_size {s.batch_size}"
        )
    if s.loss_normalization not in ("token", "sequence"):
        raise ConfigError(
            f"sft.loss_normalization: {s.loss_normalization!r} is not 'token' or 'sequence'"
        )
    unknown = [name for name in s.evals if name not in SFT_EVALS]
    if unknown:
        raise ConfigError(f"sft.evals: unknown evaluator(s) {unknown} (known: {SFT_EVALS})")
    if config.data.max_length > arch.max_position_embeddings:
        raise ConfigError(
            f"data.max_length: {config.data.max_length} exceeds model.max_position_embeddings "
            f"{arch.max_position_embeddings}"
        )
    try:
        optim.OptimizerConfig.from_config(s, total_steps=1)
    except optim.OptimizerConfigError as e:
        raise ConfigError(f"sft.{e}") from e
    if s.num_steps:  # else the epochs decide the length: the trainer checks it then
        try:
            optim.check_run_length(optim.OptimizerConfig.from_config(s, s.num_steps))
        except optim.OptimizerConfigError as e:
            raise ConfigError(f"sft.{e}") from e


def _validate_rl(config: ml_collections.ConfigDict) -> None:
    r = config.rl
    for key in ("num_steps", "prompts_per_step", "group_size", "max_new_tokens",
                "updates_per_rollout", "ppo_epochs", "grad_accum", "log_every", "eval_prompts",
                "eval_samples", "logprob_chunk"):
        if r[key] < 1:
            raise ConfigError(f"rl.{key}: must be positive")
    for key in ("eval_every", "save_every", "overlong_buffer", "max_refill_rounds",
                "max_kv_tokens", "warmup_steps", "max_tokens_for_norm", "init_step",
                "logprob_rows"):
        if r[key] < 0:
            raise ConfigError(f"rl.{key}: must be >= 0")
    if r.logprob_rows and (r.prompts_per_step * r.group_size) % r.logprob_rows:
        raise ConfigError(f"rl.logprob_rows: {r.logprob_rows} does not divide the "
                          f"{r.prompts_per_step * r.group_size} rollout rows "
                          "(prompts_per_step x group_size)")
    if r.prompt_source not in ("synthetic", "files", "math_train"):
        raise ConfigError(f"rl.prompt_source: {r.prompt_source!r} is not 'synthetic', 'files' or "
                          "'math_train'")
    if r.prompt_source == "files" and not r.prompt_files:
        raise ConfigError("rl.prompt_files: prompt_source 'files' needs at least one file")
    if not r.temperature > 0:
        raise ConfigError(f"rl.temperature: must be > 0 (GRPO learns from samples of the policy "
                          f"at this temperature; 0 is greedy), got {r.temperature}")
    if not 0 < r.top_p <= 1:
        raise ConfigError("rl.top_p: must be in (0, 1]")
    if r.overlong_buffer >= r.max_new_tokens:
        raise ConfigError("rl.overlong_buffer: must be smaller than rl.max_new_tokens")
    _check_kv_budget("rl", r)
    rows = r.prompts_per_step * r.group_size
    if rows % (r.updates_per_rollout * r.grad_accum):
        raise ConfigError(
            f"rl.updates_per_rollout: prompts_per_step * group_size = {rows} rows must split "
            f"into updates_per_rollout x grad_accum = {r.updates_per_rollout} x {r.grad_accum}"
        )
    if r.std_ddof not in (0, 1):
        raise ConfigError(f"rl.std_ddof: must be 0 or 1, got {r.std_ddof!r}")
    unknown = [name for name in r.evals if name not in RL_EVALS]
    if unknown:
        raise ConfigError(f"rl.evals: unknown evaluator(s) {unknown} (known: {RL_EVALS})")
    try:
        optim.OptimizerConfig.from_config(r, total_steps=1)
    except optim.OptimizerConfigError as e:
        raise ConfigError(f"rl.{e}") from e
    from sftrl.losses import PolicyLossConfig

    try:
        policy_loss_config(r, PolicyLossConfig)
    except ValueError as e:
        raise ConfigError(f"rl.{str(e).removeprefix('PolicyLossConfig.')}") from e


# Stages that read the SFT data (the eval stage only for its held-out loss).
_DATA_STAGES = ("sft", "pipeline")


def check_full_size_run(config: ml_collections.ConfigDict) -> None:
    """Refuses, at a run's start-up, a full-size model on the embedded CPU-sized task or with no
    data files: hours of accelerator time on a 512-token synthetic vocabulary is never meant.
    (Not part of `validate`: `sftrl.plan` compiles full-size configs without any data.)"""
    if not config.full_size:
        return
    reads_data = config.stage in _DATA_STAGES or (config.stage == "eval" and config.eval.heldout)
    if not reads_data:
        return
    if config.data.source == "synthetic":
        raise ConfigError("data.source: a full-size model needs its SFT data: set "
                          "data.source='files' and data.train_files (the synthetic task is "
                          "CPU-sized; use the config's ':tiny' variant for it)")
    if not config.data.train_files:
        raise ConfigError("data.train_files: a full-size run needs at least one data file")


def policy_loss_config(r: ml_collections.ConfigDict, cls: Any) -> Any:
    """The rl section's loss fields as a sftrl.losses.PolicyLossConfig."""
    budget = r.max_tokens_for_norm or None
    if r.aggregation == "seq-mean-token-sum":
        budget = budget or r.max_new_tokens
    return cls(
        clip_low=r.clip_low, clip_high=r.clip_high, aggregation=r.aggregation,
        kl_estimator=r.kl_estimator, kl_coef=r.kl_coef, kl_mode=r.kl_mode,
        tis_cap=r.tis_cap or None, max_tokens_for_norm=budget,
    )


def _check_kv_budget(section: str, c: ml_collections.ConfigDict) -> None:
    """The sampler's smallest wave (one prompt, one sample) must fit max_kv_tokens: refused at
    start-up for a one-token prompt; the real prompt lengths are checked by sftrl.sampling."""
    if 0 < c.max_kv_tokens <= c.max_new_tokens:
        raise ConfigError(
            f"{section}.max_kv_tokens: {c.max_kv_tokens} cannot hold one sample (a prompt token "
            f"+ {section}.max_new_tokens {c.max_new_tokens}); 0 means no bound")


def _validate_eval(config: ml_collections.ConfigDict) -> None:
    e = config.eval
    for key in ("num_samples", "max_new_tokens", "prompts_per_wave"):
        if e[key] < 1:
            raise ConfigError(f"eval.{key}: must be positive")
    if e.limit < 0 or e.max_kv_tokens < 0 or e.rl_num_samples < 0:
        raise ConfigError("eval.limit / eval.max_kv_tokens / eval.rl_num_samples: must be >= 0")
    _check_kv_budget("eval", e)
    if not e.benchmarks:
        raise ConfigError("eval.benchmarks: name at least one benchmark")
    from sftrl.data.benchmarks import BENCHMARKS

    unknown = [b for b in e.benchmarks if b != "synthetic" and b not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"eval.benchmarks: unknown {unknown} (known: synthetic, "
                          f"{', '.join(BENCHMARKS)})")
    if e.stage not in ("sft", "rl"):
        raise ConfigError(f"eval.stage: {e.stage!r} is not 'sft' or 'rl'")
    # the pipeline names it itself; a standalone eval of RL checkpoints cannot know it
    if config.stage == "eval" and e.stage == "rl" and not e.sft_checkpoint:
        raise ConfigError("eval.sft_checkpoint: evaluating RL checkpoints (eval.stage='rl') "
                          "needs the eval name of the SFT checkpoint they started from")
    if e.checkpoints not in ("latest", "all") and not all(
        part.strip().isdigit() for part in e.checkpoints.split(",")
    ):
        raise ConfigError(f"eval.checkpoints: {e.checkpoints!r} is not 'latest', 'all' or a "
                          "comma-separated list of steps")
    if e.temperature < 0 or not 0 < e.top_p <= 1 or e.top_k < 0:
        raise ConfigError("eval.temperature/top_p/top_k: need T >= 0, 0 < top_p <= 1, top_k >= 0")
    from sftrl.data import sources, synthetic

    for name in config.pipeline.sft_variants:
        try:
            synthetic.SFTVariant.parse(name)
        except ValueError as err:
            raise ConfigError(f"pipeline.sft_variants: {err}") from err
    if config.pipeline.sft_variants and config.data.source != "synthetic":
        raise ConfigError("pipeline.sft_variants: variants are synthetic-task names; with "
                          "data.source 'files' leave it empty (one SFT run on the files)")
    try:
        sources.synthetic_variant(config.data)
    except ValueError as err:
        raise ConfigError(f"data.synthetic: {err}") from err
    if config.pipeline.sft_variants and config.data.synthetic.version != 1:
        raise ConfigError("pipeline.sft_variants: names of task v1 variants; with "
                          "data.synthetic.version 2 give one data set per run")
    if e.common_heldout == "synthetic" and (config.data.source != "synthetic"
                                            or config.data.synthetic.version != 2):
        raise ConfigError("eval.common_heldout: 'synthetic' is task v2's common held-out "
                          "split; it needs data.source 'synthetic' and data.synthetic.version 2")
    if any(step < 1 for step in config.pipeline.sft_steps) or len(
            set(config.pipeline.sft_steps)) != len(config.pipeline.sft_steps):
        raise ConfigError(f"pipeline.sft_steps: {config.pipeline.sft_steps!r} must be distinct "
                          "positive steps")
    if not 0 <= config.pipeline.min_sft_pass_at_1 <= 1:
        raise ConfigError(f"pipeline.min_sft_pass_at_1: {config.pipeline.min_sft_pass_at_1!r} "
                          "is not in [0, 1]")
    if len(set(config.pipeline.rl_seeds)) != len(config.pipeline.rl_seeds) or any(
            seed < 0 for seed in config.pipeline.rl_seeds):
        raise ConfigError(f"pipeline.rl_seeds: {config.pipeline.rl_seeds!r} must be distinct "
                          "seeds >= 0")


def parent_of(config: ml_collections.ConfigDict, key: str
              ) -> tuple[ml_collections.ConfigDict, str]:
    """(the group holding `key`, its last name) for a dotted key; ConfigError names an unknown
    key."""
    *path, name = key.split(".")
    parent = config
    for part in path:
        if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
            raise ConfigError(f"{key}: unknown config key")
        parent = parent[part]
    if name not in parent:
        raise ConfigError(f"{key}: unknown config key")
    return parent, name


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]
                    ) -> ml_collections.ConfigDict:
    """Applies 'a.b=value' strings (values parsed as Python literals, never evaluated as code)."""
    config = config.copy_and_resolve_references()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{item}: an override must look like key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word is a string
        parent, name = parent_of(config, key)
        try:
            setattr(parent, name, value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: {e}") from e
    return config


def apply_variant(c: ml_collections.ConfigDict, arg: str | None,
                  variants: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Applies the variant a config file's ':arg' names.

    ':tiny' keeps the family's structure (GQA, q/k norm, tied embeddings, an explicit head_dim
    that is not hidden/heads) at a size that runs on a CPU in seconds; other variants are
    callables given by the config file.
    """
    variants = variants or {}
    if arg in (None, ""):
        return c
    if arg == "tiny":
        explicit_head_dim = c.model.head_dim * c.model.num_heads != c.model.hidden_size
        c.model.update(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, intermediate_size=128, max_position_embeddings=2048)
        c.model.head_dim = 24 if explicit_head_dim else 16
        if c.model.rope_scaling is not None:
            c.model.rope_scaling.original_max_position_embeddings = 64
        c.model.hf_path = ""  # vocab_size 512 above: the embedded task's tokenizer
        c.full_size = False
        c.dtype = "float32"
        c.remat = "none"
        c.mesh.update(data=1, fsdp=-1, tensor=1)
        cpu_scale_training(c)
        return c
    if arg in variants:
        variants[arg](c)
        return c
    raise ConfigError(
        f"config arg {arg!r} is not a variant of this config (known: "
        f"{', '.join(['tiny', *variants])})"
    )


def resolve_dtype(name: str) -> Any:
    """'auto' is bfloat16 on accelerators and float32 on CPU (the platform compiled for:
    `sftrl.target.platform()`)."""
    import jax.numpy as jnp

    from sftrl.models.checkpoint import default_dtype

    return default_dtype() if name == "auto" else jnp.dtype(name)


def make_layout(config: ml_collections.ConfigDict, rules: Any = None,
                devices: Any = None) -> Any:
    """The mesh the config asks for, over `devices` (default: all of this process's platform;
    a plan passes a TPU topology's devices), with the given rules table."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(config, len(devices))
    return sharding.Layout(sharding.make_mesh(**sizes, devices=devices),
                           rules or sharding.TRAIN_RULES)


def _is_local(path: str) -> bool:
    """Local paths are checked at start-up; a URL-like path (gs://...) is the storage's job."""
    return "://" not in path


def check_inputs(config: ml_collections.ConfigDict) -> None:
    """Every input path and prompt template the config's stage will use exists, checked now.

    validate() checks the config's shape; this checks the world it points at, so a missing RL
    prompt file fails before SFT and evaluation have run for an hour, not after.
    """
    from sftrl.data.prompts import PROMPT_TEMPLATES

    stage = config.stage
    uses_sft = stage in ("sft", "pipeline")
    uses_rl = stage in ("rl", "pipeline")
    uses_eval = stage in ("eval", "pipeline")
    paths: list[tuple[str, str, str]] = []  # (key, path, "file" | "dir")
    if config.model.hf_path:
        paths.append(("model.hf_path", config.model.hf_path, "dir"))
    if config.data.tokenizer:
        paths.append(("data.tokenizer", config.data.tokenizer, "dir"))
    if uses_sft and config.data.source == "files":
        paths += [("data.train_files", p, "file") for p in config.data.train_files]
    if uses_rl:
        if config.rl.prompt_source == "files":
            paths += [("rl.prompt_files", p, "file") for p in config.rl.prompt_files]
        if stage == "rl" and config.rl.init_workdir:
            paths.append(("rl.init_workdir", config.rl.init_workdir, "dir"))
        if config.rl.init_hf_path:
            paths.append(("rl.init_hf_path", config.rl.init_hf_path, "dir"))
        if config.rl.prompt_template not in PROMPT_TEMPLATES:
            raise ConfigError(f"rl.prompt_template: {config.rl.prompt_template!r} is not one of "
                              f"{', '.join(sorted(PROMPT_TEMPLATES))}")
    if uses_eval and config.eval.prompt_template and (
            config.eval.prompt_template not in PROMPT_TEMPLATES):
        raise ConfigError(f"eval.prompt_template: {config.eval.prompt_template!r} is not one of "
                          f"{', '.join(sorted(PROMPT_TEMPLATES))}")
    if stage == "study":
        paths.append(("study.sweep_dir", config.study.sweep_dir, "dir"))
        if config.study.paper_numbers:
            paths.append(("study.paper_numbers", config.study.paper_numbers, "file"))
    for key, path, kind in paths:
        if not _is_local(path):
            continue
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{key}: {path}: no such {'file' if kind == 'file' else 'folder'}")
        if kind == "file" and not p.is_file():
            raise ConfigError(f"{key}: {path}: not a file")
        if kind == "dir" and not p.is_dir():
            raise ConfigError(f"{key}: {path}: not a folder")
