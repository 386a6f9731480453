"""TFDS builders writing array_record, readable with `tfds.data_source` without TensorFlow.

tfds 4.9.x serializes examples with its own protobuf/numpy code and reads array_record through
`ArrayRecordDataSource` with numpy deserialization, so building and reading need no TensorFlow
(only the `tf.data` paths, `as_dataset`, do). Importing this module registers three builders:

- `sftrl_benchmarks/<name>`: one config per packaged evaluation benchmark, split `test`.
- `sftrl_sft`: local JSONL/Parquet SFT files, splits `train` and `heldout`; pass
  `config=SftConfig(name=..., files=(...), heldout_fraction=...)`. Split counts and duplicate
  counts are stored in the dataset's metadata (`builder.info.metadata`).
- `sftrl_rl_prompts`: RL prompt sets (`id`, `problem`, `answer`), split `train`; config
  `math_train` (packaged) or `RlConfig(name=..., files=(...))` for local files.

Text comes back from a data source as UTF-8 bytes; `decode_problem` / `decode_conversation`
turn examples back into the records the plain readers return. Missing optional benchmark
fields are stored as empty strings (TFDS features cannot be absent).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from sftrl.data.benchmarks import BENCHMARKS, EVAL_BENCHMARKS, benchmark_path, load_benchmark
from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.problems import OPTIONAL_FIELDS, read_rl_file
from sftrl.data.builders.sft import HELDOUT, TRAIN, read_sft_files

VERSION = tfds.core.Version("1.0.0")
PROBLEM_FIELDS = ("id", "problem", "answer")


def _sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _text_features(names: tuple[str, ...]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({n: tfds.features.Text() for n in names})


def _as_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _as_str(value.item())
    return str(value)


def decode_problem(example: Mapping[str, Any]) -> dict[str, str]:
    """A benchmark/RL example from a data source as a str record; empty optionals dropped."""
    rec = {k: _as_str(v) for k, v in example.items()}
    return {k: v for k, v in rec.items() if k in PROBLEM_FIELDS or v}


def decode_conversation(example: Mapping[str, Any]) -> dict[str, Any]:
    """An SFT example from a data source as `{"id", "messages": [{"role", "content"}]}`."""
    msgs = example["messages"]
    return {
        "id": _as_str(example["id"]),
        "messages": [
            {"role": _as_str(r), "content": _as_str(c)}
            for r, c in zip(msgs["role"], msgs["content"], strict=True)
        ],
    }


class _ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Defaults the file format to array_record (random access, no TensorFlow needed)."""

    VERSION = VERSION
    # tfds 4.9.10 computes `code_path` through `importlib_resources`, which it only declares
    # for Python < 3.9, so the lookup fails on 3.11 for builders inside a package. Every
    # builder lives in this file, so the path is known.
    code_path = epath.Path(__file__)

    def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None,
                 **kwargs: Any) -> None:
        super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)


class SftrlBenchmarks(_ArrayRecordBuilder):
    """The packaged evaluation benchmarks, one config each (read via `load_benchmark`)."""

    BUILDER_CONFIGS = [  # noqa: RUF012  (tfds reads this class attribute as a list)
        tfds.core.BuilderConfig(name=name, description=f"{name} ({BENCHMARKS[name].license})")
        for name in EVAL_BENCHMARKS
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Packaged math evaluation benchmark (sftrl/data/benchmark_files).",
            features=_text_features(PROBLEM_FIELDS + OPTIONAL_FIELDS),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager  # packaged data: nothing to download
        name = self.builder_config.name
        records = load_benchmark(name)  # verifies sha256 and count
        self.info.metadata.update(
            benchmark=name, records=len(records), license=BENCHMARKS[name].license,
            sha256=_sha256(benchmark_path(name)),
        )
        return {"test": self._generate_examples(records)}

    def _generate_examples(self, records: list[dict[str, str]]) -> Iterator[tuple[str, dict]]:
        for rec in records:
            yield rec["id"], {f: rec.get(f, "") for f in PROBLEM_FIELDS + OPTIONAL_FIELDS}


@dataclasses.dataclass(eq=False)
class SftConfig(tfds.core.BuilderConfig):
    """Local SFT files (JSONL or Parquet, chat or problem/solution form) and the split."""

    files: tuple[str, ...] = ()
    heldout_fraction: float = 0.05
    fields: str = ""  # `data.fields`: the files' field names (sftrl.data.builders.fields)


class SftrlSft(_ArrayRecordBuilder):
    """SFT conversations with a held-out split by sha256 of the normalized problem text."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="SFT conversations from local files (sftrl.data.builders.sft).",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "messages": tfds.features.Sequence(
                    {"role": tfds.features.Text(), "content": tfds.features.Text()}
                ),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager
        config = self.builder_config
        if not isinstance(config, SftConfig) or not config.files:
            raise ValueError("sftrl_sft needs config=SftConfig(name=..., files=(...))")
        splits, stats = read_sft_files(config.files, heldout_fraction=config.heldout_fraction,
                                       fields=config.fields)
        self.info.metadata.update(
            **stats.as_dict(), heldout_fraction=config.heldout_fraction,
            files={str(p): _sha256(p) for p in config.files},
        )
        # tfds cannot write an empty split. At fraction 0 or 1 one split is empty by request
        # and is left out; otherwise an empty split means too little data, which is an error.
        empty = [s for s in (TRAIN, HELDOUT) if not splits[s]]
        if empty and config.heldout_fraction not in (0, 1):
            raise DataFormatError(
                ", ".join(map(str, config.files)),
                f"split(s) {empty} would be empty ({stats}); use more data or another "
                "heldout_fraction",
            )
        return {s: self._generate_examples(splits[s]) for s in (TRAIN, HELDOUT) if splits[s]}

    def _generate_examples(self, records: list[dict[str, Any]]) -> Iterator[tuple[str, dict]]:
        for rec in records:
            yield rec["id"], {
                "id": rec["id"],
                "messages": {
                    "role": [m["role"] for m in rec["messages"]],
                    "content": [m["content"] for m in rec["messages"]],
                },
            }


@dataclasses.dataclass(eq=False)
class RlConfig(tfds.core.BuilderConfig):
    """RL prompt files (JSONL or Parquet); no files means the packaged set named `name`."""

    files: tuple[str, ...] = ()


class SftrlRlPrompts(_ArrayRecordBuilder):
    """RL prompt sets: problem + gold answer."""

    BUILDER_CONFIGS = [  # noqa: RUF012  (tfds reads this class attribute as a list)
        RlConfig(name="math_train", description="MATH train+test minus MATH-500 (PRM800K 12k)")
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="RL prompts with gold answers (sftrl.data.builders.problems).",
            features=_text_features(PROBLEM_FIELDS),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager
        config = self.builder_config
        if not isinstance(config, RlConfig):
            raise ValueError("sftrl_rl_prompts needs config=RlConfig(name=..., files=(...))")
        if config.files:
            records, sources = self._read_files(config.files)
        else:
            records = [{f: r[f] for f in PROBLEM_FIELDS} for r in load_benchmark(config.name)]
            sources = {str(benchmark_path(config.name)): _sha256(benchmark_path(config.name))}
        self.info.metadata.update(records=len(records), files=sources)
        return {TRAIN: self._generate_examples(records)}

    @staticmethod
    def _read_files(files: tuple[str, ...]) -> tuple[list[dict[str, str]], dict[str, str]]:
        records: list[dict[str, str]] = []
        owner: dict[str, str] = {}
        for path in files:
            for rec in read_rl_file(path):
                if rec["id"] in owner:
                    raise DataFormatError(
                        str(path), f"duplicate id {rec['id']!r} (also in {owner[rec['id']]})",
                        "id",
                    )
                owner[rec["id"]] = str(path)
                records.append(rec)
        return records, {str(p): _sha256(p) for p in files}

    def _generate_examples(self, records: list[dict[str, str]]) -> Iterator[tuple[str, dict]]:
        for rec in records:
            yield rec["id"], rec
