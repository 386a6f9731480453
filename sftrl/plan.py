"""Paper scale without the hardware: compile every program a run uses for a TPU topology, on a CPU.

    python -m sftrl.plan --config=configs/llama8b.py --topology=v5p-64 [--out=DIR]
                         [--config.sft.grad_accum=4 ...] [--stages=sft,grpo_update]
                         [--prompt_len=512]

One concept, hence one module at ~700 lines: the compiled plan (abstract state, one program per
stage lowered for the slice, its report); the stage list it shares with the analytic model lives
in `stage_catalogue`.

With `libtpu` installed (`pip install "jax[tpu]==<jax version>"`), `jax.experimental.topologies`
describes a TPU slice whose devices this host cannot run but XLA can compile for. The plan builds
the config's model and train state abstractly (`jax.ShapeDtypeStruct`s with shardings, from
`jax.eval_shape` of the init: no weights), lays the config's mesh over the slice, and lowers and
compiles the very jitted functions a run calls, at the config's shapes:

    sft            the SFT step (sft.batch_size x data.max_length, grad_accum, loss_chunk)
    heldout        the held-out loss step (sft.heldout_batch_size x data.max_length)
    grpo_logprobs  GRPO's old-log-prob pass over a whole rollout (P*G x prompt+max_new_tokens)
    grpo_update    one GRPO optimizer step on a mini-batch (P*G / updates_per_rollout rows)
    rl_prefill     the sampler's prefill at the RL shapes: the largest wave `sampling.plan_waves`
                   runs (prompts x G samples, or a chunk of them when rl.max_kv_tokens splits them)
    rl_decode      one decode step at the RL shapes (the Pallas TPU prefix kernel included)
    eval_prefill / eval_decode   the same at the eval shapes (eval.num_samples per prompt,
                   eval.max_kv_tokens)

For each it reports the compiler's per-device memory (arguments, outputs, temporaries), what
else the run keeps on the device meanwhile (e.g. the train state while the sampler runs), the
total against the chip's HBM, analytic FLOPs (XLA's cost analysis counts a loop body once, so
its FLOPs are far too low for scanned layers), the cost model's time where it gives one, and the
step time implied at an assumed MFU. A stage that does not fit prints one line
`sftrl: error: <stage> needs X GiB per chip of Y GiB; turn <knob>` and the exit status is 2.

One concept, hence one module over 700 lines: the plan of a run on a target (the slice, the
abstract stages built from the trainers' own step builders, their compile, the report). What
the stages are (names, shapes, knobs, FLOPs, batch fields, resident bytes) is
`sftrl.stage_catalogue`'s, shared with the analytic model for GPU targets, `sftrl.memory_model`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sftrl import stage_catalogue
from sftrl.errors import UserError
from sftrl.stage_catalogue import PER_ROW, PROMPT_BUCKET, Held, StageSpec

GIB = 2**30


class PlanError(ValueError):
    """A user error: one line, exit status 2."""


# --- topologies ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation. Figures are per chip (one JAX device; megacore chips are one device).

    hbm_gib: what libtpu's compiler reports available (v5p: 95.74 GiB, v4: 30.75 GiB in its
    out-of-memory messages); the others are the public HBM sizes. peak_tflops: dense bf16 peak
    from the public spec sheets; hbm_gbps: HBM bandwidth, same source. Both are assumptions of
    the time columns.
    """

    name: str
    hbm_gib: float
    peak_tflops: float
    hbm_gbps: float
    cores_per_chip: int  # Cloud TPU names count TensorCores for v4/v5p ("v5p-64" = 32 chips)
    chip_config: str  # get_topology_desc's chip_config_name
    dims: int  # 3-d torus (v4, v5p) or 2-d (v5e, v6e)


CHIPS = {
    "v4": Chip("v4", 30.75, 275.0, 1228.0, 2, "megacore", 3),
    "v5e": Chip("v5e", 16.0, 197.0, 819.0, 1, "default", 2),
    "v5p": Chip("v5p", 95.74, 459.0, 2765.0, 2, "megacore", 3),
    "v6e": Chip("v6e", 32.0, 918.0, 1640.0, 1, "default", 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6litepod": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def cloud_name(self) -> str:
        return f"{self.chip.name}-{self.num_chips * self.chip.cores_per_chip}"


def default_shape(num_chips: int, dims: int) -> tuple[int, ...]:
    """Cloud TPU's slice shape for a chip count: 3-d 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8...;
    2-d 1x1, 1x2, 2x2, 2x4, 4x4, 4x8, ... (double the smallest axis, the last of equals)."""
    if num_chips < 1 or num_chips & (num_chips - 1):
        raise PlanError(f"topology: {num_chips} chips is not a power of two")
    shape = [2, 2, 1] if dims == 3 and num_chips >= 4 else [1] * dims
    while math.prod(shape) < num_chips:
        smallest = min(shape)
        i = max(j for j, s in enumerate(shape) if s == smallest)
        shape[i] *= 2
    if math.prod(shape) != num_chips:
        raise PlanError(f"topology: no {dims}-d slice of {num_chips} chips")
    return tuple(shape)


def parse_topology(text: str) -> Topology:
    """'v5p-64' (Cloud TPU name: TensorCores for v4/v5p, chips for v5e/v6e), 'v5p:4x4x4' (chip
    grid), 'v5e-16', 'v4-32', 'v5litepod-16', ..."""
    match = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", text.strip().lower())
    if not match:
        raise PlanError(f"topology: {text!r} is not like v5p-64, v5e-16 or v5p:4x4x4")
    kind = _ALIASES.get(match.group(1), match.group(1))
    if kind not in CHIPS:
        raise PlanError(f"topology: unknown TPU {match.group(1)!r} (known: {', '.join(CHIPS)})")
    chip = CHIPS[kind]
    if match.group(2):
        cores = int(match.group(2))
        if cores % chip.cores_per_chip:
            raise PlanError(f"topology: {text}: {kind} counts {chip.cores_per_chip} cores a chip")
        return Topology(chip, default_shape(cores // chip.cores_per_chip, chip.dims))
    shape = tuple(int(s) for s in match.group(3).split("x"))
    if len(shape) != chip.dims or min(shape) < 1:
        raise PlanError(f"topology: {kind} slices are {chip.dims}-d, got {match.group(3)}")
    return Topology(chip, shape)


def topology_devices(topology: Topology) -> list[Any]:
    """The slice's devices, from libtpu (no TPU needed)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise PlanError("libtpu is not installed: pip install \"jax[tpu]==<your jax version>\" "
                        "(compiling for a TPU needs its compiler, not a TPU)") from e
    from jax.experimental import topologies

    host = (*(min(2, s) for s in topology.shape[:2]), 1)
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=topology.libtpu_name,
        chip_config_name=topology.chip.chip_config, chips_per_host_bounds=host, num_slices=1)
    return list(desc.devices)


# --- analytic counts ----------------------------------------------------------------------------


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded `jax.ShapeDtypeStruct`s (shards, unpadded)."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        try:
            itemsize = np.dtype(leaf.dtype).itemsize
        except TypeError:  # PRNG key dtypes
            itemsize = getattr(leaf.dtype, "itemsize", 8)
        total += math.prod(shape) * itemsize
    return total


# --- stages -------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class Stage(StageSpec):
    """A stage of the catalogue (sftrl.stage_catalogue) with the program to compile for it."""

    build: Callable[[], tuple[Any, tuple[Any, ...], dict[str, Any]]]  # (jitted, args, kwargs)
    # a prefill's: compile_stage keeps its compile here, for its decode step's build
    outputs: dict[str, Any] | None = None


def _sds(shape: Sequence[int], dtype: Any, sharding: Any) -> Any:
    import jax

    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def build_stages(config: Any, devices: list[Any], prompt_len: int) -> tuple[list[Stage], dict]:
    """The stages of a run of `config` on `devices` (a TPU slice). Call under
    `target.compiling_for("tpu")`: the module's dtype and kernels are resolved for the target."""
    import jax
    import jax.numpy as jnp

    from sftrl import config_lib, sampling
    from sftrl.eval.heldout import make_per_token_nll
    from sftrl.losses import PolicyLossConfig
    from sftrl.models.transformer import Model, abstract_params
    from sftrl.optim import OptimizerConfig, learning_rate, make_optimizer
    from sftrl.sharding import SAMPLING_RULES, Layout
    from sftrl.train import common
    from sftrl.train.grpo_step import jit_logprobs, make_grpo_update, make_logprob_fn
    from sftrl.train.sft_step import batch_shardings, jit_step_for, make_sft_step

    arch = config_lib.validate(config, num_devices=len(devices))
    layout = config_lib.make_layout(config, devices=devices)
    module = common.training_module(config, layout)
    replicated = layout.sharding(())
    i32 = jnp.int32
    s, rl = config.sft, config.rl

    sft_tx = make_optimizer(OptimizerConfig.from_config(s, max(1, s.num_steps or 1000)))
    state_abs, state_sh = common.abstract_train_state(module, sft_tx, layout, seed=config.seed)
    params_abs = state_abs.params
    state_b, params_b = device_bytes(state_abs), device_bytes(params_abs)

    rl_opt = OptimizerConfig.from_config(rl, max(1, rl.num_steps * rl.updates_per_rollout))
    rl_tx = make_optimizer(rl_opt)
    rl_state_abs, rl_state_sh = common.abstract_train_state(module, rl_tx, layout,
                                                            seed=config.seed)
    rl_state_b = device_bytes(rl_state_abs)

    # The sampler's copy of the weights (sftrl.train.grpo / eval_stage: SAMPLING_RULES).
    sampling_layout = Layout(layout.mesh, SAMPLING_RULES)
    sampling_module = module.clone(layout=sampling_layout, remat="none")  # as sftrl.train.grpo
    shapes, specs = abstract_params(sampling_module)
    sample_dtype = sampling_module.dtype  # sampling.make_sampler_params
    sampler_sh = sampling_layout.tree_shardings(specs, shapes)
    sampler_params = jax.tree.map(lambda x, sh: _sds(x.shape, sample_dtype or x.dtype, sh),
                                  shapes, sampler_sh)
    sampler_b = device_bytes(sampler_params)

    g = stage_catalogue.geometry(config, prompt_len)
    # a device's kv heads: the cache is split by kv head over tensor (when it divides them), as
    # the sampler constrains it; the time columns read this much KV per decode step
    kv_heads = sampling_layout.sharding(("activation_kv_heads",), (arch.num_kv_heads,)
                                        ).shard_shape((arch.num_kv_heads,))[0]
    kv_per_token = 2 * arch.num_layers * kv_heads * arch.head_dim * jnp.dtype(
        module.dtype).itemsize
    held = Held(state_b, params_b, rl_state_b, device_bytes(rl_state_abs.params), sampler_b)
    catalogue = stage_catalogue.stages(config, arch, g, sampling.batch_ways(sampling_layout),
                                       held, kv_per_token)
    batch_fields = {spec.name: spec.batch for spec in catalogue}

    def batch(name: str, rows: int, length: int) -> dict:
        """Stage `name`'s batch, abstract, sharded as the trainers shard it."""
        shapes = {k: jax.ShapeDtypeStruct((rows,) if k in PER_ROW else (rows, length),
                                          jnp.dtype(dt))
                  for k, dt in batch_fields[name].items()}
        sh = batch_shardings(layout, shapes)
        return {k: _sds(v.shape, v.dtype, sh[k]) for k, v in shapes.items()}

    sft_batch = batch("sft", s.batch_size, g.length)

    def build_sft():
        step = make_sft_step(module, sft_tx, learning_rate(OptimizerConfig.from_config(s, 1)),
                             normalization=s.loss_normalization, grad_accum=s.grad_accum,
                             loss_chunk=s.loss_chunk)
        return jit_step_for(step, state_sh, layout, sft_batch), (state_abs, sft_batch), {}

    held_batch = batch("heldout", s.heldout_batch_size, g.length)

    def build_heldout():
        fn = make_per_token_nll(module)
        if "segment_ids" not in held_batch:
            fn = functools.partial(lambda f, p, t, m, a: f(p, t, m, a, None), fn)
        in_sh = (state_sh.params, *(held_batch[k].sharding for k in held_batch))
        jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=held_batch["tokens"].sharding)
        return jitted, (params_abs, *held_batch.values()), {}

    def build_logprobs():
        fn = make_logprob_fn(module, rl.temperature, rl.logprob_chunk, rl.logprob_rows)
        toks = batch("grpo_logprobs", g.rows, g.width)
        return (jit_logprobs(fn, state_sh.params, layout, (g.rows, g.width)),
                (rl_state_abs.params, toks["tokens"], toks["attention_mask"]), {})

    mb = batch("grpo_update", g.mini, g.width)

    def build_update():
        update = make_grpo_update(
            module, rl_tx, learning_rate(rl_opt),
            config_lib.policy_loss_config(rl, PolicyLossConfig), temperature=rl.temperature,
            grad_accum=rl.grad_accum, logprob_chunk=rl.logprob_chunk)
        return jit_step_for(update, rl_state_sh, layout, mb), (rl_state_abs, mb), {}

    builds = {"sft": build_sft, "heldout": build_heldout, "grpo_logprobs": build_logprobs,
              "grpo_update": build_update}
    decoder = sampling._Decoder(Model(sampling_module, None))
    key = jax.eval_shape(lambda: jax.random.key(0))
    prefill_outputs: dict[str, dict[str, Any]] = {}  # section -> its prefill's compile

    def sampler_build(spec: StageSpec) -> Callable[[], tuple[Any, tuple[Any, ...], dict]]:
        """A prefill's build (the wave's prompts in), or its decode step's (the prefill's
        outputs in)."""
        sm = spec.sampler
        assert sm is not None
        section = getattr(config, sm.section)
        # the largest wave generate runs: its prompts, with `chunk` of their samples each
        p, n, width = sm.wave, sm.chunk, g.prompt_width
        static = dict(num_samples=n, max_new_tokens=sm.new_tokens,
                      temperature=float(section.temperature), top_k=int(section.top_k),
                      top_p=float(section.top_p))
        if spec.name.endswith("_decode"):
            out = prefill_outputs[sm.section]

            def build_decode():
                sampling_kw = {k: static[k] for k in ("temperature", "top_k", "top_p")}
                if "compiled" not in out:
                    raise PlanError("needs the prefill's compiled outputs (the prefill failed)")
                lowered, compiled = out["lowered"], out["compiled"]
                abstract = jax.tree.map(lambda info, sh: _sds(info.shape, info.dtype, sh),
                                        lowered.out_info, compiled.output_shardings)
                wave, state, _ = abstract
                return (decoder.step, (sampler_params, wave, state),
                        dict(window=sm.new_tokens, **sampling_kw))

            return build_decode
        rows_sh = sampling_layout.sharding(("activation_batch", None), (p, width))
        ids_sh = sampling_layout.sharding(("activation_batch", None), (p, n))
        args = (
            sampler_params, _sds((p, width), i32, rows_sh), _sds((p, width), jnp.bool_, rows_sh),
            (_sds((p, n), i32, ids_sh), _sds((p, n), i32, ids_sh)),
            _sds((), key.dtype, replicated), _sds((2,), i32, replicated), _sds((), i32, replicated),
        )
        out = prefill_outputs[sm.section] = {}

        def build_prefill():
            out["args"] = args
            return decoder.start, args, static

        return build_prefill

    stages = []
    for spec in catalogue:
        if spec.sampler is None:
            stages.append(Stage(**spec.spec_fields(), build=builds[spec.name]))
            continue
        build, outputs = sampler_build(spec), None
        if spec.name.endswith("_prefill"):
            outputs = prefill_outputs[spec.sampler.section]
        else:  # the decode step compiled here calls the Pallas TPU kernel
            spec = dataclasses.replace(spec, shapes=spec.shapes + ", Pallas prefix kernel")
        stages.append(Stage(**spec.spec_fields(), build=build, outputs=outputs))
    info = dict(arch=dataclasses.asdict(arch), mesh=dict(layout.mesh.shape),
                params=arch.num_params(), compute_dtype=str(jnp.dtype(module.dtype)),
                sampler_param_dtype=str(jnp.dtype(sample_dtype or jnp.float32)),
                train_state_gib_per_device=state_b / GIB,
                rl_train_state_gib_per_device=rl_state_b / GIB,
                sampler_params_gib_per_device=sampler_b / GIB, prompt_len=prompt_len)
    return stages, info


# --- compiling ----------------------------------------------------------------------------------


def _oom_need(message: str) -> float | None:
    """GiB the compiler said it needed, from its RESOURCE_EXHAUSTED message."""
    match = re.search(r"\(([\d.]+)([KMGT])\) exceeds available", message) or re.search(
        r"[Uu]sed ([\d.]+)([KMGT])", message)
    if not match:
        return None
    scale = {"K": 2**-20, "M": 2**-10, "G": 1.0, "T": 2**10}[match.group(2)]
    return float(match.group(1)) * scale


def compile_stage(stage: Stage) -> dict[str, Any]:
    row = stage.row()
    start = time.perf_counter()
    try:
        fn, args, kwargs = stage.build()
        lowered = fn.lower(*args, **kwargs)
        row["lower_s"] = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
    except PlanError as e:
        row["error"] = f"not compiled: {e}"
        return row
    except Exception as e:  # the compiler's verdict (e.g. out of HBM) is the result
        message = f"{type(e).__name__}: {e}"
        row["compile_s"] = time.perf_counter() - start
        row["error"] = message.splitlines()[0][:600]
        if "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message:
            need = _oom_need(message)
            row["oom"] = True
            if need is not None:
                row["temp_gib"] = need
                row["args_gib"] = device_bytes(args) / GIB
        return row
    row["compile_s"] = time.perf_counter() - start
    if stage.outputs is not None:
        stage.outputs.update(lowered=lowered, compiled=compiled)
    memory = compiled.memory_analysis()
    if memory is not None:
        for key in ("argument", "output", "temp", "alias", "generated_code"):
            row[f"{key}_gib"] = getattr(memory, f"{key}_size_in_bytes") / GIB
        row["args_gib"] = row.pop("argument_gib")
        peak = getattr(memory, "peak_memory_in_bytes", None)
        if peak:
            row["compiler_peak_gib"] = peak / GIB
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    seconds = float((cost or {}).get("optimal_seconds", -1.0))
    if seconds > 0:
        row["cost_model_s"] = seconds
    return row


def finish_row(row: dict[str, Any], topology: Topology, num_devices: int, mfu: float,
               hbm_read_bytes: int) -> None:
    chip = topology.chip
    if "temp_gib" in row:
        program = (row.get("args_gib", 0.0) + row.get("output_gib", 0.0) + row["temp_gib"]
                   - row.get("alias_gib", 0.0) + row.get("generated_code_gib", 0.0))
        row["program_gib"] = program
        row["need_gib"] = program + row["resident_gib"]
        row["fits"] = row["need_gib"] <= chip.hbm_gib and not row.get("oom")
    per_device = row["flops"] / num_devices
    row["flops_per_device"] = per_device
    row["time_at_peak_s"] = per_device / (chip.peak_tflops * 1e12)
    row["time_at_mfu_s"] = row["time_at_peak_s"] / mfu
    if hbm_read_bytes:
        row["time_hbm_bound_s"] = hbm_read_bytes / (chip.hbm_gbps * 1e9)
        row["time_estimate_s"] = max(row["time_at_mfu_s"], row["time_hbm_bound_s"])
    else:
        row["time_estimate_s"] = row["time_at_mfu_s"]


# --- report -------------------------------------------------------------------------------------


def _g(x: Any, fmt: str = ".1f") -> str:
    return "—" if x is None else format(x, fmt)


def _seconds(x: float | None) -> str:
    if x is None:
        return "—"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    if x < 600:
        return f"{x:.1f} s"
    return f"{x / 3600:.2f} h"


def markdown(report: dict[str, Any]) -> str:
    t, info = report["topology"], report["model"]
    modelled = report.get("source") == "model"
    unit = "chips" if "chip_config" in t["chip"] else "GPUs"
    lines = [
        f"# Plan{' (analytic model, not compiled)' if modelled else ''}: {report['config']} on "
        f"{t['cloud_name']} ({t['libtpu_name']}, {t['devices']} {unit})",
        "",
        f"Model: {info['params'] / 1e9:.2f}B parameters, compute {info['compute_dtype']}, "
        f"float32 master weights + optimizer; mesh {info['mesh']}; sampler weights "
        f"{info['sampler_param_dtype']} ({info['sampler_params_gib_per_device']:.2f} GiB/chip); "
        f"train state {info['train_state_gib_per_device']:.2f} GiB/chip.",
        "",
        ("Memory per device (GiB) from the ANALYTIC MODEL (sftrl.memory_model; no compiler was "
         "run, see its calibration in docs/paper_scale/calibration.md)" if modelled else
         "Memory per chip (GiB), from libtpu's compiler") + ": args / outputs / temporaries of the "
        "program (aliased donations counted once), plus what the run keeps on the chip meanwhile "
        f"(resident), against {t['hbm_gib']:.2f} GiB HBM.",
        "",
        "| stage | compiled for | args | out | temp | program | + resident | = need | fits "
        "| compile | FLOPs/chip | t @ peak | t est. | cost model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["stages"]:
        fits = ("yes" if r.get("fits") else "**NO**") if "fits" in r else (
            "error" if "error" in r else "—")
        lines.append(
            f"| {r['stage']} | {r['shapes']} | {_g(r.get('args_gib'))} | "
            f"{_g(r.get('output_gib'))} | {_g(r.get('temp_gib'))} | {_g(r.get('program_gib'))} | "
            f"{_g(r.get('resident_gib'))} | {_g(r.get('need_gib'))} | {fits} | "
            f"{_g(r.get('compile_s'), '.0f')} s | {r['flops_per_device'] / 1e12:.1f} T | "
            f"{_seconds(r.get('time_at_peak_s'))} | {_seconds(r.get('time_estimate_s'))} | "
            f"{_seconds(r.get('cost_model_s'))} |")
    lines += ["", "Errors:" if any("error" in r for r in report["stages"]) else ""]
    lines += [f"- {r['stage']}: {r['error']}" for r in report["stages"] if "error" in r]
    if modelled:
        lines += ["", "## What the model counts (GiB per device)", ""]
        for r in report["stages"]:
            parts = ", ".join(f"{k} {v:.2f}" for k, v in r.get("parts", {}).items() if v >= 0.005)
            lines.append(f"- {r['stage']}: {parts}")
    lines += ["", "## Run time (estimates)", ""]
    lines += [f"- {k}: {v}" for k, v in report["totals"].items()]
    lines += ["", "## Assumptions", ""] + [f"- {a}" for a in report["assumptions"]]
    return "\n".join(lines) + "\n"


def totals(config: Any, rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    def t(name: str) -> float | None:
        return rows.get(name, {}).get("time_estimate_s")

    out: dict[str, str] = {}
    rl, ev, s = config.rl, config.eval, config.sft
    if t("sft") is not None:
        steps = s.num_steps
        out["sft step"] = _seconds(t("sft"))
        out["sft run"] = (f"{_seconds(steps * t('sft'))} for sft.num_steps={steps}" if steps
                          else f"{_seconds(1000 * t('sft'))} per 1000 steps (steps come from "
                          f"the data: {s.num_epochs} epochs / {s.batch_size} rows)")
    parts = [t(n) for n in ("grpo_logprobs", "grpo_update", "rl_prefill", "rl_decode")]
    if all(p is not None for p in parts):
        logprobs, update, prefill, decode = parts  # type: ignore[misc]
        waves = int(rows["rl_prefill"]["calls"].split()[0])
        gen = waves * (prefill + rl.max_new_tokens * decode)
        step = logprobs + rl.updates_per_rollout * rl.ppo_epochs * update + gen
        out["rl step"] = (f"{_seconds(step)} (generation {_seconds(gen)} at full "
                          f"max_new_tokens, updates {_seconds(step - gen)})")
        out["rl run"] = f"{_seconds(rl.num_steps * step)} for rl.num_steps={rl.num_steps}"
    if t("eval_prefill") is not None and t("eval_decode") is not None:
        wave = t("eval_prefill") + ev.max_new_tokens * t("eval_decode")
        waves = int(rows["eval_prefill"]["calls"].split()[0])
        out["eval wave"] = (f"{_seconds(wave)} for one wave at full max_new_tokens "
                            f"({rows['eval_prefill']['shapes']}); {_seconds(waves * wave)} per "
                            f"{ev.prompts_per_wave} prompts ({waves} waves)")
    return out


# --- command line -------------------------------------------------------------------------------


def load_config(spec: str, overrides: Sequence[str]) -> Any:
    from sftrl import config_lib

    try:
        config = config_lib.load_config_file(spec)
    except config_lib.ConfigError as e:
        raise PlanError(f"--config {e}") from e
    return config_lib.apply_overrides(config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sftrl.plan", description=__doc__.split(
        "\n")[0], epilog="Config overrides: --config.KEY=VALUE (as sftrl.main).")
    parser.add_argument("--config", required=True, help="config file[:variant]")
    parser.add_argument("--topology", default="", help="v5p-64, v5e-16, v4-32, v5p:4x4x4, ...")
    parser.add_argument("--target", default="",
                        help="a GPU host (8xh100, 8xh200, 4xa100): the analytic memory model "
                        "(compiling for a GPU needs one); a TPU topology as --topology")
    parser.add_argument("--analytic", action="store_true",
                        help="the analytic memory model instead of compiling (TPU topologies)")
    parser.add_argument("--out", default="", help="write plan.md and plan.json here")
    parser.add_argument("--stages", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--prompt_len", type=int, default=512,
                        help="assumed prompt length in tokens (RL and eval)")
    parser.add_argument("--mfu", type=float, default=0.4,
                        help="assumed model FLOPs utilisation for the time estimates")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item}")
        overrides.append(item.removeprefix("--config."))
    # Host-side compilation only: never start a TPU runtime here, and let several plans (or a
    # run holding libtpu) coexist with this process's compiler-only use of it.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return _plan(args, overrides)
    except PlanError as e:
        print(f"sftrl: error: {e}", file=sys.stderr)
        return 2


def _plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from sftrl import config_lib, memory_model, target

    if bool(args.topology) == bool(args.target):
        raise PlanError("give one of --topology (a TPU slice) or --target (8xh100, or a TPU "
                        "slice)")
    name = args.topology or args.target
    gpu = memory_model.parse_gpu_target(name)
    topology: Any = gpu if gpu is not None else parse_topology(name)
    try:
        config = load_config(args.config, overrides)
    except config_lib.ConfigError as e:
        raise PlanError(str(e)) from e
    if args.prompt_len < 1 or not 0 < args.mfu <= 1:
        raise PlanError("--prompt_len must be positive and --mfu in (0, 1]")
    if gpu is not None or args.analytic:
        return _plan_analytic(args, overrides, config, topology, gpu is not None)
    devices = topology_devices(topology)
    wall = time.perf_counter()
    with target.compiling_for("tpu"):
        try:
            stages, info = build_stages(config, devices, args.prompt_len)
        except (config_lib.ConfigError, UserError) as e:  # UserError: a budget the waves miss
            raise PlanError(str(e)) from e
        wanted = _wanted_stages(args.stages, [st.name for st in stages])
        rows = []
        for stage in stages:
            if wanted and stage.name not in wanted and not (
                    stage.name.endswith("_prefill")
                    and stage.name.replace("_prefill", "_decode") in wanted):
                continue
            print(f"compiling {stage.name}: {stage.shapes} ...", file=sys.stderr, flush=True)
            row = compile_stage(stage)
            finish_row(row, topology, len(devices), args.mfu, int(stage.hbm_read_bytes))
            print(f"  {stage.name}: need {_g(row.get('need_gib'))} GiB, compile "
                  f"{_g(row.get('compile_s'), '.0f')} s"
                  + (f", {row['error'][:200]}" if "error" in row else ""),
                  file=sys.stderr, flush=True)
            if not wanted or stage.name in wanted:
                rows.append(row)
    report = _report(args, overrides, config, topology, len(devices), info, rows, wall)
    return _finish(args, report, rows, topology)


def _wanted_stages(flag: str, known: list[str]) -> list[str]:
    """--stages as a list ([]: all); PlanError names an unknown stage."""
    wanted = [x for x in flag.split(",") if x]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise PlanError(f"--stages: unknown {unknown} (known: {', '.join(known)})")
    return wanted


def _plan_analytic(args: argparse.Namespace, overrides: list[str], config: Any, topology: Any,
                   gpu: bool) -> int:
    """The analytic memory model's table (sftrl.memory_model), for a GPU host or a TPU slice."""
    from sftrl import config_lib, memory_model, target

    wall = time.perf_counter()
    with target.compiling_for("gpu" if gpu else "tpu"):
        try:
            stages, info = memory_model.model_stages(config, topology.num_chips,
                                                     args.prompt_len)
        except (config_lib.ConfigError, UserError) as e:  # UserError: a budget the waves miss
            raise PlanError(str(e)) from e
    wanted = _wanted_stages(args.stages, [st.name for st in stages])
    rows = []
    for stage in stages:
        if wanted and stage.name not in wanted:
            continue
        row = stage.row()
        finish_row(row, topology, topology.num_chips, args.mfu, int(stage.hbm_read_bytes))
        rows.append(row)
    report = _report(args, overrides, config, topology, topology.num_chips, info, rows, wall)
    report["source"] = "model"
    report["assumptions"].insert(0, (
        "memory from sftrl.memory_model, an analytic model (no compile): weights, optimizer "
        "state, gradients, activations saved under the remat policy, logits chunks and KV "
        "counted per device; four constants fitted to five compiled TPU stages; "
        "its error against compiled plans: docs/paper_scale/calibration.md")
        + ("; GPU: XLA preallocates 75% of the HBM unless XLA_PYTHON_CLIENT_MEM_FRACTION=.95"
           if gpu else ""))
    return _finish(args, report, rows, topology)


def _report(args: argparse.Namespace, overrides: list[str], config: Any, topology: Any,
            devices: int, info: dict[str, Any], rows: list[dict[str, Any]], wall: float
            ) -> dict[str, Any]:
    by_name = {r["stage"]: r for r in rows}
    return dict(
        config=args.config + "".join(f" --config.{o}" for o in overrides),
        source="compile",
        topology=dict(name=args.topology or args.target, libtpu_name=topology.libtpu_name,
                      cloud_name=topology.cloud_name, devices=devices,
                      chip=dataclasses.asdict(topology.chip), hbm_gib=topology.chip.hbm_gib),
        model=info, stages=rows, totals=totals(config, by_name),
        plan_wall_s=time.perf_counter() - wall,
        assumptions=[
            f"HBM per chip {topology.chip.hbm_gib} GiB; peak {topology.chip.peak_tflops} bf16 "
            f"TFLOP/s and {topology.chip.hbm_gbps} GB/s HBM per chip (public spec sheets)",
            f"t est. = analytic FLOPs / (peak x MFU {args.mfu}); decode steps: the larger of "
            "that and (sampler weights + KV read) / HBM bandwidth",
            "analytic FLOPs: 2 x matmul weights per token + attention 4 x layers x heads x "
            "head_dim x mean causal context (L/2; packed rows count as one sequence, an upper "
            "bound); training steps 3x the forward; rematerialisation not counted (MFU "
            "convention)",
            f"prompts {args.prompt_len} tokens (rounded up to {PROMPT_BUCKET}); responses at "
            "their max_new_tokens (the longest rollout the config allows)",
            "cost model: libtpu's optimal_seconds where it gives one (it counts a loop body "
            "once: a lower bound for scanned layers, not a step time)",
            "resident: arrays the run keeps on the chip while the stage runs (train state "
            "during sampling, the sampler's weights during GRPO updates), per device, unpadded",
        ])


def _finish(args: argparse.Namespace, report: dict[str, Any], rows: list[dict[str, Any]],
            topology: Any) -> int:
    print(markdown(report))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "plan.md").write_text(markdown(report))
        (out / "plan.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    status = 0
    for r in rows:
        if r.get("fits") is False or r.get("oom"):
            need = r.get("need_gib")
            print(f"sftrl: error: {r['stage']} needs "
                  + (f"{need:.1f} GiB" if need is not None else "more than the HBM")
                  + f" per chip of {topology.chip.hbm_gib:.1f} GiB; turn {r['knob']}",
                  file=sys.stderr)
            status = 2
        elif "error" in r and status == 0:
            print(f"sftrl: error: {r['stage']} did not compile: {r['error'][:300]}",
                  file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
