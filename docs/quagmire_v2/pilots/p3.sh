#!/bin/bash
# Pilot P3 (lr 1e-2) (gate quantities only): task v2 with two counters (two-digit values, add/sub), tiny model.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
COMMON="--config.data.synthetic.version=2 --config.data.synthetic.ops=add,sub --config.data.synthetic.counters=2 \
 --config.data.synthetic.min_start=10 --config.data.synthetic.max_start=89 --config.data.synthetic.max_value=99 \
 --config.data.synthetic.size=8000 --config.data.max_length=256 --config.eval.common_heldout=synthetic \
 --config.data.max_heldout_examples=200 --config.sft.schedule=constant --config.sft.warmup_steps=20 \
 --config.sft.lr=1e-2 --config.sft.num_steps=800 --config.sft.save_every=100 --config.sft.eval_every=0 \
 --config.checkpoint.max_to_keep=10"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p3 --stage=sft $COMMON
