"""An analytic model of every stage's per-device memory, for targets `sftrl.plan` cannot compile
for on this host (GPUs: XLA needs the device to compile for it), and its calibration.

    python -m sftrl.plan --config=configs/llama8b.py --target=8xh100      # the model's table
    python -m sftrl.plan --config=configs/llama8b.py --topology=v5p-64 --analytic
    python -m sftrl.calibration docs/paper_scale/*/plan.json              # model vs compile

It counts, per device, what each program holds (the same stages as `sftrl.plan`):

* weights: float32 master weights, split over fsdp x tensor; AdamW's two float32 moments; the
  gradients (a second float32 copy as the accumulator when grad_accum > 1); the sampler's copy
  in the compute dtype, split over tensor only (SAMPLING_RULES);
* activations saved for the backward pass under remat `dots_no_batch`: per token and layer, the
  outputs of the matmuls against weights (q, k, v, o, gate, up, down), the layer's input (the
  scan carry) and flash attention's output and log-sum-exp, in the compute dtype;
* logits: one chunk of [rows, chunk, vocab] float32 (logits, softmax, gradient) for the chunked
  losses, the whole [rows, L, vocab] for the held-out step;
* the KV cache of a sampling wave: prompts x prompt width (the shared prefix) + prompts x samples
  x max_new_tokens (the suffixes), split by prompt over the batch axes when the wave divides
  them, and by kv head over tensor;
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

GIB = 2**30
PROMPT_BUCKET = 32  # sftrl.train.grpo_step.PROMPT_BUCKET / sftrl.sampling.PREFIX_BUCKET
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

    def layer_params(self) -> int:
        a = self.arch
        e, d = a.hidden_size, a.head_dim
        return e * d * (2 * a.num_heads + 2 * a.num_kv_heads) + 3 * e * a.intermediate_size

    def saved_per_token(self) -> float:
        """Bytes per token of all layers kept for the backward pass under the remat policy:
        'full' keeps each layer's input (the scan carry); 'dots_no_batch' (and 'dots', whose
        extra attention dots our flash attention does not expose) also the outputs of the
        matmuls against weights (q k v gate up over tensor; o, down) and flash attention's
        output and log-sum-exp; 'none' also the norms' outputs, the rotated q and k and the
        MLP's activation and product."""
        a, t, c = self.arch, self.tensor, self.compute_bytes
        e, f, d = a.hidden_size, a.intermediate_size, a.head_dim
        q, kv = a.num_heads * d / t, a.num_kv_heads * d / t
        carry = e * c
        if self.remat == "full":
            return a.num_layers * carry
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
        return 2 * self.layer_params() / self.tensor * self.compute_bytes

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


def _train_step(s: Shapes, rows: int, length: int, grad_accum: int, chunk: int,
                fields: dict[str, int], per_row: dict[str, int], impl: str) -> list[Part]:
    """SFT step or GRPO update: state in and out (donated), batch in, the backward's needs."""
    a, w = s.arch, s.weight_ways
    state = 3 * F32 * s.params / w
    tokens = rows * length / s.batch_ways
    # a micro-batch the batch axes do not divide is not split: every device holds all of it
    # (compiled: Qwen3-4B's 8-row micro-batches on 16 v4 chips need 104.5 GiB)
    micro_rows = rows / grad_accum / s.split(rows // grad_accum)
    micro = micro_rows * length
    vocab = a.vocab_size / s.tensor
    batch = sum(fields.values()) * tokens + sum(per_row.values()) * rows / s.batch_ways
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


def _forward(s: Shapes, rows: int, length: int, chunk: int | None, fields: int,
             out_per_token: int) -> list[Part]:
    """A forward without gradients (held-out NLL, old log-probs): float32 params in."""
    a = s.arch
    tokens = rows * length / s.split(rows)
    vocab = a.vocab_size / s.tensor
    logits_rows = rows / s.split(rows) * (length if chunk is None else min(chunk, length))
    return [
        Part("params f32", "arg", F32 * s.params / s.weight_ways),
        Part("batch", "arg", fields * I32 * tokens),
        Part("per-token output", "out", out_per_token * tokens),
        Part("gathered layer weights", "temp", s.gathered_weights()),
        Part("hidden states + one layer's activations", "temp",
             tokens * (a.hidden_size * s.compute_bytes + s.forward_per_token())),
        Part("logits x2" + (" (unchunked)" if chunk is None else f" ({chunk}-position chunk)"),
             "temp", 2 * logits_rows * vocab * F32),
    ]


def _waves(prompts: int, prompt_len: int, extra: int, budget: int, align: int) -> list[list]:
    from sftrl import sampling

    return sampling._waves([prompt_len] * prompts, extra, budget or None, align=align)


@dataclasses.dataclass
class ModelStage:
    name: str
    shapes: str
    knob: str
    parts: list[Part]
    flops: float
    resident_bytes: float = 0.0
    resident_what: str = ""
    hbm_read_bytes: float = 0.0
    calls: str = ""

    def row(self) -> dict[str, Any]:
        """A row as `plan.compile_stage` makes it from a compile, from the counts."""
        return dict(
            stage=self.name, shapes=self.shapes, knob=self.knob, flops=self.flops,
            resident_gib=self.resident_bytes / GIB, resident=self.resident_what,
            calls=self.calls, args_gib=_gib(self.parts, "arg"),
            output_gib=_gib(self.parts, "out"), temp_gib=_gib(self.parts, "temp"),
            alias_gib=sum(p.bytes for p in self.parts if p.alias) / GIB,
            parts={p.what: p.bytes / GIB for p in self.parts})


def model_stages(config: Any, num_devices: int, prompt_len: int) -> tuple[list[ModelStage],
                                                                            dict[str, Any]]:
    """The stages of `sftrl.plan`, counted. Call under `target.compiling_for(...)`: the compute
    dtype ('auto') is the target's."""
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
    sft, rl, ev = config.sft, config.rl, config.eval
    length = config.data.max_length
    state = 3 * F32 * s.params / s.weight_ways
    params = F32 * s.params / s.weight_ways
    sampler = s.compute_bytes * s.params / s.tensor
    stages: list[ModelStage] = []

    packed = {"tokens": I32, "loss_mask": I32, "attention_mask": I32}
    if config.data.packing:
        packed |= {"segment_ids": I32, "positions": I32}
    stages.append(ModelStage(
        "sft", f"{sft.batch_size}x{length} tokens, grad_accum {sft.grad_accum}, loss_chunk "
        f"{sft.loss_chunk}", "sft.grad_accum (or sft.batch_size / mesh)",
        _train_step(s, sft.batch_size, length, sft.grad_accum, sft.loss_chunk, packed, {},
                    packed_impl),
        3 * forward_flops(arch, sft.batch_size * length, length / 2), calls="sft steps"))

    stages.append(ModelStage(
        "heldout", f"{sft.heldout_batch_size}x{length} tokens, unchunked float32 logits",
        "sft.heldout_batch_size",
        _forward(s, sft.heldout_batch_size, length, None, 3 + config.data.packing, F32),
        forward_flops(arch, sft.heldout_batch_size * length, length / 2),
        resident_bytes=state - params, resident_what="optimizer state",
        calls="per held-out batch"))

    prompt_width = -(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET
    width = prompt_width + rl.max_new_tokens
    rows = rl.prompts_per_step * rl.group_size
    stages.append(ModelStage(
        "grpo_logprobs", f"{rows}x{width} tokens ({rl.prompts_per_step} prompts x "
        f"{rl.group_size}; prompt {prompt_width} + {rl.max_new_tokens}), logprob_chunk "
        f"{rl.logprob_chunk}"
        + (f", logprob_rows {rl.logprob_rows}" if rl.logprob_rows else ""),
        "rl.logprob_rows / rl.logprob_chunk / mesh",
        # one micro-batch's activations are live at a time (rl.logprob_rows); the whole
        # rollout's int32 inputs and float32 outputs are a few hundred MB, not counted
        _forward(s, rl.logprob_rows or rows, width, rl.logprob_chunk, 2, F32),
        forward_flops(arch, rows * width, width / 2),
        resident_bytes=state - params + sampler,
        resident_what="optimizer state + sampler weights", calls="1 per RL step"))

    mini = rows // rl.updates_per_rollout
    fields = {"tokens": I32, "attention_mask": I32, "loss_mask": I32, "sampler_logp": F32,
              "old_logp": F32}
    if rl.kl_estimator != "none" and rl.kl_coef > 0:
        fields["ref_logp"] = F32
    stages.append(ModelStage(
        "grpo_update", f"{mini}x{width} tokens, grad_accum {rl.grad_accum}",
        "rl.grad_accum (or rl.updates_per_rollout / mesh)",
        _train_step(s, mini, width, rl.grad_accum, rl.logprob_chunk, fields,
                    {"advantages": F32}, rl_impl),
        3 * forward_flops(arch, mini * width, width / 2), resident_bytes=sampler,
        resident_what="sampler weights",
        calls=f"{rl.updates_per_rollout * rl.ppo_epochs} per RL step"))

    for prefix, prompts, n, new_tokens, budget, resident, what in (
        ("rl", rl.prompts_per_step, rl.group_size, rl.max_new_tokens, rl.max_kv_tokens, state,
         "train state"),
        ("eval", ev.prompts_per_wave, ev.num_samples, ev.max_new_tokens, ev.max_kv_tokens,
         params, "train-layout weights"),
    ):
        waves = _waves(prompts, prompt_len, n * new_tokens, budget, s.batch_ways)
        p = len(waves[0])
        split = s.split(p)
        prefix_kv = p * prompt_width * s.kv_per_token() / split
        suffix_kv = p * n * new_tokens * s.kv_per_token() / split
        rows_here = p * n / split
        knob = f"{prefix}.max_kv_tokens" + (" / eval.prompts_per_wave" if prefix == "eval"
                                            else "") + " / mesh.tensor"
        kv_parts = [Part("prefix KV", "out", prefix_kv), Part("suffix KV", "out", suffix_kv)]
        prefill = [
            Part("sampler weights", "arg", sampler),
            Part("prompts", "arg", 2 * I32 * p * prompt_width / split),
            *kv_parts,
            Part("prompt activations (one layer, f32)", "temp",
                 p * prompt_width / split * s.forward_per_token()),
            Part("last-position logits", "temp", p / split * arch.vocab_size / s.tensor * F32),
        ]
        stages.append(ModelStage(
            f"{prefix}_prefill", f"wave of {p} prompts x {prompt_width} tokens ({len(waves)} "
            f"waves of {prompts}; max_kv_tokens {budget or 'none'})", knob, prefill,
            forward_flops(arch, p * prompt_width, prompt_width / 2, head_tokens=p),
            resident_bytes=resident, resident_what=what,
            calls=f"{len(waves)} per " + ("RL step" if prefix == "rl"
                                          else f"{prompts} eval prompts")))
        decode = [
            Part("sampler weights", "arg", sampler),
            Part("KV cache (wave state)", "arg", prefix_kv + suffix_kv),
            Part("KV cache (updated, donated)", "out", prefix_kv + suffix_kv, alias=True),
            Part("stacked suffix K or V copy (fitted)", "temp", DECODE_COPY * suffix_kv),
            Part("logits x2", "temp", 2 * rows_here * arch.vocab_size / s.tensor * F32),
        ]
        kv_read = prefix_kv + suffix_kv / 2  # the suffix is half full on average
        stages.append(ModelStage(
            f"{prefix}_decode", f"{p}x{n} rows, suffix window {new_tokens}", knob, decode,
            forward_flops(arch, p * n, prompt_width + new_tokens / 2),
            resident_bytes=resident, resident_what=what, hbm_read_bytes=sampler + kv_read,
            calls=f"{new_tokens} per wave (at most)"))
    info = dict(arch=dataclasses.asdict(arch), mesh=mesh, params=s.params,
                compute_dtype=str(dtype), sampler_param_dtype=str(dtype),
                train_state_gib_per_device=state / GIB,
                rl_train_state_gib_per_device=state / GIB,
                sampler_params_gib_per_device=sampler / GIB, prompt_len=prompt_len)
    return stages, info


# --- FLOPs (analytic: compiled cost analyses count each loop body once) -----------------


def matmul_params(arch: Any) -> tuple[int, int]:
    """(matmul weights in the layers, LM head weights): what a token's forward multiplies by."""
    e, d = arch.hidden_size, arch.head_dim
    attention = e * d * (2 * arch.num_heads + 2 * arch.num_kv_heads)
    per_layer = attention + 3 * e * arch.intermediate_size
    return arch.num_layers * per_layer, arch.vocab_size * e


def forward_flops(arch: Any, tokens: int, context: float, *, head_tokens: int | None = None
                  ) -> float:
    """2 FLOPs per multiply-add: the matmuls, and attention's QK and PV over `context` keys per
    query (the mean visible context: L/2 for a causal length-L row). head_tokens: positions that
    go through the LM head (default all)."""
    layers, head = matmul_params(arch)
    attention = 4 * arch.num_layers * arch.num_heads * arch.head_dim * context
    return tokens * (2 * layers + attention) + 2 * head * (tokens if head_tokens is None
                                                            else head_tokens)
