"""Llama-3-8B-Instruct SFT over data choices x epochs x max length: which SFT set is best
after RL?

    python -m sftrl.launch --sweep=configs/sweeps/llama8b_sft_data.py:DATA_DIR,HF_PATH \
        --workdir=/gcs/BUCKET/llama8b_sft_data --launcher=xm --xm_executor=kubernetes

DATA_DIR holds the SFT sets (local JSONL/Parquet files named in DATA_SETS); HF_PATH is a local
Hugging Face folder of the base model. Both default to the paths below.
"""

from pathlib import PurePosixPath

from sftrl.launch import Run, Sweep, SweepError, grid, name_for

DATA_DIR = "/data/sft"
HF_PATH = "/models/Meta-Llama-3-8B-Instruct"
# name -> files under DATA_DIR; a set may mix several files.
DATA_SETS = {
    "numina_cot": ("numina_cot.jsonl",),
    "openmath2": ("openmathinstruct2.jsonl",),
    "mixed": ("numina_cot.jsonl", "openmathinstruct2.jsonl"),
}
EPOCHS = [1, 3]
# What each run asks the scheduler for (--launcher=xm); its mesh is validated against it.
ACCELERATOR = "v5p-64"
MAX_LENGTHS = [4096, 8192]
SHORT = {"sft.num_epochs": "ep", "data.max_length": "len"}


def get_sweep(arg: str | None = None) -> Sweep:
    data_dir, _, hf_path = (arg or "").partition(",")
    data_dir, hf_path = data_dir or DATA_DIR, hf_path or HF_PATH
    if "," in hf_path:
        raise SweepError(f"llama8b_sft_data: arg {arg!r} must be DATA_DIR[,HF_PATH]")
    runs = []
    for set_name, files in DATA_SETS.items():
        paths = tuple(str(PurePosixPath(data_dir) / f) for f in files)
        for point in grid(**{"sft.num_epochs": EPOCHS, "data.max_length": MAX_LENGTHS}):
            name = f"{set_name}-{name_for(point, short=SHORT)}"
            overrides = {"model.hf_path": hf_path, "data.source": "files",
                         "data.train_files": paths, "accelerator": ACCELERATOR, **point}
            runs.append(Run(name, overrides, stage="pipeline"))
    return Sweep(name="llama8b_sft_data", base_config="configs/llama8b.py", runs=runs,
                 predict=True)
