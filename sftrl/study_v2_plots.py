"""The v2 study's figures, drawn from its findings (`sftrl.study_v2.findings`, the same data the
report's tables render), so a figure can never show a number the tables do not.

    proxies_vs_rl.png   each proxy (x) against post-RL pass@1 (y; the bar spans the RL seeds),
                        one colour per SFT run, with the instance-level Spearman ρ in the title
    passk_curves.png    post-SFT pass@k against k for every checkpoint
    rl_gain.png         post-SFT against post-RL pass@1 per checkpoint (above the diagonal: RL
                        helped), every seed drawn
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FIGURES = ("proxies_vs_rl.png", "passk_curves.png", "rl_gain.png")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on CI or a headless host
    import matplotlib.pyplot as plt

    return plt


def _colours(runs: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {run: cycle[i % len(cycle)] for i, run in enumerate(runs)}


def write_figures(data: dict[str, Any], out: Path) -> list[Path]:
    """The figures of `data` (`findings`: its "proxies" hold one value per checkpoint with RL
    results, in its checkpoint order) into `out`; returns the files written."""
    plt = _pyplot()
    proxies = data.get("proxies") or {}
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = data["checkpoints"]
    with_rl = [c for c in checkpoints if c["rl_pass@1"] is not None]
    runs = sorted({c["run"] for c in checkpoints})
    colour = _colours(runs)
    written = []

    if with_rl and proxies:
        names = list(proxies)
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
        y = np.array([c["rl_pass@1"] for c in with_rl])
        lo = np.array([min(c["rl_pass@1_by_seed"].values()) for c in with_rl])
        hi = np.array([max(c["rl_pass@1_by_seed"].values()) for c in with_rl])
        for ax, name in zip(axes[0], names, strict=True):
            x = np.asarray(proxies[name])
            for run in runs:
                idx = [i for i, c in enumerate(with_rl) if c["run"] == run]
                if idx:
                    ax.errorbar(x[idx], y[idx], yerr=[y[idx] - lo[idx], hi[idx] - y[idx]],
                                fmt="o", color=colour[run], label=run, capsize=2)
            rho = data["instance"].get(name, {}).get("rho")
            ax.set_title(f"{name}\nρ = {rho:.2f}" if rho is not None else name, fontsize=8)
            ax.set_xlabel("post-SFT value (higher = better)", fontsize=8)
        axes[0][0].set_ylabel("post-RL pass@1 (mean of seeds)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "proxies_vs_rl.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for c in checkpoints:
        curve = sorted((int(k), v) for k, v in c["sft_pass@k"].items())
        ax.plot([k for k, _ in curve], [v for _, v in curve], color=colour[c["run"]],
                alpha=0.4 + 0.6 * (c["step"] / max(x["step"] for x in checkpoints)),
                label=f"{c['run']} {c['step']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("post-SFT pass@k")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    written.append(out / "passk_curves.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    if with_rl:
        fig, ax = plt.subplots(figsize=(4.2, 4))
        for c in with_rl:
            for value in c["rl_pass@1_by_seed"].values():
                ax.scatter(c["sft_pass@1"], value, color=colour[c["run"]], s=12, alpha=0.6)
        for run in runs:
            ax.scatter([], [], color=colour[run], label=run)
        top = max(max(c["sft_pass@1"], *c["rl_pass@1_by_seed"].values()) for c in with_rl)
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlabel("post-SFT pass@1")
        ax.set_ylabel("post-RL pass@1 (each seed)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out / "rl_gain.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
