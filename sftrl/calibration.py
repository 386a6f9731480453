"""The analytic memory model (`sftrl.memory_model`) against what it models: the compiled plans
(`sftrl.plan --out`, per stage) and the H200 measurements of docs/accelerator_h100.md.

    python -m sftrl.calibration docs/paper_scale/*/plan.json --h200      # calibration.md

A module of its own because it needs both the compiler's plan and the model (the model must not
import the plan, which uses it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftrl.memory_model import (
    FITTED,
    GPUS,
    GpuTarget,
    model_stages,
)


def _split_config(text: str) -> tuple[str, list[str]]:
    spec, *rest = text.split(" --config.")
    return spec, rest


def calibrate(plan_json: Path) -> list[dict[str, Any]]:
    """Per stage of a compiled plan: the compiler's figures and the model's for the same config,
    topology and prompt length."""
    from sftrl import plan, target

    report = json.loads(Path(plan_json).read_text())
    if report.get("source") == "model":  # the model's own report: nothing to compare
        return []
    spec, overrides = _split_config(report["config"])
    config = plan.load_config(spec, overrides)
    topology = plan.parse_topology(report["topology"]["name"])
    with target.compiling_for("tpu"):
        stages, _ = model_stages(config, topology.num_chips, report["model"]["prompt_len"])
    by_name = {st.name: st for st in stages}
    out = []
    for compiled in report["stages"]:
        model = by_name.get(compiled["stage"])
        # a plan compiled before the config or the code changed its shapes is not comparable
        if "program_gib" not in compiled or model is None or not compiled["shapes"].startswith(
                model.shapes):
            continue
        row = model.row()
        plan.finish_row(row, topology, topology.num_chips, 0.4, 0)
        name = Path(plan_json).parent.name
        entry = dict(plan=str(plan_json), stage=compiled["stage"], shapes=compiled["shapes"],
                     oom=bool(compiled.get("oom")), fitted=(name, compiled["stage"]) in FITTED)
        for key in ("args_gib", "temp_gib", "program_gib", "need_gib"):
            entry[key] = (compiled.get(key), row[key])
        c, m = entry["need_gib"]
        entry["error"] = (m - c) / c if c else None
        out.append(entry)
    return out


def calibration_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| plan | stage | compiled for | args (compile / model) | temp | need | error | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k][0]:.1f} / {r[k][1]:.1f}" for k in ("args_gib", "temp_gib", "need_gib")]
        oom = " (OOM: temp from the error)" if r["oom"] else ""
        lines.append(f"| {Path(r['plan']).parent.name} | {r['stage']} | {r['shapes']}{oom} | "
                     f"{' | '.join(cells)} | {r['error'] * 100:+.0f}% | "
                     f"{'fitted' if r['fitted'] else 'out of sample'} |")
    for label, keep in (("fitted", True), ("out of sample", False)):
        errors = [abs(r["error"]) for r in rows if r["error"] is not None
                  and r["fitted"] == keep and not r["oom"]]
        if errors:
            lines += ["", f"{label}, compiled stages: median |error| of the need "
                      f"{sorted(errors)[len(errors) // 2] * 100:.0f}%, largest "
                      f"{max(errors) * 100:.0f}% ({len(errors)} stages)."]
    return "\n".join(lines) + "\n"


# Measured on one H200 (docs/accelerator_h100.md, 2026-11-26): the SFT step of Llama-3.2-1B
# shapes at 4 x 4096 with cuDNN attention, and one decode step of Llama-3-8B shapes sampling 64
# continuations of one 2048-token prompt (shared prefix, R = 256).
H200_SFT_1B_4X4096_S = 0.322
H200_DECODE_8B_2048X256X64_S = 0.0164


def h200_check(mfu: float = 0.4) -> list[dict[str, Any]]:
    """The model's time (and memory) for the two H200 measurements, against them."""
    from sftrl import config_lib, target
    from sftrl.plan import finish_row

    gpu = GpuTarget(GPUS["h200"], 1)
    rows = []
    with target.compiling_for("gpu"):
        c = config_lib.full_size_config(
            model_type="llama", vocab_size=128256, hidden_size=2048, num_layers=16,
            num_heads=32, num_kv_heads=8, head_dim=64, intermediate_size=8192,
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_embeddings=True,
            max_position_embeddings=8192)
        c.data.max_length, c.data.packing, c.sft.batch_size = 4096, False, 4
        stage = model_stages(c, 1, 512)[0][0]
        row = stage.row()
        finish_row(row, gpu, 1, mfu, 0)
        rows.append(dict(what="SFT step, Llama-3.2-1B shapes, 4 x 4096, cuDNN",
                         measured_s=H200_SFT_1B_4X4096_S, model_s=row["time_estimate_s"],
                         need_gib=row["program_gib"],
                         implied_mfu=row["flops"] / (H200_SFT_1B_4X4096_S * 989e12)))
        c = config_lib.full_size_config(
            model_type="llama", vocab_size=128256, hidden_size=4096, num_layers=32,
            num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336,
            rope_theta=500000.0, rms_norm_eps=1e-5, tie_embeddings=False,
            max_position_embeddings=8192)
        c.eval.update(prompts_per_wave=1, num_samples=64, max_new_tokens=256, max_kv_tokens=0)
        stage = next(st for st in model_stages(c, 1, 2048)[0] if st.name == "eval_decode")
        row = stage.row()
        finish_row(row, gpu, 1, mfu, int(stage.hbm_read_bytes))
        rows.append(dict(what="decode step, Llama-3-8B shapes, 1 prompt of 2048, 64 samples, "
                         "R 256 (shared prefix)", measured_s=H200_DECODE_8B_2048X256X64_S,
                         model_s=row["time_estimate_s"], need_gib=row["program_gib"],
                         implied_mfu=None))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sftrl.calibration",
        description="The analytic memory model against compiled plans (plan.json files).")
    parser.add_argument("plans", nargs="*", help="plan.json files written by sftrl.plan --out")
    parser.add_argument("--h200", action="store_true",
                        help="also the model's times against the H200 measurements")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    rows: list[dict[str, Any]] = []
    for path in args.plans:
        if not Path(path).is_file():
            print(f"sftrl: error: {path}: no such plan.json", file=sys.stderr)
            return 2
        rows += calibrate(Path(path))
    if rows:
        print(calibration_markdown(rows), end="")
    if args.h200:
        print("\n| H200 measurement | measured | model (MFU 0.4 / HBM bound) | model / measured "
              "| model program GiB |\n|---|---|---|---|---|")
        for r in h200_check():
            mfu = (f" (implied MFU {r['implied_mfu'] * 100:.0f}% of the analytic FLOPs)"
                   if r["implied_mfu"] else "")
            print(f"| {r['what']} | {r['measured_s'] * 1e3:.1f} ms{mfu} | "
                  f"{r['model_s'] * 1e3:.1f} ms | {r['model_s'] / r['measured_s']:.2f} | "
                  f"{r['need_gib']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
