"""The paper's contrast on the embedded task: SFT checkpoints that differ like the paper's, each
followed by the same GRPO budget and evaluated on the harder test set; then the predictor.

    python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py --workdir=runs/quagmire \
        --max_parallel=1

Runs (8 checkpoints from 4 data variants): answer-only / short CoT (homogeneous and diverse) /
long CoT, each at two training lengths (epochs over a 2000-example set). Every run is the
'pipeline' stage (SFT -> eval -> GRPO -> eval); the sweep's predict run then scores post-SFT
pass@1, generalization loss and pass@k against the post-RL pass@1.

Args: none (the study), or 'ci' (4 runs of a very small model for the test suite).
"""

from sftrl.launch import Run, Sweep, SweepError

VARIANTS = [
    ("answer_only", "diverse"),
    ("short_cot", "homogeneous"),
    ("short_cot", "diverse"),
    ("long_cot", "diverse"),
]
EPOCHS = [3, 9]

# The same GRPO budget and evaluation for every checkpoint (n = 256 on 128 test prompts).
COMMON = {
    "sft.num_steps": 0,  # the epochs decide the SFT length
    "data.synthetic.size": 2000,
    "rl.num_steps": 30,
    "eval.num_samples": 256,
    "eval.limit": 128,
    "predict.calibration_sizes": (3, 4),
}

CI = {
    "model.hidden_size": 32, "model.num_layers": 1, "model.intermediate_size": 64,
    "model.head_dim": 8, "data.max_length": 128, "data.max_heldout_examples": 8,
    "data.synthetic.size": 48, "sft.batch_size": 4, "sft.heldout_batch_size": 8,
    "rl.num_steps": 2, "rl.prompts_per_step": 2, "rl.group_size": 2, "rl.max_new_tokens": 8,
    "rl.evals": (), "eval.limit": 3, "eval.num_samples": 4, "eval.max_new_tokens": 8,
    "predict.n_permutations": 50, "predict.n_bootstrap": 20, "predict.calibration_sizes": (2,),
}


def get_sweep(arg: str | None = None) -> Sweep:
    if arg not in (None, "", "ci"):
        raise SweepError(f"quagmire_tiny: unknown arg {arg!r} (known: ci)")
    ci = arg == "ci"
    runs = []
    for style, phrasing in VARIANTS:
        for epochs in ([1] if ci else EPOCHS):
            overrides = {**COMMON, **(CI if ci else {}),
                         "data.synthetic.style": style, "data.synthetic.phrasing": phrasing,
                         "sft.num_epochs": epochs}
            name = f"{style}-{phrasing}-ep{epochs}"
            runs.append(Run(name, {**overrides, "eval.name": f"ep{epochs}"}, stage="pipeline"))
    predict = {k: v for k, v in (CI if ci else COMMON).items() if k.startswith("predict.")}
    return Sweep(name="quagmire_tiny", base_config="configs/tiny.py", runs=runs, predict=True,
                 predict_overrides=predict)
