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
