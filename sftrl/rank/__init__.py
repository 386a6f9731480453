"""Rank SFT checkpoints by the proxies that predict post-RL performance (Kang et al. 2025).

    python -m sftrl.rank --checkpoints=/ckpt/a,/ckpt/b,runs/x/sft/v1@200 \\
        --heldout=heldout.jsonl --benchmarks=math500,aime24 --num_samples=64 --workdir=runs/rank

For every checkpoint (Hugging Face folders, sftrl run directories, orbax step folders), with the
eval stage's sharded model, sampler, sample store and verifier: the generalization loss on one
common held-out set (each checkpoint in its own chat template) and pass@1 .. pass@k_max on the
benchmarks. Checkpoints of one base model form a group, ranked by the paper's combination (the
z-scored average of -loss and pass@k_max) with paired-bootstrap uncertainty. See the README,
"Rank your checkpoints".
"""

from sftrl.eval.benchmarks import SamplingSpec
from sftrl.rank.core import Settings, prepare, rank
from sftrl.rank.inputs import RankError

# SamplingSpec: Settings.sampling, how every checkpoint is sampled
__all__ = ["RankError", "SamplingSpec", "Settings", "prepare", "rank"]
