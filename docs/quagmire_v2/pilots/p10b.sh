#!/bin/bash
# P10's other saved steps, evaluated like P10 (gate quantities only).
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
while pgrep -f "docs/quagmire_v2/pilots/p10.sh" > /dev/null; do sleep 20; done
source <(sed -n 7,10p docs/quagmire_v2/pilots/p10.sh)
for s in 600 800 1000 1400 1800; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p10 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=192 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p10/samples/p10-step$s/synthetic.jsonl
done
