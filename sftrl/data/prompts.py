"""RL prompts: templates, and the pipeline that hands P prompts to each GRPO step.

`PromptPipeline` validates and tokenizes every record once, then walks a grain `MapDataset`
(seeded shuffle, reshuffled every epoch, batched by the global P). Its `get_state()` is plain
JSON, and a pipeline restored from it yields exactly the batches the uninterrupted one would.
On several hosts each host computes the same global batch and keeps its P // shard_count
prompts, so the hosts together see exactly the single-host batch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np

from sftrl.data.sft import (
    batch_stream_fingerprint,
    check_batch_stream,
    check_positive,
    check_saved_state,
    field_error,
    record_error,
)
from sftrl.errors import UserError

log = logging.getLogger(__name__)

STATE_VERSION = 1

PROMPT_TEMPLATES: dict[str, str] = {
    "boxed": "{problem}\nPlease reason step by step, and put your final answer within "
             "\\boxed{{}}.",
    "plain": "{problem}",
}

# The template each benchmark is asked (and its RL prompts trained) with by default.
BENCHMARK_TEMPLATES: dict[str, str] = {
    "math500": "boxed",
    "math_train": "boxed",
    "minerva_math": "boxed",
    "olympiadbench": "boxed",
    "aime24": "boxed",
    "aime25": "boxed",
    "aime_1983_2024": "boxed",
    "amc23": "boxed",
    "gsm8k": "boxed",
    "gsm8k_test": "boxed",
    "synthetic": "plain",  # the built-in task states its answer format in the problem text
}

_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def format_prompt(problem: str, template: str) -> str:
    """`problem` in the named template (a key of PROMPT_TEMPLATES)."""
    if template not in PROMPT_TEMPLATES:
        raise UserError(f"unknown prompt template {template!r}; known: "
                         f"{', '.join(sorted(PROMPT_TEMPLATES))}")
    return PROMPT_TEMPLATES[template].format(problem=problem)


def benchmark_template(benchmark: str) -> str:
    """The default template name of a benchmark."""
    if benchmark not in BENCHMARK_TEMPLATES:
        raise UserError(f"no default prompt template for benchmark {benchmark!r}; known: "
                         f"{', '.join(sorted(BENCHMARK_TEMPLATES))}")
    return BENCHMARK_TEMPLATES[benchmark]


class PromptTokenizer(Protocol):
    def encode_prompt(self, messages_or_problem: list[dict[str, str]] | str) -> list[int]: ...


@dataclasses.dataclass(frozen=True)
class PromptDataConfig:
    """How prompt records become RL batches. `batch_size` (P) is global (all hosts)."""

    batch_size: int
    template: str = "boxed"
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True  # else the last batch is short (and so are hosts' shares)
    shard_index: int = 0
    shard_count: int = 1
    max_prompt_length: int | None = None  # longer prompts are dropped, counted and logged

    def __post_init__(self) -> None:
        check_batch_stream(self)
        if self.template not in PROMPT_TEMPLATES:
            raise field_error(self, "template", f"unknown template {self.template!r}; known: "
                              f"{', '.join(sorted(PROMPT_TEMPLATES))}")
        check_positive(self, "max_prompt_length")

    def fingerprint(self) -> dict[str, Any]:
        return batch_stream_fingerprint(self)


def validate_prompt_record(record: Any, index: int, source: str = "prompts") -> None:
    """Raises RecordError (naming record and field) unless record has id, problem, answer."""
    if not isinstance(record, Mapping):
        raise record_error(source, index, None, "record",
                           f"expected a dict, got {type(record).__name__}")
    for field in ("id", "problem", "answer"):
        value = record.get(field)
        if value is None:
            raise record_error(source, index, record, field, "missing")
        if not isinstance(value, str):
            raise record_error(source, index, record, field,
                               f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise record_error(source, index, record, field, "is empty")


class PromptPipeline:
    """Iterator over RL prompt batches (this host's share); checkpointable via get/set_state.

    Each batch: {"ids": list[list[int]] (encode_prompt of the templated problem),
    "answers": list[str], "record_ids": list[str], "problems": list[str]} (untemplated problems).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        tokenizer: PromptTokenizer,
        config: PromptDataConfig,
        *,
        source: str = "prompts",
    ):
        self.config = config
        ids, kept, too_long = [], [], []
        for index, record in enumerate(records):
            validate_prompt_record(record, index, source)
            tokens = [int(t) for t in tokenizer.encode_prompt(
                format_prompt(record["problem"], config.template))]
            if not tokens:
                raise record_error(source, index, record, "problem", "tokenizes to nothing")
            if config.max_prompt_length is not None and len(tokens) > config.max_prompt_length:
                too_long.append(index)
                continue
            ids.append(tokens)
            kept.append(record)
        if too_long:
            log.warning("%s: %d of %d prompts are longer than max_prompt_length=%d and were "
                        "dropped (e.g. %s)", source, len(too_long), len(records),
                        config.max_prompt_length,
                        ", ".join(repr(records[i]["id"]) for i in too_long[:5]))
        if not kept:
            raise UserError(f"{source}: no prompts (of {len(records)}) to train on")
        self._ids = ids
        self._records = kept
        self.dropped_overlong = len(too_long)

        order = grain.MapDataset.range(len(kept))
        if config.shuffle:
            order = order.shuffle(seed=int(np.random.SeedSequence(config.seed)
                                           .generate_state(1)[0]))
        self._batches = order.repeat(config.num_epochs).batch(
            config.batch_size, drop_remainder=config.drop_remainder)
        if len(self._batches) == 0:
            raise UserError(f"{source}: {len(kept)} prompts make no batch of "
                             f"{config.batch_size} with drop_remainder")
        self._iter = self._batches.to_iter_dataset(_READ_OPTIONS).__iter__()
        self._prompts_seen = 0

    @property
    def num_prompts(self) -> int:
        return len(self._records)

    @property
    def num_batches(self) -> int | None:
        """Batches in the whole stream; None when it repeats forever."""
        return None if self.config.num_epochs is None else len(self._batches)

    @property
    def stats(self) -> dict[str, float]:
        return {"prompts_seen": float(self._prompts_seen),
                "epoch": self._prompts_seen / len(self._records),
                "num_prompts": float(len(self._records)),
                "dropped_overlong": float(self.dropped_overlong)}

    def __iter__(self) -> Iterator[dict[str, list[Any]]]:
        return self

    def __next__(self) -> dict[str, list[Any]]:
        indices = [int(i) for i in next(self._iter)]
        self._prompts_seen += len(indices)
        per_host = self.config.batch_size // self.config.shard_count
        lo = self.config.shard_index * per_host
        mine = indices[lo:lo + per_host]
        return {
            "ids": [list(self._ids[i]) for i in mine],
            "answers": [self._records[i]["answer"] for i in mine],
            "record_ids": [self._records[i]["id"] for i in mine],
            "problems": [self._records[i]["problem"] for i in mine],
        }

    def _fingerprint(self) -> dict[str, Any]:
        return {**self.config.fingerprint(), "num_prompts": len(self._records)}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position in the stream (the same on every host)."""
        return {"version": STATE_VERSION, "iterator": self._iter.get_state(),
                "prompts_seen": self._prompts_seen, "fingerprint": self._fingerprint()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        check_saved_state(state, self._fingerprint(), "prompt data state", STATE_VERSION)
        self._iter.set_state(state["iterator"])
        self._prompts_seen = int(state["prompts_seen"])


__all__ = [
    "BENCHMARK_TEMPLATES", "PROMPT_TEMPLATES", "PromptDataConfig", "PromptPipeline",
    "benchmark_template", "format_prompt", "validate_prompt_record",
]
