"""The study's plots, drawn from its data (study.json's checkpoints and predictor report)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sftrl import atomic
from sftrl.eval import predict
from sftrl.study.findings import NOISE_SE, labeled_candidates, proxy_rows, score

CURVES = "passk_curves.png"
GAINS = "rl_gain.png"
PROXIES_GLOB = "proxies_vs_rl*.png"


def proxies_name(group: str, n_groups: int) -> str:
    """The file of a group's proxies plot (the group's name only where there are several)."""
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in group)
    return f"proxies_vs_rl{'' if n_groups == 1 else '_' + slug}.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic.write_bytes(path, buf.getvalue())
    return path.name


def plot_proxies(g: Mapping[str, Any], numbers: Mapping[str, int], path: Path) -> str:
    """Each proxy vs post-RL pass@1; points carry their number (#) in the checkpoint table."""
    plt = _pyplot()
    proxies = proxy_rows(g["k"])
    labeled = labeled_candidates(g)
    fig, axes = plt.subplots(1, len(proxies), figsize=(4.2 * len(proxies), 3.8), squeeze=False)
    y = [c["outcomes"][predict.OUTCOME] for c in labeled]
    for ax, (label, name) in zip(axes[0], proxies, strict=True):
        x = [c["proxies"][name] for c in labeled]
        ax.scatter(x, y)
        for xi, yi, c in zip(x, y, labeled, strict=True):
            ax.annotate(str(numbers.get(c["checkpoint"], "?")), (xi, yi), fontsize=8,
                        xytext=(3, 3), textcoords="offset points")
        s = score(g, "instance", name)
        rho = "n/a" if "error" in s else f"{s['spearman']['rho']:.2f}"
        ax.set_title(f"{label}: ρ = {rho}", fontsize=9)
        ax.set_xlabel(f"{name} (higher = better)", fontsize=8)
        ax.set_ylabel("post-RL pass@1", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _curve(curve: Mapping[str, float]) -> tuple[list[int], list[float]]:
    ks = sorted(map(int, curve))
    return ks, [curve[str(k)] for k in ks]


def plot_curves(checkpoints: Sequence[Mapping[str, Any]], path: Path) -> str:
    """Post-SFT and post-RL pass@k per checkpoint, titled with its number in the table."""
    plt = _pyplot()
    shown = [(i, c) for i, c in enumerate(checkpoints, start=1) if c["sft_pass@k"] is not None]
    cols = min(4, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    for ax, (number, c) in zip(axes.flat, shown, strict=False):
        for stage, style, label in (("sft", "--", "after SFT"), ("rl", "-", "after RL")):
            if c[f"{stage}_pass@k"] is not None:
                ax.plot(*_curve(c[f"{stage}_pass@k"]), style, marker="o", markersize=2,
                        label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1)
        ax.set_title(f"#{number} {c['run']}", fontsize=8)
        ax.set_xlabel("k", fontsize=8)
        ax.set_ylabel("pass@k", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_gains(checkpoints: Sequence[Mapping[str, Any]], path: Path) -> str:
    """The RL gain per checkpoint with two sampling standard errors."""
    plt = _pyplot()
    done = [(i, c) for i, c in enumerate(checkpoints, start=1) if c["gain"] is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(done)), 3.5))
    ax.bar(range(len(done)), [c["gain"] for _, c in done],
           yerr=[NOISE_SE * c["gain_se"] for _, c in done], capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(done)))
    ax.set_xticklabels([f"#{i} {c['run']}" for i, c in done], rotation=60, ha="right",
                       fontsize=7)
    ax.set_ylabel("post-RL − post-SFT pass@1 (±2 SE)")
    ax.set_title("RL gain per checkpoint")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def write_plots(data: Mapping[str, Any], out_dir: Path) -> list[str]:
    """Every plot of the study into `out_dir`; their file names, in the README's order."""
    for old in out_dir.glob(PROXIES_GLOB):
        old.unlink()  # a plot of a group that is gone must not linger
    groups = data["predictor"]["groups"]
    numbers = {c["checkpoint"]: i for i, c in enumerate(data["checkpoints"], start=1)}
    names = [plot_proxies(g, numbers, out_dir / proxies_name(group, len(groups)))
             for group, g in groups.items()]
    if any(c["sft_pass@k"] is not None for c in data["checkpoints"]):
        names.append(plot_curves(data["checkpoints"], out_dir / CURVES))
    if data["rl_signal"]["n"]:
        names.append(plot_gains(data["checkpoints"], out_dir / GAINS))
    return names
