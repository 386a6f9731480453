"""benchmarks/forward.py runs end to end (it is a script dir, not a package: loaded by path).

Proves the script works and writes what it promises; it does not assert any speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
from scripts import load_benchmark


def test_forward_benchmark_writes_rows(tmp_path: Path) -> None:
    forward = load_benchmark("forward")
    rows = forward.main([
        "--configs=tiny", "--batch=8", "--seq=16", "--iters=2", "--warmup=1",
        f"--out={tmp_path}",
    ])

    written = json.loads((tmp_path / "forward.json").read_text())
    assert written == rows
    # conftest.py makes 8 fake CPU devices: one single-device row and one sharded row.
    expected_rows = 2 if jax.device_count() > 1 else 1
    assert len(written) == expected_rows
    for row in written:
        assert set(row) == set(forward.ROW_KEYS)
        assert row["config"] == "tiny"
        assert (row["batch"], row["seq"]) == (8, 16)
        assert row["tokens_per_s"] > 0 and row["gflops_per_s"] > 0
        assert 0 < row["step_s_min"] <= row["step_s_median"]
        assert row["params"] == forward.resolve_configs("tiny")[0].model.num_params()
        assert row["mfu"] is None  # CPU: no meaningful peak
    assert [row["device_count"] for row in written] == [1, jax.device_count()][:expected_rows]

    table = (tmp_path / "forward.md").read_text()
    assert table.startswith("| config |") and table.count("| tiny |") == expected_rows


def test_sft_benchmark_runs_all_methods(tmp_path: Path) -> None:
    import math

    sft = load_benchmark("sft")
    rows = sft.main(["--model=tiny", "--shapes=4x32", "--steps=2", "--remat=dots_no_batch",
                     f"--out={tmp_path}"])

    assert json.loads((tmp_path / "sft.json").read_text()) == rows
    assert [row["method"] for row in rows] == ["ours", "jit", "torch"]
    by_method = {row["method"]: row for row in rows}
    # conftest's 8 fake devices reach the child processes: ours splits the batch of 4 over 4
    assert by_method["ours"]["devices"] == math.gcd(4, jax.device_count())
    # same init key and math: ours and the plain jit step start from the same loss
    assert abs(by_method["ours"]["first_loss"] - by_method["jit"]["first_loss"]) < 1e-4
    for row in rows:
        assert (row["batch"], row["seq"]) == (4, 32)
        assert row["tokens_per_s"] == 4 * 32 / row["step_s_median"]
        assert 0 < row["step_s_min"] <= row["step_s_median"] and len(row["step_s_all"]) == 2
        assert 0 < row["share_of_roofline"] and row["peak_rss_mb"] > 50
        # random init, small weights: every method starts near ln(vocab) and trains
        assert abs(row["first_loss"] - math.log(256)) < 0.1
        assert row["last_loss"] < row["first_loss"]
    assert [row["remat"] for row in rows] == ["dots_no_batch", "dots_no_batch", "none"]
    assert "| 4 | 32 | torch | none |" in (tmp_path / "sft.md").read_text()

    # a process past --max-rss-gb is killed and reported, not dropped
    killed = sft.main(["--model=tiny", "--shapes=4x32", "--methods=ours", "--max-rss-gb=0.05",
                       f"--out={tmp_path / 'killed'}"])
    assert len(killed) == 1 and killed[0]["error"].startswith("killed at")
    assert "tokens_per_s" not in killed[0]


def test_accelerator_benchmark_small_runs_every_part(tmp_path: Path) -> None:
    """The accelerator script's --small smoke mode on CPU: every part in its child process
    writes rows (no error rows), the kernel matches its reference and the sampler reports the
    shared/unshared ratio."""
    accelerator = load_benchmark("accelerator")
    rows = accelerator.main(["--small", f"--out={tmp_path}"])

    assert json.loads((tmp_path / "accelerator.json").read_text()) == rows
    parts = [row["part"] for row in rows]
    assert parts == ["limits", "kernel", "sampler", "sampler", "sampler", "sft"]
    assert not [row for row in rows if "error" in row]
    kernel = rows[1]
    assert kernel["impl"] == "interpret" and kernel["rel_err_ragged"] < 1e-2
    shared, unshared = rows[2], rows[3]
    assert (shared["method"], unshared["method"]) == ("a shared", "b unshared")
    assert shared["shared_over_unshared"] == unshared["seconds"] / shared["seconds"]
    assert rows[4]["method"] == "a unrolled"
    assert rows[4]["unrolled_over_scanned"] == shared["seconds"] / rows[4]["seconds"]
    assert rows[5]["losses_finite"] and rows[5]["tokens_per_s"] > 0
    assert "### sampler" in (tmp_path / "accelerator.md").read_text()


def test_profile_decode_small_summarises_a_trace(tmp_path: Path) -> None:
    """The decode profiler traces a tiny generate on CPU and groups the trace's events by op."""
    profile = load_benchmark("profile_decode")
    summary = profile.main(["--small", "--shape=24x4x3", f"--out={tmp_path}", "--top=5"])
    assert json.loads((tmp_path / "profile_decode.json").read_text()) == summary
    assert summary["total_device_us"] > 0 and 0 < len(summary["top"]) <= 5
    shares = [row["share"] for row in summary["top"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-9
