"""sftrl.eval.record: the eval record's one writer and one reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftrl import errors
from sftrl.eval import record
from sftrl.eval.record import EvalRecordError


def _bench(p1: float, curve: dict[str, float]) -> dict:
    return {"n": 4, "num_prompts": 3, "pass@1": p1, "pass@k": curve,
            "pass@k_ci": {k: [v - 0.1, v + 0.1] for k, v in curve.items()},
            "maj@k": {"4": 0.5}, "mean_token_entropy": None, "timing": {"generation_s": 1.0}}


def _data(**changes) -> dict:
    data = {"checkpoint": "run-sft", "group": "tiny", "dataset": "toy", "stage": "sft",
            "generalization_loss": 1.5,
            "benchmarks": {"b": _bench(0.25, {"1": 0.2, "2": 0.4, "4": 0.6}),
                           "a": _bench(0.5, {"1": 0.5, "2": 0.75})},
            "metrics": {"heldout/loss": 1.5, "own_heldout/loss": 1.75},
            "mean_over_benchmarks": {"pass@1": 0.375}, "sampling": {"seed": 0},
            "entropy": 0.25}
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_write_then_read_gives_the_same_record_and_json(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "run-sft.json"
    original = record.parse(_data(), "in memory")
    record.write(path, original)
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text) == _data()
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    again = record.read(path)
    assert again == original and again.source == str(path)
    assert again.benchmarks["a"].fields == _data()["benchmarks"]["a"]
    rl = _data(checkpoint="run-rl", stage="rl", sft_checkpoint="run-sft")
    record.write(tmp_path / "eval" / "run-rl.json", record.parse(rl, "in memory"))
    assert [r.checkpoint for r in record.read_dir(tmp_path / "eval")] == ["run-rl", "run-sft"]


def test_typed_fields_and_curves() -> None:
    rec = record.parse(_data(), "f.json")
    assert (rec.checkpoint, rec.group, rec.dataset, rec.stage) == ("run-sft", "tiny", "toy", "sft")
    assert rec.generalization_loss == 1.5 and rec.sft_checkpoint is None
    b = rec.benchmarks["b"]
    assert (b.n, b.num_prompts, b.pass_at_1) == (4, 3, 0.25)
    assert b.pass_at_k == {1: 0.2, 2: 0.4, 4: 0.6}
    assert b.curve == {1: 0.25, 2: 0.4, 4: 0.6}  # pass@1 from its own field
    # means over the benchmarks at the ks both report (hand-computed)
    assert rec.mean_curve() == pytest.approx({1: (0.25 + 0.5) / 2, 2: (0.4 + 0.75) / 2})
    assert rec.mean_curve(as_written=True) == pytest.approx({1: 0.35, 2: 0.575})
    assert rec.mean_curve(["b"]) == pytest.approx({1: 0.25, 2: 0.4, 4: 0.6})
    assert rec.numbers() == {"entropy": 0.25, "generalization_loss": 1.5,
                             "heldout/loss": 1.5, "own_heldout/loss": 1.75}


def _drop(key: str) -> dict:
    return {k: v for k, v in _data().items() if k != key}


def _bench_edit(**entry) -> dict:
    data = _data()
    data["benchmarks"]["b"] = {**data["benchmarks"]["b"], **entry}
    return data


@pytest.mark.parametrize("data, field", [
    ([1, 2], "expected a JSON object"),
    (_drop("checkpoint"), "field 'checkpoint'"),
    (_data(stage="pretrain"), "field 'stage'"),
    (_data(group=""), "field 'group'"),
    (_data(stage="rl"), "field 'sft_checkpoint' is required"),
    (_data(generalization_loss="low"), "field 'generalization_loss'"),
    (_data(metrics={"heldout/loss": "x"}), "field 'metrics.heldout/loss'"),
    (_data(entropy=float("inf")), "field 'entropy'"),
    (_data(benchmarks={}), "field 'benchmarks'"),
    (_data(benchmarks={"b": 0.3}), "benchmarks.b: expected an object"),
    (_bench_edit(**{"pass@k": {"one": 0.1}}), r"benchmarks.b: field 'pass@k' has key 'one'"),
    (_bench_edit(**{"pass@k": {"2": "high"}}), r"benchmarks.b: field 'pass@k[2]'"),
    (_bench_edit(**{"pass@1": True}), r"benchmarks.b: field 'pass@1'"),
    (_bench_edit(n=0), r"benchmarks.b: field 'n'"),
    (_bench_edit(num_prompts=2.5), r"benchmarks.b: field 'num_prompts'"),
])
def test_the_reader_names_the_file_and_field(tmp_path: Path, data, field) -> None:
    path = tmp_path / "ck.json"
    path.write_text(json.dumps(data))
    with pytest.raises(EvalRecordError) as caught:
        record.read(path)
    line = errors.one_line(caught.value)
    assert line.startswith(f"sftrl: error: {path}") and field in line and "\n" not in line
    assert errors.is_user_error(caught.value)


def test_unreadable_files_and_required_fields(tmp_path: Path) -> None:
    path = tmp_path / "ck.json"
    with pytest.raises(EvalRecordError, match=r"ck\.json: no such file"):
        record.read(path)
    path.write_text('{\n  "checkpoint": oops')
    with pytest.raises(EvalRecordError, match=r"ck\.json:2: not valid JSON"):
        record.read(path)
    path.write_text(json.dumps(_drop("generalization_loss")))
    record.read(path)  # optional unless asked for
    with pytest.raises(EvalRecordError, match=r"ck\.json: field 'generalization_loss' missing"):
        record.read(path, require=("generalization_loss",))
    data = _data()
    del data["benchmarks"]["a"]["num_prompts"], data["benchmarks"]["a"]["pass@1"]
    path.write_text(json.dumps(data))
    rec = record.read(path, require=("pass@1",))  # pass@k["1"] stands in for the field
    assert rec.benchmarks["a"].pass1 == 0.5
    with pytest.raises(EvalRecordError, match=r"benchmarks\.a: field 'num_prompts' missing"):
        rec.require("num_prompts")
    with pytest.raises(ValueError, match="unknown eval-record field"):
        rec.require("pass@2")


def test_read_dir_rejects_a_checkpoint_in_two_files(tmp_path: Path) -> None:
    for name in ("x", "y"):
        (tmp_path / f"{name}.json").write_text(json.dumps(_data()))
    with pytest.raises(EvalRecordError, match=r"y\.json: field 'checkpoint': 'run-sft' is also "
                                              r"the checkpoint of .*x\.json"):
        record.read_dir(tmp_path)


def test_the_writer_writes_nothing_a_reader_could_reject(tmp_path: Path) -> None:
    path = tmp_path / "ck.json"
    loose = record.parse(_drop("group"), "in memory")  # readable, but the writer promises more
    with pytest.raises(EvalRecordError, match=r"ck\.json: field 'group' missing"):
        record.write(path, loose)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_check_header() -> None:
    meta = {"group": "g", "dataset": "d", "stage": "rl", "sft_checkpoint": "s"}
    assert record.check_header(meta, "meta") == meta
    with pytest.raises(EvalRecordError, match=r"meta: unknown field\(s\) \['grup'\]"):
        record.check_header({**meta, "grup": "g"}, "meta")
    with pytest.raises(EvalRecordError, match="meta: field 'sft_checkpoint' is required"):
        record.check_header({"group": "g", "dataset": "d", "stage": "rl"}, "meta")
    with pytest.raises(EvalRecordError, match="meta: field 'dataset'"):
        record.check_header({"group": "g", "stage": "sft"}, "meta")
