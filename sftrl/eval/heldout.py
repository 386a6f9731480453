"""Generalization loss: response-token NLL on a held-out split of the SFT data.

Definition (docs/design.md): the mean NLL of the assistant-response tokens (the loss mask;
prompt and template masked, the end-of-turn token included), token-weighted over the whole split, in
nats/token; the per-example mean is reported beside it, and the loss by response length.

Exactness: the jitted step returns each token's masked NLL (float32, [B, L]), and every sum is
taken on the host in float64, keyed by example. So the result does not depend on batch size,
padding, packing or the mesh (up to float32 rounding of each token's NLL), and on several hosts
each host's rows are gathered before summing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from sftrl.losses import next_token_nll
from sftrl.models.transformer import Model
from sftrl.sharding import shard_batch, to_host

DEFAULT_LENGTH_BUCKETS = (128, 256, 512, 1024, 2048, 4096)
_REQUIRED = ("tokens", "loss_mask")


@dataclasses.dataclass(frozen=True)
class HeldoutResult:
    loss: float  # token-weighted mean NLL over all response tokens (nats/token)
    per_example_loss: float  # mean over examples of each example's mean token NLL
    num_tokens: int
    num_examples: int
    by_length: dict[str, dict[str, float]]  # "<=128", ..., ">4096": loss, tokens, examples

    def metrics(self, prefix: str = "heldout/") -> dict[str, float]:
        out = {
            f"{prefix}loss": self.loss,
            f"{prefix}per_example_loss": self.per_example_loss,
            f"{prefix}num_tokens": float(self.num_tokens),
            f"{prefix}num_examples": float(self.num_examples),
        }
        for bucket, values in self.by_length.items():
            out[f"{prefix}loss_len{bucket}"] = values["loss"]
        return out


def _check_batch(batch: Mapping[str, Any], index: int) -> dict[str, np.ndarray]:
    missing = [key for key in _REQUIRED if key not in batch]
    if missing:
        raise KeyError(f"held-out batch {index}: missing field(s) {', '.join(missing)}")
    arrays = {key: np.asarray(value) for key, value in batch.items()}
    shape = arrays["tokens"].shape
    for key in ("loss_mask", "segment_ids", "attention_mask", "positions"):
        if key in arrays and arrays[key].shape != shape:
            raise ValueError(
                f"held-out batch {index}: {key} has shape {arrays[key].shape}, tokens {shape}"
            )
    if len(shape) != 2:
        raise ValueError(f"held-out batch {index}: tokens must be [batch, length], got {shape}")
    return arrays


def _per_example_sums(
    arrays: dict[str, np.ndarray], nll_BxL: np.ndarray, row_offset: int
) -> dict[tuple[int, int], tuple[float, int]]:
    """{(row, segment): (nll sum, token count)} for one batch; rows numbered across batches."""
    b, l = arrays["tokens"].shape
    segments = arrays.get("segment_ids", np.ones((b, l), np.int64)).astype(np.int64)
    scored = arrays["loss_mask"].astype(bool) & (segments != 0)
    scored[:, 0] = False  # the first token of a row has no prediction
    rows = np.broadcast_to(np.arange(b)[:, None], (b, l))
    width = int(segments.max(initial=0)) + 1
    keys, inverse = np.unique(rows[scored] * width + segments[scored], return_inverse=True)
    sums = np.bincount(inverse, weights=nll_BxL[scored].astype(np.float64), minlength=len(keys))
    counts = np.bincount(inverse, minlength=len(keys))
    return {
        (row_offset + int(key) // width, int(key) % width): (float(total), int(count))
        for key, total, count in zip(keys, sums, counts, strict=True)
    }


def _bucket_name(length: int, edges: Sequence[int]) -> str:
    for edge in edges:
        if length <= edge:
            return f"<={edge}"
    return f">{edges[-1]}"


def make_per_token_nll(module: Any) -> Callable[..., jax.Array]:
    """(params, tokens, loss_mask, attention_mask, segment_ids) -> masked NLL [B, L]: the
    evaluator's step (and the program `sftrl.plan` compiles for it)."""

    def per_token_nll(params, tokens, loss_mask, attention_mask, segment_ids):
        logits, _ = module.apply(
            {"params": params}, tokens, attention_mask_BxL=attention_mask,
            segment_ids_BxL=segment_ids,
        )
        return next_token_nll(logits, tokens, loss_mask)

    return per_token_nll


class HeldoutEvaluator:
    """`run(params_or_state) -> metrics` over a held-out split, for any model of one module."""

    def __init__(
        self,
        model: Model,
        batches: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS,
    ):
        self.module = model.module
        self.layout = model.module.layout
        self.batches = batches
        self.length_buckets = tuple(length_buckets)

        self._step = jax.jit(make_per_token_nll(self.module))

    def evaluate(self, params: Any) -> HeldoutResult:
        token_sums, token_counts = self.example_sums(params)
        return self._summarise(token_sums, token_counts)

    def example_sums(
        self, params: Any
    ) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], int]]:
        """({(row, segment): NLL sum}, {(row, segment): token count}) per scored example; what
        `evaluate` summarises (sftrl.rank bootstraps over these examples)."""
        params = getattr(params, "params", params)  # a TrainState works too
        token_sums: dict[tuple[int, int], float] = {}
        token_counts: dict[tuple[int, int], int] = {}
        row_offset = 0
        for index, batch in enumerate(self.batches()):
            arrays = _check_batch(batch, index)
            placed = shard_batch(
                {k: arrays[k] for k in ("tokens", "loss_mask", "attention_mask", "segment_ids")
                 if k in arrays},
                self.layout,
            )
            nll_BxL = self._step(
                params, placed["tokens"], placed["loss_mask"], placed.get("attention_mask"),
                placed.get("segment_ids"),
            )
            # An example split across batches (not produced by our pipelines) would be counted
            # as two; rows are numbered globally so no two batches share a key.
            if jax.process_count() > 1:
                # each host holds its rows; sum over the global batch, identically on every host
                arrays = {k: to_host(v) for k, v in placed.items()}
            for key, (total, count) in _per_example_sums(
                arrays, to_host(nll_BxL), row_offset
            ).items():
                token_sums[key] = total
                token_counts[key] = count
            row_offset += arrays["tokens"].shape[0]  # global rows (gathered above)
        if not token_counts:
            raise ValueError("the held-out split has no response tokens (empty, or all masked)")
        return token_sums, token_counts

    def _summarise(
        self, sums: dict[tuple[int, int], float], counts: dict[tuple[int, int], int]
    ) -> HeldoutResult:
        total_tokens = sum(counts.values())
        buckets: dict[str, list[float]] = {}
        for key, count in counts.items():
            stats = buckets.setdefault(_bucket_name(count, self.length_buckets), [0.0, 0, 0])
            stats[0] += sums[key]
            stats[1] += count
            stats[2] += 1
        ordered = [f"<={e}" for e in self.length_buckets] + [f">{self.length_buckets[-1]}"]
        return HeldoutResult(
            loss=math.fsum(sums.values()) / total_tokens,
            per_example_loss=math.fsum(sums[k] / counts[k] for k in counts) / len(counts),
            num_tokens=total_tokens,
            num_examples=len(counts),
            by_length={
                name: {"loss": buckets[name][0] / buckets[name][1], "tokens": buckets[name][1],
                       "examples": buckets[name][2]}
                for name in ordered if name in buckets
            },
        )
