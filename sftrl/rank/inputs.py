"""Everything `rank` reads, resolved and checked before any model is loaded.

A bad input is a `RankError` whose message names the file, field or checkpoint; the command line
prints it as one line and exits 2. Checking is cheap (configs, tokenizers, the held-out file and
the benchmark records are read; no weights), so a mistake in the tenth checkpoint does not
surface after nine hours of sampling.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from sftrl import config_lib
from sftrl.data import synthetic
from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.rows import iter_rows
from sftrl.data.prompts import BENCHMARK_TEMPLATES, PROMPT_TEMPLATES, format_prompt
from sftrl.data.sft import TokenizedSet, tokenize_records, validate_sft_record
from sftrl.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from sftrl.eval.benchmarks import BenchmarkError, check_records
from sftrl.models.checkpoint import INDEX_FILE, SINGLE_FILE
from sftrl.models.model_config import ModelConfig, ModelConfigError, read_hf_config

log = logging.getLogger(__name__)


class RankError(ValueError):
    """A user mistake in rank's inputs; the message names the file, field or checkpoint."""


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint to rank: where its weights are, its architecture and its tokenizer."""

    name: str  # unique; names its result file and samples folder
    spec: str  # as given on the command line
    kind: str  # "hf" | "run"
    path: Path  # the HF folder or the run directory
    step: int | None  # run directories: the orbax step
    arch: ModelConfig
    tokenizer: Tokenizer
    tokenizer_path: Path
    run_config: ml_collections.ConfigDict | None = None
    group: str = ""
    heldout: TokenizedSet | None = None  # the held-out records in this tokenizer's template
    scored_tokens: int = 0  # response tokens the held-out loss scores (after truncation)
    truncated: int = 0  # held-out examples cut at max_length
    prompt_tokens: int = 0  # all benchmark prompts, encoded with this tokenizer
    tokenize_s: float = 0.0  # time to apply the template to the held-out set


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _is_hf_folder(folder: Path) -> bool:
    has_weights = (folder / SINGLE_FILE).is_file() or (folder / INDEX_FILE).is_file()
    return (folder / "config.json").is_file() and has_weights


def _merge(target: ml_collections.ConfigDict, data: Mapping[str, Any], where: str) -> None:
    """A run's config.json (written with to_json_best_effort) onto the current schema: lists
    back to tuples, unknown keys (a newer or older sftrl) ignored."""
    for key, value in data.items():
        if key not in target:
            continue
        current = target[key]
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
            _merge(current, value, f"{where}.{key}")
        elif isinstance(value, dict):
            target[key] = ml_collections.ConfigDict(value)
        elif isinstance(current, tuple) and isinstance(value, list):
            target[key] = tuple(value)
        else:
            try:
                target[key] = value
            except (TypeError, ValueError) as e:
                raise RankError(f"{where}.{key}: {e}") from e


def run_config(run_dir: Path) -> tuple[ml_collections.ConfigDict, Path]:
    """The config a run was trained with: its config.json, or that of the pipeline/sweep
    directory above it (runs/x/sft/v1 was written by runs/x's pipeline)."""
    for folder in (run_dir, run_dir.parent, run_dir.parent.parent):
        file = folder / "config.json"
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RankError(f"{file}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            config = config_lib.base_config()
            _merge(config, data, str(file))
            return config, file
    raise RankError(f"checkpoint {run_dir}: no sftrl config.json in it or the two folders "
                    "above it (needed for the architecture and tokenizer)")


def _run_steps(run_dir: Path) -> list[int]:
    from sftrl.train import state as state_lib

    with state_lib.Checkpointer(run_dir / "checkpoints", async_save=False) as ckpt:
        return list(ckpt.all_steps())


def _split_step(spec: str) -> tuple[str, int | None]:
    path, sep, step = spec.rpartition("@")
    if not sep or not step.isdigit():
        return spec, None
    return path, int(step)


def _tokenizer(folder: Path, name: str) -> Tokenizer:
    try:
        tokenizer = load_tokenizer(folder)
    except TokenizerError as e:
        raise RankError(f"checkpoint {name}: tokenizer: {e}") from None
    if tokenizer.chat_template is None:
        raise RankError(f"checkpoint {name}: tokenizer {folder / 'tokenizer_config.json'} has "
                        "no chat template (field 'chat_template' or chat_template.jinja)")
    return tokenizer


def resolve_checkpoint(spec: str) -> Checkpoint:
    """An HF folder, an sftrl run directory (`dir` or `dir@step`) or one orbax step folder
    (`dir/checkpoints/<step>`)."""
    raw, step = _split_step(spec)
    path = Path(raw)
    if not path.exists():
        raise RankError(f"checkpoint {spec}: no such file or directory")
    if not path.is_dir():
        raise RankError(f"checkpoint {spec}: not a directory (expected a Hugging Face folder or "
                        "an sftrl run directory)")
    if path.parent.name == "checkpoints" and path.name.isdigit() and step is None:
        path, step = path.parent.parent, int(path.name)  # an orbax step folder
    if _is_hf_folder(path):
        if step is not None:
            raise RankError(f"checkpoint {spec}: '@{step}' names a step, but {path} is a "
                            "Hugging Face folder")
        try:
            arch = read_hf_config(path)
        except (ModelConfigError, FileNotFoundError) as e:
            raise RankError(f"checkpoint {spec}: {e}") from None
        return Checkpoint(name="", spec=spec, kind="hf", path=path, step=None, arch=arch,
                          tokenizer=_tokenizer(path, spec), tokenizer_path=path)
    if (path / "checkpoints").is_dir():
        steps = _run_steps(path)
        if not steps:
            raise RankError(f"checkpoint {spec}: {path / 'checkpoints'} holds no checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise RankError(f"checkpoint {spec}: no step {step} in {path / 'checkpoints'} "
                            f"(has {steps})")
        config, _ = run_config(path)
        from sftrl.data import sources

        try:
            arch = config_lib.model_config(config)
            tokenizer_path = Path(sources.tokenizer_path(config))
        except (config_lib.ConfigError, ValueError) as e:
            raise RankError(f"checkpoint {spec}: {e}") from None
        return Checkpoint(name="", spec=spec, kind="run", path=path, step=step, arch=arch,
                          tokenizer=_tokenizer(tokenizer_path, spec),
                          tokenizer_path=tokenizer_path, run_config=config)
    raise RankError(f"checkpoint {spec}: not a model (no config.json with model.safetensors, "
                    "and no checkpoints/ folder of an sftrl run)")


def _base_name(ck: Checkpoint) -> str:
    name = ck.path.name or "checkpoint"
    return f"{name}@{ck.step}" if ck.kind == "run" else name


def name_checkpoints(checkpoints: Sequence[Checkpoint]) -> None:
    """Short unique names (folder name, `@step` for runs); a clash adds the parent's name."""
    counts: dict[str, int] = {}
    for ck in checkpoints:
        counts[_base_name(ck)] = counts.get(_base_name(ck), 0) + 1
    used: set[str] = set()
    for ck in checkpoints:
        name = _base_name(ck)
        if counts[name] > 1:
            name = f"{ck.path.parent.name}-{name}"
        base, i = name, 2
        while name in used:
            name, i = f"{base}-{i}", i + 1
        used.add(name)
        ck.name = name.lstrip(".") or "checkpoint"


def _vocab_digest(ck: Checkpoint) -> str:
    import tokenizers

    raw = tokenizers.Tokenizer.from_file(str(ck.tokenizer_path / "tokenizer.json"))
    vocab = sorted(raw.get_vocab(with_added_tokens=True).items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def assign_groups(checkpoints: Sequence[Checkpoint]) -> dict[str, list[Checkpoint]]:
    """Checkpoints of one architecture (vocabulary size included) form a group; within a group
    the tokenizers must share one vocabulary, else losses are not comparable."""
    groups: dict[str, list[Checkpoint]] = {}
    keys: dict[str, str] = {}
    for ck in checkpoints:
        a = ck.arch
        key = json.dumps(dataclasses.asdict(a), sort_keys=True, default=str)
        if key not in keys:
            name = f"{a.model_type}-{a.hidden_size}x{a.num_layers}-v{a.vocab_size}"
            if name in keys.values():  # differs only in fields the name does not show
                name = f"{name}-{len(keys) + 1}"
            keys[key] = name
        ck.group = keys[key]
        groups.setdefault(ck.group, []).append(ck)
    for group, members in groups.items():
        first, digest = members[0], _vocab_digest(members[0])
        for ck in members:
            if ck.tokenizer.vocab_size > ck.arch.vocab_size:
                raise RankError(f"checkpoint {ck.spec}: tokenizer has {ck.tokenizer.vocab_size} "
                                f"tokens, the model's vocab_size is {ck.arch.vocab_size}")
            if ck is not first and _vocab_digest(ck) != digest:
                raise RankError(f"group {group}: checkpoints {first.spec} and {ck.spec} have "
                                f"different vocabularies ({first.tokenizer_path}/tokenizer.json "
                                f"vs {ck.tokenizer_path}/tokenizer.json)")
    return groups


# ---------------------------------------------------------------------------------------------
# Held-out records


def read_heldout(path: str) -> list[dict[str, Any]]:
    """Chat records (`messages`) or `problem`/`solution` records, as chat records."""
    file = Path(path)
    if not file.is_file():
        raise RankError(f"--heldout: {path}: no such file")
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        for index, (loc, raw) in enumerate(iter_rows(file)):
            if not isinstance(raw, dict):
                raise RankError(f"{loc}: expected a JSON object")
            rid = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else \
                f"line-{index + 1}"
            if rid in seen:
                raise RankError(f"{loc}: field 'id': {rid!r} repeats an earlier record")
            seen.add(rid)
            if "messages" in raw:
                record = {**raw, "id": rid}
            elif "problem" in raw or "solution" in raw:
                for field in ("problem", "solution"):
                    if not isinstance(raw.get(field), str) or not raw[field].strip():
                        raise RankError(f"{loc}: field {field!r}: missing or not a non-empty "
                                        "string")
                record = {"id": rid, "messages": [
                    {"role": "user", "content": raw["problem"]},
                    {"role": "assistant", "content": raw["solution"]}]}
            else:
                raise RankError(f"{loc}: field 'messages': missing (a record needs 'messages', "
                                "or 'problem' and 'solution')")
            try:
                validate_sft_record(record, index, source=str(file))
            except ValueError as e:
                raise RankError(f"{loc}: {e}") from None
            records.append(record)
    except DataFormatError as e:
        raise RankError(str(e)) from None
    if not records:
        raise RankError(f"--heldout: {path}: no records")
    return records


def tokenize_heldout(ck: Checkpoint, records: Sequence[Mapping[str, Any]],
                     max_length: int) -> None:
    """This checkpoint's template applied to every held-out record; counts what is scored."""
    start = time.perf_counter()
    try:
        data = tokenize_records(records, ck.tokenizer, source=f"held-out ({ck.name})")
    except ValueError as e:
        raise RankError(f"checkpoint {ck.spec}: held-out: {e}") from None
    scored = 0
    for rid, mask in zip(data.record_ids, data.loss_mask, strict=True):
        kept = int(np.asarray(mask[1:max_length]).sum())  # the first token is never predicted
        if kept == 0:
            raise RankError(f"checkpoint {ck.spec}: held-out record {rid!r} has no response "
                            f"token within max_length={max_length}; raise --max_length")
        scored += kept
    ck.heldout = data
    ck.scored_tokens = scored
    ck.truncated = sum(len(ids) > max_length for ids in data.ids)
    ck.tokenize_s = time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Benchmarks


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    records: list[dict[str, Any]]
    template: str


def load_benchmarks(names: Sequence[str], limit: int, template: str) -> list[Benchmark]:
    """Packaged names, 'synthetic' (the embedded test set) or JSONL files (id/problem/answer)."""
    from sftrl.data import benchmarks as packaged

    if template and template not in PROMPT_TEMPLATES:
        raise RankError(f"--prompt_template: unknown {template!r} (known: "
                        f"{', '.join(sorted(PROMPT_TEMPLATES))})")
    out: list[Benchmark] = []
    for spec in names:
        try:
            if spec == "synthetic":
                name, records = spec, synthetic.test_records(synthetic.TaskConfig())
            elif spec in packaged.BENCHMARKS:
                name, records = spec, packaged.load_benchmark(spec)
            elif spec.endswith(".jsonl"):
                if not Path(spec).is_file():
                    raise RankError(f"--benchmarks: {spec}: no such file")
                name, records = Path(spec).stem, packaged.load_jsonl_problems(spec)
            else:
                raise RankError(f"--benchmarks: unknown benchmark {spec!r} (known: synthetic, "
                                f"{', '.join(sorted(packaged.BENCHMARKS))}, or a .jsonl file)")
            records = check_records(records[:limit] if limit else records, name)
        except (packaged.BenchmarkError, BenchmarkError, DataFormatError) as e:
            raise RankError(f"--benchmarks: {e}") from None
        if any(b.name == name for b in out):
            raise RankError(f"--benchmarks: {spec!r} is named twice (as {name!r})")
        chosen = template or BENCHMARK_TEMPLATES.get(name, "boxed")
        out.append(Benchmark(name, records, chosen))
    if not out:
        raise RankError("--benchmarks: name at least one benchmark")
    return out


def prompt_tokens(ck: Checkpoint, benchmarks: Sequence[Benchmark]) -> int:
    total = 0
    for b in benchmarks:
        for record in b.records:
            try:
                total += len(ck.tokenizer.encode_prompt(format_prompt(record["problem"],
                                                                      b.template)))
            except TokenizerError as e:
                raise RankError(f"checkpoint {ck.spec}: benchmark {b.name} record "
                                f"{record['id']!r}: {e}") from None
    return total


# ---------------------------------------------------------------------------------------------
# RL results


def read_rl_results(path: str, checkpoints: Sequence[Checkpoint]) -> dict[str, float]:
    """`checkpoint,post_rl_score` rows; a checkpoint is named as given or by its rank name."""
    file = Path(path)
    if not file.is_file():
        raise RankError(f"--rl_results: {path}: no such file")
    by_spec = {ck.spec: ck.name for ck in checkpoints} | {ck.name: ck.name for ck in checkpoints}
    out: dict[str, float] = {}
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"checkpoint", "post_rl_score"} - set(reader.fieldnames or ())
        if missing:
            raise RankError(f"{file}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            name = by_spec.get((row["checkpoint"] or "").strip())
            if name is None:
                raise RankError(f"{file}:{line}: field 'checkpoint': {row['checkpoint']!r} is "
                                "not one of --checkpoints")
            try:
                out[name] = float(row["post_rl_score"])
            except (TypeError, ValueError):
                raise RankError(f"{file}:{line}: field 'post_rl_score': "
                                f"{row['post_rl_score']!r} is not a number") from None
    return out
