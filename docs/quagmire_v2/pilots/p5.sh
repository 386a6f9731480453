#!/bin/bash
# Pilot P5 (gate quantities only): task v1 (short CoT, diverse wording) through P2's pipeline and
# settings (8000 examples, max_length 256, constant LR 3e-3), to separate task from set-up.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
COMMON="--config.data.synthetic.version=1 --config.data.synthetic.size=8000 --config.data.max_length=256 \
 --config.data.max_heldout_examples=200 --config.sft.schedule=constant --config.sft.warmup_steps=20 \
 --config.sft.lr=3e-3 --config.sft.num_steps=800 --config.sft.save_every=200 --config.sft.eval_every=0 \
 --config.checkpoint.max_to_keep=10"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p5 --stage=sft $COMMON
for s in 400 800; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p5 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
done
