"""The notebooks: committed with a real run's outputs, and both executed end to end in fast mode.

The quickstart runs the whole pipeline (3 SFT variants) into a tmp workdir; the analysis notebook
then reads that workdir, so they run in order, in one test.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart", "analysis")
VARIANTS = ("answer_only-diverse-48", "short_cot-diverse-48", "short_cot-homogeneous-48")
CELL_TIMEOUT_S = 600


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def output_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Code cells that did not run, or failed, in the committed copy.

    The committed notebooks show a real run (`notebooks/execute.py` regenerates them), so a
    reader sees the report and plots without running anything; an error output or a cell
    that never ran means the copy was not regenerated after a change.
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            problems.append(f"cell {i}: not executed")
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"cell {i}: {out.get('ename')}: {out.get('evalue')}")
    return problems


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_valid_and_shows_a_run(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert output_problems(nb) == [], (
        f"notebooks/{name}.ipynb: regenerate it with `.venv/bin/python notebooks/execute.py`")
    assert _images(nb) >= 1  # the plots are there to be seen
    assert "/work/" not in json.dumps(nb)  # no machine's paths: execute.py rewrites them


def test_output_check_catches_unrun_and_failed_cells():
    nb = _read("quickstart")
    code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells[code].execution_count = None
    nb.cells[code].outputs = [nbformat.v4.new_output("error", ename="ValueError",
                                                     evalue="boom", traceback=[])]
    assert output_problems(nb) == [f"cell {code}: not executed",
                                   f"cell {code}: ValueError: boom"]


# Injected as the first cell: proves the kernel runs this venv's interpreter, not another one.
_PROBE = "import json, sys\nprint(json.dumps({'prefix': sys.prefix, 'executable': sys.executable}))"


def _execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = _read(name)
    nb.cells.insert(0, nbformat.v4.new_code_cell(_PROBE))
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute(env=env)
    probe = json.loads(nb.cells[0].outputs[0]["text"])
    assert probe["prefix"] == sys.prefix, (probe, sys.prefix)
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    """Every stream and text/markdown output of the executed notebook."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            for mime in ("text/markdown", "text/plain"):
                if mime in out.get("data", {}):
                    parts.append(out["data"][mime])
    return "\n".join(parts)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


@pytest.mark.slow
def test_notebooks_execute_in_fast_mode(tmp_path):
    workdir = tmp_path / "quickstart"
    env = {**os.environ, "SFTRL_NOTEBOOK_FAST": "1", "SFTRL_NOTEBOOK_WORKDIR": str(workdir),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    # the kernel picks its inline plotting backend itself; an inherited one (Agg) would hide plots
    for name in ("SFTRL_NOTEBOOK_SWEEP", "MPLBACKEND"):
        env.pop(name, None)

    quick = _execute("quickstart", env)
    for v in VARIANTS:
        for stage in ("sft", "rl"):
            assert (workdir / "eval" / f"{v}-{stage}.json").is_file(), (v, stage)
    for name in ("summary.md", "predictor.json", "predictor.md", "heldout_loss.png"):
        assert (workdir / "report" / name).is_file(), name
    assert list((workdir / "report").glob("passk_*.png"))
    assert json.loads((workdir / "config.json").read_text())["pipeline"]["sft_variants"] == list(
        VARIANTS)
    text = _text(quick)
    assert "fast mode: True" in text
    assert "backend: cpu, 1 device(s)" in text  # the devices cell, on the CPU the env asked for
    for v in VARIANTS:
        assert f"| {v}-sft | sft |" in text and f"| {v}-rl | rl |" in text  # the eval table
    # every report plot was displayed
    assert _images(quick) >= len(list((workdir / "report").glob("*.png")))

    analysis = _execute("analysis", env)
    out = workdir / "analysis"
    predictor = json.loads((out / "predictor.json").read_text())
    (group,) = predictor["groups"].values()
    assert group["n_candidates"] == 3 and group["n_labeled"] == 3
    assert predictor["options"]["n_permutations"] == 50
    assert list(out.glob("proxies_*.png"))
    text = _text(analysis)
    assert "# Predictor summary" in text
    assert "3 SFT checkpoints, 3 with RL results" in text
    assert _images(analysis) >= 1
