#!/bin/bash
# Evaluate P2's checkpoints as they appear (gate quantities only).
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
source <(sed -n 4,10p docs/quagmire_v2/pilots/p4.sh)
for s in 300 600; do
  while [ ! -f runs/pilot/p4/checkpoints/$s/_CHECKPOINT_METADATA ] && [ ! -d runs/pilot/p4/checkpoints/$s ]; do sleep 20; done
  sleep 20
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p4 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --gates runs/pilot/p4/samples/p4-step$s/synthetic.jsonl --k 8
done
