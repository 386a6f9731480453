"""The config schema, its validation, and overrides.

Every config file starts from `base_config()` and changes values; `validate` then checks the
result once at start-up: unknown keys, wrong types, impossible values and a mesh that does not fit
the devices all fail here with the key named, never later inside XLA.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections

from sftrl import sharding
from sftrl.models.model_config import ModelConfig, ModelConfigError

STAGES = ("model", "sft", "rl", "eval", "predict", "pipeline")
DTYPES = ("auto", "float32", "bfloat16")
REMAT = ("none", "full", "dots", "dots_no_batch")


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
    c.stage = "model"
    c.seed = 0
    c.dtype = "auto"  # params and compute: bfloat16 on accelerators, float32 on CPU
    c.remat = "none"

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

    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True))

    # The 'predict' stage (sftrl.eval.predict): proxies vs post-RL outcomes, and a ranking.
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

    # The 'model' stage: load or init, forward, orbax save/restore, HF export round trip.
    c.model_check = ml_collections.ConfigDict(dict(batch_size=4, seq_len=64, export_hf=True))
    return c


def full_size_config(**model_fields: Any) -> ml_collections.ConfigDict:
    """base_config() for a released model: its architecture, bf16 on accelerators, remat of
    activations (dots without batch dims kept), FSDP over all devices."""
    c = base_config()
    c.model.update(**model_fields)
    c.dtype = "auto"
    c.remat = "dots_no_batch"
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    return c


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
    arch = model_config(config)
    mesh_sizes(config, jax.device_count() if num_devices is None else num_devices)
    if config.checkpoint.max_to_keep < 1:
        raise ConfigError("checkpoint.max_to_keep: must be at least 1")
    for key in ("batch_size", "seq_len"):
        if config.model_check[key] < 1:
            raise ConfigError(f"model_check.{key}: must be positive")
    if config.model_check.seq_len > arch.max_position_embeddings:
        raise ConfigError(
            f"model_check.seq_len: {config.model_check.seq_len} exceeds "
            f"model.max_position_embeddings {arch.max_position_embeddings}"
        )
    return arch


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
        parent, name = config, key
        *path, name = key.split(".")
        for part in path:
            if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
                raise ConfigError(f"{key}: unknown config key")
            parent = parent[part]
        if name not in parent:
            raise ConfigError(f"{key}: unknown config key")
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
        c.model.update(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4,
                       num_kv_heads=2, intermediate_size=128, max_position_embeddings=2048)
        c.model.head_dim = 24 if explicit_head_dim else 16
        if c.model.rope_scaling is not None:
            c.model.rope_scaling.original_max_position_embeddings = 64
        c.model.hf_path = ""
        c.dtype = "float32"
        c.remat = "none"
        c.mesh.update(data=1, fsdp=-1, tensor=1)
        return c
    if arg in variants:
        variants[arg](c)
        return c
    raise ConfigError(
        f"config arg {arg!r} is not a variant of this config (known: "
        f"{', '.join(['tiny', *variants])})"
    )


def resolve_dtype(name: str) -> Any:
    """'auto' is bfloat16 on accelerators and float32 on CPU."""
    import jax.numpy as jnp

    from sftrl.models.checkpoint import default_dtype

    return default_dtype() if name == "auto" else jnp.dtype(name)


def make_layout(config: ml_collections.ConfigDict, rules: Any = None) -> Any:
    """The mesh the config asks for, over all devices, with the given rules table."""
    sizes = mesh_sizes(config, jax.device_count())
    return sharding.Layout(sharding.make_mesh(**sizes), rules or sharding.TRAIN_RULES)
