"""The 'model' stage: everything the foundation offers, end to end, on the configured model.

Loads the model (from model.hf_path, else random from the seed) onto the mesh, runs a padded
forward pass and an incremental (KV-cache) decode of the same tokens, saves the train state with
orbax and restores it, exports a Hugging Face folder and loads it back. Each check compares
numbers and the stage fails loudly if one disagrees. Results go to <workdir>/metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sftrl import config_lib
from sftrl.models import checkpoint
from sftrl.models.transformer import Model, build_model
from sftrl.sharding import Layout
from sftrl.train import state as state_lib

log = logging.getLogger(__name__)


class ModelCheckError(RuntimeError):
    """A check of the 'model' stage found numbers that disagree."""


def _tolerance(dtype: Any, logits: jax.Array) -> float:
    """Allowed max abs logit difference, relative to the logits' scale.

    Large models have logits of magnitude ~30, and bf16 reductions in a different order (cached
    decode vs one pass) move them by ~1e-2 of that; a real bug moves them by their own size.
    """
    relative = 1e-4 if jnp.dtype(dtype) == jnp.float32 else 5e-2
    return relative * max(1.0, float(jnp.max(jnp.abs(logits))))


def _max_diff(a: jax.Array, b: jax.Array, mask: np.ndarray) -> float:
    diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    return float(diff[mask].max())


def _load(config: ml_collections.ConfigDict, layout: Layout, dtype: Any) -> Model:
    if config.model.hf_path:
        model, arch = checkpoint.load_hf(
            config.model.hf_path, dtype=dtype, mesh=layout, remat=config.remat,
            attention=config.attention,
        )
        expected = config_lib.model_config(config)
        if arch != expected:
            log.warning("model.* fields differ from %s/config.json; using the checkpoint's: %s",
                        config.model.hf_path, arch)
        return model
    return build_model(
        config_lib.model_config(config), layout, seed=config.seed, dtype=dtype,
        param_dtype=dtype, remat=config.remat, attention=config.attention,
    )


def _batch(config: ml_collections.ConfigDict, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    b, length = config.model_check.batch_size, config.model_check.seq_len
    rng = np.random.default_rng(config.seed)
    tokens = rng.integers(0, vocab, (b, length), dtype=np.int32)
    mask = np.ones((b, length), bool)
    for row in range(1, b, 2):  # odd rows left-padded, so padding is exercised
        mask[row, : length // 4] = False
    return tokens, mask


def run(config: ml_collections.ConfigDict, workdir: Path, layout: Layout) -> dict[str, Any]:
    dtype = config_lib.resolve_dtype(config.dtype)
    results: dict[str, Any] = {"stage": "model", "dtype": jnp.dtype(dtype).name}

    start = time.perf_counter()
    model = _load(config, layout, dtype)
    jax.block_until_ready(model.params)
    results["load_s"] = time.perf_counter() - start
    results["num_params"] = model.config.num_params()
    log.info("model ready: %.3fM params in %.1fs", results["num_params"] / 1e6, results["load_s"])

    tokens, mask = _batch(config, model.config.vocab_size)
    logits = model(tokens, mask)
    jax.block_until_ready(logits)
    start = time.perf_counter()
    logits = jax.block_until_ready(model(tokens, mask))
    results["forward_tokens_per_s"] = tokens.size / (time.perf_counter() - start)
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], axis=-1)[..., 0]
    results["nll_random_tokens"] = float(nll[mask[:, 1:] & mask[:, :-1]].mean())

    # Incremental decode must reproduce the full forward pass.
    prefill = tokens.shape[1] // 2
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])
    step_logits, cache = model.step(tokens[:, :prefill], cache, mask[:, :prefill])
    pieces = [step_logits]
    for i in range(prefill, tokens.shape[1]):
        step_logits, cache = model.step(tokens[:, i: i + 1], cache)
        pieces.append(step_logits)
    results["kv_cache_max_abs_diff"] = _max_diff(jnp.concatenate(pieces, axis=1), logits, mask)

    # orbax: save the train state, restore it, compare.
    tx = optax.adamw(1e-4)
    state = state_lib.create_train_state(model.params, tx, seed=config.seed)
    ckpt_dir = workdir / "checkpoints"
    with state_lib.Checkpointer(
        ckpt_dir, max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    ) as ckpt:
        step = (ckpt.latest_step() or 0) + 1
        ckpt.save(step, state, {"position": 0}, force=True)
        ckpt.wait()
        restored, data_state = ckpt.restore(state_lib.abstract_like(state), step)
    same = jax.tree.all(jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), state.params,
        restored.params,
    ))
    if not same or data_state != {"position": 0}:
        raise ModelCheckError(
            f"orbax restore of {ckpt_dir} step {step} differs from what was saved"
        )
    results["orbax_step"] = step

    if config.model_check.export_hf:
        export_dir = workdir / "hf_export"
        checkpoint.export_hf(model, model.config, export_dir, overwrite=True)
        reloaded, _ = checkpoint.load_hf(export_dir, dtype=dtype, mesh=layout)
        results["hf_round_trip_max_abs_diff"] = _max_diff(reloaded(tokens, mask), logits, mask)
        results["hf_export"] = str(export_dir)

    tol = _tolerance(dtype, logits)
    results["tolerance"] = tol
    for key in ("kv_cache_max_abs_diff", "hf_round_trip_max_abs_diff"):
        if results.get(key, 0.0) > tol:
            raise ModelCheckError(f"{key} = {results[key]:.3g} exceeds {tol:g}")
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(results, sort_keys=True) + "\n")
    return results
