#!/bin/bash
cd "$(dirname "$0")/../../.."  # the repo root
while pgrep -f "p2_eval.sh" > /dev/null || pgrep -f "workdir=runs/pilot/p2 --stage=sft" > /dev/null; do sleep 15; done
docs/quagmire_v2/pilots/p2b_eval.sh > runs/pilot/p2b_eval.log 2>&1 &
docs/quagmire_v2/pilots/p2b.sh > runs/pilot/p2b.log 2>&1
wait
