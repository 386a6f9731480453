"""The import rule of docs/design.md (every module of sftrl/, benchmarks/ and configs/, no
cycle), and no top-level package of ours shadowing a dependency's."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("sftrl", "benchmarks", "configs")  # every module of these is checked
# Leaves every other module may import (besides its rule): the user-error types, atomic writes.
LEAVES = ("sftrl.errors", "sftrl.atomic")

# Module prefix -> the prefixes it may import, besides the standard library, third parties and
# LEAVES. The longest matching prefix is a module's rule; a module without one fails the test.
# Read bottom-up: each layer imports only layers listed before it (test_layers_form_no_cycle),
# lazy imports inside functions included. Nothing imports sftrl.main, benchmarks or configs.
ALLOWED: dict[str, tuple[str, ...]] = {
    # leaves: jax, optax and the standard library only
    "sftrl": (),  # the package's __init__
    "sftrl.errors": (),
    "sftrl.atomic": (),
    "sftrl.sharding": (),
    "sftrl.target": (),  # the platform compiled for (plan compiles TPU programs on a CPU host)
    "sftrl.optim": (),  # the optimizer and its config keys (config_lib validates them)
    "sftrl.kernels": ("sftrl.kernels",),  # Pallas kernels: jax only
    "sftrl.losses": ("sftrl.losses",),
    "sftrl.rewards": ("sftrl.rewards",),
    # config.accelerator -> devices and an xm resource; Cloud TPU slice names are sftrl.plan's
    "sftrl.accelerators": ("sftrl.plan",),
    "sftrl.models": ("sftrl.models", "sftrl.sharding", "sftrl.target",
                     "sftrl.kernels"),
    "sftrl.sampling": ("sftrl.sampling", "sftrl.models", "sftrl.sharding"),
    "sftrl.data": ("sftrl.data", "sftrl.models", "sftrl.sharding"),
    "sftrl.eval": ("sftrl.eval", "sftrl.models", "sftrl.losses", "sftrl.sampling",
                   "sftrl.rewards", "sftrl.data", "sftrl.sharding"),
    # config_lib validates configs: it describes models, meshes, optimizers, losses and data
    "sftrl.config_lib": ("sftrl.models", "sftrl.sharding", "sftrl.target", "sftrl.optim",
                         "sftrl.losses", "sftrl.data"),
    "sftrl.launch": ("sftrl.launch", "sftrl.config_lib", "sftrl.accelerators"),
    # train reads the config (config_lib) to build models, optimizers and data
    "sftrl.train": ("sftrl.train", "sftrl.config_lib", "sftrl.optim", "sftrl.models",
                    "sftrl.losses", "sftrl.sampling", "sftrl.rewards", "sftrl.data", "sftrl.eval",
                    "sftrl.sharding", "sftrl.target"),
    # the ranking tool: the eval stage's pieces and the trainers' checkpoint loading
    "sftrl.rank": ("sftrl.rank", "sftrl.config_lib", "sftrl.data", "sftrl.eval", "sftrl.models",
                   "sftrl.train", "sftrl.sharding", "sftrl.sampling", "sftrl.rewards",
                   "sftrl.losses"),
    # the stages (sftrl/stages/, one module each) and the tools above them, one rule each
    "sftrl.stages": (),  # the package's __init__: the list of stages
    "sftrl.stages.model": ("sftrl.config_lib", "sftrl.models", "sftrl.sharding", "sftrl.train"),
    "sftrl.stages.sft": ("sftrl.sharding", "sftrl.train"),
    "sftrl.stages.rl": ("sftrl.sharding", "sftrl.train"),
    "sftrl.stages.eval": ("sftrl.config_lib", "sftrl.data", "sftrl.eval", "sftrl.models",
                          "sftrl.sampling", "sftrl.sharding", "sftrl.train"),
    "sftrl.stages.predict": ("sftrl.config_lib", "sftrl.eval"),
    "sftrl.report": ("sftrl.eval",),
    "sftrl.stages.pipeline": ("sftrl.config_lib", "sftrl.data", "sftrl.eval", "sftrl.report",
                              "sftrl.sharding", "sftrl.stages.eval", "sftrl.stages.predict",
                              "sftrl.stages.rl", "sftrl.stages.sft", "sftrl.train"),
    # a run's stages (names, shapes, knobs, FLOPs, resident bytes): plan's and the model's
    "sftrl.stage_catalogue": ("sftrl.sampling",),
    # the analytic per-device memory and FLOP counts (GPU targets; plan's --analytic)
    "sftrl.memory_model": ("sftrl.config_lib", "sftrl.models", "sftrl.sampling",
                           "sftrl.sharding", "sftrl.target", "sftrl.stage_catalogue"),
    "sftrl.plan": ("sftrl.config_lib", "sftrl.memory_model", "sftrl.eval", "sftrl.losses",
                   "sftrl.models", "sftrl.optim", "sftrl.sampling", "sftrl.sharding",
                   "sftrl.target", "sftrl.train", "sftrl.stage_catalogue"),
    # the memory model against the compiled plans and the H200 figures
    "sftrl.calibration": ("sftrl.memory_model", "sftrl.plan", "sftrl.config_lib", "sftrl.target"),
    # the v1 study's package: reading, findings as data, the paper's table, rendering
    "sftrl.study": ("sftrl.study", "sftrl.eval", "sftrl.launch", "sftrl.stages.predict",
                    "sftrl.rewards"),
    # the v2 study's figures: matplotlib only
    "sftrl.study_v2_plots": (),
    # what a task v2 model gets right inside its chain of thought (the task reads its problems)
    "sftrl.study_v2_diagnostics": ("sftrl.data",),
    "sftrl.study_v2": ("sftrl.eval", "sftrl.study", "sftrl.study_v2_plots",
                       "sftrl.study_v2_diagnostics", "sftrl.launch",
                       "sftrl.report"),
    "sftrl.stages.study": ("sftrl.study", "sftrl.eval"),
    # main imports the stage it runs by name (sftrl.stages.<stage>)
    "sftrl.main": ("sftrl.config_lib", "sftrl.accelerators",
                   "sftrl.stages"),
    # config files build configs; sweep files define sweeps
    "configs": ("sftrl.config_lib",),
    "configs.sweeps": ("sftrl.launch", "sftrl.config_lib"),
}
# benchmarks measure every layer (not main, whose job is flags and dispatch)
ALLOWED["benchmarks"] = ("benchmarks", *sorted(
    p for p in ALLOWED if p.startswith("sftrl.") and p != "sftrl.main"))


def _files() -> list[pathlib.Path]:
    return sorted(path for source in SOURCES for path in (ROOT / source).rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[str]:
    """Our modules `path` imports, anywhere in it (inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.append(f"relative import in {path.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from sftrl.rewards import verifier` may name a module or an attribute
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] in SOURCES or n.startswith("relative")]


def _resolve(name: str, modules: set[str]) -> str:
    """The module an imported name belongs to: the longest known module prefix of it."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _rule_for(module: str) -> tuple[str, ...] | None:
    best = max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len,
               default=None)
    return None if best is None else ALLOWED[best] + _leaves(best)


def _leaves(rule: str) -> tuple[str, ...]:
    return () if rule in LEAVES else LEAVES


def _graph() -> dict[str, set[str]]:
    """module -> the modules it imports (self-imports left out)."""
    paths = {_module_name(path): path for path in _files()}
    modules = set(paths)
    return {m: {_resolve(n, modules) for n in _imports(p)} - {m} for m, p in paths.items()}


def test_import_direction():
    violations = []
    for module, imported in sorted(_graph().items()):
        allowed = _rule_for(module)
        if allowed is None:
            violations.append(f"{module}: no import rule; add one to ALLOWED")
            continue
        for name in sorted(imported):
            if name.startswith("relative") or not any(
                    name == a or name.startswith(a + ".") for a in allowed):
                violations.append(f"{module} imports {name}")
    assert not violations, "\n".join(violations)


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_layers_form_no_cycle():
    """The rules themselves are layered: no prefix may reach itself through other prefixes."""
    graph = {p: {_resolve(a, set(ALLOWED)) for a in (*allowed, *_leaves(p))} - {p}
             for p, allowed in ALLOWED.items()}
    assert not _cycle(graph), " -> ".join(_cycle(graph))


def test_modules_import_no_cycle():
    """No module reaches itself through its imports, lazy ones included (a package's
    __init__ re-exporting its submodules is not a cycle: a submodule never imports it)."""
    cycle = _cycle(_graph())
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_top_level_package_shadows_a_dependency():
    """Python puts the working directory first on sys.path, so a top-level package of ours
    named like a dependency's hides it. Our Pallas kernels once lived in `<repo>/kernels/`;
    transformers 5.25 requires PyPI's `kernels` and failed to import from the repo root."""
    code = ("import importlib.metadata as m, importlib.util as u, pathlib, sys;"
            "root = pathlib.Path.cwd().resolve();"
            "tops = {p.name for p in root.iterdir() if (p / '__init__.py').is_file()};"
            "others = [d for d in m.distributions() if d.metadata['Name'] != 'sftrl'];"
            "deps = {n for d in others for n in (d.read_text('top_level.txt') or '').split()};"
            "deps |= {d.metadata['Name'].replace('-', '_').lower() for d in others};"
            "clash = sorted(tops & deps); print(clash); sys.exit(1 if clash else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_transformers_imports_from_the_repo_root():
    code = "import transformers; transformers.LlamaConfig(); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
