#!/bin/bash
# Pilot P9 (gate quantities only): P8 (state CoT, operands 2..9) with each state line led by its
# sentence's change ("8 more apples: 30 + 8 = 38, 18"; data.synthetic.cot=quoted), to 2000 steps.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
while pgrep -f "docs/quagmire_v2/pilots/p8d.sh" > /dev/null; do sleep 20; done
source <(sed -n 6,13p docs/quagmire_v2/pilots/p8.sh)
COMMON="${COMMON/--config.data.synthetic.cot=state/--config.data.synthetic.cot=quoted}"
COMMON="${COMMON/--config.sft.num_steps=1200/--config.sft.num_steps=2000}"
COMMON="${COMMON/--config.data.max_length=256/--config.data.max_length=320}"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p9 --stage=sft $COMMON
for s in 1200 1600 2000; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p9 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=160 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p9/samples/p9-step$s/synthetic.jsonl
done
