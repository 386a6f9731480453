"""rank.json (every number), rank.md (the ranked table and the recommendation) and rank.png
(pass@k curves and the proxies with their intervals), each written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from sftrl import atomic


def _ci(values: list[float], digits: int = 3) -> str:
    return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def _group_table(result: dict[str, Any], group: str) -> list[str]:
    g = result["groups"][group]
    k = result["k_max"]
    share = {p["better"]: p for p in g["pairs"]}
    lines = [
        f"| rank | checkpoint | combination | held-out loss | tokens scored | pass@1 | "
        f"pass@{k} | P(best) | vs next |",
        "|---:|---|---|---|---:|---|---|---:|---|",
    ]
    for row in g["ranking"]:
        name = row["checkpoint"]
        c = result["checkpoints"][name]
        pair = share.get(name)
        versus = "" if pair is None else (
            f"{'beyond noise' if pair['beyond_noise'] else 'tie'} ({pair['share']:.0%})")
        lines.append(
            f"| {row['rank']} | {name} | {c['combination']:+.3f} {_ci(c['combination_ci'], 2)} "
            f"| {c['heldout']['loss']:.4f} {_ci(c['heldout']['loss_ci'])} "
            f"| {c['heldout']['num_tokens']} "
            f"| {c['pass@1']:.3f} {_ci(c['pass@1_ci'])} "
            f"| {c['pass@k_max']:.3f} {_ci(c['pass@k_max_ci'])} "
            f"| {c['best_share']:.0%} | {versus} |")
    return lines


def _recommendation(result: dict[str, Any], group: str) -> str:
    g = result["groups"][group]
    rec = g["recommendation"]
    n = len(g["ranking"])
    if n == 1:
        return f"**Recommendation: {rec['checkpoint']}** (the only checkpoint of this group)."
    text = (f"**Recommendation: {rec['checkpoint']}**: top in {rec['best_share']:.0%} of "
            f"{result['bootstrap']['replicates']} paired bootstrap replicates; ")
    if rec["beyond_noise"]:
        text += "ahead of the next checkpoint beyond noise."
    else:
        text += (f"tied within noise with {', '.join(rec['ties_with'])}: any of these is as "
                 "good a pick on this evidence (more held-out examples, prompts or samples would "
                 "separate them).")
    return text


def _prediction(result: dict[str, Any], group: str) -> list[str]:
    pred = result["groups"][group].get("prediction")
    if not pred:
        return []
    if "error" in pred:
        return ["", f"Post-RL prediction: not possible ({pred['error']})."]
    lines = ["", f"Post-RL prediction (sftrl.eval.predict; proxy {pred['proxy']}: "
             f"{pred['reason']}), from RL results for "
             f"{', '.join(sorted(pred['rl_results']))}:", ""]
    if "predicted" in (pred["candidates"] or [{}])[0]:
        conf = pred.get("confidence", 0.95)
        lines += [f"| checkpoint | predicted post-RL score | {conf:.0%} interval |",
                  "|---|---:|---|"]
        lines += [f"| {c['checkpoint']} | {c['predicted']:.3f} | "
                  f"[{c['lower']:.3f}, {c['upper']:.3f}] |" for c in pred["candidates"]]
    else:
        lines += [f"{c['rank']}. {c['checkpoint']}" for c in pred["candidates"]]
    return lines


def _proxy_value(result: dict[str, Any], name: str, proxy: str) -> float:
    c = result["checkpoints"][name]
    return -c["heldout"]["loss"] if proxy == "-loss" else c[proxy]


def markdown(result: dict[str, Any]) -> str:
    k = result["k_max"]
    lines = ["# Checkpoint ranking", "",
             f"Ranked by the paper's combination ({result['combination']}); higher is better. "
             f"Intervals are 95% paired-bootstrap intervals ({result['bootstrap']['replicates']} "
             "replicates over held-out examples and benchmark prompts). 'vs next': the share of "
             f"replicates in which the checkpoint beats the next one; at least "
             f"{result['bootstrap']['beyond_noise_share']:.0%} is 'beyond noise', else a tie.",
             "",
             f"Held-out: {result['heldout']['path']} ({result['heldout']['examples']} examples, "
             "each checkpoint in its own chat template; loss = mean NLL per response token, "
             "nats). Benchmarks: " + ", ".join(
                 f"{n} ({b['prompts']} prompts)" for n, b in result["benchmarks"].items())
             + f"; {result['sampling']['num_samples']} samples per prompt at temperature "
             f"{result['sampling']['temperature']}; pass@1 and pass@{k} are means over "
             "benchmarks."]
    if len(result["groups"]) > 1:
        lines += ["", f"These checkpoints have {len(result['groups'])} different base models "
                  "(architecture or vocabulary); each group is ranked on its own, and scores "
                  "are not compared across groups."]
    for group in result["groups"]:
        lines += ["", f"## Group {group}", "", *_group_table(result, group), "",
                  _recommendation(result, group)]
        top = result["groups"][group]["recommendation"]["checkpoint"]
        # a proxy tied at the top (e.g. pass@k all 0) picks nobody; only a strict lead counts
        disagree = [p for p, v in result["groups"][group]["by_proxy"].items()
                    if v["order"][0] != top and v["pairs"]
                    and _proxy_value(result, v["order"][0], p) > _proxy_value(result, top, p)]
        if disagree:
            lines += ["", "Single proxies that pick another top checkpoint: " + "; ".join(
                f"{p}: {result['groups'][group]['by_proxy'][p]['order'][0]}"
                for p in disagree) + " (post-SFT pass@1 is the least reliable predictor)."]
        lines += _prediction(result, group)
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(result["groups"])
    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
    for row, group in enumerate(groups):
        names = [r["checkpoint"] for r in result["groups"][group]["ranking"]]
        curve_ax, proxy_ax = axes[row]
        for name in names:
            curve = result["checkpoints"][name]["pass@k_mean"]
            ks = [int(k) for k in curve]
            curve_ax.plot(ks, [curve[str(k)] for k in ks], marker="o", label=name)
        curve_ax.set_xscale("log", base=2)
        curve_ax.set_xlabel("k")
        curve_ax.set_ylabel("pass@k (mean over benchmarks)")
        curve_ax.set_title(f"{group}: pass@k")
        curve_ax.legend(fontsize="small")
        for offset, (key, label) in enumerate((("combination", "combination (z)"),
                                               ("neg_loss", "-loss (z)"),
                                               ("pass@k_max", f"pass@{result['k_max']} (z)"))):
            values, lows, highs = [], [], []
            for name in names:
                c = result["checkpoints"][name]
                if key == "neg_loss":
                    v, ci = -c["heldout"]["loss"], [-c["heldout"]["loss_ci"][1],
                                                     -c["heldout"]["loss_ci"][0]]
                else:
                    v, ci = c[key], c[f"{key}_ci"]
                values.append(v)
                lows.append(ci[0])
                highs.append(ci[1])
            # each proxy standardised over the group so the three share an axis
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5 or 1.0
            xs = [i + 0.25 * (offset - 1) for i in range(len(names))]
            proxy_ax.errorbar(xs, [(v - mean) / std for v in values],
                              yerr=[[(v - lo) / std for v, lo in zip(values, lows, strict=True)],
                                    [(hi - v) / std for v, hi in zip(values, highs,
                                                                       strict=True)]],
                              fmt="o", capsize=3, label=label)
        proxy_ax.set_xticks(range(len(names)), names, rotation=20, fontsize="small")
        proxy_ax.set_ylabel("standardised within group (higher is better)")
        proxy_ax.set_title(f"{group}: proxies, 95% bootstrap intervals (rank order)")
        proxy_ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write(result: dict[str, Any], workdir: Path) -> list[Path]:
    paths = [workdir / "rank.json", workdir / "rank.md", workdir / "rank.png"]
    atomic.write_text(paths[0], json.dumps(result, indent=1, sort_keys=True,
                                           allow_nan=False) + "\n")
    atomic.write_text(paths[1], markdown(result))
    atomic.write_bytes(paths[2], plot(result))
    return paths
