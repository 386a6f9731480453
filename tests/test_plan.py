"""`python -m sftrl.plan`: topology names, and a real ahead-of-time compile of the tiny model's SFT
step for a small TPU slice (libtpu's compiler on this CPU host), whose per-chip memory must match
a hand count of parameters + Adam moments + batch."""

from __future__ import annotations

import json
import pathlib

import pytest

from sftrl import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, chip, shape", [
    ("v5p-64", "v5p", (2, 4, 4)),  # Cloud TPU counts v5p/v4 TensorCores: 32 chips
    ("v5p-128", "v5p", (4, 4, 4)),
    ("v5p-8", "v5p", (2, 2, 1)),
    ("v4-32", "v4", (2, 2, 4)),
    ("v5e-16", "v5e", (4, 4)),  # v5e/v6e count chips
    ("v5litepod-8", "v5e", (2, 4)),
    ("v6e-4", "v6e", (2, 2)),
    ("v5p:4x4x8", "v5p", (4, 4, 8)),
    ("v5e:2x2", "v5e", (2, 2)),
])
def test_topology_names(name, chip, shape):
    topology = plan.parse_topology(name)
    assert (topology.chip.name, topology.shape) == (chip, shape)


@pytest.mark.parametrize("name", ["v5p-3", "v9-8", "v5p:2x2", "tpu-8", "v5e-12"])
def test_bad_topology_is_a_user_error(name):
    with pytest.raises(plan.PlanError, match=r"^topology"):
        plan.parse_topology(name)


def test_out_of_memory_message_is_read():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (121.91G) exceeds available HBM (95.74G).")
    assert plan._oom_need(message) == pytest.approx(121.91)
    assert plan._oom_need("something else") is None


def test_plan_memory_matches_hand_count(tmp_path, monkeypatch, capsys):
    pytest.importorskip("libtpu", reason="libtpu is not installed (pip install "
                        "'jax[tpu]==<jax version>'); the plan needs the TPU compiler")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # hidden 512 over fsdp=4 leaves 128-wide shards, so TPU tile padding stays small
    e, f, v, layers, heads, kv_heads, d = 512, 1024, 512, 4, 4, 2, 32
    rows, length = 8, 128
    status = plan.main([
        "--config=configs/tiny.py", "--topology=v4:2x2x1", "--stages=sft", f"--out={tmp_path}",
        f"--config.model.hidden_size={e}", f"--config.model.intermediate_size={f}",
        f"--config.data.max_length={length}", f"--config.sft.batch_size={rows}",
    ])
    assert status == 0, capsys.readouterr().err[-3000:]
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["topology"]["devices"] == 4 and report["model"]["mesh"]["fsdp"] == 4
    (row,) = report["stages"]
    assert row["stage"] == "sft" and row["fits"] is True
    per_layer = e * heads * d + 2 * e * kv_heads * d + heads * d * e + 3 * e * f + 2 * e
    params = 2 * v * e + layers * per_layer + e  # embed, lm_head, layers, final norm
    assert report["model"]["params"] == params
    # float32 params + Adam's two float32 moments, split 4 ways; 5 int32 [rows, length] fields
    state_bytes = 3 * 4 * params / 4
    batch_bytes = 5 * rows * length * 4 / 4
    args_bytes = row["args_gib"] * plan.GIB
    assert args_bytes == pytest.approx(state_bytes + batch_bytes, rel=0.10)
    # the updated state comes back (donated: aliased to the argument)
    assert row["output_gib"] * plan.GIB == pytest.approx(state_bytes, rel=0.10)
    assert (tmp_path / "plan.md").read_text().count("| sft |") == 1


def test_waves_cut_at_a_multiple_of_the_batch_split():
    """A budget-cut wave keeps a multiple of the mesh's batch ways, so its KV cache splits by
    prompt instead of being held whole on every device."""
    from sftrl.sampling import _waves

    lengths = [10] * 10
    waves = _waves(lengths, 0, 35, align=2)
    assert waves == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert _waves(lengths, 0, 35) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    waves = _waves([5, 40, 7, 3, 9, 12, 30, 2], 4, 60, align=2)
    assert [i for wave in waves for i in wave] == list(range(8))
    for wave in waves:
        widths = [[5, 40, 7, 3, 9, 12, 30, 2][i] for i in wave]
        assert len(wave) * (max(widths) + 4) <= 60 or len(wave) == 1


def test_sampler_waves_split_a_prompts_samples():
    """A budget that cannot hold a wave of `align` prompts with all their samples splits the
    samples: Llama-3-8B's eval at n = 256 x 4096 on 2 batch ways with 2**21 KV tokens."""
    from sftrl.stage_catalogue import sampler_waves

    # 2 prompts x (512 + 256 x 4096) = 2,098,176 > 2**21; 2 x (512 + 128 x 4096) = 1,049,600
    # fits (and 3 prompts do too, but a wave cut by the budget keeps a multiple of 2)
    sm = sampler_waves("eval", 4, 256, 4096, 2**21, 512, 512, 2, 16384.0)
    assert (sm.wave, sm.chunk, sm.waves, sm.split) == (2, 128, 4, 2)
    assert sm.suffix_kv == 2 * 128 * 4096 * 16384 / 2
    assert sm.prefix_kv == 2 * 512 * 16384 / 2
    assert sm.describe(512).startswith("wave of 2 prompts x 128 of 256 samples, prompt 512")
    assert sm.rows() == "2x128 rows (128 of 256 samples)"
    # a budget that holds all samples keeps the words plans were compiled under
    whole = sampler_waves("eval", 4, 256, 4096, 2**22, 512, 512, 2, 16384.0)
    assert (whole.wave, whole.chunk, whole.waves) == (2, 256, 2)
    assert whole.describe(512) == "wave of 2 prompts x 512 tokens (2 waves of 4; max_kv_tokens " \
        "4194304)" and whole.rows() == "2x256 rows"


def test_sampler_waves_size_the_largest_wave_per_device():
    """6 prompts on 4 batch ways, 4 fit a wave: the last wave's 2 prompts do not divide over the
    4 ways, so each device holds both (2 prompts' KV, against 1 for the full wave)."""
    from sftrl.stage_catalogue import sampler_waves

    sm = sampler_waves("rl", 6, 4, 100, 4 * (32 + 4 * 100), 32, 32, 4, 1.0)
    assert (sm.wave, sm.chunk, sm.waves, sm.split) == (2, 4, 2, 1)
    assert sm.suffix_kv == 2 * 4 * 100 and sm.prefix_kv == 2 * 32


def test_plan_compiles_the_split_wave(monkeypatch):
    """What the plan hands the compiler for the eval prefill is the chunked wave generate runs:
    the tiny model on 4 v4 chips (fsdp 2 x tensor 2: 2 batch ways), 4 prompts x 32 samples of 96
    tokens, a budget of 2 x (32 + 8 x 96) KV tokens: 8 waves of 2 prompts x 8 samples (16
    samples take 1568 tokens a prompt, and a wave of 1 prompt would not divide over the 2
    ways)."""
    pytest.importorskip("libtpu", reason="libtpu is not installed (pip install "
                        "'jax[tpu]==<jax version>'); the plan needs the TPU compiler")
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from sftrl import target

    config = plan.load_config("configs/tiny.py", [
        "mesh.fsdp=2", "mesh.tensor=2", "eval.prompts_per_wave=4", "eval.num_samples=32",
        "eval.max_new_tokens=96", f"eval.max_kv_tokens={2 * (32 + 8 * 96)}"])
    devices = plan.topology_devices(plan.parse_topology("v4:2x2x1"))
    with target.compiling_for("tpu"):
        stages, _ = plan.build_stages(config, devices, 32)
        by_name = {st.name: st for st in stages}
        prefill = by_name["eval_prefill"]
        _, args, static = prefill.build()
    assert static["num_samples"] == 8 and static["max_new_tokens"] == 96
    tokens, ids = args[1], args[3][0]
    assert tokens.shape == (2, 32) and ids.shape == (2, 8)
    assert prefill.calls == "8 per 4 eval prompts"
    assert by_name["eval_decode"].shapes.startswith("2x8 rows (8 of 32 samples)")
    # the decode step's KV read (its time column): per device 1 prompt and 1 of the tiny
    # model's 2 kv heads (tensor 2): K and V x 4 layers x 32 x float32 per token, the prefix
    # and half the 8 x 96 suffix
    per_token = 2 * 4 * 1 * 32 * 4
    sampler_bytes = by_name["eval_decode"].hbm_read_bytes - (32 + 8 * 96 / 2) * per_token
    assert sampler_bytes == pytest.approx(plan.device_bytes(args[0]))
