"""Benchmark runner: the sample store's repair rules, resume == uninterrupted, predict's schema,
and the evaluator interface. A tiny random model, a stand-in tokenizer and verifier."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from sftrl import sharding
from sftrl.eval import benchmarks as bench
from sftrl.eval import evaluators, predict
from sftrl.eval.record import EvalRecordError
from sftrl.eval.sample_store import SampleStore, SampleStoreError
from sftrl.models.model_config import ModelConfig
from sftrl.models.transformer import build_model

VOCAB = 61
STOP, PAD = 2, 0
SPEC = bench.SamplingSpec(num_samples=6, max_new_tokens=5, temperature=1.0, seed=3,
                          prompts_per_wave=2)


@pytest.fixture(scope="module")
def model():
    config = ModelConfig("qwen3", VOCAB, 32, 2, 8, 2, 8, 48, qk_norm=True, tie_embeddings=True)
    return build_model(config, sharding.single_device_layout(), seed=1)


class CharTokenizer:
    """Stand-in: token 10+d is the digit d, 20+i a letter; every prompt has the same length so
    the test compiles one prefill shape."""

    stop_ids = (STOP,)
    pad_id = PAD

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode_prompt(self, problem: str) -> list[int]:
        self.encoded.append(problem)
        ids = [1] + [10 + int(ch) if ch.isdigit() else 20 + ord(ch) % 26 for ch in problem]
        return (ids + [3] * 8)[:8]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        out = []
        for t in ids:
            if 10 <= t < 20:
                out.append(str(t - 10))
            elif t >= 20:
                out.append(chr(ord("a") + (t - 20) % 26))
            elif not skip_special_tokens:
                out.append(f"<{t}>")
        return "".join(out)


class ContainsVerifier:
    """Stand-in verifier: a response is right if it contains the gold string."""

    def __init__(self) -> None:
        self.calls = 0

    def verify_batch(self, pairs, *, config=None, progress=False):
        self.calls += 1
        return [gold in response for response, gold in pairs]


RECORDS = [{"id": f"q{i}", "problem": f"{i}+{i}", "answer": str(i % 4)} for i in range(5)]


def _run(model, path: Path, **kwargs):
    return bench.evaluate_benchmark(
        model, CharTokenizer(), RECORDS, name="toy", store_path=path, spec=SPEC,
        verifier=ContainsVerifier(), progress=False, **kwargs)


def _without_timing(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "timing"}


class Killed(Exception):
    pass


def _kill_after(count: int):
    done = []

    def hook(row):
        done.append(row["id"])
        if len(done) == count:
            raise Killed

    return hook


# --- the store ----------------------------------------------------------------------------------


def _row(i: int, n: int = 2) -> dict:
    return {"id": f"r{i}", "problem": "p", "answer": "1", "responses": ["1"] * n,
            "num_tokens": [1] * n, "finished": [True] * n, "correct": [True] * n,
            "extracted": ["1"] * n, "entropy": [0.5] * n}


def test_store_truncates_a_partial_last_line_once(tmp_path):
    path = tmp_path / "s.jsonl"
    with SampleStore(path) as store:
        for i in range(3):
            store.append(_row(i))
    data = path.read_bytes()
    cut = data[: len(data) - 20]  # killed mid-write of the third line
    path.write_bytes(cut)
    with SampleStore(path) as store:
        assert store.done_ids() == {"r0", "r1"}
        store.append(_row(2))
    assert path.read_bytes() == data  # repaired, then the row is written once, not twice
    with SampleStore(path) as store:
        assert [r["id"] for r in store.rows()] == ["r0", "r1", "r2"]


def test_store_rejects_a_corrupt_middle_line_and_duplicates(tmp_path):
    path = tmp_path / "s.jsonl"
    lines = [json.dumps(_row(i)) for i in range(3)]
    path.write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:2: not valid JSON"):
        SampleStore(path)
    path.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:3: field 'id'.*repeats line 1"):
        SampleStore(path)
    bad = _row(5)
    bad["correct"] = [True]
    path.write_text(json.dumps(bad) + "\n" + lines[0] + "\n")
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:1: field 'correct' has 1 entries"):
        SampleStore(path)
    path.write_text(lines[0] + "\n")
    with SampleStore(path) as store, pytest.raises(SampleStoreError, match="already stored"):
        store.append(_row(0))


# --- the runner ---------------------------------------------------------------------------------


def test_resume_after_a_kill_gives_the_uninterrupted_files(model, tmp_path):
    whole = _run(model, tmp_path / "a" / "toy.jsonl")
    killed = tmp_path / "b" / "toy.jsonl"
    with pytest.raises(Killed):  # dies mid-wave: after the first prompt of the second wave
        _run(model, killed, on_prompt_done=_kill_after(3))
    assert len(killed.read_text().splitlines()) == 3
    with killed.open("ab") as handle:  # and mid-write of the fourth line
        handle.write(b'{"id": "q3", "problem": "3+')
    tokenizer = CharTokenizer()
    resumed = bench.evaluate_benchmark(
        model, tokenizer, RECORDS, name="toy", store_path=killed, spec=SPEC,
        verifier=ContainsVerifier(), progress=False)
    assert tokenizer.encoded == ["3+3", "4+4"]  # finished prompts were not regenerated
    assert killed.read_bytes() == (tmp_path / "a" / "toy.jsonl").read_bytes()
    assert _without_timing(resumed) == _without_timing(whole)

    again = ContainsVerifier()
    bench.evaluate_benchmark(model, CharTokenizer(), RECORDS, name="toy", store_path=killed,
                             spec=SPEC, verifier=again, progress=False)
    assert again.calls == 0  # all done: nothing sampled or verified


class KilledVerifier(ContainsVerifier):
    """Dies on its `at`-th call: a kill while a wave is being scored, before it is stored."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def verify_batch(self, pairs, *, config=None, progress=False):
        if self.calls + 1 == self.at:
            raise Killed
        return super().verify_batch(pairs, config=config, progress=progress)


def test_on_an_object_store_a_killed_run_resumes_to_the_local_file(model, tmp_path):
    """No append there: one part file per wave, the one samples file at the end (the bytes a
    local run writes), and a kill loses only the wave being sampled."""
    from tests import fake_gcs

    whole = _run(model, tmp_path / "local" / "toy.jsonl")
    uri = "gs://b/samples/ck/toy.jsonl"
    with fake_gcs.installed(tmp_path / "gcs") as gcs:
        with pytest.raises(Killed):  # during the second wave (of 2, 2, 1 prompts)
            bench.evaluate_benchmark(model, CharTokenizer(), RECORDS, name="toy", store_path=uri,
                                     spec=SPEC, verifier=KilledVerifier(2), progress=False)
        assert gcs.writes == ["gs://b/samples/ck/toy.spec.json",
                              "gs://b/samples/ck/toy.parts/000001.jsonl"]
        tokenizer = CharTokenizer()
        resumed = bench.evaluate_benchmark(model, tokenizer, RECORDS, name="toy",
                                           store_path=uri, spec=SPEC,
                                           verifier=ContainsVerifier(), progress=False)
        assert tokenizer.encoded == ["2+2", "3+3", "4+4"]  # the first wave was not redone
        assert gcs.writes[2:] == ["gs://b/samples/ck/toy.parts/000002.jsonl",
                                  "gs://b/samples/ck/toy.parts/000003.jsonl", uri]
    bucket = tmp_path / "gcs" / "b" / "samples" / "ck"
    assert (bucket / "toy.jsonl").read_bytes() == (tmp_path / "local" / "toy.jsonl").read_bytes()
    assert not (bucket / "toy.parts").exists()
    assert _without_timing(resumed) == _without_timing(whole)


def test_a_process_other_than_0_writes_no_eval_file(model, tmp_path, monkeypatch):
    """Multi-host: every process samples and scores, process 0 alone writes (files once)."""
    from tests import fake_gcs

    meta = {"group": "tiny", "dataset": "toy", "stage": "sft"}
    kwargs = dict(ckpt_name="sft-a", spec=SPEC, progress=False, meta=meta)
    with fake_gcs.installed(tmp_path / "gcs") as gcs:
        first = bench.evaluate_checkpoint(model, CharTokenizer(), {"toy": RECORDS[:3]},
                                          workdir="gs://b/run", verifier=ContainsVerifier(),
                                          **kwargs)
        written = list(gcs.writes)
        assert written == ["gs://b/run/samples/sft-a/toy.spec.json",
                           "gs://b/run/samples/sft-a/toy.parts/000001.jsonl",
                           "gs://b/run/samples/sft-a/toy.parts/000002.jsonl",
                           "gs://b/run/samples/sft-a/toy.jsonl", "gs://b/run/eval/sft-a.json"]
        monkeypatch.setattr(bench.jax, "process_index", lambda: 1)
        other = bench.evaluate_checkpoint(model, CharTokenizer(), {"toy": RECORDS},
                                          workdir="gs://b/run2", verifier=ContainsVerifier(),
                                          **kwargs)
        assert gcs.writes == written  # nothing more
    assert other["benchmarks"]["toy"]["num_prompts"] == 5
    assert first["benchmarks"]["toy"]["num_prompts"] == 3


def test_progress_is_logged_as_prompts_are_stored(model, tmp_path, caplog):
    """A launcher's log shows a long evaluation advancing (tqdm is silent off a terminal)."""
    path = tmp_path / "toy.jsonl"
    with pytest.raises(Killed):
        _run(model, path, on_prompt_done=_kill_after(2))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=bench.log.name):
        _run(model, path)
    stored = [m for m in caplog.messages if "prompts stored" in m]
    assert "resuming, 2 of 5 prompts already stored" in caplog.text
    assert [m.split(": ")[1].split(" (")[0] for m in stored] == [
        f"{i} of 5 prompts stored" for i in (3, 4, 5)]


def test_scores_follow_the_stored_rows(model, tmp_path):
    result = _run(model, tmp_path / "toy.jsonl")
    with SampleStore(tmp_path / "toy.jsonl") as store:
        rows = store.rows()
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    c = np.array([sum(r["correct"]) for r in rows])
    assert result["n"] == 6 and result["num_prompts"] == 5
    assert set(result["pass@k"]) == {"1", "2", "4", "6"}
    assert result["pass@1"] == pytest.approx(np.mean(c / 6))
    assert result["pass@k"]["6"] == pytest.approx(np.mean(c > 0))
    assert result["learnable_fraction"] == pytest.approx(np.mean((c > 0) & (c < 6)))
    for r in rows:  # responses are what the sampler drew, verdicts the verifier's
        assert all(len(text) <= t for text, t in zip(r["responses"], r["num_tokens"],
                                                       strict=True))
        assert r["correct"] == [r["answer"] in text for text in r["responses"]]
        assert all(e > 0 for e in r["entropy"])  # -log q of sampled tokens at temperature 1
    tokens = np.concatenate([r["num_tokens"] for r in rows])
    assert result["mean_response_tokens"] == pytest.approx(tokens.mean())
    finished = np.concatenate([r["finished"] for r in rows])
    assert result["truncation_rate"] == pytest.approx(1 - finished.mean())
    assert np.all(tokens[~finished] == SPEC.max_new_tokens)
    for k, (lo, hi) in result["pass@k_ci"].items():
        assert lo <= result["pass@k"][k] + 1e-12 and result["pass@k"][k] <= hi + 1e-12
    assert set(result["timing"]) == {"generation_s", "verification_s", "bookkeeping_s"}
    assert 0 < result["mean_token_entropy"] < np.log(VOCAB) * 2


def test_resume_with_another_spec_or_records_is_an_error(model, tmp_path):
    path = tmp_path / "toy.jsonl"
    with pytest.raises(Killed):
        _run(model, path, on_prompt_done=_kill_after(1))
    other = bench.SamplingSpec(**{**SPEC.__dict__, "seed": 4})
    with pytest.raises(bench.BenchmarkError, match=r"toy\.spec\.json: field\(s\) \['seed'\]"):
        bench.evaluate_benchmark(model, CharTokenizer(), RECORDS, name="toy", store_path=path,
                                 spec=other, verifier=ContainsVerifier(), progress=False)
    with pytest.raises(bench.BenchmarkError, match=r"stored ids \['q0'\] are not records"):
        bench.evaluate_benchmark(model, CharTokenizer(), RECORDS[1:], name="toy",
                                 store_path=path, spec=SPEC, verifier=ContainsVerifier(),
                                 progress=False)
    changed = [{**RECORDS[0], "answer": "9"}, *RECORDS[1:]]
    with pytest.raises(bench.BenchmarkError, match=r"toy\.jsonl:1: field 'answer' of 'q0'"):
        bench.evaluate_benchmark(model, CharTokenizer(), changed, name="toy", store_path=path,
                                 spec=SPEC, verifier=ContainsVerifier(), progress=False)
    with pytest.raises(bench.BenchmarkError, match=r"record 1: field 'answer'"):
        bench.check_records([RECORDS[0], {"id": "x", "problem": "p"}], "toy")
    with pytest.raises(bench.BenchmarkError, match=r"record 1: field 'id': 'q0' repeats"):
        bench.check_records([RECORDS[0], RECORDS[0]], "toy")


def test_checkpoint_eval_json_loads_in_the_predictor(model, tmp_path):
    record = bench.evaluate_checkpoint(
        model, CharTokenizer(), {"toy": RECORDS, "toy2": RECORDS[:2]}, workdir=tmp_path,
        ckpt_name="sft-a", spec=SPEC, verifier=ContainsVerifier(), progress=False,
        meta={"group": "tiny", "dataset": "toy", "stage": "sft"},
        heldout_metrics={"heldout/loss": 1.5, "heldout/per_example_loss": 1.6})
    path = tmp_path / "eval" / "sft-a.json"
    assert json.loads(path.read_text()) == record
    assert (tmp_path / "samples" / "sft-a" / "toy2.jsonl").exists()
    [candidate] = predict.load_eval_dir(tmp_path / "eval")
    assert candidate.checkpoint == "sft-a" and candidate.group == "tiny"
    assert candidate.proxies["generalization_loss"] == 1.5
    mean_p1 = (record["benchmarks"]["toy"]["pass@1"] + record["benchmarks"]["toy2"]["pass@1"]) / 2
    assert candidate.proxies["pass@1"] == pytest.approx(mean_p1)
    assert record["mean_over_benchmarks"]["pass@1"] == pytest.approx(mean_p1)
    assert set(candidate.proxies) >= {"pass@2", "pass@4", "pass@6"}
    # only the schema's numbers are proxies: nothing nested leaks in
    assert not any(k.startswith(("timing", "maj", "n", "sampling")) for k in candidate.proxies)
    with pytest.raises(EvalRecordError, match="field 'sft_checkpoint' is required"):
        bench.evaluate_checkpoint(model, CharTokenizer(), {"toy": RECORDS}, workdir=tmp_path,
                                  ckpt_name="rl-a", spec=SPEC, verifier=ContainsVerifier(),
                                  meta={"group": "tiny", "dataset": "toy", "stage": "rl"})


# --- evaluators ---------------------------------------------------------------------------------


class _State:
    def __init__(self, params):
        self.params = params


def test_evaluators_use_the_state_params(model):
    spec = bench.SamplingSpec(num_samples=4, max_new_tokens=4, seed=0, prompts_per_wave=3)
    passk = evaluators.PassAtKEvaluator(model, CharTokenizer(), {"toy": RECORDS[:3]}, spec=spec,
                                        verifier=ContainsVerifier())

    class Fixed:
        def run(self, state):
            return {"x": 2, "y": np.float32(0.5)}

    evals = {"passk": passk, "const": Fixed()}
    before = evaluators.run_evaluators(evals, _State(model.params))
    assert before["const/x"] == 2.0 and before["const/y"] == 0.5
    assert {"passk/toy/pass@1", "passk/toy/pass@4", "passk/mean/pass@1"} <= set(before)
    assert before == evaluators.run_evaluators(evals, model.params)  # a bare params tree too
    # Other params give other samples; the model object is restored afterwards.
    import jax

    original = model.params
    scaled = jax.tree.map(lambda x: x * 3.0, original)
    sampled = {}
    for label, params in (("orig", original), ("scaled", scaled)):
        with evaluators.bound_params(model, params):
            rows = list(bench.sample_rows(model, CharTokenizer(), RECORDS[:3], name="toy",
                                          spec=spec, format_prompt=lambda r: r["problem"],
                                          verifier=ContainsVerifier()))
        sampled[label] = [r["responses"] for r in rows]
    assert model.params is original
    assert sampled["orig"] != sampled["scaled"]

    with pytest.raises(evaluators.EvaluatorError, match=r"evals\['bad'\]: metric 'm'"):
        evaluators.run_evaluators({"bad": type("B", (), {"run": lambda s, x: {"m": "no"}})()},
                                  model.params)
    with pytest.raises(evaluators.EvaluatorError, match="has no run"):
        evaluators.run_evaluators({"none": object()}, model.params)


def test_heldout_loss_evaluator_wraps_heldout(model):
    from sftrl.eval.heldout import HeldoutEvaluator

    tokens = np.random.default_rng(0).integers(1, VOCAB, (2, 6)).astype(np.int32)
    mask = np.ones_like(tokens)
    mask[:, :2] = 0
    heldout = HeldoutEvaluator(model, lambda: [{"tokens": tokens, "loss_mask": mask}])
    metrics = evaluators.run_evaluators(
        {"heldout": evaluators.HeldoutLossEvaluator(heldout)}, _State(model.params))
    assert metrics["heldout/loss"] == pytest.approx(heldout.evaluate(model.params).loss)
    assert metrics["heldout/num_tokens"] == 8.0  # 4 scored positions per row


# --- benchmarks/eval.py -------------------------------------------------------------------------


def test_eval_benchmark_script_reads_tasks_and_tables_the_split(tmp_path):
    from scripts import load_benchmark

    script = load_benchmark("eval")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps(RECORDS[0]) + "\n\n" + json.dumps(RECORDS[1]) + "\n")
    records, source = script.load_tasks(tasks, 2)
    assert [r["id"] for r in records] == ["q0", "q1"] and source == str(tasks)
    with pytest.raises(script.InputError, match=r"asks for 3"):
        script.load_tasks(tasks, 3)
    tasks.write_text(json.dumps(RECORDS[0]) + '\n{"id": "x", "problem": "p"}\n')
    with pytest.raises(script.InputError, match=r"tasks\.jsonl:2: missing field 'answer'"):
        script.load_tasks(tasks, 1)
    with pytest.raises(script.InputError, match="tokenizer"):
        script.load_tokenizer(tmp_path / "nowhere")
    row = {"num_samples": 256, "prompts": 8, "max_new_tokens": 64, "generation_s": 9.0,
           "verification_s": 0.5, "bookkeeping_s": 0.25, "total_s": 10.0}
    text = script.table(row)
    assert "| bookkeeping | 0.250 | 2.5% |" in text and "| unaccounted | 0.250 | 2.5% |" in text


def test_read_rows_reads_without_repairing_and_names_bad_lines(tmp_path):
    from sftrl.eval.sample_store import read_rows

    path = tmp_path / "s.jsonl"
    lines = [json.dumps(_row(i)) for i in range(3)]
    path.write_text("\n".join(lines) + "\n")
    assert [r["id"] for r in read_rows(path)] == ["r0", "r1", "r2"]
    torn = "\n".join(lines)[:-20]  # what a kill mid-write leaves: the store would repair it
    path.write_text(torn)
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:3: not valid JSON"):
        read_rows(path)
    assert path.read_text() == torn  # a reader never writes
    path.write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n")
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:3: field 'id'.*repeats line 1"):
        read_rows(path)
    path.write_text(json.dumps({**_row(0), "correct": [True]}) + "\n")
    with pytest.raises(SampleStoreError, match=r"s\.jsonl:1: field 'correct' has 1 entries"):
        read_rows(path)
