"""The paper's contrast on the embedded task: SFT checkpoints that differ like the paper's, each
followed by the same GRPO budget and evaluated on the harder test set; then the predictor.

    python -m sftrl.launch --sweep=configs/sweeps/quagmire_tiny.py --workdir=runs/quagmire \
        --max_parallel=1

Runs (14 checkpoints from 8 data variants): answer-only / short CoT / long CoT, each with
homogeneous and diverse phrasing, each at two training lengths (epochs over a 2000-example set);
then the data-size axis on diverse short CoT: 1000 and 6000 examples at 3 epochs (6000 x 3 is the
SFT length of 2000 x 9: the same steps over three times the distinct data). At least six data
sets, because the predictor's data-set-level R^2 on calibration subsets of 3-4 needs at least
m + 2 points. Every run is the 'pipeline' stage (SFT -> eval -> GRPO -> eval); the sweep's
predict run then scores post-SFT pass@1, generalization loss and pass@k against the post-RL
pass@1. Generation budgets cover long CoT: on the test set (2-5 steps) its solutions take 230
tokens at the median and 359 at the 99th percentile, on the RL prompts (1-3 steps) far fewer; the
tiny config's 96 would truncate every long-CoT answer and make that variant look useless.

Args: none (the study), or 'ci' (4 runs of a very small model for the test suite).
"""

from sftrl.launch import Run, Sweep, SweepError

VARIANTS = [
    (style, phrasing)
    for style in ("answer_only", "short_cot", "long_cot")
    for phrasing in ("homogeneous", "diverse")
]
CI_VARIANTS = [("answer_only", "diverse"), ("short_cot", "homogeneous"),
               ("short_cot", "diverse"), ("long_cot", "diverse")]
EPOCHS = [3, 9]
# (style, phrasing, size, epochs) beyond the grid's 2000 examples.
SIZE_RUNS = [("short_cot", "diverse", 1000, 3), ("short_cot", "diverse", 6000, 3)]

# The same GRPO budget and evaluation for every checkpoint (n = 256 on 64 test prompts).
COMMON = {
    "sft.num_steps": 0,  # the epochs decide the SFT length
    "data.synthetic.size": 2000,
    "rl.num_steps": 30,
    "rl.max_new_tokens": 288,
    "eval.num_samples": 256,
    "eval.limit": 64,
    "eval.max_new_tokens": 384,
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
    # CI: one epoch of four of the variants (the three styles and both phrasings appear).
    variants = [v for v in VARIANTS if v in CI_VARIANTS] if ci else VARIANTS
    # Epochs outermost: the launcher runs the list in order, so an interrupted study already
    # has every data set (the predictor's unit) at the shorter length.
    for epochs in ([1] if ci else EPOCHS):
        for style, phrasing in variants:
            overrides = {**COMMON, **(CI if ci else {}),
                         "data.synthetic.style": style, "data.synthetic.phrasing": phrasing,
                         "sft.num_epochs": epochs}
            name = f"{style}-{phrasing}-ep{epochs}"
            runs.append(Run(name, {**overrides, "eval.name": f"ep{epochs}"}, stage="pipeline"))
    # The size axis comes after the grid, so a sweep started with the grid alone keeps its order.
    for style, phrasing, size, epochs in ([] if ci else SIZE_RUNS):
        overrides = {**COMMON, "data.synthetic.size": size, "data.synthetic.style": style,
                     "data.synthetic.phrasing": phrasing, "sft.num_epochs": epochs}
        name = f"{style}-{phrasing}-{size}-ep{epochs}"
        runs.append(Run(name, {**overrides, "eval.name": f"ep{epochs}"}, stage="pipeline"))
    predict = {k: v for k, v in (CI if ci else COMMON).items() if k.startswith("predict.")}
    return Sweep(name="quagmire_tiny", base_config="configs/tiny.py", runs=runs, predict=True,
                 predict_overrides=predict)
