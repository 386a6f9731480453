"""Shipped configs mean what they say: a full-size config carries no CPU-scale value, its SFT
length comes from the epochs, evaluation covers every prompt, and a full-size run on the
embedded synthetic task (or without data files) is refused at start-up."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
from ml_collections import config_flags

from sftrl import config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p.name for p in (ROOT / "configs").glob("*.py"))
FULL_SIZE = ("llama8b.py", "mistral_nemo12b.py", "qwen3_4b.py")

# Values that set the scale of a run. `cpu_scale_training` writes them for the embedded task;
# a full-size config must override every one (equal to the CPU value means it leaked through).
SCALE_KEYS = (
    "data.max_length", "data.max_heldout_examples", "sft.batch_size", "sft.num_steps", "sft.lr",
    "sft.warmup_steps", "sft.eval_every", "sft.save_every", "sft.heldout_batch_size",
    "rl.num_steps", "rl.prompts_per_step", "rl.max_new_tokens", "rl.lr", "rl.prompt_source",
    "rl.save_every", "rl.eval_every", "rl.evals", "rl.max_kv_tokens", "eval.benchmarks",
    "eval.limit", "eval.num_samples", "eval.max_new_tokens", "eval.prompts_per_wave",
    "eval.max_kv_tokens",
)


def load(spec: str):
    name, _, arg = spec.partition(":")
    return config_flags.config_flags._LoadConfigModule(
        "cfg", str(ROOT / "configs" / name)).get_config(arg or None)


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_full_size_configs_are_listed():
    assert set(FULL_SIZE) <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_shipped_config_resolves(name):
    config = load(name)
    config_lib.validate(config, num_devices=8)
    assert config.full_size == (name in FULL_SIZE)
    assert load(f"{name}:tiny").full_size is False


@pytest.mark.parametrize("name", FULL_SIZE)
def test_no_cpu_scale_value_leaks_into_full_size(name):
    config, cpu = load(name), config_lib.base_config()  # base_config is at CPU scale
    leaked = [key for key in SCALE_KEYS if _get(config, key) == _get(cpu, key)]
    assert not leaked, f"{name}: CPU-scale values kept: {leaked}"
    # epochs decide the SFT length; every prompt of every benchmark is evaluated
    assert config.sft.num_steps == 0 and config.sft.num_epochs >= 1
    assert config.eval.limit == 0


@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_run_without_data_is_refused(name):
    config = load(name)
    with pytest.raises(config_lib.ConfigError, match=r"^data\.source: a full-size model"):
        config_lib.check_full_size_run(config)
    config.data.source = "files"
    with pytest.raises(config_lib.ConfigError, match=r"^data\.train_files"):
        config_lib.check_full_size_run(config)
    config.data.train_files = ("/data/sft.jsonl",)
    config_lib.check_full_size_run(config)
    # stages that never read the SFT data run without it (e.g. GRPO from a checkpoint)
    rl_only = load(name)
    rl_only.stage = "rl"
    config_lib.check_full_size_run(rl_only)
    config_lib.check_full_size_run(load(f"{name}:tiny"))


def test_refusal_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sftrl.main", "--config=configs/qwen3_4b.py",
         f"--workdir={tmp_path}", "--stage=sft"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("sftrl:")]
    assert errors == ["sftrl: error: data.source: a full-size model needs its SFT data: "
                      "set data.source='files' and data.train_files (the synthetic task is "
                      "CPU-sized; use the config's ':tiny' variant for it)"]
