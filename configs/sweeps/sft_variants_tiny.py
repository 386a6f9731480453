"""The tiny config over SFT data variants: solution style x phrasing x size x epochs.

Each run trains, RLs and evaluates one SFT variant (the 'pipeline' stage); the predict stage then
ranks the variants' SFT checkpoints against their post-RL results.

    python -m sftrl.launch --sweep=configs/sweeps/sft_variants_tiny.py --workdir=runs/variants
    python -m sftrl.launch --sweep=configs/sweeps/sft_variants_tiny.py:small --workdir=...

Args: none (3 styles x 2 phrasings x 2 sizes x 2 epoch counts = 24 runs) or 'small' (the 6
style x phrasing variants at one size and one epoch).
"""

from sftrl.launch import Run, Sweep, SweepError, grid, name_for

STYLES = ["answer_only", "short_cot", "long_cot"]
PHRASINGS = ["homogeneous", "diverse"]


def get_sweep(arg: str | None = None) -> Sweep:
    if arg in (None, ""):
        sizes, epochs = [1000, 4000], [1, 2]
    elif arg == "small":
        sizes, epochs = [1000], [1]
    else:
        raise SweepError(f"sft_variants_tiny: unknown arg {arg!r} (known: small)")
    points = grid(**{
        "data.synthetic.style": STYLES,
        "data.synthetic.phrasing": PHRASINGS,
        "data.synthetic.size": sizes,
        "sft.num_epochs": epochs,
    })
    runs = []
    for p in points:
        name = name_for(p, short={"data.synthetic.size": "n", "sft.num_epochs": "ep"})
        # num_steps 0: the epochs decide the SFT length; eval.name keeps checkpoint names unique
        runs.append(Run(name, {**p, "sft.num_steps": 0, "eval.name": name}, stage="pipeline"))
    return Sweep(name="sft_variants_tiny", base_config="configs/tiny.py", runs=runs,
                 predict=True)
