#!/bin/bash
# Pilot P1 (gate quantities only): task v2 with add/sub only, starts 100..1999, tiny model.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
COMMON="--config.data.synthetic.version=2 --config.data.synthetic.ops=add,sub --config.data.synthetic.max_start=1999 \
 --config.data.synthetic.size=8000 --config.data.max_length=256 --config.eval.common_heldout=synthetic \
 --config.data.max_heldout_examples=200 --config.sft.schedule=constant --config.sft.warmup_steps=20 \
 --config.sft.lr=3e-3 --config.sft.num_steps=800 --config.sft.save_every=200 --config.sft.eval_every=0 \
 --config.checkpoint.max_to_keep=10"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p1 --stage=sft $COMMON
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p1 --stage=eval $COMMON \
 --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128
