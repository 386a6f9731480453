"""The stages of a run, described once: for `sftrl.plan`, which compiles each for a TPU slice, and
`sftrl.memory_model`, which counts each analytically (GPU targets, `--analytic`).

What a stage is belongs to the run, not to how its memory is found: its name, its shapes in
words, the knob to turn when it does not fit, its analytic FLOPs, the batch fields it takes, what
the run holds on the device meanwhile and how often the run calls it. Both read these here, so
the compiled plan and the model always describe the same stages (`sftrl.calibration` pairs them
by name and shapes); each adds only its own: the plan the program to compile, the model the
parts it counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PROMPT_BUCKET = 32  # sftrl.train.grpo_step.PROMPT_BUCKET / sftrl.sampling.PREFIX_BUCKET
PER_ROW = ("advantages",)  # batch fields with one value per row; the others have one per token


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A run's rows: SFT rows of `length` tokens; GRPO rollouts of `rows` rows of `width` tokens
    (the `prompt_len` prompt left-padded to a bucket, `prompt_width`, + the response at its
    max_new_tokens), `mini` rows per optimizer step."""

    length: int
    prompt_len: int
    prompt_width: int
    width: int
    rows: int
    mini: int


def geometry(config: Any, prompt_len: int) -> Geometry:
    rl = config.rl
    prompt_width = -(-prompt_len // PROMPT_BUCKET) * PROMPT_BUCKET
    rows = rl.prompts_per_step * rl.group_size
    return Geometry(config.data.max_length, prompt_len, prompt_width,
                    prompt_width + rl.max_new_tokens, rows, rows // rl.updates_per_rollout)


@dataclasses.dataclass(frozen=True)
class Held:
    """Bytes per device the run keeps on the device, as the caller counts them (the plan from its
    abstract arrays, the model from its formulas)."""

    sft_state: float  # the SFT train state: float32 params + AdamW moments
    sft_params: float  # its params
    rl_state: float
    rl_params: float
    sampler: float  # the sampler's copy of the weights (SAMPLING_RULES, compute dtype)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One sampler's shapes (RL rollouts or eval), as `sftrl.sampling.plan_waves` runs it:
    `prompts` prompts, each with `samples` continuations of up to `new_tokens` tokens, in
    `waves` waves; the largest (per device) holds `wave` prompts x `chunk` of their samples
    (`chunk` < `samples` when the budget splits a prompt's samples over waves). A wave's rows are
    split `split` ways (the batch axes, when they divide the wave)."""

    section: str  # the config section it reads: 'rl' or 'eval'
    prompts: int
    samples: int
    new_tokens: int
    kv_budget: int  # max_kv_tokens (0: none)
    wave: int
    chunk: int  # samples per prompt in a wave
    waves: int
    split: int
    prefix_kv: float  # bytes per device of a wave's KV cache: the shared prompts'
    suffix_kv: float  # and the continuations'

    def describe(self, prompt_width: int) -> str:
        """The prefill's shapes in words; unchanged from before sample splitting when a wave
        holds all samples (sftrl.calibration pairs stages by this text)."""
        budget = self.kv_budget or "none"
        if self.chunk == self.samples:
            return (f"wave of {self.wave} prompts x {prompt_width} tokens ({self.waves} waves "
                    f"of {self.prompts}; max_kv_tokens {budget})")
        return (f"wave of {self.wave} prompts x {self.chunk} of {self.samples} samples, prompt "
                f"{prompt_width} tokens ({self.waves} waves of {self.prompts} prompts x "
                f"{self.samples} samples; max_kv_tokens {budget})")

    def rows(self) -> str:
        """The decode step's rows in words."""
        of = f" ({self.chunk} of {self.samples} samples)" if self.chunk < self.samples else ""
        return f"{self.wave}x{self.chunk} rows{of}"


def sampler_waves(section: str, prompts: int, samples: int, new_tokens: int, budget: int,
                  prompt_len: int, prompt_width: int, batch_ways: int, kv_per_token: float
                  ) -> Sampler:
    """The waves `sftrl.sampling.generate` runs for `prompts` prompts of `prompt_len` tokens
    (`plan_waves`), described by the largest per device: a wave's KV is split by prompt over the
    batch axes only when they divide its prompts, so a smaller, unaligned last wave can hold
    more per device than a full one. The generate call pads prompts to `prompt_width`."""
    from sftrl import sampling

    plan = sampling.plan_waves([prompt_len] * prompts, samples, new_tokens, budget or None,
                               align=batch_ways)

    def ways(p: int) -> int:  # how many ways a wave of p prompts' KV is split
        return batch_ways if p % batch_ways == 0 else 1

    largest = max(plan, key=lambda w: (len(w.prompts) / ways(len(w.prompts)), len(w.prompts)))
    p, chunk = len(largest.prompts), largest.num_samples
    split = ways(p)
    return Sampler(section, prompts, samples, new_tokens, budget, p, chunk, len(plan), split,
                   prefix_kv=p * prompt_width * kv_per_token / split,
                   suffix_kv=p * chunk * new_tokens * kv_per_token / split)


@dataclasses.dataclass(kw_only=True)
class StageSpec:
    """One stage, as the run defines it. `sftrl.plan.Stage` and `sftrl.memory_model.ModelStage`
    extend it with their own (the program to compile, the parts counted)."""

    name: str
    shapes: str  # what it is built for, in words
    knob: str  # what to turn when it does not fit
    flops: float  # analytic, global, per call
    batch: dict[str, str] = dataclasses.field(default_factory=dict)  # field -> dtype name
    resident_bytes: float = 0.0  # per device, held by the run outside this program meanwhile
    resident_what: str = ""
    hbm_read_bytes: float = 0.0  # per device per call, for bandwidth-bound (decode) steps
    calls: str = ""  # how often a run calls it, in words
    sampler: Sampler | None = None  # the prefill's and decode's sampler

    def spec_fields(self) -> dict[str, Any]:
        """The fields of the spec, to build an extended stage from it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(StageSpec)}

    def row(self) -> dict[str, Any]:
        """The report row's description of the stage; the plan and the model add the memory."""
        return dict(stage=self.name, shapes=self.shapes, knob=self.knob, flops=self.flops,
                    resident_gib=self.resident_bytes / 2**30, resident=self.resident_what,
                    calls=self.calls)


def stages(config: Any, arch: Any, g: Geometry, batch_ways: int, held: Held,
           kv_per_token: float) -> list[StageSpec]:
    """The stages of a run of `config`, in the order a run meets them. batch_ways: how many ways
    the mesh's batch axes split rows (data x fsdp); kv_per_token: the caller's KV bytes per token
    on a device, before the split by prompt."""
    sft, rl, ev = config.sft, config.rl, config.eval
    length, width, rows, mini = g.length, g.width, g.rows, g.mini
    packed = {"tokens": "int32", "loss_mask": "int32", "attention_mask": "int32"}
    if config.data.packing:
        packed |= {"segment_ids": "int32", "positions": "int32"}
    # the held-out loss's arguments, in the order it takes them
    heldout = {k: packed[k] for k in ("tokens", "loss_mask", "attention_mask", "segment_ids")
               if k in packed}
    rollout = {"tokens": "int32", "attention_mask": "int32", "loss_mask": "int32",
               "sampler_logp": "float32", "old_logp": "float32", "advantages": "float32"}
    if rl.kl_estimator != "none" and rl.kl_coef > 0:
        rollout["ref_logp"] = "float32"
    # Packed rows: the attention context is each example's, at most the row; L/2 is the bound.
    specs = [
        StageSpec(
            name="sft", shapes=f"{sft.batch_size}x{length} tokens, grad_accum {sft.grad_accum}, "
            f"loss_chunk {sft.loss_chunk}", knob="sft.grad_accum (or sft.batch_size / mesh)",
            flops=3 * forward_flops(arch, sft.batch_size * length, length / 2), batch=packed,
            calls="sft steps"),
        StageSpec(
            name="heldout",
            shapes=f"{sft.heldout_batch_size}x{length} tokens, unchunked float32 logits",
            knob="sft.heldout_batch_size",
            flops=forward_flops(arch, sft.heldout_batch_size * length, length / 2),
            batch=heldout, resident_bytes=held.sft_state - held.sft_params,
            resident_what="optimizer state", calls="per held-out batch"),
        StageSpec(
            name="grpo_logprobs", shapes=f"{rows}x{width} tokens ({rl.prompts_per_step} prompts "
            f"x {rl.group_size}; prompt {g.prompt_width} + {rl.max_new_tokens}), logprob_chunk "
            f"{rl.logprob_chunk}"
            + (f", logprob_rows {rl.logprob_rows}" if rl.logprob_rows else ""),
            knob="rl.logprob_rows / rl.logprob_chunk / mesh",
            flops=forward_flops(arch, rows * width, width / 2),
            batch={"tokens": "int32", "attention_mask": "int32"},
            resident_bytes=held.rl_state - held.rl_params + held.sampler,
            resident_what="optimizer state + sampler weights", calls="1 per RL step"),
        StageSpec(
            name="grpo_update", shapes=f"{mini}x{width} tokens, grad_accum {rl.grad_accum}",
            knob="rl.grad_accum (or rl.updates_per_rollout / mesh)",
            flops=3 * forward_flops(arch, mini * width, width / 2), batch=rollout,
            resident_bytes=held.sampler, resident_what="sampler weights",
            calls=f"{rl.updates_per_rollout * rl.ppo_epochs} per RL step"),
    ]

    prompt_width = g.prompt_width
    for section, prompts, n, new_tokens, budget, resident, what in (
        ("rl", rl.prompts_per_step, rl.group_size, rl.max_new_tokens, rl.max_kv_tokens,
         held.rl_state, "train state"),
        ("eval", ev.prompts_per_wave, ev.num_samples, ev.max_new_tokens, ev.max_kv_tokens,
         held.sft_params, "train-layout weights"),
    ):
        sampler = sampler_waves(section, prompts, n, new_tokens, budget, g.prompt_len,
                                prompt_width, batch_ways, kv_per_token)
        p, chunk = sampler.wave, sampler.chunk
        knob = f"{section}.max_kv_tokens" + (" / eval.prompts_per_wave" if section == "eval"
                                             else "")
        specs.append(StageSpec(
            name=f"{section}_prefill", shapes=sampler.describe(prompt_width), knob=knob,
            flops=forward_flops(arch, p * prompt_width, prompt_width / 2, head_tokens=p),
            resident_bytes=resident, resident_what=what, calls=f"{sampler.waves} per "
            + ("RL step" if section == "rl" else f"{prompts} eval prompts"), sampler=sampler))
        # a decode step reads the weights and the KV cache, the suffix half full on average
        kv_read = sampler.prefix_kv + sampler.suffix_kv / 2
        specs.append(StageSpec(
            name=f"{section}_decode", shapes=f"{sampler.rows()}, suffix window {new_tokens}",
            knob=knob, flops=forward_flops(arch, p * chunk, prompt_width + new_tokens / 2),
            resident_bytes=resident, resident_what=what, hbm_read_bytes=held.sampler + kv_read,
            calls=f"{new_tokens} per wave (at most)", sampler=sampler))
    return specs


# --- FLOPs (analytic: compiled cost analyses count each loop body once) -----------------


def layer_matmul_params(arch: Any) -> int:
    """The weights one layer's matmuls multiply a token by: q, k, v, o, gate, up, down."""
    e, d = arch.hidden_size, arch.head_dim
    return e * d * (2 * arch.num_heads + 2 * arch.num_kv_heads) + 3 * e * arch.intermediate_size


def matmul_params(arch: Any) -> tuple[int, int]:
    """(matmul weights in the layers, LM head weights): what a token's forward multiplies by."""
    return arch.num_layers * layer_matmul_params(arch), arch.vocab_size * arch.hidden_size


def forward_flops(arch: Any, tokens: int, context: float, *, head_tokens: int | None = None
                  ) -> float:
    """2 FLOPs per multiply-add: the matmuls, and attention's QK and PV over `context` keys per
    query (the mean visible context: L/2 for a causal length-L row). head_tokens: positions that
    go through the LM head (default all)."""
    layers, head = matmul_params(arch)
    attention = 4 * arch.num_layers * arch.num_heads * arch.head_dim * context
    return tokens * (2 * layers + attention) + 2 * head * (tokens if head_tokens is None
                                                            else head_tokens)
