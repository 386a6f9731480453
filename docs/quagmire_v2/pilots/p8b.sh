#!/bin/bash
# P8 continued (gate quantities only): the same run to 2000 steps (constant LR: a continuation of
# the same trajectory), evaluated at 1600 and 2000.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
while pgrep -f "docs/quagmire_v2/pilots/p8.sh" > /dev/null; do sleep 20; done
source <(sed -n 6,13p docs/quagmire_v2/pilots/p8.sh)
COMMON="${COMMON/--config.sft.num_steps=1200/--config.sft.num_steps=2000}"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p8 --stage=sft $COMMON
for s in 1600 2000; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p8 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
  .venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p8/samples/p8-step$s/synthetic.jsonl
done
