"""SFT input pipeline: tokenize chat records once, then shuffle, pack or pad, batch and shard.

Built on grain: the example order is a `grain.MapDataset` (seeded `shuffle`, reseeded every
epoch by `repeat`), packing is grain's `FirstFitPackIterDataset`, and the position in the
stream is a grain iterator's `get_state()`, so a pipeline restored from `SFTPipeline.get_state()`
yields exactly the batches the uninterrupted one would (the state is plain JSON).

Batches (numpy, global batch B = `batch_size`, this host's rows B // shard_count):
    tokens          int32 [B, L]  token ids, `pad_id` on padding
    loss_mask       int32 [B, L]  1 where that token is trained on (the loss code shifts)
    segment_ids     int32 [B, L]  1, 2, ... per example within a row, 0 on padding
    attention_mask  int32 [B, L]  1 on real tokens, 0 on padding (== segment_ids != 0)
    positions       int32 [B, L]  restart at 0 for every example
    example_ids     int64 [B, S]  the index (into `records`) of each segment's record, -1 pad

Multi-host: every host computes the same *global* batch (the plan depends on every example's
length, so each host tokenizes all records) and keeps its slice of rows; together the hosts see
exactly the single-host batch, whatever the host count.

Examples longer than `max_length` are dropped or truncated (`overlong`), counted in `stats` and
logged; an example never crosses rows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol

import grain
import jax
import numpy as np

from sftrl.data.builders.errors import DataFormatError
from sftrl.errors import UserError

log = logging.getLogger(__name__)

STATE_VERSION = 1
_ROLES = ("system", "user", "assistant")
# Read from memory: background reader threads only add GIL contention.
_READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class RecordError(DataFormatError):
    """A record is malformed; the message names the source, record index, id and field."""


def record_error(source: str, index: int, record: Any, field: str, problem: str) -> RecordError:
    rid = record.get("id") if isinstance(record, Mapping) else None
    named = f" (id {rid!r})" if rid is not None else ""
    return RecordError(f"{source}: record {index}{named}", problem, field)


class ChatTokenizer(Protocol):
    """What the SFT pipeline needs from `sftrl.data.tokenizer.Tokenizer`."""

    pad_id: int
    vocab_size: int

    def encode_chat(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False
    ) -> tuple[Any, Any]: ...


def host_sharding() -> dict[str, int]:
    """{'shard_index', 'shard_count'} of this process, to splat into a data config."""
    return {"shard_index": jax.process_index(), "shard_count": jax.process_count()}


# --- config --------------------------------------------------------------------------------------


def field_error(config: Any, field: str, problem: str) -> ValueError:
    """A data config's bad field, as `<Config>.<field>: <problem>` (config_lib names the key)."""
    return ValueError(f"{type(config).__name__}.{field}: {problem}")


def check_positive(config: Any, *fields: str) -> None:
    """Each of `fields` of `config` is at least 1, or None (unset)."""
    for field in fields:
        value = getattr(config, field)
        if value is not None and value < 1:
            raise field_error(config, field, f"must be positive, got {value}")


def check_batch_stream(config: Any) -> None:
    """What every data config's batch stream needs (SFTDataConfig, PromptDataConfig): a global
    batch_size that splits evenly over shard_count hosts, this host's shard_index one of them,
    seed >= 0 and num_epochs positive or None (forever)."""
    check_positive(config, "batch_size")
    if config.seed < 0:
        raise field_error(config, "seed", f"must be >= 0, got {config.seed}")
    if config.num_epochs is not None and config.num_epochs < 1:
        raise field_error(config, "num_epochs",
                          f"must be positive or None, got {config.num_epochs}")
    if config.shard_count < 1 or not 0 <= config.shard_index < config.shard_count:
        raise field_error(config, "shard_index",
                          f"{config.shard_index} is not in [0, {config.shard_count})")
    if config.batch_size % config.shard_count:
        raise field_error(config, "batch_size", f"{config.batch_size} does not split over "
                          f"{config.shard_count} hosts (shard_count)")


def batch_stream_fingerprint(config: Any) -> dict[str, Any]:
    """A data config's fields that decide the global batch stream, not the host's share of it
    (tuples as lists, as a saved state's JSON holds them)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.name not in ("shard_index", "shard_count"):
            value = getattr(config, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """How SFT examples become batches. `batch_size` is global (all hosts together)."""

    batch_size: int
    max_length: int
    packing: bool = True  # else one example per row, padded (see bucket_boundaries)
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = 1  # None: repeat forever
    overlong: Literal["drop", "truncate"] = "drop"
    drop_remainder: bool = True  # else the last batch is filled up with empty rows
    shard_index: int = 0
    shard_count: int = 1
    # Padding mode: each batch is padded to the smallest boundary that fits its longest example
    # (max_length is always the last boundary); None pads every batch to max_length.
    bucket_boundaries: tuple[int, ...] | None = None
    # Padding mode: windows of this many batches are sorted by length before being cut into
    # batches (whose order inside the window is then shuffled), so that similar lengths share
    # a batch. 1 keeps the shuffled order.
    bucket_window: int = 1
    # Packing mode: rows filled at once by first-fit (default batch_size); more bins pack
    # tighter but mix neighbouring examples (and epochs) more.
    packing_bins: int | None = None
    max_segments: int = 64  # most examples in one packed row; the width of example_ids

    def __post_init__(self) -> None:
        check_batch_stream(self)
        if self.max_length < 2:
            raise field_error(self, "max_length", f"must be at least 2, got {self.max_length}")
        if self.overlong not in ("drop", "truncate"):
            raise field_error(self, "overlong",
                              f"must be 'drop' or 'truncate', got {self.overlong!r}")
        if self.bucket_boundaries is not None:
            edges = tuple(self.bucket_boundaries)
            if not edges or list(edges) != sorted(set(edges)) or edges[0] < 1:
                raise field_error(self, "bucket_boundaries",
                                  f"must be increasing positive ints, got {edges}")
            if edges[-1] > self.max_length:
                raise field_error(self, "bucket_boundaries",
                                  f"{edges[-1]} exceeds max_length {self.max_length}")
        check_positive(self, "bucket_window", "packing_bins", "max_segments")

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.shard_count

    def boundaries(self) -> tuple[int, ...]:
        edges = tuple(self.bucket_boundaries or ())
        return edges if edges and edges[-1] == self.max_length else (*edges, self.max_length)

    def fingerprint(self) -> dict[str, Any]:
        return batch_stream_fingerprint(self)


# --- tokenization --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
    """Token ids and loss masks of every record, in record order (index i <-> records[i])."""

    ids: tuple[np.ndarray, ...]  # int32 [L_i]
    loss_mask: tuple[np.ndarray, ...]  # int32 [L_i], aligned with ids
    record_ids: tuple[str, ...]
    source: str = "records"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), np.int64, len(self.ids))

    def counts(self) -> dict[str, int]:
        lengths = self.lengths
        return {
            "examples": len(self.ids),
            "tokens": int(lengths.sum()),
            "loss_tokens": int(sum(int(m.sum()) for m in self.loss_mask)),
            "max_length": int(lengths.max(initial=0)),
        }


def validate_sft_record(record: Any, index: int, source: str = "records") -> None:
    """Raises RecordError (naming record and field) unless `record` is a usable chat example."""
    if not isinstance(record, Mapping):
        raise record_error(source, index, None, "record", f"expected a dict, got "
                           f"{type(record).__name__}")
    rid = record.get("id")
    if not isinstance(rid, str) or not rid:
        raise record_error(source, index, record, "id", "missing or not a non-empty string")
    if "messages" not in record:
        raise record_error(source, index, record, "messages", "missing")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise record_error(source, index, record, "messages", "must be a non-empty list")
    for j, message in enumerate(messages):
        where = f"messages[{j}]"
        if not isinstance(message, Mapping):
            raise record_error(source, index, record, where, "expected a dict with role, content")
        role = message.get("role")
        if role not in _ROLES:
            raise record_error(source, index, record, f"{where}.role",
                               f"{role!r} is not one of {', '.join(_ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise record_error(source, index, record, f"{where}.content", "missing or not a string")
        if not content.strip():
            raise record_error(source, index, record, f"{where}.content", "is empty")
    if not any(m["role"] == "assistant" for m in messages):
        raise record_error(source, index, record, "messages", "no assistant message to train on")


def encode_example(
    messages: list[dict[str, str]], tokenizer: ChatTokenizer,
    error: Callable[[str, str], Exception],
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and loss mask (int32) of one conversation, checked; `error(field, problem)`
    builds the exception that names the record."""
    try:
        ids, mask = tokenizer.encode_chat(messages)
    except ValueError as e:  # the tokenizer's own checks do not know which record it was
        raise error("messages", str(e)) from e
    ids = np.asarray(ids)
    mask = np.asarray(mask)
    if ids.ndim != 1 or ids.shape != mask.shape or ids.size == 0:
        raise error("messages", f"tokenizer returned ids {ids.shape} and loss_mask {mask.shape}")
    vocab = int(tokenizer.vocab_size)
    if ids.min() < 0 or ids.max() >= vocab:
        raise error("messages", f"token id outside [0, {vocab})")
    if not np.isin(mask, (0, 1)).all():
        raise error("messages", "loss_mask is not 0/1")
    if not mask.any():
        raise error("messages", "no token is trained on (empty loss mask)")
    if mask[0]:
        # Nothing precedes the first token of an example, so it cannot be predicted.
        raise error("messages", "the first token is in the loss mask")
    return ids.astype(np.int32), mask.astype(np.int32)


def tokenize_records(
    records: Sequence[Mapping[str, Any]], tokenizer: ChatTokenizer, *, source: str = "records"
) -> TokenizedSet:
    """Validates and tokenizes every record once; `source` (e.g. a file name) names errors."""
    ids_out: list[np.ndarray] = []
    masks_out: list[np.ndarray] = []
    record_ids: list[str] = []
    for index, record in enumerate(records):
        validate_sft_record(record, index, source)

        def error(field: str, problem: str, index: int = index,
                  record: Mapping[str, Any] = record) -> RecordError:
            return record_error(source, index, record, field, problem)

        ids, mask = encode_example([dict(m) for m in record["messages"]], tokenizer, error)
        ids_out.append(ids)
        masks_out.append(mask)
        record_ids.append(record["id"])
    result = TokenizedSet(tuple(ids_out), tuple(masks_out), tuple(record_ids), source)
    counts = result.counts()
    log.info("%s: tokenized %d examples, %d tokens (%d trained on), longest %d", source,
             counts["examples"], counts["tokens"], counts["loss_tokens"], counts["max_length"])
    return result


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """The examples a pipeline uses, each at most max_length long."""

    ids: list[np.ndarray]
    loss_mask: list[np.ndarray]
    record_index: np.ndarray  # int64 [n]: fitted example -> index in the TokenizedSet
    lengths: np.ndarray  # int64 [n]
    overlong: dict[str, int]


def _fit(data: TokenizedSet, max_length: int, mode: str, *, report: bool = True) -> _Fitted:
    lengths = data.lengths
    over = np.flatnonzero(lengths > max_length)
    ids, masks, keep = [], [], []
    emptied = 0
    for i, (x, m) in enumerate(zip(data.ids, data.loss_mask, strict=True)):
        if len(x) > max_length:
            if mode == "drop":
                continue
            x, m = x[:max_length], m[:max_length]
            if not m.any():
                emptied += 1  # a truncated prompt with no response left teaches nothing
                continue
        ids.append(x)
        masks.append(m)
        keep.append(i)
    counts = {
        "overlong": len(over),
        "overlong_dropped": len(over) if mode == "drop" else emptied,
        "overlong_truncated": 0 if mode == "drop" else len(over) - emptied,
    }
    if len(over) and report:
        sample = ", ".join(repr(data.record_ids[i]) for i in over[:5])
        log.warning(
            "%s: %d of %d examples are longer than max_length=%d (longest %d; e.g. %s): "
            "%d dropped, %d truncated", data.source, len(over), len(data), max_length,
            int(lengths.max()), sample, counts["overlong_dropped"], counts["overlong_truncated"],
        )
    if not ids:
        raise UserError(f"{data.source}: no examples left (of {len(data)}) after handling "
                         f"overlong examples (max_length={max_length}, overlong={mode!r})")
    kept = np.asarray(keep, np.int64)
    return _Fitted(ids, masks, kept, np.asarray([len(x) for x in ids], np.int64), counts)


# --- batch assembly ------------------------------------------------------------------------------


def _empty_batch(rows: int, length: int, segments: int, pad_id: int) -> dict[str, np.ndarray]:
    return {
        "tokens": np.full((rows, length), pad_id, np.int32),
        "loss_mask": np.zeros((rows, length), np.int32),
        "segment_ids": np.zeros((rows, length), np.int32),
        "attention_mask": np.zeros((rows, length), np.int32),
        "positions": np.zeros((rows, length), np.int32),
        "example_ids": np.full((rows, segments), -1, np.int64),
    }


def _pad_rows(batch: dict[str, np.ndarray], rows: int, pad_id: int) -> dict[str, np.ndarray]:
    """Fills a short (last) batch up to `rows` with empty rows."""
    have = batch["tokens"].shape[0]
    if have == rows:
        return batch
    extra = _empty_batch(rows - have, batch["tokens"].shape[1], batch["example_ids"].shape[1],
                         pad_id)
    return {k: np.concatenate([v, extra[k]]) for k, v in batch.items()}


def _mix_seed(seed: int, *salt: int) -> int:
    """A 32-bit seed from (seed, salt...): nearby seeds give unrelated streams."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


def pack_examples(examples: grain.IterDataset, cfg: SFTDataConfig, *, num_bins: int, seed: int,
                  pad_id: int) -> grain.IterDataset:
    """Packed rows (unbatched) from examples `{"tokens", "loss_mask", "example_id"}`:
    first-fit into `num_bins` rows of `cfg.max_length`, then the batch layout's fields."""
    packed = grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct={"tokens": cfg.max_length, "loss_mask": cfg.max_length},
        num_packing_bins=num_bins,
        seed=seed,
        shuffle_bins=cfg.shuffle,
        meta_features=("example_id",),
        max_sequences_per_bin=cfg.max_segments,
    )

    def finish_row(row: dict[str, Any]) -> dict[str, np.ndarray]:
        segments = row["tokens_segment_ids"].astype(np.int32)
        real = segments != 0
        example_ids = np.full((cfg.max_segments,), -1, np.int64)
        ids = list(row["example_id"])
        example_ids[: len(ids)] = ids
        return {
            "tokens": np.where(real, row["tokens"], pad_id).astype(np.int32),
            "loss_mask": (row["loss_mask"] * real).astype(np.int32),
            "segment_ids": segments,
            "attention_mask": real.astype(np.int32),
            "positions": np.where(real, row["tokens_positions"], 0).astype(np.int32),
            "example_ids": example_ids,
        }

    return packed.map(finish_row)


class SFTPipeline:
    """Iterator over SFT batches (this host's rows); checkpointable with get_state/set_state."""

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]] | TokenizedSet,
        tokenizer: ChatTokenizer,
        config: SFTDataConfig,
        *,
        source: str = "records",
        report_overlong: bool = True,
    ):
        self.config = config
        self.pad_id = int(tokenizer.pad_id)
        data = records if isinstance(records, TokenizedSet) else tokenize_records(
            records, tokenizer, source=source)
        self.record_ids = data.record_ids
        self._fitted = _fit(data, config.max_length, config.overlong, report=report_overlong)
        self._num_examples = len(self._fitted.ids)
        self._dataset = self._build(config.num_epochs)
        self._iter = iter(self._dataset)
        self._counters = {"batches": 0, "examples_seen": 0, "tokens": 0, "loss_tokens": 0,
                          "padding_tokens": 0}
        self._num_batches: int | None = None
        self._steps_per_epoch: int | None = None

    # --- the grain graph ---

    def _order(self, num_epochs: int | None) -> grain.MapDataset:
        """Indices into the fitted examples, epoch after epoch (reshuffled every epoch)."""
        order = grain.MapDataset.range(self._num_examples)
        if self.config.shuffle:
            order = order.shuffle(seed=_mix_seed(self.config.seed))
        return order.repeat(num_epochs)

    def _build(self, num_epochs: int | None) -> grain.IterDataset:
        if self.config.packing:
            return self._build_packed(num_epochs)
        return self._build_padded(num_epochs)

    def _build_packed(self, num_epochs: int | None) -> grain.IterDataset:
        cfg, fitted = self.config, self._fitted

        def example(i: int) -> dict[str, Any]:
            return {"tokens": fitted.ids[i], "loss_mask": fitted.loss_mask[i],
                    "example_id": int(fitted.record_index[i])}

        packed = pack_examples(
            self._order(num_epochs).map(example).to_iter_dataset(_READ_OPTIONS), cfg,
            num_bins=cfg.packing_bins or cfg.batch_size, seed=_mix_seed(cfg.seed, 1),
            pad_id=self.pad_id)
        return packed.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)

    def _build_padded(self, num_epochs: int | None) -> grain.IterDataset:
        cfg, fitted = self.config, self._fitted
        order = self._order(num_epochs)
        total = len(order)
        b, window = cfg.batch_size, cfg.bucket_window
        num_batches = total // b if cfg.drop_remainder else -(-total // b)
        usable = min(total, num_batches * b)
        edges = np.asarray(cfg.boundaries())
        pad_id = self.pad_id

        last: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # the window batches come from

        def window_at(chunk: int) -> tuple[np.ndarray, np.ndarray]:
            """(members, slot order) of one window; a pure function of `chunk`, so cached."""
            cached = last.get(chunk)
            if cached is None:
                start = chunk * window * b
                members = np.fromiter(
                    (order[j] for j in range(start, min(start + window * b, usable))), np.int64)
                slots = np.arange(-(-len(members) // b))
                if window > 1:
                    # Sort the window by length so that a batch holds similar lengths, then
                    # shuffle its batches so that lengths do not ramp up through training.
                    members = members[np.argsort(fitted.lengths[members], kind="stable")]
                    if cfg.shuffle:
                        slots = np.random.default_rng(_mix_seed(cfg.seed, 2, chunk)).permutation(
                            slots)
                last.clear()
                last[chunk] = cached = (members, slots)
            return cached

        def batch_at(index: int) -> dict[str, np.ndarray]:
            chunk, slot = divmod(index, window)
            members, slots = window_at(chunk)
            slot = int(slots[slot])
            members = members[slot * b:(slot + 1) * b]
            longest = int(fitted.lengths[members].max())
            length = int(edges[np.searchsorted(edges, longest)])
            out = _empty_batch(len(members), length, 1, pad_id)
            for row, i in enumerate(members):
                n = int(fitted.lengths[i])
                out["tokens"][row, :n] = fitted.ids[i]
                out["loss_mask"][row, :n] = fitted.loss_mask[i]
                out["segment_ids"][row, :n] = 1
                out["attention_mask"][row, :n] = 1
                out["positions"][row, :n] = np.arange(n)
                out["example_ids"][row, 0] = fitted.record_index[i]
            return out

        return grain.MapDataset.range(num_batches).map(batch_at).to_iter_dataset(_READ_OPTIONS)

    # --- iteration ---

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = _pad_rows(next(self._iter), self.config.batch_size, self.pad_id)
        real = batch["segment_ids"] != 0
        c = self._counters
        c["batches"] += 1
        c["examples_seen"] += int((batch["example_ids"] >= 0).sum())
        c["tokens"] += int(real.sum())
        c["loss_tokens"] += int(batch["loss_mask"].sum())
        c["padding_tokens"] += int(real.size - real.sum())
        lo = self.config.shard_index * self.config.local_batch_size
        return {k: v[lo:lo + self.config.local_batch_size] for k, v in batch.items()}

    # --- checkpointing ---

    def _fingerprint(self) -> dict[str, Any]:
        return {**self.config.fingerprint(), "num_examples": self._num_examples}

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position in the stream (the same on every host)."""
        return {"version": STATE_VERSION, "iterator": self._iter.get_state(),
                "counters": dict(self._counters), "fingerprint": self._fingerprint()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        check_saved_state(state, self._fingerprint(), "SFT data state", STATE_VERSION)
        self._iter.set_state(state["iterator"])
        self._counters = {k: int(v) for k, v in state["counters"].items()}

    # --- sizes and stats ---

    def _count_batches(self, num_epochs: int) -> int:
        if not self.config.packing:
            total, b = self._num_examples * num_epochs, self.config.batch_size
            return total // b if self.config.drop_remainder else -(-total // b)
        return sum(1 for _ in self._build(num_epochs))

    @property
    def num_batches(self) -> int | None:
        """Batches in the whole stream; None when it repeats forever (packing: one dry run)."""
        if self.config.num_epochs is None:
            return None
        if self._num_batches is None:
            self._num_batches = self._count_batches(self.config.num_epochs)
        return self._num_batches

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one epoch of this data (packing: of the first epoch's order)."""
        if self._steps_per_epoch is None:
            self._steps_per_epoch = self._count_batches(1)
        return self._steps_per_epoch

    @property
    def stats(self) -> dict[str, float]:
        c = self._counters
        cells = c["tokens"] + c["padding_tokens"]
        return {
            **{k: float(v) for k, v in c.items()},
            "num_examples": float(self._num_examples),
            "epoch": c["examples_seen"] / self._num_examples,
            "padding_fraction": c["padding_tokens"] / cells if cells else 0.0,
            **{k: float(v) for k, v in self._fitted.overlong.items()},
        }


def check_saved_state(state: Mapping[str, Any], fingerprint: Mapping[str, Any], what: str,
                      version: int) -> None:
    """Refuses a saved iterator position from another version or another stream's settings:
    restoring a position into a different stream would silently reorder the data."""
    if state.get("version") != version:
        raise UserError(f"{what}: version {state.get('version')!r}, expected {version}")
    saved = state.get("fingerprint", {})
    changed = sorted(k for k in set(saved) | set(fingerprint)
                     if saved.get(k) != fingerprint.get(k))
    if changed:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {fingerprint.get(k)!r}"
                           for k in changed)
        raise UserError(f"{what} does not match this pipeline ({detail})")


def heldout_batches(
    records: Sequence[Mapping[str, Any]] | TokenizedSet,
    tokenizer: ChatTokenizer,
    *,
    batch_size: int,
    max_length: int,
    packing: bool = True,
    overlong: Literal["drop", "truncate"] = "truncate",
    shard_index: int = 0,
    shard_count: int = 1,
) -> Callable[[], Iterable[dict[str, np.ndarray]]]:
    """Batches for `sftrl.eval.heldout.HeldoutEvaluator`: every example exactly once, in order.

    Tokenizes once; each call of the result replays the same batches (the last one filled up with
    empty rows). Overlong examples are truncated by default (their prefix still has a
    well-defined loss; dropping them would bias the split towards short examples), and counted.
    """
    config = SFTDataConfig(
        batch_size=batch_size, max_length=max_length, packing=packing, shuffle=False,
        num_epochs=1, overlong=overlong, drop_remainder=False, shard_index=shard_index,
        shard_count=shard_count,
    )
    data = records if isinstance(records, TokenizedSet) else tokenize_records(
        records, tokenizer, source="held-out records")
    SFTPipeline(data, tokenizer, config)  # fail (and report overlong) now, not at the first eval

    def batches() -> Iterable[dict[str, np.ndarray]]:
        return SFTPipeline(data, tokenizer, config, report_overlong=False)

    return batches


__all__ = [
    "ChatTokenizer", "RecordError", "SFTDataConfig", "SFTPipeline", "TokenizedSet",
    "heldout_batches", "host_sharding", "record_error", "tokenize_records",
    "validate_sft_record",
]
