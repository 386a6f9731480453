"""Finds the repo's Pallas kernels (`<repo>/kernels/`) from any working directory.

`kernels/` sits beside the `sftrl/` package in the source tree and is deliberately not published
(PyPI has an unrelated `kernels`). Python finds it only when the repo root is on `sys.path`,
which is true from the repo root and nowhere else; an editable install (`pip install -e .`, what
`make setup` does) still knows where the tree is, so the kernels are loaded from there.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from sftrl.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _ours(module: ModuleType) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().parent == REPO_ROOT / "kernels"


def load(name: str = "decode_attention") -> ModuleType:
    """`kernels.<name>` from this source tree, wherever the process was started."""
    package = sys.modules.get("kernels")
    if package is not None and not _ours(package):
        raise UserError(f"another package named 'kernels' is imported ({package.__file__}); "
                        f"sftrl needs its own from {REPO_ROOT / 'kernels'}")
    if not (REPO_ROOT / "kernels" / f"{name}.py").is_file():
        raise UserError(
            f"sftrl's kernels ({REPO_ROOT / 'kernels'}) are not here: they ship with the source "
            "tree, not the package; install sftrl with `pip install -e <repo>` (or `make setup`)")
    added = str(REPO_ROOT) not in sys.path
    if added:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        module = importlib.import_module(f"kernels.{name}")
    finally:
        if added:
            sys.path.remove(str(REPO_ROOT))
    if not _ours(module):
        raise UserError(f"kernels.{name} was imported from {module.__file__}, not from "
                        f"{REPO_ROOT / 'kernels'}")
    return module
