"""Executes the notebooks in place, so that the committed copies show a real run's outputs.

    .venv/bin/python notebooks/execute.py            # fast mode (CPU, a few minutes)
    .venv/bin/python notebooks/execute.py --full     # the quickstart's full-size settings

The quickstart runs the pipeline into `runs/notebook_quickstart` (fast mode:
`runs/notebook_fast`); the analysis notebook reads that run. Outputs are kept; absolute paths of
this machine in them are written relative to the repo root.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart", "analysis")


def _relative_paths(nb: nbformat.NotebookNode) -> None:
    """This machine's checkout path in outputs becomes `<repo>`: the outputs travel with git."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = out["text"].replace(str(ROOT), "<repo>")
            for mime, value in out.get("data", {}).items():
                if isinstance(value, str) and mime.startswith("text/"):
                    out["data"][mime] = value.replace(str(ROOT), "<repo>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="not fast mode")
    parser.add_argument("--timeout-s", type=int, default=3600, help="per cell")
    args = parser.parse_args(argv)
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "XLA_FLAGS": ""}
    env.pop("MPLBACKEND", None)
    env.pop("SFTRL_NOTEBOOK_SWEEP", None)
    if not args.full:
        env["SFTRL_NOTEBOOK_FAST"] = "1"
        env["SFTRL_NOTEBOOK_WORKDIR"] = str(ROOT / "runs" / "notebook_fast")
    for name in NOTEBOOKS:
        path = ROOT / "notebooks" / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=args.timeout_s,
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute(env=env)
        _relative_paths(nb)
        nbformat.write(nb, path)
        print(f"{path.relative_to(ROOT)}: executed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
