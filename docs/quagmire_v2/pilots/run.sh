#!/bin/bash
# The task v2 pilots of docs/quagmire_v2/PLAN.md (gate quantities only), one table instead of a
# script each. Usage, from anywhere:   docs/quagmire_v2/pilots/run.sh NAME      (NAME: see below)
# Each pilot trains the tiny model in runs/pilot/NAME/ and evaluates the steps the plan reports
# on the first 128 test prompts x 8 samples, printing the gates (`study_v2 --gates`) and what the
# chain of thought gets right (`study_v2 --diagnose`). A rerun resumes: SFT from its last
# checkpoint, each eval by prompt. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export JAX_PLATFORMS=cpu
name=${1:?"usage: $0 NAME (p1 p2 p3 p4 p5 p6 p7 p8 p8d p9 p10 p10rl p10rl16)"}
run() { if [[ ${DRY_RUN:-} ]]; then printf "%q " "$@"; echo; else "$@"; fi; }

# P2's set-up, shared by every pilot: 8000 diverse-varied examples, rows of 256 tokens, constant
# LR 3e-3 after 20 warm-up steps, batch 16 (configs/tiny.py).
setup="--config.data.synthetic.size=8000 --config.data.max_heldout_examples=200
 --config.sft.schedule=constant --config.sft.warmup_steps=20 --config.sft.eval_every=0
 --config.checkpoint.max_to_keep=30"
v2="--config.data.synthetic.version=2 --config.eval.common_heldout=synthetic"
two="$v2 --config.data.synthetic.ops=add,sub --config.data.synthetic.counters=2
 --config.data.synthetic.min_start=10 --config.data.synthetic.max_start=89
 --config.data.synthetic.max_value=99"
one_digit="$two --config.data.synthetic.max_operand=9"
lr=3e-3 length=256 new_tokens=128 every=200 schedule=""
case $name in
  p1) task="$v2 --config.data.synthetic.ops=add,sub --config.data.synthetic.max_start=1999"
      steps=800 evals="200 400" ;;
  p2) task=$two steps=2000 evals="200 400 600 800 1200 1400 1600 2000" ;;
  p3) task=$two lr=1e-2 steps=800 evals="200" ;;
  p4) task="$two --config.model.hidden_size=256 --config.model.num_layers=6
       --config.model.num_heads=8 --config.model.num_kv_heads=4 --config.model.head_dim=32
       --config.model.intermediate_size=768"
      steps=600 every=300 evals="300 600" ;;
  p5) task="--config.data.synthetic.version=1" steps=800 evals="400 800" ;;
  p6) task="$two --config.data.synthetic.cot=state" steps=2000
      evals="400 600 800 1200 1600 2000" ;;
  p7) task="$two --config.data.synthetic.cot=state --config.sft.weight_decay=0.1" steps=1200
      evals="800 1200" ;;
  p8) task="$one_digit --config.data.synthetic.cot=state" steps=2000
      evals="600 800 1200 1600 2000" ;;
  # P8's step-2000 checkpoint, then a 300-step linear decay to 0 (a warmup-stable-decay branch)
  p8d) task="$one_digit --config.data.synthetic.cot=state" steps=2300 every=150 evals="2300"
       schedule="--config.sft.schedule=wsd --config.sft.decay_steps=300 --config.sft.min_lr_ratio=0.0"
       if [[ ! -d runs/pilot/p8d/checkpoints/2000 && ! ${DRY_RUN:-} ]]; then
         [[ -d runs/pilot/p8/checkpoints/2000 ]] || { echo "run p8 first" >&2; exit 2; }
         mkdir -p runs/pilot/p8d/checkpoints
         cp -r runs/pilot/p8/checkpoints/2000 runs/pilot/p8/checkpoints/stage.json \
           runs/pilot/p8d/checkpoints/
         .venv/bin/python -c "import json; i = json.load(open('runs/pilot/p8/checkpoints/index.json')); \
json.dump({'2000': i['2000']}, open('runs/pilot/p8d/checkpoints/index.json', 'w'))"
       fi ;;
  # the quoted and named chains of thought are longer: rows of 320 tokens, answers up to 192
  p9) task="$one_digit --config.data.synthetic.cot=quoted" length=320 new_tokens=192 steps=2000
      evals="1200 1600 2000" ;;
  p10|p10rl|p10rl16)
      task="$one_digit --config.data.synthetic.cot=named" length=320 new_tokens=192 steps=2000
      evals="600 800 1000 1200 1400 1600 1800 2000" ;;
  *) echo "$0: unknown pilot '$name'" >&2; exit 2 ;;
esac
flags="$setup $task --config.data.max_length=$length --config.sft.lr=$lr
 --config.sft.num_steps=$steps --config.sft.save_every=$every ${schedule:-}"
[[ -z $schedule ]] || flags=${flags/--config.sft.schedule=constant/}
main=".venv/bin/python -m sftrl.main --config=configs/tiny.py"
evaluate=(--stage=eval --config.eval.limit=128 --config.eval.num_samples=8
          --config.eval.max_new_tokens=$new_tokens)

if [[ $name == p10rl* ]]; then
  # GRPO with the sweep's settings (configs/sweeps/quagmire_v2.py) from P10's step 2000, seed 1;
  # p10rl samples 16 prompts x 8 a step instead of the sweep's 8 x 16
  rl=$(.venv/bin/python -c "
import importlib.util
spec = importlib.util.spec_from_file_location('sweep', 'configs/sweeps/quagmire_v2.py')
sweep = importlib.util.module_from_spec(spec); spec.loader.exec_module(sweep)
print(' '.join(f'--config.{k}={v}' for k, v in sweep.COMMON.items() if k.startswith('rl.')))")
  shape="--config.rl.prompts_per_step=8 --config.rl.group_size=16"
  [[ $rl == *"$shape"* ]] || { echo "$0: the sweep's GRPO shape is no longer 8 x 16" >&2; exit 2; }
  [[ $name == p10rl16 ]] || rl=${rl/$shape/--config.rl.prompts_per_step=16 --config.rl.group_size=8}
  run $main --workdir=runs/pilot/$name --stage=rl $flags $rl --config.seed=1 \
    --config.rl.init_workdir=runs/pilot/p10 --config.rl.init_step=2000
  run $main --workdir=runs/pilot/$name $flags $rl "${evaluate[@]}" --config.eval.stage=rl \
    --config.eval.sft_checkpoint=p10-step2000
  run .venv/bin/python -m sftrl.study_v2 --diagnose runs/pilot/$name/samples/$name/synthetic.jsonl
  exit 0
fi
run $main --workdir=runs/pilot/$name --stage=sft $flags
for step in $evals; do
  run $main --workdir=runs/pilot/$name $flags "${evaluate[@]}" --config.eval.checkpoints=$step
  samples=runs/pilot/$name/samples/$name-step$step/synthetic.jsonl
  run .venv/bin/python -m sftrl.study_v2 --gates $samples --k 8
  run .venv/bin/python -m sftrl.study_v2 --diagnose $samples
done
