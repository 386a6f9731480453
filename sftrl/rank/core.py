"""`rank(...)`: validate every input, print the cost, score each checkpoint (resumably), then
rank within each group with paired-bootstrap uncertainty and write the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sftrl.eval import passk
from sftrl.eval.benchmarks import SamplingSpec
from sftrl.rank import inputs, stats
from sftrl.rank.inputs import Benchmark, Checkpoint, RankError

log = logging.getLogger("sftrl.rank")


@dataclasses.dataclass(frozen=True)
class Settings:
    """How checkpoints are scored (the same for all of them) and how the report is computed.
    `sampling.seed` also seeds the bootstrap."""

    sampling: SamplingSpec = dataclasses.field(
        default_factory=lambda: SamplingSpec(num_samples=64, max_new_tokens=1024))
    limit: int = 0  # > 0: the first `limit` prompts of each benchmark
    prompt_template: str = ""  # "": each benchmark's default
    max_length: int = 4096  # held-out examples are truncated here (and counted)
    heldout_batch_size: int = 16
    num_bootstrap: int = 1000
    threshold: float = stats.BEYOND_NOISE
    dtype: str = "auto"
    attention: str = "auto"


@dataclasses.dataclass
class Plan:
    checkpoints: list[Checkpoint]
    groups: dict[str, list[Checkpoint]]
    heldout_path: Path
    heldout_records: list[dict[str, Any]]
    benchmarks: list[Benchmark]
    rl_results: dict[str, float]
    fingerprint: dict[str, Any]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare(checkpoints: Sequence[str], *, heldout: str, benchmarks: Sequence[str],
            settings: Settings, rl_results: str | None = None,
            workdir: Path | None = None) -> Plan:
    """Every check that can fail on user input, before any weights are read."""
    if settings.sampling.num_samples < 2:
        raise RankError("--num_samples: pass@k at large k needs at least 2 samples per prompt")
    if not checkpoints:
        raise RankError("--checkpoints: name at least one checkpoint")
    records = inputs.read_heldout(heldout)
    benches = inputs.load_benchmarks(benchmarks, settings.limit, settings.prompt_template)
    cks = [inputs.resolve_checkpoint(spec) for spec in checkpoints]
    inputs.name_checkpoints(cks)
    groups = inputs.assign_groups(cks)
    for ck in cks:
        inputs.tokenize_heldout(ck, records, settings.max_length)
        ck.prompt_tokens = inputs.prompt_tokens(ck, benches)
    rl = inputs.read_rl_results(rl_results, cks) if rl_results else {}
    fingerprint = {
        "heldout": _digest(records),
        "benchmarks": {b.name: _digest([b.records, b.template]) for b in benches},
        "sampling": settings.sampling.sample_fields(),
        "max_length": settings.max_length,
    }
    plan = Plan(cks, groups, Path(heldout), records, benches, rl, fingerprint)
    if workdir is not None:
        for ck in cks:
            existing_result(plan, ck, workdir)  # a stale result file fails now, not later
    return plan


def _own_fingerprint(plan: Plan, ck: Checkpoint) -> dict[str, Any]:
    return {**plan.fingerprint, "checkpoint": ck.spec, "step": ck.step}


def existing_result(plan: Plan, ck: Checkpoint, workdir: Path) -> dict[str, Any] | None:
    path = workdir / "results" / f"{ck.name}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RankError(f"{path}: not valid JSON ({e}); delete it to rescore {ck.name}") from None
    old, new = record.get("fingerprint", {}), _own_fingerprint(plan, ck)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        raise RankError(f"{path}: field(s) {', '.join(changed)} differ from this run's inputs; "
                        "use another --workdir or delete the file")
    return record


# ---------------------------------------------------------------------------------------------
# Cost and progress


def cost_lines(plan: Plan, settings: Settings) -> list[str]:
    prompts = sum(len(b.records) for b in plan.benchmarks)
    spec = settings.sampling
    generate = prompts * spec.num_samples * spec.max_new_tokens
    lines = [f"rank: {len(plan.checkpoints)} checkpoint(s) in {len(plan.groups)} group(s); "
             f"held-out {len(plan.heldout_records)} examples; {prompts} prompts x "
             f"{spec.num_samples} samples on {', '.join(b.name for b in plan.benchmarks)}"]
    for ck in plan.checkpoints:
        lines.append(
            f"rank: cost {ck.name} [{ck.group}]: score {ck.scored_tokens} held-out tokens "
            f"({ck.truncated} examples truncated at {settings.max_length}); generate at most "
            f"{generate} tokens from {ck.prompt_tokens} prompt tokens "
            f"({prompts} prompts x {spec.num_samples} x <= {spec.max_new_tokens})")
    return lines


class Progress:
    """Plain log lines with an ETA. Work is counted in sampled prompts plus a held-out share
    (held-out tokens weighed as generated tokens / 8: a forward over a known sequence is far
    cheaper than decoding it); the ETA extrapolates this process's own rate."""

    def __init__(self, plan: Plan, settings: Settings, every_s: float = 30.0):
        self.total_prompts = sum(len(b.records) for b in plan.benchmarks)
        self.per_prompt = settings.sampling.num_samples * settings.sampling.max_new_tokens
        self.units = {ck.name: ck.scored_tokens / 8 + self.total_prompts * self.per_prompt
                      for ck in plan.checkpoints}
        self.total = sum(self.units.values())
        self.done = 0.0
        self.done_here = 0.0
        self.start = time.perf_counter()
        self.every_s = every_s
        self.last = -float("inf")
        self.count = len(plan.checkpoints)

    def skip(self, ck: Checkpoint) -> None:
        self.done += self.units[ck.name]

    def advance(self, units: float, what: str, force: bool = False) -> None:
        self.done += units
        self.done_here += units
        now = time.perf_counter()
        if force or now - self.last >= self.every_s:
            self.last = now
            elapsed = now - self.start
            remaining = self.total - self.done
            eta = elapsed / self.done_here * remaining if self.done_here else float("nan")
            log.info("rank: %s; %.0f%% done, %s elapsed, ETA %s", what,
                     100 * self.done / self.total, _clock(elapsed), _clock(eta))


def _clock(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------
# Analysis


def _counts(record: dict[str, Any]) -> tuple[stats.HeldoutCounts, dict[str, stats.BenchmarkCounts]]:
    h = stats.HeldoutCounts(np.asarray(record["heldout"]["nll_sums"], np.float64),
                            np.asarray(record["heldout"]["token_counts"], np.int64))
    b = {name: stats.BenchmarkCounts(np.asarray(v["n"], np.int64), np.asarray(v["c"], np.int64))
         for name, v in record["benchmarks"].items()}
    return h, b


def analyze(plan: Plan, records: dict[str, dict[str, Any]], settings: Settings
            ) -> dict[str, Any]:
    """Every number of the report (deterministic given the records and the sampling seed)."""
    k_max = settings.sampling.num_samples
    ks = passk.curve_ks(k_max)
    reps = stats.draw(len(plan.heldout_records), {b.name: len(b.records) for b in plan.benchmarks},
                      settings.num_bootstrap, settings.sampling.seed)
    per_ck: dict[str, dict[str, Any]] = {}
    proxies: dict[str, dict[str, np.ndarray]] = {}
    for ck in plan.checkpoints:
        record = records[ck.name]
        h, b = _counts(record)
        proxies[ck.name] = stats.proxy_replicates(h, b, k_max, reps)
        curves = {name: v["summary"]["pass@k"] for name, v in record["benchmarks"].items()}
        per_ck[ck.name] = {
            "path": ck.spec, "kind": ck.kind, "step": ck.step, "group": ck.group,
            "heldout": {"loss": float(proxies[ck.name]["loss"][0]),
                        "loss_ci": stats.interval(proxies[ck.name]["loss"][1:]),
                        "num_tokens": int(h.token_counts.sum()),
                        "num_examples": len(h.token_counts), "truncated": ck.truncated},
            "benchmarks": {name: {"pass@1": v["summary"]["pass@1"],
                                  "pass@k": v["summary"]["pass@k"],
                                  "pass@k_ci": v["summary"]["pass@k_ci"],
                                  "num_prompts": v["summary"]["num_prompts"]}
                           for name, v in sorted(record["benchmarks"].items())},
            "pass@k_mean": {str(k): float(np.mean([c[str(k)] for c in curves.values()]))
                            for k in ks},
        }
        for key in ("pass@1", "pass@k_max"):
            per_ck[ck.name][key] = float(proxies[ck.name][key][0])
            per_ck[ck.name][f"{key}_ci"] = stats.interval(proxies[ck.name][key][1:])
    groups = {g: _rank_group(g, members, proxies, per_ck, plan, settings, k_max)
              for g, members in plan.groups.items()}
    return {
        "k_max": k_max, "ks": ks,
        "combination": f"mean of z-scores (within the group) of -loss and pass@{k_max}",
        "bootstrap": {"replicates": settings.num_bootstrap, "paired": True,
                      "beyond_noise_share": settings.threshold,
                      "resampled": "held-out examples and, per benchmark, prompts; the same "
                                   "draw for every checkpoint"},
        "heldout": {"path": str(plan.heldout_path), "examples": len(plan.heldout_records)},
        "benchmarks": {b.name: {"prompts": len(b.records), "template": b.template}
                       for b in plan.benchmarks},
        "sampling": settings.sampling.sample_fields(),
        "max_length": settings.max_length,
        "checkpoints": per_ck,
        "groups": groups,
    }


def _rank_group(group: str, members: list[Checkpoint], proxies: dict[str, dict[str, np.ndarray]],
                per_ck: dict[str, dict[str, Any]], plan: Plan, settings: Settings,
                k_max: int) -> dict[str, Any]:
    names = [ck.name for ck in members]
    loss = np.stack([proxies[n]["loss"] for n in names])
    pk = np.stack([proxies[n]["pass@k_max"] for n in names])
    combo = stats.combination(loss, pk)
    order, pairs = stats.order_and_pairs(names, combo, settings.threshold)
    best = stats.best_share(combo)
    by_proxy = {}
    for proxy, values in (("-loss", -loss), ("pass@k_max", pk),
                          ("pass@1", np.stack([proxies[n]["pass@1"] for n in names]))):
        proxy_order, proxy_pairs = stats.order_and_pairs(names, values, settings.threshold)
        by_proxy[proxy] = {"order": [names[i] for i in proxy_order], "pairs": proxy_pairs}
    ranking = []
    for position, i in enumerate(order, start=1):
        per_ck[names[i]]["combination"] = float(combo[i, 0])
        per_ck[names[i]]["combination_ci"] = stats.interval(combo[i, 1:])
        per_ck[names[i]]["best_share"] = float(best[i])
        ranking.append({"rank": position, "checkpoint": names[i]})
    top = names[order[0]]
    out: dict[str, Any] = {
        "ranking": ranking, "pairs": pairs, "by_proxy": by_proxy,
        "recommendation": {
            "checkpoint": top, "best_share": float(best[order[0]]),
            "beyond_noise": bool(pairs[0]["beyond_noise"]) if pairs else True,
            "ties_with": _tied_with_top(pairs),
        },
    }
    labeled = {n: plan.rl_results[n] for n in names if n in plan.rl_results}
    if labeled:
        out["prediction"] = _predict(group, names, per_ck, labeled, k_max, settings)
    return out


def _tied_with_top(pairs: list[dict[str, Any]]) -> list[str]:
    tied = []
    for pair in pairs:
        if pair["beyond_noise"]:
            break
        tied.append(pair["worse"])
    return tied


def _predict(group: str, names: list[str], per_ck: dict[str, dict[str, Any]],
             labeled: dict[str, float], k_max: int, settings: Settings) -> dict[str, Any]:
    """The predictor's calibrated prediction for the checkpoints without an RL result."""
    from sftrl.eval import predict

    candidates = [predict.Candidate(
        group=group, dataset=n, checkpoint=n, source="rank",
        proxies={"generalization_loss": per_ck[n]["heldout"]["loss"],
                 "pass@1": per_ck[n]["pass@1"], f"pass@{k_max}": per_ck[n]["pass@k_max"]},
        outcomes={predict.OUTCOME: labeled[n]} if n in labeled else {}) for n in names]
    options = predict.Options(k=k_max, seed=settings.sampling.seed, n_permutations=2000,
                              n_bootstrap=settings.num_bootstrap)
    try:
        report = predict.evaluate_group(group, candidates, options)
    except predict.PredictError as e:
        return {"error": str(e)}
    return {"rl_results": labeled, **report["prediction"]}


# ---------------------------------------------------------------------------------------------
# The whole command


def rank(
    checkpoints: Sequence[str], *, heldout: str, benchmarks: Sequence[str],
    workdir: str | Path, settings: Settings | None = None, rl_results: str | None = None,
    layout: Any = None, on_checkpoint_done: Callable[[str], None] | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Ranks `checkpoints` (see `sftrl.rank`); writes rank.md, rank.json and rank.png under
    `workdir` and returns rank.json's content. `plan`: `prepare`'s result for these same
    arguments, when the caller validated them already."""
    from sftrl.rank import report as report_lib
    from sftrl.rank.score import score_checkpoint

    settings = settings or Settings()
    workdir = Path(workdir)
    if plan is None:
        plan = prepare(checkpoints, heldout=heldout, benchmarks=benchmarks, settings=settings,
                       rl_results=rl_results, workdir=workdir)
    for line in cost_lines(plan, settings):
        log.info("%s", line)
    if layout is None:
        from sftrl.sharding import TRAIN_RULES, Layout, make_mesh

        layout = Layout(make_mesh(data=1, fsdp=-1, tensor=1), TRAIN_RULES)
    progress = Progress(plan, settings)
    records: dict[str, dict[str, Any]] = {}
    for index, ck in enumerate(plan.checkpoints, start=1):
        existing = existing_result(plan, ck, workdir)
        if existing is not None:
            log.info("rank: [%d/%d] %s already scored (%s)", index, len(plan.checkpoints),
                     ck.name, workdir / "results" / f"{ck.name}.json")
            progress.skip(ck)
            records[ck.name] = existing
            continue
        log.info("rank: [%d/%d] scoring %s (%s)", index, len(plan.checkpoints), ck.name, ck.spec)
        done_in: dict[str, int] = {}

        def on_prompt(bench: str, ck: Checkpoint = ck, index: int = index,
                      done_in: dict[str, int] = done_in) -> None:
            done_in[bench] = done_in.get(bench, 0) + 1
            progress.advance(progress.per_prompt, f"[{index}/{progress.count}] {ck.name} "
                             f"{bench} {done_in[bench]} prompts sampled")

        record = score_checkpoint(
            ck, plan.benchmarks, workdir=workdir, layout=layout, spec=settings.sampling,
            settings=settings, fingerprint=_own_fingerprint(plan, ck), on_prompt=on_prompt)
        # resumed prompts were not reported by on_prompt; count them so the total adds up
        left = progress.units[ck.name] - progress.per_prompt * sum(done_in.values())
        progress.advance(left, f"[{index}/{progress.count}] {ck.name} done", force=True)
        records[ck.name] = record
        if on_checkpoint_done is not None:
            on_checkpoint_done(ck.name)
    result = analyze(plan, records, settings)
    paths = report_lib.write(result, workdir)
    log.info("rank: wrote %s", ", ".join(str(p) for p in paths))
    return result
