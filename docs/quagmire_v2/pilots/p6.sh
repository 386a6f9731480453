#!/bin/bash
# Pilot P6 (gate quantities only): the two-counter task with the "state" chain of thought
# (every counter on every line), otherwise P2's settings.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
COMMON="--config.data.synthetic.version=2 --config.data.synthetic.ops=add,sub --config.data.synthetic.counters=2 \
 --config.data.synthetic.min_start=10 --config.data.synthetic.max_start=89 --config.data.synthetic.max_value=99 \
 --config.data.synthetic.cot=state \
 --config.data.synthetic.size=8000 --config.data.max_length=256 --config.eval.common_heldout=synthetic \
 --config.data.max_heldout_examples=200 --config.sft.schedule=constant --config.sft.warmup_steps=20 \
 --config.sft.lr=3e-3 --config.sft.num_steps=1200 --config.sft.save_every=200 --config.sft.eval_every=0 \
 --config.checkpoint.max_to_keep=10"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p6 --stage=sft $COMMON
for s in 400 800 1200; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p6 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --gates runs/pilot/p6/samples/p6-step$s/synthetic.jsonl --k 8
done
