"""An analytic model of every stage's per-device memory, for targets `sftrl.plan` cannot compile
for on this host (GPUs: XLA needs the device to compile for it), and its calibration.

    python -m sftrl.plan --config=configs/llama8b.py --target=8xh100      # the model's table
    python -m sftrl.plan --config=configs/llama8b.py --topology=v5p-64 --analytic
    python -m sftrl.calibration docs/paper_scale/*/plan.json              # model vs compile

It counts, per device, what each program holds (the stages of `sftrl.stage_catalogue`, which
`sftrl.plan` compiles):

* weights: float32 master weights, split over fsdp x tensor; AdamW's two float32 moments; the
  gradients (a second float32 copy as the accumulator when grad_accum > 1); the sampler's copy
  in the compute dtype, split over tensor only (SAMPLING_RULES);
* activations saved for the backward pass under remat `dots_no_batch`: per token and layer, the
  outputs of the matmuls against weights (q, k, v, o, gate, up, down), the layer's input (the
  scan carry) and flash attention's output and log-sum-exp, in the compute dtype;
* logits: one chunk of [rows, chunk, vocab] float32 (logits, softmax, gradient) for the chunked
  losses, the whole [rows, L, vocab] for the held-out step;
* the KV cache of the largest sampling wave (`sampling.plan_waves`): prompts x prompt width
  (the shared prefix) + prompts x the wave's samples (all, or a chunk when max_kv_tokens splits
  them) x max_new_tokens (the suffixes), split by prompt over the batch axes when the wave
  divides them, and by kv head over tensor;
* our flash attention's backward (TPU, and packed rows on GPU): one layer's causal score tiles
  for all heads (rows x heads x L^2/2 pairs); cuDNN (GPU, unpacked) holds only its dense
  [rows, L, L] boolean mask;
* terms the counts above miss, fitted to five compiled stages (FITTED) and named as such:
  bytes per score pair (ATTENTION_BYTES), the backward's and a forward's per-token working set
  (WORKSPACE, FORWARD) and the decode step's copy of the stacked suffix cache (DECODE_COPY).

It is a model: it ignores layout padding, fusion and the compiler's buffer reuse; its error
against the TPU compile is measured per stage by `python -m sftrl.calibration PLAN.json`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from sftrl import stage_catalogue
from sftrl.stage_catalogue import PER_ROW, Held, Sampler, StageSpec, layer_matmul_params

GIB = 2**30
F32, I32 = 4, 4
# Four constants fitted to five compiled stages (FITTED, docs/paper_scale/); the other models,
# topologies and stages are out of sample (docs/paper_scale/calibration.md).
# Our flash attention (sftrl.models.attention) unrolls its query blocks; in the backward XLA keeps
# every block's causal score tile live: bytes per (head, query, visible key) pair, from the SFT step
# (8192-token rows) and the GRPO update (4608-token rows) together.
ATTENTION_BYTES = 11.0
# float32 values per token of (hidden + mlp / tensor) that the backward of one layer keeps live
# beyond the saved activations (the same two stages).
WORKSPACE = 2.2
# The same for a forward without gradients (held-out NLL and old log-probs): from GRPO's
# old-log-prob pass of Qwen3-4B on v5p-64 and of Llama-3-8B (tensor=2) on v4-32.
FORWARD = 1.2
# A decode step's temporaries hold a copy of the layer-stacked suffix cache (the in-place update;
# Qwen3-4B's RL decode on v5p-64: 13.5 GiB for a 13.5 GiB cache; Llama-3-8B's held half).
DECODE_COPY = 1.0
# (plan folder, stage) pairs the constants above were fitted to; the rest are out of sample
FITTED = {("llama8b_v5p-64", "sft"), ("llama8b_v5p-64_fixed", "grpo_update"),
          ("qwen3_4b_v5p-64", "grpo_logprobs"), ("llama8b_v4-32", "grpo_logprobs"),
          ("qwen3_4b_v5p-64", "rl_decode")}


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One GPU. hbm_gib: the memory nvidia-smi reports (XLA preallocates 75% of it unless
    XLA_PYTHON_CLIENT_MEM_FRACTION says more); peak: dense bf16 TFLOP/s and HBM GB/s from the
    datasheets (assumptions of the time columns)."""

    name: str
    hbm_gib: float
    peak_tflops: float
    hbm_gbps: float


GPUS = {
    "h100": Gpu("h100", 81559 / 1024, 989.0, 3350.0),  # H100 SXM 80GB
    "h200": Gpu("h200", 143771 / 1024, 989.0, 4800.0),  # H200 SXM 141GB
    "a100": Gpu("a100", 81920 / 1024, 312.0, 2039.0),  # A100 SXM 80GB
}


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    """N GPUs of one kind, one host ('8xh100'); quacks like plan.Topology for the report."""

    chip: Gpu
    count: int

    @property
    def num_chips(self) -> int:
        return self.count

    @property
    def cloud_name(self) -> str:
        return f"{self.count}x{self.chip.name}"

    libtpu_name = cloud_name


def parse_gpu_target(text: str) -> GpuTarget | None:
    """'8xh100', 'h100x8', '1xh200'; None when `text` names no GPU (e.g. a TPU topology)."""
    text = text.strip().lower()
    match = re.fullmatch(r"(\d+)x([a-z]\d+)|([a-z]\d+)(?:x(\d+))?", text)
    if not match:
        return None
    name = match.group(2) or match.group(3)
    if name not in GPUS:
        return None
    count = int(match.group(1) or match.group(4) or 1)
    return GpuTarget(GPUS[name], count) if count >= 1 else None


@dataclasses.dataclass
class Part:
    """One thing a program holds on a device: `where` is 'arg', 'out' (aliased to an argument
    when `alias`) or 'temp'."""

    what: str
    where: str
    bytes: float
    alias: bool = False


def _gib(parts: list[Part], where: str) -> float:
    return sum(p.bytes for p in parts if p.where == where) / GIB


def mesh_sizes(config: Any, num_devices: int) -> dict[str, int]:
    from sftrl import config_lib
    from sftrl.sharding import MeshError, resolve_mesh_shape

    try:
        return resolve_mesh_shape(config.mesh.data, config.mesh.fsdp, config.mesh.tensor,
                                  num_devices)
    except MeshError as e:
        raise config_lib.ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The model's sizes and the mesh's splits, with the counts the stages share."""

    arch: Any
    mesh: dict[str, int]
    compute_bytes: int  # 2 for bf16
    remat: str = "dots_no_batch"

    @property
    def tensor(self) -> int:
        return self.mesh["tensor"]

    @property
    def batch_ways(self) -> int:  # 'activation_batch' -> (data, fsdp)
        return self.mesh["data"] * self.mesh["fsdp"]

    def split(self, rows: int) -> int:
        """How many ways a batch of `rows` rows is split: the batch axes, if they divide it."""
        return self.batch_ways if rows % self.batch_ways == 0 else 1

    @property
    def weight_ways(self) -> int:  # train weights: embed -> fsdp, heads/mlp/vocab -> tensor
        return self.mesh["fsdp"] * self.mesh["tensor"]

    @property
    def params(self) -> int:
        return self.arch.num_params()

    def saved_per_token(self) -> float:
        """Bytes per token of all layers kept for the backward pass under the remat policy:
        'full' would keep only each layer's input (the scan carry), but is counted as
        'dots_no_batch' (measured, see below); 'dots_no_batch' (and 'dots', whose
        extra attention dots our flash attention does not expose) also the outputs of the
        matmuls against weights (q k v gate up over tensor; o, down) and flash attention's
        output and log-sum-exp; 'none' also the norms' outputs, the rotated q and k and the
        MLP's activation and product."""
        a, t, c = self.arch, self.tensor, self.compute_bytes
        e, f, d = a.hidden_size, a.intermediate_size, a.head_dim
        q, kv = a.num_heads * d / t, a.num_kv_heads * d / t
        carry = e * c
        # 'full' is counted as 'dots_no_batch': compiled (Mistral-NeMo-12B on v4-32,
        # docs/paper_scale/mistral_nemo12b_v4-32_tp8_remat_full) full remat needed 81% of what
        # dots_no_batch needed for the SFT step, not the ~60% a carry-only count gives (which
        # was 22-26% under the compiler); the dots_no_batch count is within 10% of both
        # compiled full-remat training steps.
        dots = (q + 2 * kv + 2 * f / t + 2 * e) * c
        flash = q * c + a.num_heads / t * F32  # output + log-sum-exp
        rest = (2 * e + q + kv + 2 * f / t) * c if self.remat == "none" else 0.0
        return a.num_layers * (carry + dots + flash + rest)

    def workspace_per_token(self) -> float:
        a = self.arch
        return WORKSPACE * (a.hidden_size + a.intermediate_size / self.tensor) * F32

    def forward_per_token(self) -> float:
        """A forward without gradients: one layer's activations live at a time (float32)."""
        a = self.arch
        return FORWARD * (a.hidden_size + a.intermediate_size / self.tensor) * F32

    def gathered_weights(self) -> float:
        """FSDP all-gathers a layer's weights in the compute dtype (two layers in flight)."""
        return 2 * layer_matmul_params(self.arch) / self.tensor * self.compute_bytes

    def kv_per_token(self) -> float:
        a = self.arch
        split = self.tensor if a.num_kv_heads % self.tensor == 0 else 1
        return 2 * a.num_layers * a.num_kv_heads * a.head_dim * self.compute_bytes / split


def _attention(s: Shapes, rows: float, length: int, impl: str) -> Part:
    """The attention backward's working set for `rows` rows on a device, one layer."""
    if impl == "flash":
        pairs = rows * s.arch.num_heads / s.tensor * length * (length + 1) / 2
        return Part("flash attention score tiles (fitted)", "temp", ATTENTION_BYTES * pairs)
    return Part(f"{impl} attention mask", "temp", rows * length * length)


def _itemsizes(batch: dict[str, str], per_row: bool) -> int:
    """Bytes per token (or per row) of a batch's fields."""
    return sum(np.dtype(dt).itemsize for k, dt in batch.items() if (k in PER_ROW) == per_row)


def _train_step(s: Shapes, rows: int, length: int, grad_accum: int, chunk: int,
                batch_fields: dict[str, str], impl: str) -> list[Part]:
    """SFT step or GRPO update: state in and out (donated), batch in, the backward's needs."""
    a, w = s.arch, s.weight_ways
    state = 3 * F32 * s.params / w
    tokens = rows * length / s.batch_ways
    # a micro-batch the batch axes do not divide is not split: every device holds all of it
    # (compiled: Qwen3-4B's 8-row micro-batches on 16 v4 chips need 104.5 GiB)
    micro_rows = rows / grad_accum / s.split(rows // grad_accum)
    micro = micro_rows * length
    vocab = a.vocab_size / s.tensor
    batch = (_itemsizes(batch_fields, False) * tokens
             + _itemsizes(batch_fields, True) * rows / s.batch_ways)
    return [
        Part("train state (f32 params + AdamW moments)", "arg", state),
        Part("batch", "arg", batch),
        Part("train state (updated, donated)", "out", state, alias=True),
        Part("gradients f32" + (" + accumulator" if grad_accum > 1 else ""), "temp",
             (2 if grad_accum > 1 else 1) * F32 * s.params / w),
        Part("gathered layer weights", "temp", s.gathered_weights()),
        Part(f"saved activations ({micro:.0f} tokens)", "temp", micro * s.saved_per_token()),
        Part("final hidden states", "temp", micro * a.hidden_size * s.compute_bytes),
        Part(f"logits chunk x3 ({chunk} positions)", "temp",
             3 * micro_rows * min(chunk, length) * vocab * F32),
        _attention(s, micro_rows, length, impl),
        Part("backward working set (fitted)", "temp", micro * s.workspace_per_token()),
    ]


def _forward(s: Shapes, rows: int, length: int, chunk: int | None, batch_fields: dict[str, str],
             out_per_token: int) -> list[Part]:
    """A forward without gradients (held-out NLL, old log-probs): float32 params in."""
    a = s.arch
    tokens = rows * length / s.split(rows)
    vocab = a.vocab_size / s.tensor
    logits_rows = rows / s.split(rows) * (length if chunk is None else min(chunk, length))
    return [
        Part("params f32", "arg", F32 * s.params / s.weight_ways),
        Part("batch", "arg", _itemsizes(batch_fields, False) * tokens),
        Part("per-token output", "out", out_per_token * tokens),
        Part("gathered layer weights", "temp", s.gathered_weights()),
        Part("hidden states + one layer's activations", "temp",
             tokens * (a.hidden_size * s.compute_bytes + s.forward_per_token())),
        Part("logits x2" + (" (unchunked)" if chunk is None else f" ({chunk}-position chunk)"),
             "temp", 2 * logits_rows * vocab * F32),
    ]


def _prefill(s: Shapes, sm: Sampler, sampler_bytes: float, prompt_width: int) -> list[Part]:
    """A sampler's prefill: a wave's prompts in, its KV cache out."""
    p, split = sm.wave, sm.split
    return [
        Part("sampler weights", "arg", sampler_bytes),
        Part("prompts", "arg", 2 * I32 * p * prompt_width / split),
        Part("prefix KV", "out", sm.prefix_kv),
        Part("suffix KV", "out", sm.suffix_kv),
        Part("prompt activations (one layer, f32)", "temp",
             p * prompt_width / split * s.forward_per_token()),
        Part("last-position logits", "temp", p / split * s.arch.vocab_size / s.tensor * F32),
    ]


def _decode(s: Shapes, sm: Sampler, sampler_bytes: float) -> list[Part]:
    """A decode step: the wave's KV cache in and out (donated)."""
    rows = sm.wave * sm.chunk / sm.split
    return [
        Part("sampler weights", "arg", sampler_bytes),
        Part("KV cache (wave state)", "arg", sm.prefix_kv + sm.suffix_kv),
        Part("KV cache (updated, donated)", "out", sm.prefix_kv + sm.suffix_kv, alias=True),
        Part("stacked suffix K or V copy (fitted)", "temp", DECODE_COPY * sm.suffix_kv),
        Part("logits x2", "temp", 2 * rows * s.arch.vocab_size / s.tensor * F32),
    ]


@dataclasses.dataclass(kw_only=True)
class ModelStage(StageSpec):
    """A stage of the catalogue with the parts the model counts for it."""

    parts: list[Part]

    def row(self) -> dict[str, Any]:
        """A row as `plan.compile_stage` makes it from a compile, from the counts."""
        return super().row() | dict(
            args_gib=_gib(self.parts, "arg"), output_gib=_gib(self.parts, "out"),
            temp_gib=_gib(self.parts, "temp"),
            alias_gib=sum(p.bytes for p in self.parts if p.alias) / GIB,
            parts={p.what: p.bytes / GIB for p in self.parts})


def model_stages(config: Any, num_devices: int, prompt_len: int) -> tuple[list[ModelStage],
                                                                            dict[str, Any]]:
    """The stages of `sftrl.plan` (sftrl.stage_catalogue), counted. Call under
    `target.compiling_for(...)`: the compute dtype ('auto') is the target's."""
    import jax.numpy as jnp

    from sftrl import config_lib
    from sftrl.models.attention import resolve_impl

    arch = config_lib.validate(config, num_devices=num_devices)
    mesh = mesh_sizes(config, num_devices)
    dtype = jnp.dtype(config_lib.resolve_dtype(config.dtype))
    s = Shapes(arch, mesh, dtype.itemsize, config.remat)
    sliding = arch.sliding_window is not None
    packed_impl = resolve_impl(config.attention, dtype, packed=bool(config.data.packing),
                               sliding=sliding)
    rl_impl = resolve_impl(config.attention, dtype, packed=False, sliding=sliding)
    sft, rl = config.sft, config.rl
    state = 3 * F32 * s.params / s.weight_ways
    params = F32 * s.params / s.weight_ways
    sampler = s.compute_bytes * s.params / s.tensor
    g = stage_catalogue.geometry(config, prompt_len)
    specs = stage_catalogue.stages(config, arch, g, s.batch_ways,
                                   Held(state, params, state, params, sampler), s.kv_per_token())
    batches = {spec.name: spec.batch for spec in specs}
    parts = {
        "sft": _train_step(s, sft.batch_size, g.length, sft.grad_accum, sft.loss_chunk,
                           batches["sft"], packed_impl),
        "heldout": _forward(s, sft.heldout_batch_size, g.length, None, batches["heldout"], F32),
        # one micro-batch's activations are live at a time (rl.logprob_rows); the whole
        # rollout's int32 inputs and float32 outputs are a few hundred MB, not counted
        "grpo_logprobs": _forward(s, rl.logprob_rows or g.rows, g.width, rl.logprob_chunk,
                                  batches["grpo_logprobs"], F32),
        "grpo_update": _train_step(s, g.mini, g.width, rl.grad_accum, rl.logprob_chunk,
                                   batches["grpo_update"], rl_impl),
    }
    stages = []
    for spec in specs:
        if spec.sampler is not None:
            parts[spec.name] = (_prefill(s, spec.sampler, sampler, g.prompt_width)
                                if spec.name.endswith("_prefill")
                                else _decode(s, spec.sampler, sampler))
            # the model splits the KV cache over mesh.tensor by kv head (Shapes.kv_per_token)
            spec = dataclasses.replace(spec, knob=spec.knob + " / mesh.tensor")
        stages.append(ModelStage(**spec.spec_fields(), parts=parts[spec.name]))
    info = dict(arch=dataclasses.asdict(arch), mesh=mesh, params=s.params,
                compute_dtype=str(dtype), sampler_param_dtype=str(dtype),
                train_state_gib_per_device=state / GIB,
                rl_train_state_gib_per_device=state / GIB,
                sampler_params_gib_per_device=sampler / GIB, prompt_len=prompt_len)
    return stages, info
