"""Replication v2 (issue 21): the paper's four SFT axes on task v2, each with its control, GRPO
with two seeds per SFT checkpoint, every checkpoint's generalization loss on one common held-out
set. The plan, hypotheses and gates: docs/quagmire_v2/PLAN.md (committed before any result).

    python -m sftrl.launch --sweep=configs/sweeps/quagmire_v2.py --workdir=runs/quagmire_v2 \
        --max_parallel=2

Four SFT trajectories of one model on task v2 (`sftrl.data.synthetic_v2`: answers over
thousands of values, one canonical CoT), each trained with a CONSTANT learning rate (after a
short warmup) so that every saved step is a valid end point of SFT; GRPO starts from each of
`SFT_STEPS` of every trajectory (pipeline.sft_steps), once per seed in `RL_SEEDS`:

    run            data set                   axis it serves (control: the `base` run)
    base           diverse-varied, N examples over-training: its own checkpoints along one
                                              trajectory, under- to clearly over-trained
    repeat         diverse-varied, N/2        repetition: N/2 examples x 2 epochs vs base's N x 1
                                              epoch at equal steps (and 2k vs k epochs later)
    short          diverse-short, N/2         length: only the pool's 1-2 step problems vs the
                                              varied pool, equal steps = equal tokens (packed rows
                                              of data.max_length tokens per step)
    homogeneous    homogeneous-varied, N      homogeneity of structure (one step count, one
                                              operation pattern) vs diverse structure, equal steps

4 trajectories x len(SFT_STEPS) checkpoints (>= 16), each: eval (n = EVAL_SAMPLES on
EVAL_PROMPTS test prompts, generalization loss on the common held-out set and on the data set's
own split), then GRPO x len(RL_SEEDS), each followed by an eval (n = RL_EVAL_SAMPLES).

GRPO settings avoid every code path another engineer is fixing (issue notes: Dr. GRPO
normaliser, overlong filtering in group stats, grad_accum normalisation, top-p importance
weights, k3 with kl_coef = 0): token-mean aggregation, normalize_std on (standard GRPO),
grad_accum 1, filter_truncated off and no overlong buffer, top_p 1 and no top_k, no KL term
(kl_estimator "none", kl_coef 0), no truncated importance weights, no dynamic sampling.

Args: none (the study), or 'ci' (two short trajectories of a 1-layer model, < ~2 min).
"""

from sftrl.launch import Run, Sweep, SweepError

N = 8000  # examples of the base data set (one epoch is ~225 SFT steps of 16 x 320 tokens)
# Checkpoints branched to GRPO; the last is the SFT length. Changed twice after the start, each
# before any result but a gate quantity (PLAN.md): from (750, 1000, 1250, 1500) to (1000, 1250,
# 1500, 1750) when the base run's step-750 checkpoint scored 0.018, then, with the named chain
# of thought (change 3), to the steps where pilot P10 spans 0.38 (1400) to past its plateau.
SFT_STEPS = (1400, 1700, 2000, 2300)
RL_SEEDS = (1, 2)
EVAL_PROMPTS = 128
EVAL_SAMPLES = 64  # post-SFT: pass@64 is the paper's large k
RL_EVAL_SAMPLES = 16  # post-RL: only pass@1 is the outcome

# (run name, structure, length, size)
TRAJECTORIES = [
    ("base", "diverse", "varied", N),
    ("repeat", "diverse", "varied", N // 2),
    ("short", "diverse", "short", N // 2),
    ("homogeneous", "homogeneous", "varied", N),
]

# The task (PLAN.md, "Change after the start (2)" and "(3)"): two counters with two-digit values
# and add/subtract operations, both final counts boxed together: ~4000 unordered answers from
# arithmetic as small as task v1's (change 2); one-digit addends and the "named" chain of thought,
# each line led by the change its sentence states and every count by its object (change 3: the
# tiny model's pilot P10 reached post-SFT pass@1 0.38 / 0.51 / 0.58 at 1400 / 1600 / 2000 steps,
# where the equations CoT stayed below 0.06 at 2000).
TASK = {
    "data.synthetic.version": 2,
    "data.synthetic.counters": 2,
    "data.synthetic.ops": "add,sub",
    "data.synthetic.min_start": 10,
    "data.synthetic.max_start": 89,
    "data.synthetic.max_value": 99,
    "data.synthetic.max_operand": 9,
    "data.synthetic.cot": "named",
}

COMMON = {
    **TASK,
    "data.max_length": 320,  # the longest named-CoT chat of the SFT pool is ~300 tokens
    "eval.common_heldout": "synthetic",
    "data.max_heldout_examples": 200,
    # SFT: constant LR (after warmup), checkpoints kept at every branch step
    "sft.schedule": "constant",
    "sft.warmup_steps": 20,
    "sft.lr": 3e-3,
    "sft.num_steps": SFT_STEPS[-1],
    "sft.save_every": 100,
    "sft.eval_every": 0,
    "checkpoint.max_to_keep": 30,
    "pipeline.sft_steps": SFT_STEPS,
    "pipeline.rl_seeds": RL_SEEDS,
    # gate G3's floor: GRPO from a checkpoint below it cannot change the verdict
    "pipeline.min_sft_pass_at_1": 0.05,
    # GRPO: see the docstring for why these settings
    "rl.num_steps": 30,
    # 8 x 16 rather than 16 x 8: the same samples a step, more groups with mixed rewards
    # (pilot: 42% against 34%; PLAN.md, change 3)
    "rl.prompts_per_step": 8,
    "rl.group_size": 16,
    "rl.max_new_tokens": 192,
    "rl.lr": 1e-4,
    "rl.schedule": "constant",
    "rl.aggregation": "token-mean",
    "rl.normalize_std": True,
    "rl.grad_accum": 1,
    "rl.updates_per_rollout": 1,
    "rl.filter_truncated": False,
    "rl.overlong_buffer": 0,
    "rl.top_p": 1.0,
    "rl.top_k": 0,
    "rl.kl_estimator": "none",
    "rl.kl_coef": 0.0,
    "rl.tis_cap": 0.0,
    "rl.dynamic_sampling": False,
    "rl.evals": (),
    "rl.save_every": 0,
    # evaluation
    "eval.limit": EVAL_PROMPTS,
    "eval.num_samples": EVAL_SAMPLES,
    "eval.rl_num_samples": RL_EVAL_SAMPLES,
    "eval.max_new_tokens": 192,  # a 5-step named-CoT answer is ~160 tokens
    "predict.calibration_sizes": (3, 4),
}

CI = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.intermediate_size": 64,
    "model.head_dim": 8, "data.max_heldout_examples": 8, "sft.batch_size": 4,
    "sft.heldout_batch_size": 8, "sft.num_steps": 4, "sft.save_every": 2, "sft.warmup_steps": 0,
    "pipeline.sft_steps": (2, 4), "pipeline.min_sft_pass_at_1": 0.0, "rl.num_steps": 1,
    "rl.prompts_per_step": 2,
    "rl.group_size": 2, "rl.max_new_tokens": 8, "eval.limit": 3, "eval.num_samples": 4,
    "eval.rl_num_samples": 2, "eval.max_new_tokens": 8,
    "predict.n_permutations": 50, "predict.n_bootstrap": 20, "predict.calibration_sizes": (2,),
}
CI_TRAJECTORIES = [("base", "diverse", "varied", 64), ("short", "diverse", "short", 32)]


def get_sweep(arg: str | None = None) -> Sweep:
    if arg not in (None, "", "ci"):
        raise SweepError(f"quagmire_v2: unknown arg {arg!r} (known: ci)")
    ci = arg == "ci"
    runs = []
    for name, structure, length, size in CI_TRAJECTORIES if ci else TRAJECTORIES:
        overrides = {**COMMON, **(CI if ci else {}),
                     "data.synthetic.structure": structure, "data.synthetic.length": length,
                     "data.synthetic.size": size, "eval.name": name}
        runs.append(Run(name, overrides, stage="pipeline"))
    predict = {k: v for k, v in (CI if ci else COMMON).items() if k.startswith("predict.")}
    return Sweep(name="quagmire_v2", base_config="configs/tiny.py", runs=runs, predict=True,
                 predict_overrides=predict)
