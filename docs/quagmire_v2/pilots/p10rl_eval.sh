#!/bin/bash
cd "$(dirname "$0")/../../.."  # the repo root
export JAX_PLATFORMS=cpu
source <(sed -n 7,10p docs/quagmire_v2/pilots/p10.sh)
.venv/bin/python -m sftrl.main --config=configs/tiny.py --workdir=runs/pilot/p10rl --stage=eval $COMMON \
    --config.eval.stage=rl --config.eval.sft_checkpoint=p10-step2000 --config.eval.limit=128 --config.eval.num_samples=8 --config.eval.max_new_tokens=192
.venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/p10rl/samples/*/synthetic.jsonl
