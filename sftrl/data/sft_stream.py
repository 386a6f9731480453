"""SFT batches read per process and tokenized as they are consumed (paper-scale data).

`SFTPipeline` (sft.py) tokenizes the whole set on every process and cuts one global batch;
this pipeline reads only this process's logical shards (`sftrl.data.shards`) through a lazy
`ShardReader` and tokenizes an example only when the batch that holds it is built. Each shard
is one grain stream of the same kind as `SFTPipeline`'s: a seeded shuffle of its rows
reshuffled every epoch, then first-fit packing (`pack_examples`, the same row layout and
semantics) or one example per row padded to `max_length`, cut into `batch_size / num_shards`
rows. The global batch is the shards' rows side by side (shard 0 first), so it depends on the
data, the seed and `num_shards`, never on how many processes read it.

Position: every shard's grain iterator state (plain JSON). `get_state()` holds this process's
shards; `merge_states` joins the processes' states into the one a checkpoint stores (the
trainer gathers them), and `set_state` takes the shards it reads from a merged state, so a
resumed run continues bit-identically, also on another process count that fits `num_shards`.

Differences from `SFTPipeline`, all because no process sees every example: a shard ends
when its rows do, so with `num_epochs` the stream has as many batches as its shortest shard
(`num_batches` counts them with one pass); overlong counts are this process's since it started
(not checkpointed); `stats` sum this process's shards; `bucket_boundaries`/`bucket_window`
(which sort by length across the set) are not offered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from sftrl.data.sft import (
    _READ_OPTIONS,
    ChatTokenizer,
    RecordError,
    SFTDataConfig,
    _empty_batch,
    _mix_seed,
    _pad_rows,
    check_saved_state,
    encode_example,
    pack_examples,
)
from sftrl.data.shards import HostShare, host_share
from sftrl.data.stream_source import SFTSource, ShardReader
from sftrl.errors import UserError

log = logging.getLogger(__name__)

STATE_VERSION = 1
_COUNTERS = ("batches", "examples_seen", "tokens", "loss_tokens", "padding_tokens")


class StreamingSFTPipeline:
    """Iterator over this process's rows of the global SFT batches; checkpointable."""

    def __init__(self, source: SFTSource, tokenizer: ChatTokenizer, config: SFTDataConfig, *,
                 num_shards: int):
        if config.bucket_boundaries is not None or config.bucket_window != 1:
            raise ValueError("SFTDataConfig.bucket_boundaries/bucket_window: not supported "
                             "when reading per process (every row is max_length long)")
        if num_shards < 1 or config.batch_size % num_shards:
            raise UserError(f"data.shards: {config.batch_size} rows (sft.batch_size) do not "
                            f"split into {num_shards} data shards")
        try:
            self.share: HostShare = host_share(num_shards, config.shard_index,
                                               config.shard_count)
        except ValueError as e:
            raise UserError(f"data.shards: {e}") from e
        self.config = config
        self.source = source
        self.tokenizer = tokenizer
        self.num_shards = num_shards
        self.pad_id = int(tokenizer.pad_id)
        self.rows_per_shard = config.batch_size // num_shards
        self.readers: dict[int, ShardReader] = {j: source.shard(j, num_shards)
                                                for j in self.share.shards}
        self.overlong = {"overlong": 0, "overlong_dropped": 0, "overlong_truncated": 0}
        for j, reader in self.readers.items():
            self._check_shard(j, reader)
        self._iters = {j: iter(self._build(j, config.num_epochs, self.overlong))
                       for j in self.share.shards}
        self._counters = {j: dict.fromkeys(_COUNTERS, 0) for j in self.share.shards}
        self._num_batches: int | None = None

    # --- one example, one shard ---

    def _example(self, reader: ShardReader, i: int,
                 overlong: dict[str, int]) -> dict[str, Any] | None:
        messages = reader.example(i)
        if messages is None:
            return None  # not a training example (a held-out row)

        def error(field: str, problem: str) -> RecordError:
            return RecordError(reader.location(i), problem, field)

        ids, mask = encode_example(messages, self.tokenizer, error)
        limit = self.config.max_length
        if len(ids) > limit:
            overlong["overlong"] += 1
            ids, mask = ids[:limit], mask[:limit]
            if self.config.overlong == "drop" or not mask.any():
                overlong["overlong_dropped"] += 1
                return None
            overlong["overlong_truncated"] += 1
        return {"tokens": ids, "loss_mask": mask, "example_id": reader.example_id(i)}

    def _check_shard(self, j: int, reader: ShardReader) -> None:
        """At start-up: the shard's first rows read, tokenize and fit (a bad mapping or file
        fails now), and it holds at least one example (else the stream would never yield)."""
        scratch = dict.fromkeys(self.overlong, 0)
        for i in range(len(reader)):
            if self._example(reader, i, scratch) is not None:
                return
        raise UserError(f"{self.source.name}: data shard {j} of {self.num_shards} holds no "
                        f"training example ({len(reader)} rows); lower data.shards")

    def _build(self, j: int, num_epochs: int | None,
               overlong: dict[str, int]) -> grain.IterDataset:
        cfg, reader = self.config, self.readers[j]
        order = grain.MapDataset.range(len(reader))
        if cfg.shuffle:
            order = order.shuffle(seed=_mix_seed(cfg.seed, 10, j))
        examples = (order.repeat(num_epochs)
                    .map(lambda i: self._example(reader, int(i), overlong))
                    .filter(lambda e: e is not None)
                    .to_iter_dataset(_READ_OPTIONS))
        if cfg.packing:
            bins = max(1, (cfg.packing_bins or cfg.batch_size) // self.num_shards)
            rows = pack_examples(examples, cfg, num_bins=bins, seed=_mix_seed(cfg.seed, 11, j),
                                 pad_id=self.pad_id)
        else:
            rows = examples.map(self._padded_row)
        return rows.batch(self.rows_per_shard, drop_remainder=cfg.drop_remainder)

    def _padded_row(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {k: v[0] for k, v in _empty_batch(1, self.config.max_length, 1,
                                                self.pad_id).items()}
        n = len(example["tokens"])
        out["tokens"][:n] = example["tokens"]
        out["loss_mask"][:n] = example["loss_mask"]
        out["segment_ids"][:n] = 1
        out["attention_mask"][:n] = 1
        out["positions"][:n] = np.arange(n)
        out["example_ids"][0] = example["example_id"]
        return out

    # --- iteration ---

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = []
        for j in self.share.shards:
            batch = _pad_rows(next(self._iters[j]), self.rows_per_shard, self.pad_id)
            real = batch["segment_ids"] != 0
            c = self._counters[j]
            c["batches"] += 1
            c["examples_seen"] += int((batch["example_ids"] >= 0).sum())
            c["tokens"] += int(real.sum())
            c["loss_tokens"] += int(batch["loss_mask"].sum())
            c["padding_tokens"] += int(real.size - real.sum())
            parts.append(batch)
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self.share.parts > 1:  # several processes read this shard: keep this one's rows
            n = self.rows_per_shard // self.share.parts
            out = {k: v[self.share.part * n:(self.share.part + 1) * n] for k, v in out.items()}
        return out

    # --- checkpointing ---

    def _fingerprint(self) -> dict[str, Any]:
        return {**self.config.fingerprint(), "num_shards": self.num_shards,
                "source": self.source.fingerprint()}

    def get_state(self) -> dict[str, Any]:
        """This process's shards' positions (JSON); `merge_states` joins all processes'."""
        return {"version": STATE_VERSION, "fingerprint": self._fingerprint(),
                "shards": {str(j): self._iters[j].get_state() for j in self.share.shards},
                "counters": {str(j): dict(c) for j, c in self._counters.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        check_saved_state(state, self._fingerprint(), "SFT data state", STATE_VERSION)
        missing = [j for j in self.share.shards if str(j) not in state["shards"]]
        if missing:
            raise UserError(f"SFT data state: holds no position for data shard(s) {missing}")
        for j in self.share.shards:
            self._iters[j].set_state(state["shards"][str(j)])
            self._counters[j] = {k: int(v) for k, v in state["counters"][str(j)].items()}

    # --- sizes and stats ---

    @property
    def num_batches(self) -> int | None:
        """Batches this process's shards give together (the shortest shard's count; one
        tokenizing pass over them); None when the stream repeats forever. On several processes
        the run's length is the minimum over processes (the trainer gathers it)."""
        if self.config.num_epochs is None:
            return None
        if self._num_batches is None:
            scratch = dict.fromkeys(self.overlong, 0)
            self._num_batches = min(
                sum(1 for _ in self._build(j, self.config.num_epochs, scratch))
                for j in self.share.shards)
        return self._num_batches

    @property
    def stats(self) -> dict[str, float]:
        total = {k: sum(c[k] for c in self._counters.values()) for k in _COUNTERS}
        cells = total["tokens"] + total["padding_tokens"]
        return {
            **{k: float(v) for k, v in total.items()},
            "padding_fraction": total["padding_tokens"] / cells if cells else 0.0,
            **{k: float(v) for k, v in self.overlong.items()},
        }


def merge_states(states: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One state from every process's `get_state()`: each shard's position once. Processes
    that share a shard hold the same position for it (they read the same stream)."""
    if not states:
        raise ValueError("no states to merge")
    merged: dict[str, Any] = {"version": states[0]["version"],
                              "fingerprint": states[0]["fingerprint"], "shards": {},
                              "counters": {}}
    for state in states:
        if state["fingerprint"] != merged["fingerprint"]:
            raise ValueError("processes disagree on the data stream (fingerprints differ)")
        for j, position in state["shards"].items():
            if merged["shards"].setdefault(j, position) != position:
                raise ValueError(f"processes disagree on data shard {j}'s position")
            merged["counters"].setdefault(j, state["counters"][j])
    return merged


__all__ = ["STATE_VERSION", "StreamingSFTPipeline", "merge_states"]
