"""The import direction of docs/design.md, and our `kernels` beside transformers."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# module prefix -> prefixes it may import (besides the standard library and third parties)
ALLOWED = {
    "kernels": ("kernels",),
    # the user-error types and the kernels' loader: leaves that every layer may use
    "sftrl.errors": (),
    "sftrl.atomic": (),
    "sftrl.kernels_import": ("sftrl.errors", "kernels"),
    "sftrl.sharding": (),
    # the platform compiled for (sftrl.plan compiles TPU programs on a CPU host); jax only
    "sftrl.target": (),
    # config.accelerator -> devices and an xm resource; Cloud TPU slice names are sftrl.plan's
    "sftrl.accelerators": ("sftrl.plan",),
    "sftrl.models": ("sftrl.models", "sftrl.sharding", "sftrl.target", "sftrl.kernels_import",
                     "kernels"),
    "sftrl.sampling": ("sftrl.sampling", "sftrl.models", "sftrl.sharding", "kernels"),
    "sftrl.losses": ("sftrl.losses",),
    "sftrl.rewards": ("sftrl.rewards",),
    "sftrl.data": ("sftrl.data", "sftrl.models", "sftrl.sharding"),
    "sftrl.eval": ("sftrl.eval", "sftrl.models", "sftrl.losses", "sftrl.sampling",
                   "sftrl.rewards", "sftrl.data", "sftrl.sharding", "kernels"),
    # train reads the config (config_lib) to build models, optimizers and data
    "sftrl.train": ("sftrl.train", "sftrl.config_lib", "sftrl.models", "sftrl.losses",
                    "sftrl.sampling", "sftrl.rewards", "sftrl.data", "sftrl.eval",
                    "sftrl.sharding", "kernels"),
    # the ranking tool: the eval stage's pieces and the trainers' checkpoint loading
    "sftrl.rank": ("sftrl.rank", "sftrl.config_lib", "sftrl.data", "sftrl.eval", "sftrl.models",
                   "sftrl.train", "sftrl.sharding", "sftrl.sampling", "sftrl.rewards",
                   "sftrl.losses", "kernels"),
    # config_lib validates configs, so it may describe models, meshes, optimizers and losses
    "sftrl.config_lib": ("sftrl.models", "sftrl.sharding", "sftrl.train.optim", "sftrl.losses",
                         "sftrl.data"),
}
TOP = ("sftrl.main", "sftrl.launch", "sftrl.report", "sftrl.model_check", "sftrl.predict_stage",
       "sftrl.eval_stage", "sftrl.pipeline", "sftrl.study", "sftrl.study_v2", "sftrl.plan")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("sftrl", "kernels"):  # `from sftrl import sharding`
                names += [f"{node.module}.{a.name}" for a in node.names]
            else:
                names.append(node.module)
    return [n for n in names if n.split(".")[0] in ("sftrl", "kernels")]


def _rule_for(module: str) -> tuple[str, ...] | None:
    best = max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len,
               default=None)
    if best is None:
        return None
    leaves = tuple(leaf for leaf in ("sftrl.errors", "sftrl.atomic") if leaf != best)
    return ALLOWED[best] + leaves


def test_import_direction():
    violations = []
    files = list((ROOT / "sftrl").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py"))
    for path in files:
        module = _module_name(path)
        for imported in _imports(path):
            if imported.startswith("sftrl.main"):
                violations.append(f"{module} imports sftrl.main (nothing imports main)")
                continue
            if module in TOP or module == "sftrl":
                continue
            allowed = _rule_for(module)
            if allowed is None:
                violations.append(f"{module}: no import rule; add it to ALLOWED or TOP")
                continue
            if imported == "sftrl" or not any(
                imported == a or imported.startswith(a + ".") for a in allowed
            ):
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


def test_kernels_is_ours_even_beside_transformers():
    code = (
        "import transformers, kernels, pathlib, sys;"
        "p = pathlib.Path(kernels.__file__).resolve().parent;"
        "sys.exit(0 if p == pathlib.Path.cwd().resolve() / 'kernels' else 1)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_kernels_is_not_packaged():
    setup = (ROOT / "setup.cfg").read_text()
    include = setup.split("[options.packages.find]")[1].split("[")[0]
    assert "kernels" not in include
