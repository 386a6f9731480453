"""Export round trips, sharded files, and clear errors for broken Hugging Face folders."""

from __future__ import annotations

import json
import shutil
import struct

import jax
import numpy as np
import pytest
from hf_fixtures import VOCAB, hf_logits, load_hf_folder, save_hf_model

from sftrl.models.checkpoint import CheckpointFormatError, export_hf, load_hf
from sftrl.models.model_config import ModelConfig, ModelConfigError
from sftrl.models.safetensors_io import SafetensorsError, SafetensorsFile
from sftrl.models.transformer import build_model
from sftrl.sharding import Layout, make_mesh, single_device_layout

TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 24))


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_hf_model("llama3", folder)
    return folder


@pytest.mark.parametrize("kind", ["llama3", "mistral", "qwen3"])
def test_export_round_trip_through_transformers(kind, tmp_path):
    config = ModelConfig(
        model_type={"llama3": "llama"}.get(kind, kind), vocab_size=VOCAB, hidden_size=48,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16 if kind == "llama3" else 20,
        intermediate_size=80, qk_norm=kind == "qwen3", tie_embeddings=kind == "qwen3",
        rope_theta=500000.0 if kind == "llama3" else 1e6,
    )
    model = build_model(config, single_device_layout(), seed=3)
    ours = np.asarray(model(TOKENS))
    folder = export_hf(model, config, tmp_path / "export")
    np.testing.assert_allclose(hf_logits(load_hf_folder(folder), TOKENS), ours, atol=1e-4, rtol=0)
    reloaded, reloaded_config = load_hf(folder, dtype="float32")
    assert reloaded_config == config
    np.testing.assert_array_equal(np.asarray(reloaded(TOKENS)), ours)


def test_sharded_export_with_index_reloads(llama_folder, tmp_path):
    model, config = load_hf(llama_folder, dtype="float32")
    folder = export_hf(model, config, tmp_path / "sharded", max_shard_bytes=40_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf = load_hf_folder(folder)
    np.testing.assert_allclose(hf_logits(hf, TOKENS), np.asarray(model(TOKENS)), atol=1e-4,
                               rtol=0)
    # ...and loads straight onto an 8-device mesh.
    sharded, _ = load_hf(folder, dtype="float32", mesh=make_mesh(2, 2, 2))
    np.testing.assert_allclose(np.asarray(sharded(TOKENS)), np.asarray(model(TOKENS)), atol=1e-5,
                               rtol=0)


def test_bf16_export_loads_in_transformers(llama_folder, tmp_path):
    model, config = load_hf(llama_folder, dtype="bfloat16")
    folder = export_hf(model, config, tmp_path / "bf16")
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    f = SafetensorsFile(folder / "model.safetensors")
    assert {t.dtype.name for t in f.tensors.values()} == {"bfloat16"}
    reloaded, _ = load_hf(folder, dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(reloaded(TOKENS)), np.asarray(model(TOKENS)))


def test_export_refuses_to_overwrite(llama_folder, tmp_path):
    model, config = load_hf(llama_folder, dtype="float32")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_hf(model, config, tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_files(tmp_path, llama_folder):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_hf(tmp_path / "nowhere")
    folder = _copy(llama_folder, tmp_path / "noconfig")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_hf(folder)
    folder = _copy(llama_folder, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_hf(folder)


def test_unknown_model_type(tmp_path, llama_folder):
    folder = _copy(llama_folder, tmp_path / "gpt2")
    _edit_config(folder, model_type="gpt2")
    with pytest.raises(ModelConfigError, match="model_type 'gpt2' is not supported"):
        load_hf(folder)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, llama_folder):
    folder = _copy(llama_folder, tmp_path / "shape")
    _edit_config(folder, intermediate_size=100)
    with pytest.raises(CheckpointFormatError,
                       match=r"model.layers.0.mlp.gate_proj.weight.*\[96, 64\].*\[100, 64\]"):
        load_hf(folder)


def test_missing_and_unexpected_tensors_listed(tmp_path, llama_folder):
    folder = _copy(llama_folder, tmp_path / "layers")
    _edit_config(folder, num_hidden_layers=3)
    with pytest.raises(CheckpointFormatError, match=r"missing tensors: model.layers.2\."):
        load_hf(folder)
    _edit_config(folder, num_hidden_layers=1)
    with pytest.raises(CheckpointFormatError, match=r"unexpected tensors: model.layers.1\."):
        load_hf(folder)


def test_truncated_safetensors(tmp_path, llama_folder):
    folder = _copy(llama_folder, tmp_path / "trunc")
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(SafetensorsError, match=r"model.safetensors: truncated"):
        load_hf(folder)
    path.write_bytes(data[:5])
    with pytest.raises(SafetensorsError, match="truncated"):
        load_hf(folder)
    path.write_bytes(struct.pack("<Q", 20) + b"{not json at all!!!}" + data[100:200])
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        load_hf(folder)


def test_index_pointing_at_missing_shard(tmp_path, llama_folder):
    model, config = load_hf(llama_folder, dtype="float32")
    folder = export_hf(model, config, tmp_path / "idx", max_shard_bytes=40_000)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_hf(folder)


def test_load_places_each_parameter_on_its_shards(llama_folder):
    layout = Layout(make_mesh(1, 4, 2))
    model, _ = load_hf(llama_folder, dtype="float32", mesh=layout)
    q = model.params["layers"]["attn"]["q_proj"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    shard_shapes = {s.data.shape for s in q.addressable_shards}
    assert shard_shapes == {(2, 16, 32)}  # [layers, embed/4, heads*dim/2]


def test_float16_file_loads_into_float32(tmp_path):
    import torch

    hf32 = save_hf_model("qwen3", tmp_path / "f32")
    save_hf_model("qwen3", tmp_path / "f16", dtype=torch.float16)
    assert {t.dtype.name for t in SafetensorsFile(tmp_path / "f16" / "model.safetensors")
            .tensors.values()} == {"float16"}
    model, _ = load_hf(tmp_path / "f16", dtype="float32")
    assert {str(x.dtype) for x in jax.tree.leaves(model.params)} == {"float32"}
    # only the f16 rounding of the weights separates the two
    np.testing.assert_allclose(np.asarray(model(TOKENS)), hf_logits(hf32, TOKENS), atol=2e-2,
                               rtol=0)


def test_failed_export_leaves_nothing_behind(llama_folder, tmp_path):
    model, config = load_hf(llama_folder, dtype="float32")
    with pytest.raises(ValueError, match="cannot export parameters as int8"):
        export_hf(model, config, tmp_path / "bad", dtype=np.int8)
    assert list(tmp_path.iterdir()) == []


def test_export_interrupted_mid_write_leaves_no_partial_folder(llama_folder, tmp_path,
                                                               monkeypatch):
    from sftrl.models import checkpoint

    model, config = load_hf(llama_folder, dtype="float32")

    def disk_full(path, tensors, metadata=None):
        path.write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export_hf(model, config, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
