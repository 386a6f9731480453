#!/bin/bash
# Pilot P2D (gate quantities only): P2's stable checkpoint at 1200, then a 150-step linear decay
# branch to 0 (warmup-stable-decay), evaluated like P2.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
source <(sed -n 4,10p docs/quagmire_v2/pilots/p2.sh)
COMMON="$COMMON --config.sft.schedule=wsd --config.sft.decay_steps=150 --config.sft.min_lr_ratio=0.0 --config.sft.num_steps=1350 --config.sft.save_every=150"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p2d --stage=sft $COMMON
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p2d --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=1350
.venv/bin/python -m sftrl.study_v2 --gates runs/pilot/p2d/samples/p2d-step1350/synthetic.jsonl --k 8
