"""`python -m sftrl.rank`: the command line of `sftrl.rank.rank` (README: "Rank your checkpoints").

A mistake in the inputs prints ONE line, `sftrl: error: <what>`, on stderr and exits 2, before any
model is loaded; a bug still gets its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from sftrl.rank.inputs import RankError

# Flags whose default comes from --config's eval/data/sft sections (else from Settings).
_FROM_CONFIG = {
    "num_samples": "eval.num_samples", "max_new_tokens": "eval.max_new_tokens",
    "temperature": "eval.temperature", "top_p": "eval.top_p", "top_k": "eval.top_k",
    "prompts_per_wave": "eval.prompts_per_wave", "max_kv_tokens": "eval.max_kv_tokens",
    "prompt_template": "eval.prompt_template", "max_length": "data.max_length",
    "heldout_batch_size": "sft.heldout_batch_size", "seed": "seed", "dtype": "dtype",
    "attention": "attention",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise RankError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sftrl.rank", description=__doc__)
    p.add_argument("--checkpoints", required=True,
                   help="comma-separated: HF folders, sftrl run dirs (dir or dir@step), "
                        "orbax step folders")
    p.add_argument("--heldout", required=True,
                   help="JSONL of chat records ('messages') or 'problem'/'solution' records")
    p.add_argument("--benchmarks", required=True,
                   help="comma-separated packaged names, 'synthetic', or .jsonl files "
                        "(id, problem, answer)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--rl_results", default=None, help="CSV checkpoint,post_rl_score")
    p.add_argument("--config", default=None,
                   help="path[:variant] of an sftrl config: mesh, dtype and eval defaults")
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor (overrides the config's)")
    p.add_argument("--limit", type=int, default=0, help="at most this many prompts per benchmark")
    p.add_argument("--num_bootstrap", type=int, default=1000)
    p.add_argument("--threshold", type=float, default=0.95,
                   help="share of replicates that makes an adjacent pair 'beyond noise'")
    for name, kind in (("num_samples", int), ("max_new_tokens", int), ("temperature", float),
                       ("top_p", float), ("top_k", int), ("prompts_per_wave", int),
                       ("max_kv_tokens", int), ("prompt_template", str), ("max_length", int),
                       ("heldout_batch_size", int), ("seed", int), ("dtype", str),
                       ("attention", str)):
        p.add_argument(f"--{name}", type=kind, default=None)
    return p


def _load_config(spec: str) -> Any:
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise RankError(f"--config: {path}: no such file")
    module_spec = importlib.util.spec_from_file_location("_rank_config", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise RankError(f"--config: {path}: no get_config()")
    return module.get_config(arg or None)


def _lookup(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def settings_and_mesh(args: argparse.Namespace) -> tuple[Any, dict[str, int]]:
    from sftrl.rank.core import Settings

    config = _load_config(args.config) if args.config else None
    values: dict[str, Any] = {}
    for name, dotted in _FROM_CONFIG.items():
        value = getattr(args, name)
        if value is None and config is not None:
            value = _lookup(config, dotted)
        if value is not None:
            values[name] = value
    if values.get("max_kv_tokens") == 0:
        values["max_kv_tokens"] = None  # the config's "no extra bound"
    mesh = dict(config.mesh) if config is not None else {"data": 1, "fsdp": -1, "tensor": 1}
    if args.mesh:
        try:
            data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
        except ValueError:
            raise RankError(f"--mesh: {args.mesh!r} is not three integers data,fsdp,tensor"
                            ) from None
        mesh = {"data": data, "fsdp": fsdp, "tensor": tensor}
    defaults = Settings()
    sampling_names = {f.name for f in dataclasses.fields(defaults.sampling)}
    try:  # the sampling spec checks its own fields (a bad --top_p, ...)
        sampling = dataclasses.replace(
            defaults.sampling, **{k: v for k, v in values.items() if k in sampling_names})
    except ValueError as e:
        raise RankError(str(e)) from None
    rest = {k: v for k, v in values.items() if k not in sampling_names}
    return Settings(sampling=sampling, limit=args.limit, num_bootstrap=args.num_bootstrap,
                    threshold=args.threshold, **rest), mesh


def main(argv: Sequence[str] | None = None) -> int:
    # force: importing jax/absl may already have put a handler on the root logger, which
    # would make basicConfig a no-op and hide the cost and progress lines
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        settings, mesh = settings_and_mesh(args)
        from sftrl import sharding
        from sftrl.rank.core import prepare, rank

        workdir = Path(args.workdir)
        checkpoints = [c for c in args.checkpoints.split(",") if c]
        benchmarks = [b for b in args.benchmarks.split(",") if b]
        # everything is validated before the mesh or any model exists
        plan = prepare(checkpoints, heldout=args.heldout, benchmarks=benchmarks, settings=settings,
                rl_results=args.rl_results, workdir=workdir)
        import jax

        try:
            sizes = sharding.resolve_mesh_shape(num_devices=jax.device_count(), **mesh)
        except sharding.MeshError as e:
            raise RankError(f"--mesh: {e}") from None
        layout = sharding.Layout(sharding.make_mesh(**sizes), sharding.TRAIN_RULES)
        result = rank(checkpoints, heldout=args.heldout, benchmarks=benchmarks,
                      workdir=workdir, settings=settings, rl_results=args.rl_results,
                      layout=layout, plan=plan)
    except RankError as e:
        print(f"sftrl: error: {e}", file=sys.stderr)
        return 2
    for group, g in result["groups"].items():
        rec = g["recommendation"]
        print(f"sftrl: {group}: recommend {rec['checkpoint']} (top in {rec['best_share']:.0%} "
              f"of bootstrap replicates; {'beyond noise' if rec['beyond_noise'] else 'tied'})")
    print(f"sftrl: report: {workdir / 'rank.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
