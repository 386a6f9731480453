#!/bin/bash
# Pilot P8D (gate quantities only): P8's checkpoint at 2000 steps, then a 300-step linear decay
# branch to 0 (warmup-stable-decay: the sweep's checkpoints are such branch end points).
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
source <(sed -n 6,13p docs/quagmire_v2/pilots/p8.sh)
COMMON="${COMMON/--config.sft.num_steps=1200/--config.sft.num_steps=2300}"
COMMON="${COMMON/--config.sft.schedule=constant/--config.sft.schedule=wsd --config.sft.decay_steps=300 --config.sft.min_lr_ratio=0.0}"
COMMON="${COMMON/--config.sft.save_every=200/--config.sft.save_every=150}"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p8d --stage=sft $COMMON
for s in 2300; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p8d --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --gates runs/pilot/p8d/samples/p8d-step$s/synthetic.jsonl --k 8
  .venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p8d/samples/p8d-step$s/synthetic.jsonl
done
