"""Hugging Face checkpoints: load a local model folder into a sharded model, and export one back.

`load_hf` reads `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`), checks every tensor's name and shape before touching data, and
builds each parameter straight onto its shards with `jax.make_array_from_callback`: every device
reads only its slice from the memory-mapped files, so no host ever holds the unsharded model.
`export_hf` streams one tensor at a time into a folder `transformers` loads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from sftrl.models.model_config import ModelConfig, read_hf_config, to_hf_config
from sftrl.models.safetensors_io import (
    SafetensorsError,
    SafetensorsFile,
    TensorToWrite,
    write_safetensors,
)
from sftrl.models.transformer import (
    Model,
    Params,
    Transformer,
    abstract_params,
)
from sftrl.sharding import TRAIN_RULES, Layout, Rules, make_mesh, to_host

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exporters write that carry no parameters.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


class CheckpointFormatError(ValueError):
    """A Hugging Face folder whose tensors do not match its config; the message names them."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One parameter: its path in our tree, its HF name, and whether HF stores it transposed."""

    path: tuple[str, ...]
    hf_name: str  # '{i}' stands for the layer index in per-layer tensors
    transpose: bool

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name


def _entries(config: ModelConfig) -> list[_Entry]:
    layer = "model.layers.{i}."
    entries = [
        _Entry(("embed",), "model.embed_tokens.weight", False),
        _Entry(("final_norm", "scale"), "model.norm.weight", False),
        _Entry(("layers", "input_norm", "scale"), layer + "input_layernorm.weight", False),
        _Entry(("layers", "post_attn_norm", "scale"),
               layer + "post_attention_layernorm.weight", False),
    ]
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        entries.append(_Entry(("layers", "attn", proj), layer + f"self_attn.{proj}.weight", True))
    for proj in ("gate_proj", "up_proj", "down_proj"):
        entries.append(_Entry(("layers", "mlp", proj), layer + f"mlp.{proj}.weight", True))
    if config.qk_norm:
        for norm in ("q_norm", "k_norm"):
            entries.append(
                _Entry(("layers", "attn", norm, "scale"), layer + f"self_attn.{norm}.weight", False)
            )
    if not config.tie_embeddings:
        entries.append(_Entry(("lm_head",), "lm_head.weight", True))
    return entries


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _hf_shape(entry: _Entry, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = our_shape[1:] if entry.per_layer else our_shape
    return tuple(reversed(shape)) if entry.transpose else tuple(shape)


def _hf_names(entry: _Entry, num_layers: int) -> list[str]:
    if entry.per_layer:
        return [entry.hf_name.format(i=i) for i in range(num_layers)]
    return [entry.hf_name]


def _open_weights(folder: Path) -> dict[str, SafetensorsFile]:
    """Maps every tensor name to the (opened, validated) file that holds it."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointFormatError(f"{index_path}: not a valid index ({e!r})") from e
        files: dict[str, SafetensorsFile] = {}
        owner: dict[str, SafetensorsFile] = {}
        for name, filename in weight_map.items():
            if filename not in files:
                files[filename] = SafetensorsFile(folder / filename)
            if name not in files[filename]:
                raise CheckpointFormatError(
                    f"{index_path}: maps tensor {name!r} to {filename}, which does not contain it"
                )
            owner[name] = files[filename]
        for f in files.values():
            for name in f.tensors:
                owner.setdefault(name, f)
        return owner
    single = folder / SINGLE_FILE
    if single.is_file():
        f = SafetensorsFile(single)
        return {name: f for name in f.tensors}
    found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (found: {', '.join(found) or 'nothing'}); "
        "only safetensors checkpoints are supported"
    )


def _check_tensors(
    folder: Path, config: ModelConfig, shapes: Params, owner: dict[str, SafetensorsFile]
) -> None:
    expected: dict[str, tuple[int, ...]] = {}
    for entry in _entries(config):
        hf_shape = _hf_shape(entry, _get(shapes, entry.path).shape)
        for name in _hf_names(entry, config.num_layers):
            expected[name] = hf_shape
    present = set(owner)
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = sorted(set(expected) - present)
    unexpected = sorted(
        n for n in present - set(expected) - optional if not n.endswith(_IGNORED_SUFFIXES)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors: {_listing(unexpected)}")
    for name, shape in expected.items():
        if name not in owner:
            continue
        info = owner[name].tensors[name]
        if info.shape != shape:
            problems.append(
                f"tensor {name!r} in {owner[name].path.name} has shape {list(info.shape)}, "
                f"config.json implies {list(shape)}"
            )
        if info.dtype.name not in ("float64", "float32", "float16", "bfloat16"):
            problems.append(f"tensor {name!r} has non-float dtype {info.dtype}")
    if problems:
        raise CheckpointFormatError(f"{folder}: " + "; ".join(problems))


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _as_layout(mesh: Mesh | Layout | None, rules: Rules) -> Layout:
    if isinstance(mesh, Layout):
        return mesh
    if mesh is None:
        mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    return Layout(mesh, rules)


def default_dtype() -> Any:
    """bfloat16 on accelerators, float32 on CPU (where bf16 matmuls are slow and inexact); the
    platform compiled for (`sftrl.target`), which a plan sets to the TPU it compiles for."""
    from sftrl import target

    return jnp.float32 if target.platform() == "cpu" else jnp.bfloat16


def load_hf(
    path: str | Path,
    *,
    dtype: Any = None,
    mesh: Mesh | Layout | None = None,
    rules: Rules = TRAIN_RULES,
    remat: str = "none",
    param_dtype: Any = None,
    attention: str = "auto",
) -> tuple[Model, ModelConfig]:
    """Loads a local Hugging Face folder as a sharded Model.

    Compute runs in `dtype`; params are stored in `param_dtype` (default: `dtype`; training keeps
    float32 master weights while computing in bfloat16).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory (expected a Hugging Face model folder)")
    config = read_hf_config(folder)
    dtype = jnp.dtype(dtype or default_dtype())
    param_dtype = jnp.dtype(param_dtype or dtype)
    layout = _as_layout(mesh, rules)
    module = Transformer(config, dtype=dtype, param_dtype=param_dtype, layout=layout, remat=remat,
                         attention=attention)
    shapes, logical_axes = abstract_params(module)
    shardings = layout.tree_shardings(logical_axes, shapes)
    owner = _open_weights(folder)
    _check_tensors(folder, config, shapes, owner)

    params: dict[str, Any] = {}
    for entry in tqdm.tqdm(_entries(config), desc="load_hf", unit="tensor", disable=None):
        shape = _get(shapes, entry.path).shape
        sharding = _get(shardings, entry.path)
        array = jax.make_array_from_callback(
            shape, sharding, _slice_reader(entry, owner, config.num_layers, param_dtype)
        )
        node = params
        for key in entry.path[:-1]:
            node = node.setdefault(key, {})
        node[entry.path[-1]] = array
    log.info("loaded %s (%s, %.1fM params)", folder, config.model_type, config.num_params() / 1e6)
    return Model(module, params), config


def _slice_reader(entry: _Entry, owner: dict[str, SafetensorsFile], num_layers: int, dtype: Any):
    np_dtype = np.dtype(dtype)

    def read(name: str, index: tuple[slice, ...]) -> np.ndarray:
        array = owner[name].array(name)
        if entry.transpose:
            return array[tuple(reversed(index))].T.astype(np_dtype)
        return array[index].astype(np_dtype)

    # Devices holding the same slice (replicated axes) are asked for in a row: keep only the
    # last slice read, so it is read from disk once without ever holding more than one shard.
    last: dict[tuple, np.ndarray] = {}

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key in last:
            return last[key]
        try:
            if entry.per_layer:
                layers = range(num_layers)[index[0]]
                array = np.stack([read(entry.hf_name.format(i=i), index[1:]) for i in layers])
            else:
                array = read(entry.hf_name, index)
        except (OSError, ValueError) as e:
            raise SafetensorsError(f"reading {entry.hf_name}: {e}") from e
        last.clear()
        last[key] = array
        return array

    return callback


# --- export ---------------------------------------------------------------------------------


def _tensors_to_write(
    params: Params, config: ModelConfig, out_dtype: np.dtype
) -> Iterator[TensorToWrite]:
    for entry in _entries(config):
        leaf = _get(params, entry.path)
        hf_shape = _hf_shape(entry, tuple(leaf.shape))
        for i, name in enumerate(_hf_names(entry, config.num_layers)):
            def produce(leaf=leaf, i=i, per_layer=entry.per_layer, transpose=entry.transpose):
                array = to_host(leaf[i] if per_layer else leaf)
                return (array.T if transpose else array).astype(out_dtype)

            yield TensorToWrite(name, hf_shape, out_dtype, produce)


def export_hf(
    model: Model,
    model_config: ModelConfig | None,
    path: str | Path,
    *,
    dtype: Any = None,
    max_shard_bytes: int = 5 * 1024**3,
    overwrite: bool = False,
) -> Path:
    """Writes `path/` with config.json and safetensors (sharded above `max_shard_bytes`).

    The folder appears complete or not at all: files go to a temporary sibling that is renamed
    into place at the end. Only process 0 writes on multi-host runs (all processes must call).
    """
    config = model.config
    if model_config is not None and model_config != config:
        raise ValueError("model_config does not match the model's own config")
    folder = Path(path)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder}: exists and is not empty (pass overwrite=True)")
    out_dtype = np.dtype(dtype or jax.tree.leaves(model.params)[0].dtype)
    tensors = list(_tensors_to_write(model.params, config, out_dtype))
    shards: list[list[TensorToWrite]] = [[]]
    shard_bytes = 0
    for t in tensors:
        nbytes = int(np.prod(t.shape)) * out_dtype.itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(t)
        shard_bytes += nbytes

    torch_dtype = _torch_dtype_name(out_dtype)  # fail before writing anything
    if jax.process_index() != 0:  # other processes only take part in the gathers
        for t in tensors:
            t.produce()
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        total = _write_shards(tmp, shards)
        (tmp / "config.json").write_text(
            json.dumps(to_hf_config(config, torch_dtype=torch_dtype), indent=2)
        )
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%d files, %.1f MB)", folder, len(shards), total / 1e6)
    return folder


def _write_shards(folder: Path, shards: list[list[TensorToWrite]]) -> int:
    """Writes the safetensors files (+ the index when there are several); returns data bytes."""
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(tqdm.tqdm(shards, desc="export", unit="file", disable=None)):
        filename = (
            SINGLE_FILE if len(shards) == 1
            else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        total += write_safetensors(folder / filename, shard)
        weight_map.update({t.name: filename for t in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return total


def _torch_dtype_name(dtype: np.dtype) -> str:
    names = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
    if dtype.name not in names:
        raise ValueError(f"cannot export parameters as {dtype}")
    return names[dtype.name]
