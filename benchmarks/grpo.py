"""One GRPO step's time split (generation / reward / update), shared-prefix sampler vs sharing off.

What is measured
    `GRPOTrainer.step` on the tiny config (or `--config`), starting from random weights (or
    `--init_workdir`, an SFT run), with `rl.share_prefix` True and False in the same run, on the
    same prompts and seeds (both modes draw the same samples; see sftrl/sampling.py). Each mode
    runs `--warmup` steps (compilation) and then `--steps` timed steps; the trainer's own timers
    give the split: generation (the sampler, including refills), reward (decode + verify),
    update (trainer log-probs + the jitted policy updates). Reported per mode: median seconds per
    part, generated tokens/s, and the shared/unshared ratio of generation time.

Usage
    python benchmarks/grpo.py --out=runs/bench
    python benchmarks/grpo.py --overrides rl.group_size=16 rl.max_new_tokens=128
Writes DIR/grpo.json and DIR/grpo.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sftrl import config_lib  # noqa: E402
from sftrl.sharding import single_device_layout  # noqa: E402

PARTS = ("time/generation_s", "time/reward_s", "time/update_s")


def _load_config(path: str, overrides: list[str]):
    spec = importlib.util.spec_from_file_location("cfg", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_lib.apply_overrides(module.get_config(), overrides)
    config.stage = "rl"
    config_lib.validate(config)
    return config


def measure(config, share: bool, warmup: int, steps: int) -> dict[str, Any]:
    from sftrl.train.grpo import GRPOTrainer

    config = config.copy_and_resolve_references()
    config.rl.share_prefix = share
    config.rl.evals = ()
    config.rl.tensorboard = False
    with tempfile.TemporaryDirectory() as workdir:
        trainer = GRPOTrainer(config, Path(workdir), single_device_layout())
        state = trainer.setup.state
        rows = []
        for step in range(warmup + steps):
            state, metrics = trainer.step(state, step)
            if step >= warmup:
                rows.append(metrics)
        trainer.checkpointer.close()
    out: dict[str, Any] = {"share_prefix": share, "steps": steps}
    for part in PARTS:
        out[part.removeprefix("time/")] = statistics.median(r[part] for r in rows)
    out["step_s"] = sum(out[p.removeprefix("time/")] for p in PARTS)
    out["generation_tokens_per_s"] = statistics.median(r["generation_tokens_per_s"] for r in rows)
    out["response_length"] = statistics.mean(r["response_length"] for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--init_workdir", default="")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    overrides = ["rl.prompts_per_step=8", "rl.group_size=16", "rl.max_new_tokens=64",
                 *args.overrides]
    if args.init_workdir:
        overrides.append(f"rl.init_workdir={args.init_workdir}")
    config = _load_config(args.config, overrides)
    rows = [measure(config, share, args.warmup, args.steps) for share in (True, False)]
    ratio = rows[1]["generation_s"] / max(rows[0]["generation_s"], 1e-9)
    result = {"config": args.config, "overrides": overrides, "rows": rows,
              "generation_speedup_shared_vs_unshared": ratio,
              "prompts_per_step": config.rl.prompts_per_step, "group_size": config.rl.group_size,
              "max_new_tokens": config.rl.max_new_tokens}
    header = "| share_prefix | generation s | reward s | update s | step s | gen tok/s |"
    lines = [header, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['share_prefix']} | {r['generation_s']:.2f} | {r['reward_s']:.2f} | "
                     f"{r['update_s']:.2f} | {r['step_s']:.2f} | "
                     f"{r['generation_tokens_per_s']:.0f} |")
    lines.append(f"\nshared-prefix generation is {ratio:.2f}x faster than sharing off "
                 f"(P={config.rl.prompts_per_step}, G={config.rl.group_size}, "
                 f"T<={config.rl.max_new_tokens})")
    table = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grpo.json").write_text(json.dumps(result, indent=2))
    (out / "grpo.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
