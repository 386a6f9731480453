"""From the config's `data` section to records and a tokenizer: the one place stages ask.

`sft_splits(data)` gives the SFT train and held-out records (the synthetic task's variant, or
local files split by a hash of the problem text), `tokenizer_path(config)` the tokenizer folder.
The held-out split is what the generalization loss is measured on, so every stage that needs it
(SFT's in-training evaluator, the eval stage, the pipeline) gets it from here.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from sftrl.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SFTSplits:
    name: str  # the data set's name (the predictor's `dataset` field)
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    stats: dict[str, int]


def synthetic_version(data: Any) -> int:
    """1: task v1 (`sftrl.data.synthetic`); 2: task v2 (`sftrl.data.synthetic_v2`)."""
    return int(data.synthetic.version)


def synthetic_variant(data: Any) -> Any:
    s = data.synthetic
    if synthetic_version(data) == 2:
        from sftrl.data import synthetic_v2

        return synthetic_v2.VariantV2(structure=s.structure, length=s.length, size=s.size)
    from sftrl.data import synthetic

    return synthetic.SFTVariant(style=s.style, phrasing=s.phrasing, size=s.size)


def synthetic_task(data: Any) -> Any:
    s = data.synthetic
    if synthetic_version(data) == 2:
        from sftrl.data import synthetic_v2

        # v2's RL prompts have their own default difficulty (2-5 steps, as hard as the test
        # set); data.synthetic.rl_min/max_steps are v1's knobs.
        return synthetic_v2.TaskConfigV2(seed=s.seed, ops=s.ops, counters=s.counters,
                                         min_start=s.min_start, max_start=s.max_start,
                                         max_value=s.max_value, cot=s.cot,
                                         max_operand=s.max_operand)
    from sftrl.data import synthetic

    return synthetic.TaskConfig(seed=s.seed, rl_min_steps=s.rl_min_steps,
                                rl_max_steps=s.rl_max_steps)


def _task_module(data: Any) -> Any:
    from sftrl.data import synthetic, synthetic_v2

    return synthetic_v2 if synthetic_version(data) == 2 else synthetic


def synthetic_test_records(data: Any) -> list[dict[str, Any]]:
    """The synthetic task's test set (v1 or v2 per data.synthetic.version)."""
    return _task_module(data).test_records(synthetic_task(data))


def synthetic_rl_records(data: Any) -> list[dict[str, Any]]:
    """The synthetic task's RL prompts (v1 or v2 per data.synthetic.version)."""
    return _task_module(data).rl_records(synthetic_task(data))


def common_heldout(config: Any) -> list[dict[str, Any]] | None:
    """The held-out records every checkpoint of a study shares (`eval.common_heldout`), or None.

    "synthetic": task v2's common held-out split (one canonical CoT style, problems disjoint
    from every training, RL and test set); a path: a JSONL file of chat records (`messages`)."""
    which = config.eval.common_heldout
    if not which:
        return None
    if which == "synthetic":
        if config.data.source != "synthetic" or synthetic_version(config.data) != 2:
            raise ValueError("eval.common_heldout: 'synthetic' needs data.synthetic.version=2")
        from sftrl.data import synthetic_v2

        records = synthetic_v2.common_heldout_records(synthetic_task(config.data))
    else:
        import json

        path = Path(which)
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not records or any("messages" not in r for r in records):
            raise ValueError(f"eval.common_heldout: {path} holds no chat records (messages)")
    if config.data.max_heldout_examples:
        records = records[: config.data.max_heldout_examples]
    return records


def sft_splits(data: Any) -> SFTSplits:
    """The SFT train/held-out records the config's `data` section describes."""
    if data.source == "synthetic":
        variant = synthetic_variant(data)
        train, heldout = _task_module(data).sft_records(variant, synthetic_task(data))
        stats = {"train": len(train), "heldout": len(heldout), "duplicates_removed": 0}
        name = variant.name
    else:
        from sftrl.data.builders import read_sft_files

        splits, split_stats = read_sft_files(
            list(data.train_files), heldout_fraction=data.heldout_fraction,
            fields=data.get("fields", ""),
        )
        train, heldout = splits["train"], splits["heldout"]
        stats = {"train": len(train), "heldout": len(heldout),
                 "duplicates_removed": int(split_stats.duplicates_removed)}
        name = dataset_name(data)
    if data.max_heldout_examples and len(heldout) > data.max_heldout_examples:
        heldout = heldout[: data.max_heldout_examples]
        stats["heldout_used"] = len(heldout)
    if not train:
        raise UserError(f"data: the SFT train split of {name!r} is empty")
    if not heldout:
        raise UserError(f"data: the held-out split of {name!r} is empty")
    log.info("SFT data %s: %s", name, stats)
    return SFTSplits(name=name, train=train, heldout=heldout, stats=stats)


def streams_files(data: Any) -> bool:
    """Whether SFT training reads the data files per process (`data.stream`)."""
    return data.source == "files" and bool(data.get("stream", False))


def file_source(data: Any) -> Any:
    """The training rows of `data.train_files`, read lazily per shard (`data.stream`); the
    first record of every file is checked against `data.fields` now."""
    from sftrl.data.builders import check_sft_files
    from sftrl.data.stream_source import FileSource

    check_sft_files(list(data.train_files), data.fields)
    return FileSource(list(data.train_files), fields=data.fields,
                      heldout_fraction=data.heldout_fraction)


def streamed_splits(data: Any) -> SFTSplits:
    """`sft_splits` for a streamed run: the held-out records only (read from the start of the
    files until `max_heldout_examples` are found); the train rows are `file_source`'s."""
    from sftrl.data.builders import read_heldout

    heldout = read_heldout(list(data.train_files), heldout_fraction=data.heldout_fraction,
                           fields=data.fields, limit=data.max_heldout_examples)
    name = dataset_name(data)
    if not heldout:
        raise UserError(f"data: the held-out split of {name!r} is empty")
    return SFTSplits(name=name, train=[], heldout=heldout, stats={"heldout": len(heldout)})


def dataset_name(data: Any) -> str:
    """The SFT data set's name without reading it (the predictor's `dataset`)."""
    if data.source == "synthetic":
        return synthetic_variant(data).name
    return "+".join(Path(p).stem for p in data.train_files)


def tokenizer_path(config: Any) -> Path:
    """The tokenizer folder: data.tokenizer, else the synthetic task's, else model.hf_path."""
    if config.data.tokenizer:
        return Path(config.data.tokenizer)
    if config.data.source == "synthetic" and not config.model.hf_path:
        from sftrl.data import synthetic

        return Path(synthetic.tokenizer_dir())
    if config.model.hf_path:
        return Path(config.model.hf_path)
    raise UserError("data.tokenizer: no tokenizer (set data.tokenizer or model.hf_path)")
