"""Every config file loads and validates; bad values and keys fail with the key named."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from ml_collections import config_flags

from sftrl import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


def load(spec: str):
    return config_flags.config_flags._LoadConfigModule(
        "cfg", str(ROOT / "configs" / spec.split(":")[0])
    ).get_config(*(spec.split(":")[1:] or [None]))


def test_config_files_present():
    assert {"tiny.py", "llama8b.py", "mistral_nemo12b.py", "qwen3_4b.py"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("arg", [None, "tiny"])
def test_every_config_validates(name, arg):
    config = load(name if arg is None else f"{name}:{arg}")
    arch = config_lib.validate(config, num_devices=8)
    if arg == "tiny":
        assert arch.num_params() < 2_000_000


@pytest.mark.parametrize(
    "name, params, extra",
    [
        ("llama8b.py", 8_030_261_248, {"head_dim": 128, "vocab_size": 128256}),
        ("mistral_nemo12b.py", 12_247_782_400, {"head_dim": 128, "hidden_size": 5120}),
        ("qwen3_4b.py", 4_022_468_096, {"qk_norm": True, "tie_embeddings": True}),
    ],
)
def test_real_architectures(name, params, extra):
    arch = config_lib.model_config(load(name))
    assert arch.num_params() == params
    for key, value in extra.items():
        assert getattr(arch, key) == value


def test_llama31_variant_has_rope_scaling():
    arch = config_lib.model_config(load("llama8b.py:llama3.1"))
    assert arch.rope_scaling is not None and arch.rope_scaling.factor == 8.0


def test_unknown_variant_is_named():
    with pytest.raises(config_lib.ConfigError, match="'huge' is not a variant"):
        load("qwen3_4b.py:huge")


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.num_layers=three", r"model.num_layers"),
        ("model.num_heads=5", r"model: num_heads \(5\) must be a multiple"),
        ("model.nonsense=1", r"model.nonsense: unknown config key"),
        ("mesh.tensor=3", r"mesh"),
        ("stage=train", r"stage: 'train' is not one of"),
        ("dtype=float64", r"dtype: 'float64'"),
        ("remat=sometimes", r"remat: 'sometimes'"),
        ("attention=fastest", r"attention: 'fastest' is not one of"),
        ("sft.loss_chunk=0", r"sft.loss_chunk: must be >= 1"),
        ("rl.max_kv_tokens=10", r"rl.max_kv_tokens: 10 cannot hold one sample"),
        ("eval.max_kv_tokens=10", r"eval.max_kv_tokens: 10 cannot hold one sample"),
        ("data.synthetic.rl_max_steps=0", r"data.synthetic: TaskConfig.rl_max_steps"),
        ("data.synthetic.rl_min_steps=4", r"data.synthetic: TaskConfig.rl_min_steps: 4 is greater"),
        ("model_check.seq_len=999999", r"model_check.seq_len"),
        ("nokey", r"key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        config = config_lib.apply_overrides(load("tiny.py"), [override])
        config_lib.validate(config, num_devices=8)


def test_unknown_key_added_by_a_config_file_is_caught():
    config = load("tiny.py")
    with config.unlocked():
        config.model.typo_field = 3
    with pytest.raises(config_lib.ConfigError, match=r"model\.typo_field: unknown config key"):
        config_lib.validate(config, num_devices=1)


def test_wrong_type_in_file_is_caught():
    config = load("tiny.py")
    with config.unlocked():
        del config["seed"]
        config.seed = "zero"
    with pytest.raises(config_lib.ConfigError, match="seed: expected int, got str"):
        config_lib.validate(config, num_devices=1)


def test_impossible_mesh_names_mesh():
    config = config_lib.apply_overrides(load("tiny.py"), ["mesh.data=2", "mesh.fsdp=3"])
    with pytest.raises(config_lib.ConfigError, match="mesh: data\\*fsdp\\*tensor = 6"):
        config_lib.validate(config, num_devices=8)


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sftrl.main", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=300, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )


def test_main_rejects_a_bad_flag_override_naming_the_key(tmp_path):
    result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.model.layerz=3")
    assert result.returncode != 0
    assert "layerz" in result.stderr


def test_main_invalid_config_value(tmp_path):
    result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.mesh.tensor=3")
    assert result.returncode == 2
    assert "sftrl: error: mesh" in result.stderr


def test_stage_sections_carry_the_optimizer_keys():
    """sftrl.optim defines the optimizer keys; both trainers' sections have each of them, and a
    bad value fails validation naming the section's key."""
    from sftrl.optim import OptimizerConfig

    config = load("tiny.py")
    for section in ("sft", "rl"):
        assert set(OptimizerConfig.config_keys()) <= set(config[section])
        bad = config_lib.apply_overrides(config, [f"{section}.b2=1.0"])
        with pytest.raises(config_lib.ConfigError, match=rf"{section}\.b2: invalid value 1\.0"):
            config_lib.validate(bad, num_devices=8)


def test_rl_prompt_difficulty_reaches_the_task():
    """data.synthetic.rl_min/max_steps choose the RL prompts' number of steps; the test set
    (drawn first) does not move."""
    from sftrl.data import sources, synthetic

    base = load("tiny.py")
    harder = config_lib.apply_overrides(load("tiny.py"), [
        "data.synthetic.rl_min_steps=2", "data.synthetic.rl_max_steps=5"])
    config_lib.validate(harder, num_devices=1)
    rl = synthetic.rl_records(sources.synthetic_task(harder.data))
    assert {r["steps"] for r in rl} == {2, 3, 4, 5}
    assert {r["steps"] for r in synthetic.rl_records(sources.synthetic_task(base.data))} == {
        1, 2, 3}
    assert synthetic.test_records(sources.synthetic_task(harder.data)) == \
        synthetic.test_records(sources.synthetic_task(base.data))
