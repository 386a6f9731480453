#!/bin/bash
# P6 continued (gate quantities only): the same run to 2000 steps (constant LR: a continuation of
# the same trajectory), evaluated at 1600 and 2000.
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
while pgrep -f "docs/quagmire_v2/pilots/p6.sh" > /dev/null; do sleep 20; done
source <(sed -n 5,12p docs/quagmire_v2/pilots/p6.sh)
COMMON="${COMMON/--config.sft.num_steps=1200/--config.sft.num_steps=2000}"
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p6 --stage=sft $COMMON
for s in 1600 2000; do
  .venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p6 --stage=eval $COMMON \
    --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=128 --config.eval.checkpoints=$s
  .venv/bin/python runs/pilot/diag_state.py runs/pilot/p6/samples/p6-step$s/synthetic.jsonl
done
