"""sftrl.rank: checkpoints of known quality ranked in order, kill-and-rerun gives the same file,
the held-out loss equals transformers' own, every bad input is one line and exit 2, and the
paired-bootstrap 'beyond noise' logic on numbers with a known answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from sftrl import config_lib
from sftrl.data import synthetic
from sftrl.models.checkpoint import export_hf
from sftrl.models.transformer import build_model
from sftrl.rank import SamplingSpec, Settings, rank, stats
from sftrl.rank.__main__ import main
from sftrl.rank.inputs import resolve_checkpoint
from sftrl.rank.score import load_model
from sftrl.sharding import TRAIN_RULES, Layout, make_mesh

OVERRIDES = [
    "model.hidden_size=64", "model.num_layers=2", "model.intermediate_size=128",
    "model.head_dim=16", "data.max_length=128", "data.max_heldout_examples=16",
    "data.synthetic.style='answer_only'", "data.synthetic.size=1200", "sft.batch_size=8",
    "sft.num_steps=200", "sft.save_every=40", "sft.eval_every=200", "sft.log_every=100",
    "sft.warmup_steps=10", "sft.lr=3e-3", "sft.heldout_batch_size=16",
    "checkpoint.async_save=False", "checkpoint.max_to_keep=10", "sft.tensorboard=False",
]
SETTINGS = Settings(SamplingSpec(num_samples=8, max_new_tokens=16, temperature=1.0,
                                 prompts_per_wave=12),
                    max_length=128, heldout_batch_size=16, num_bootstrap=200,
                    prompt_template="plain", dtype="float32")


def _tiny_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "tiny", Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_lib.apply_overrides(module.get_config(), OVERRIDES)
    config_lib.validate(config)
    return config


def _layout() -> Layout:
    return Layout(make_mesh(data=1, fsdp=-1, tensor=1), TRAIN_RULES)


def _with_tokenizer(folder: Path) -> Path:
    for file in synthetic.tokenizer_dir().iterdir():
        shutil.copy(file, folder / file.name)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The held-out file (chat and problem/solution records), a benchmark of easy embedded-task
    problems, and the untrained model as a Hugging Face folder."""
    root = tmp_path_factory.mktemp("rank_inputs")
    task = synthetic.TaskConfig()
    variant = synthetic.SFTVariant(style="answer_only", phrasing="diverse", size=1200)
    _, heldout = synthetic.sft_records(variant, task)
    lines = []
    for i, record in enumerate(heldout[:12]):
        if i % 2:
            lines.append({"id": record["id"], "problem": record["messages"][0]["content"],
                          "solution": record["messages"][1]["content"]})
        else:
            lines.append({"id": record["id"], "messages": record["messages"]})
    (root / "heldout.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    easy = [r for r in synthetic.rl_records(task) if r["steps"] == 1][:12]
    (root / "easy.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "problem": r["problem"], "answer": r["answer"]}) + "\n"
        for r in easy))
    config = _tiny_config()
    model = build_model(config_lib.model_config(config), _layout(), seed=config.seed,
                        dtype=jnp.float32)
    base = _with_tokenizer(export_hf(model, None, root / "base"))
    return {"root": root, "heldout": root / "heldout.jsonl", "bench": root / "easy.jsonl",
            "base": base}


@pytest.fixture(scope="module")
def ranked(files, tmp_path_factory) -> dict:
    """0, 40 and 200 SFT steps: the untrained HF folder, a run directory at step 40 and the
    final step exported to a HF folder; ranked once."""
    from sftrl.stages import sft

    root = tmp_path_factory.mktemp("rank_run")
    config = _tiny_config()
    run_dir = root / "run"
    sft.run(config, run_dir, _layout())
    (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
    final = resolve_checkpoint(str(run_dir))
    model = load_model(final, _layout(), "float32", "auto")
    trained = _with_tokenizer(export_hf(model, None, root / "trained"))
    checkpoints = [str(files["base"]), f"{run_dir}@40", str(trained)]
    workdir = root / "rank"
    result = rank(checkpoints, heldout=str(files["heldout"]), benchmarks=[str(files["bench"])],
                  workdir=workdir, settings=SETTINGS, layout=_layout())
    return {"result": result, "workdir": workdir, "checkpoints": checkpoints, "trained": trained}


def test_ranks_by_known_quality_and_resumes(ranked, files):
    result, workdir = ranked["result"], ranked["workdir"]
    (group,) = result["groups"]
    order = [r["checkpoint"] for r in result["groups"][group]["ranking"]]
    assert order == ["trained", "run@40", "base"]
    losses = [result["checkpoints"][n]["heldout"]["loss"] for n in order]
    assert losses[0] < losses[1] < losses[2]
    tokens = {n: c["heldout"]["num_tokens"] for n, c in result["checkpoints"].items()}
    assert len(set(tokens.values())) == 1 and tokens["base"] > 0  # one tokenizer: same count
    assert (workdir / "rank.md").read_text().count("Recommendation: trained") == 1
    assert (workdir / "rank.png").stat().st_size > 0
    before = (workdir / "rank.json").read_bytes()
    # A kill mid-way through the last checkpoint: no result file, half of its samples stored.
    (workdir / "results" / "trained.json").unlink()
    samples = workdir / "samples" / "trained" / "easy.jsonl"
    rows = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(rows[: len(rows) // 2]) + rows[len(rows) // 2][:20])
    rank(ranked["checkpoints"], heldout=str(files["heldout"]),
         benchmarks=[str(files["bench"])], workdir=workdir, settings=SETTINGS, layout=_layout())
    assert (workdir / "rank.json").read_bytes() == before


def test_heldout_loss_matches_transformers(ranked, files):
    import torch
    import transformers

    from sftrl.data.tokenizer import load_tokenizer
    from sftrl.rank.inputs import read_heldout

    model = transformers.AutoModelForCausalLM.from_pretrained(
        ranked["trained"], dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = load_tokenizer(ranked["trained"])
    sums, counts = [], []
    for record in read_heldout(str(files["heldout"])):
        ids, mask = tokenizer.encode_chat(record["messages"])
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(ids[None], dtype=torch.long)).logits[0]
        logp = torch.log_softmax(logits.double(), dim=-1).numpy()
        # token t is predicted from position t - 1; the mask selects response tokens
        nll = -logp[np.arange(len(ids) - 1), ids[1:]]
        keep = mask[1:].astype(bool)
        sums.append(float(nll[keep].sum()))
        counts.append(int(keep.sum()))
    ours = json.loads((ranked["workdir"] / "results" / "trained.json").read_text())["heldout"]
    assert ours["token_counts"] == counts
    np.testing.assert_allclose(ours["nll_sums"], sums, rtol=1e-4)
    loss = ranked["result"]["checkpoints"]["trained"]["heldout"]["loss"]
    np.testing.assert_allclose(loss, sum(sums) / sum(counts), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line on stderr, exit status 2, before any model is loaded.


def _args(files, workdir: Path, **changes: str) -> list[str]:
    args = {"checkpoints": str(files["base"]), "heldout": str(files["heldout"]),
            "benchmarks": str(files["bench"]), "workdir": str(workdir), "num_samples": "2"}
    args.update(changes)
    return [f"--{k}={v}" for k, v in args.items()]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("sftrl: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def test_bad_inputs(files, tmp_path, capsys):
    work = tmp_path / "w"
    missing = tmp_path / "nope"
    assert str(missing) in _error(capsys, _args(files, work, checkpoints=str(missing)))

    not_model = tmp_path / "not_model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hi")
    line = _error(capsys, _args(files, work, checkpoints=str(not_model)))
    assert str(not_model) in line and "not a model" in line

    no_template = tmp_path / "no_template"
    shutil.copytree(files["base"], no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    line = _error(capsys, _args(files, work, checkpoints=str(no_template)))
    assert str(no_template) in line and "chat template" in line

    bad_heldout = tmp_path / "bad.jsonl"
    bad_heldout.write_text(files["heldout"].read_text().splitlines()[0] + "\n{not json\n")
    line = _error(capsys, _args(files, work, heldout=str(bad_heldout)))
    assert f"{bad_heldout}:2" in line

    line = _error(capsys, _args(files, work, benchmarks="no_such_benchmark"))
    assert "no_such_benchmark" in line

    other_vocab = tmp_path / "other_vocab"
    shutil.copytree(files["base"], other_vocab)
    tok = json.loads((other_vocab / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = "a", "b"  # swap two ids: same size, different vocabulary
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other_vocab / "tokenizer.json").write_text(json.dumps(tok))
    line = _error(capsys, _args(files, work,
                                checkpoints=f"{files['base']},{other_vocab}"))
    assert "different vocabularies" in line and str(other_vocab) in line
    assert not work.exists() or not any((work / "results").glob("*"))


# ---------------------------------------------------------------------------------------------
# The bootstrap on numbers with a known answer.


def test_beyond_noise_on_known_numbers():
    rng = np.random.default_rng(0)
    b = 400
    base = rng.normal(0.0, 0.1, size=b + 1)
    score = np.stack([base + 1.0, base + rng.normal(0, 0.1, b + 1),
                      base + rng.normal(0, 0.1, b + 1)])
    order, pairs = stats.order_and_pairs(["a", "b", "c"], score)
    assert order[0] == 0
    assert pairs[0]["better"] == "a" and pairs[0]["beyond_noise"] and pairs[0]["share"] == 1.0
    assert not pairs[1]["beyond_noise"] and 0.2 < pairs[1]["share"] < 0.8
    share = stats.best_share(score)
    assert share[0] == 1.0 and share.sum() == pytest.approx(1.0)


def test_paired_resampling_orders_a_uniform_improvement():
    """Example difficulty varies ten times more than the gap between the checkpoints, but the
    better one is better on every example: paired replicates order it every time."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(5, 50, size=60)
    per_token = rng.uniform(0.5, 3.0, size=60)
    worse = stats.HeldoutCounts(per_token * tokens, tokens)
    better = stats.HeldoutCounts((per_token - 0.05) * tokens, tokens)
    bench = {"b": stats.BenchmarkCounts(np.full(30, 8), rng.integers(0, 9, size=30))}
    reps = stats.draw(60, {"b": 30}, 300, seed=0)
    loss_better = stats.proxy_replicates(better, bench, 8, reps)["loss"]
    loss_worse = stats.proxy_replicates(worse, bench, 8, reps)["loss"]
    assert stats.win_share(-loss_better[1:], -loss_worse[1:]) == 1.0
    spread = stats.interval(loss_worse[1:])
    assert spread[1] - spread[0] > 0.05  # unpaired intervals would overlap: a 'tie'
    assert loss_worse[0] == pytest.approx(stats.heldout_loss(worse))


def test_rl_results_give_calibrated_predictions():
    from sftrl.rank.core import _predict

    loss = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    per_ck = {n: {"heldout": {"loss": v}, "pass@1": 0.1, "pass@k_max": 1.0 - v}
              for n, v in loss.items()}
    labeled = {"a": 0.10, "b": 0.20, "c": 0.31, "d": 0.39}
    pred = _predict("g", list(loss), per_ck, labeled, 8, Settings(num_bootstrap=50))
    (only,) = pred["candidates"]
    assert only["checkpoint"] == "e" and only["lower"] < only["predicted"] < only["upper"]
    assert only["predicted"] == pytest.approx(0.5, abs=0.05)
