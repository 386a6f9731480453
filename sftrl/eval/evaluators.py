"""The evaluators training runs every `eval_every` steps: `run(state) -> dict[str, float]`.

A trainer builds one evaluator per name in its config's `evals` (`sft.evals`: heldout,
`rl.evals`: passk; validation refuses any other name) and runs them all through
`run_evaluators`, which prefixes each one's metrics with its name: `heldout/loss`,
`passk/<benchmark>/pass@1`, `passk/mean/pass@1`.

`state` is a train state (anything with `.params`) or a params tree itself. The evaluators keep
one `Model` and swap the state's params into it for the duration of a run: the sampler's and the
held-out step's jitted functions are cached per model object, so a fresh `Model` per call would
recompile every time, and the params stay the same (sharded) JAX arrays, never copied.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from sftrl.eval import benchmarks as bench
from sftrl.eval.heldout import HeldoutEvaluator
from sftrl.models.transformer import Model


@runtime_checkable
class Evaluator(Protocol):
    def run(self, state: Any) -> dict[str, float]: ...


class EvaluatorError(ValueError):
    """A misconfigured evaluator or one that returned something that is not a metric."""


def params_of(state: Any) -> Any:
    """The params of a train state, or `state` itself when it is already a params tree."""
    return getattr(state, "params", state)


@contextlib.contextmanager
def bound_params(model: Model, params: Any) -> Iterator[Model]:
    """`model` with `params` swapped in for the duration of the block (then restored)."""
    old = model.params
    model.params = params
    try:
        yield model
    finally:
        model.params = old


class HeldoutLossEvaluator:
    """Generalization loss (heldout.HeldoutEvaluator): `loss`, `per_example_loss`, ..."""

    def __init__(self, heldout: HeldoutEvaluator):
        self.heldout = heldout

    def run(self, state: Any) -> dict[str, float]:
        return self.heldout.evaluate(params_of(state)).metrics(prefix="")


class PassAtKEvaluator:
    """A small-n pass@k check on a few prompts per benchmark, for use during training.

    Nothing is stored; the same spec (and so the same per-prompt random keys) at every call, so
    differences between steps come from the params, not from resampled noise in the keys.
    Metrics: `<benchmark>/pass@<k>` for k = 1, 2, 4, ..., n, and `<benchmark>/maj@<n>`,
    `<benchmark>/mean_response_tokens`, `<benchmark>/truncation_rate`, and
    `mean/pass@1` over benchmarks.
    """

    def __init__(
        self,
        model: Model,
        tokenizer: bench.Tokenizer,
        benchmarks: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        spec: bench.SamplingSpec,
        format_prompt: Callable[[dict[str, Any]], Any] | None = None,
        verifier: bench.BatchVerifier | None = None,
    ):
        if not benchmarks:
            raise EvaluatorError("PassAtKEvaluator: no benchmarks")
        self.model = model
        self.tokenizer = tokenizer
        self.records = {name: bench.check_records(records, name)
                        for name, records in benchmarks.items()}
        self.spec = spec
        self.format_prompt = format_prompt or (lambda record: record["problem"])
        self.verifier = verifier

    def run(self, state: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        with bound_params(self.model, params_of(state)) as model:
            for name, records in self.records.items():
                rows = list(bench.sample_rows(
                    model, self.tokenizer, records, name=name, spec=self.spec,
                    format_prompt=self.format_prompt, verifier=self.verifier))
                scores = bench.summarize(rows, seed=self.spec.seed)
                for k, value in scores["pass@k"].items():
                    out[f"{name}/pass@{k}"] = value
                out[f"{name}/maj@{scores['n']}"] = scores["maj@k"][str(scores["n"])]
                out[f"{name}/mean_response_tokens"] = scores["mean_response_tokens"]
                out[f"{name}/truncation_rate"] = scores["truncation_rate"]
                if scores["mean_token_entropy"] is not None:
                    out[f"{name}/mean_token_entropy"] = scores["mean_token_entropy"]
        out["mean/pass@1"] = sum(out[f"{n}/pass@1"] for n in self.records) / len(self.records)
        return out


def run_evaluators(evaluators: Mapping[str, Evaluator], state: Any) -> dict[str, float]:
    """Runs every evaluator on `state`; metrics come back as `<evaluator name>/<metric>`."""
    out: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        if not name or "/" in name:
            raise EvaluatorError(f"evals: evaluator name {name!r} must be non-empty, no '/'")
        if not isinstance(evaluator, Evaluator):
            raise EvaluatorError(f"evals[{name!r}]: {type(evaluator).__name__} has no run(state)")
        metrics = evaluator.run(state)
        if not isinstance(metrics, Mapping):
            raise EvaluatorError(f"evals[{name!r}].run returned {type(metrics).__name__}, "
                                 "not a dict of metrics")
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise EvaluatorError(f"evals[{name!r}]: metric {key!r} is {value!r}, not a number")
            out[f"{name}/{key}"] = float(value)
    return out
