#!/bin/bash
# P10 RL pilot (gate quantities only: reward mix, RL time per step, pass@1 before/after):
# GRPO with the sweep's settings (max_new_tokens 192 for the named CoT) from P10's step 2000, seed 1.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
while pgrep -f "docs/quagmire_v2/pilots/p10b.sh" > /dev/null; do sleep 20; done
source <(sed -n 7,10p docs/quagmire_v2/pilots/p10.sh)
RL="--config.rl.num_steps=30 --config.rl.prompts_per_step=16 --config.rl.group_size=8 --config.rl.max_new_tokens=192 --config.rl.lr=0.0001 --config.rl.schedule=constant --config.rl.aggregation=token-mean --config.rl.normalize_std=True --config.rl.grad_accum=1 --config.rl.updates_per_rollout=1 --config.rl.filter_truncated=False --config.rl.overlong_buffer=0 --config.rl.top_p=1.0 --config.rl.top_k=0 --config.rl.kl_estimator=none --config.rl.kl_coef=0.0 --config.rl.tis_cap=0.0 --config.rl.dynamic_sampling=False --config.rl.save_every=0 --config.rl.evals=()"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p10rl --stage=rl $COMMON $RL \
  --config.rl.init_workdir=runs/pilot/p10 --config.rl.init_step=2000 --config.seed=1
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p10rl --stage=eval $COMMON $RL \
    --config.eval.stage=rl --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=192
.venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p10rl/samples/*/synthetic.jsonl
