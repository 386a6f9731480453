"""The study's README, words and tables drawn from its data (study.json) alone.

`readme(data)` is a pure function of what `sftrl.study.report.study_data` computes, so the
committed report can be re-rendered from its study.json (tests/test_study.py checks that it is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sftrl.study import plots
from sftrl.study.findings import ALPHA, CONFIDENCE, NOISE_SE, proxy_rows, score
from sftrl.study.paper import PAPER_COLUMNS, PAPER_HEADLINE, PAPER_MODELS
from sftrl.study.sweep import STATUS_FILE

WHERE = {"instance": "instance", "dataset": "data-set"}
POOLING = {"instance": "one point per checkpoint", "dataset": "one point per data set"}
# Why the paper's central finding does not reproduce, by `findings.verdict`'s reason code.
VERDICT_REASONS = {
    "no_rl_signal": "too little RL signal at this scale: the mean RL gain is within "
                    f"{NOISE_SE:g} standard errors of zero",
    "no_rl_spread": "the post-RL scores of the checkpoints differ by less than "
                    f"{NOISE_SE:g} sampling standard errors, so their order is noise",
    "unscored": "no proxy could be scored at the instance level",
    "pass1_best": "post-SFT pass@1 ranks the checkpoints at least as well as the other proxies",
    "not_significant": "the best proxy's correlation is not significantly positive at "
                       f"{ALPHA} with {{n}} checkpoints (too few checkpoints or too noisy)",
    "within_noise": "the best proxy ranks the checkpoints better than post-SFT pass@1 only "
                    f"within noise (its {100 * CONFIDENCE:g}% paired bootstrap interval of the "
                    "difference in Spearman ρ includes 0)",
    "no_misranking": "post-SFT pass@1 misranks no pair of checkpoints",
}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "missing" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 4) -> str:
    return "missing" if value is None else f"{value:+.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "missing"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _or_list(values: Sequence[Any]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _header(cells: Sequence[str]) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


# ------------------------------------------------------------------ tables


def checkpoint_table(checkpoints: Sequence[Mapping[str, Any]], k: int) -> list[str]:
    lines = _header(["#", "run", "checkpoint", "data set", "epochs", "SFT steps", "gen. loss",
                     "SFT pass@1", f"SFT pass@{k}", f"SFT pass@{k} control", "RL pass@1",
                     "RL gain", "2·SE(gain)", "run time"])
    for number, c in enumerate(checkpoints, start=1):
        sft, rl, control = c["sft_pass@k"], c["rl_pass@k"], c["sft_pass@k_control"]
        se = c["gain_se"]
        cells = [str(number), c["run"], c["checkpoint"], c["dataset"] or "missing",
                 "missing" if c["epochs"] is None else str(c["epochs"]),
                 "missing" if c["sft_steps"] is None else str(c["sft_steps"]),
                 _fmt(c["generalization_loss"]), _fmt(sft["1"] if sft else None),
                 _fmt(sft.get(str(k)) if sft else None),
                 (_fmt(control[str(k)]) if control is not None else
                  "no samples" if sft else "missing"),
                 _fmt(rl["1"] if rl else None), _signed(c["gain"]),
                 _fmt(None if se is None else NOISE_SE * se),
                 ("≈" if c["seconds_estimated"] else "") + duration(c["seconds"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if any(c["seconds_estimated"] for c in checkpoints):
        lines += ["≈: the run was resumed after its launcher was killed; the killed attempt is "
                  "counted up to the run's last file write (the launcher's estimate), so the "
                  "time may be short by the minutes that wrote nothing.", ""]
    missing = [c for c in checkpoints if c["missing"]]
    if missing:
        lines += ["Missing (shown because of `--allow_partial`):", ""]
        lines += [f"- `{c['run']}`: {c['missing']}" for c in missing] + [""]
    return lines


def _spearman_cell(s: Mapping[str, Any]) -> str:
    if "error" in s:
        return "n/a¹"
    return f"{s['spearman']['rho']:.4f} (p = {s['spearman']['p_value']:.4f})"


def _r2_cell(s: Mapping[str, Any], m: int) -> str:
    r2 = s.get("r2", {}).get(str(m)) if "error" not in s else None
    if r2 is None or "error" in r2:
        return "n/a¹"
    return f"{r2['mean']:.4f} ± {r2['std']:.4f}"


def predictor_table(g: Mapping[str, Any], sizes: Sequence[int]) -> list[str]:
    header = ["proxy"]
    for level in ("data-set", "instance"):
        header += [f"{level} Spearman ρ (p)"] + [f"{level} R² m={m}" for m in sizes]
    lines = _header(header)
    notes: dict[str, None] = {}
    for label, name in proxy_rows(g["k"]):
        cells = [label]
        for level in ("dataset", "instance"):
            s = score(g, level, name)
            cells += [_spearman_cell(s)] + [_r2_cell(s, m) for m in sizes]
            if "error" in s:
                notes[f"{WHERE[level]} level: {s['error'].split(': ', 1)[-1]}"] = None
            for m in sizes:
                r2 = s.get("r2", {}).get(str(m), {})
                if "error" in r2:
                    notes[f"{WHERE[level]} level, m={m}: {r2['error'].split(': ', 1)[-1]}"] = None
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if notes:
        lines += ["¹ n/a, as the predictor reports it:", ""]
        lines += [f"- {note}" for note in notes] + [""]
    return lines


def paper_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]], k: int) -> list[str]:
    lines = _header(["model", "proxy", "data-set Spearman", "data-set R²", "instance Spearman",
                     "instance R²"])
    for model in PAPER_MODELS:
        for label, _ in proxy_rows(k):
            key = "pass@k" if label == f"pass@{k}" else label
            cells = table.get(model, {}).get(key, {})
            shown = "pass@k (large k)" if key == "pass@k" else label
            values = [("" if cells.get(c) is None else str(cells[c])) for c in PAPER_COLUMNS]
            lines.append("| " + " | ".join([model, shown, *values]) + " |")
    return [*lines, ""]


# ------------------------------------------------------------------ findings


def _rho_p(s: Mapping[str, float]) -> str:
    return f"{s['rho']:.3f} (p = {s['p_value']:.3f})"


def _floor(n: int, floor: float) -> str:
    return (f"; with {n} points even a perfect ranking has p = {floor:.3f}"
            if floor >= ALPHA else "")


def level_text(f: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    where, count = WHERE[f["level"]], f["points"]
    if "unscored" in f:
        return [f"At the {where} level no proxy could be scored ({'; '.join(f['unscored'])})."]
    top, scores = f["best"], f["scores"]
    best = (f"{labels[top[0]]}'s" if len(top) == 1 else
            "shared by " + " and ".join(labels[p] for p in top))
    lines = [f"At the {where} level ({count} points) the highest Spearman ρ "
             f"({scores[top[0]]['rho']:.3f}) is {best}; in order: "
             + ", ".join(f"{labels[p]} {_rho_p(scores[p])}" for p in f["order"]) + "."]
    if "minus_pass1" in f:
        lines.append(f"Spearman ρ minus post-SFT pass@1's at the {where} level (the paper's "
                     "headline: up to +0.5): " + ", ".join(
                         f"{labels[p]} {d:+.3f}" for p, d in
                         sorted(f["minus_pass1"].items(), key=lambda kv: f["order"].index(kv[0])))
                     + ".")
    if f["min_p"] >= ALPHA:
        lines.append(f"With {count} points even a perfect ranking has p = {f['min_p']:.3f} "
                     f">= {ALPHA}, so no {where}-level correlation can be significant.")
    else:
        for sign, chosen in (("positive", f["significant_positive"]),
                             ("negative (ranks in reverse)", f["significant_negative"])):
            lines.append(f"Significantly {sign} at {ALPHA} ({where} level): "
                         f"{', '.join(labels[p] for p in chosen) or 'none'}.")
    r2 = f["r2"]
    if "proxy" in r2:
        lines.append(f"Highest mean calibration R² at the {where} level (m = {r2['m']}): "
                     f"{labels[r2['proxy']]} {r2['mean']:.3f} ± {r2['std']:.3f}.")
    else:
        lines.append(f"No calibration R² at the {where} level: {'; '.join(r2['errors'])}.")
    return lines


def _margin_text(m: Mapping[str, Any]) -> str:
    if m["diff"] is None:
        return "undefined (tied ranks)"
    if m["low"] is None:
        return f"{m['diff']:+.3f} [no interval: every resample has tied ranks]"
    return f"{m['diff']:+.3f} [{m['low']:+.3f}, {m['high']:+.3f}]"


def _scores_text(scores: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    return ", ".join(f"{label} undefined (tied ranks)" if scores[p] is None else
                     f"{label} {_rho_p(scores[p])}" for p, label in labels.items())


def settings_text(s: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    lines = []
    if s["pairs"]:
        lines.append(
            "The paper's data-set level (checkpoints of one data distribution that differ in SFT "
            f"epochs or data size): of the {s['pairs']} pairs of such checkpoints that post-RL "
            "pass@1 orders strictly, each proxy orders the right way round " + ", ".join(
                f"{label} {s['ordered_right'][p]}" for p, label in labels.items()) + ".")
    for d in s["distributions"]:
        lines.append(f"Within `{d['name']}` ({d['n']} checkpoints), Spearman ρ: "
                     f"{_scores_text(d['scores'], labels)}{_floor(d['n'], d['min_p'])}.")
    for r in s["same_recipe"]:
        size, epochs = r["data_size"], r["epochs"]
        recipe = (f"{size} examples × " if size else "") + \
            f"{epochs} epoch{'' if epochs == 1 else 's'}"
        lines.append(f"The paper's instance level (different data sets, one SFT recipe: "
                     f"{recipe}; {r['n']} checkpoints), Spearman ρ: "
                     f"{_scores_text(r['scores'], labels)}{_floor(r['n'], r['min_p'])}.")
    return lines


def control_text(c: Mapping[str, Any]) -> str:
    k = c["k"]

    def share(value: float | None, what: str) -> str:
        if value is None:
            return f"no share ({what} is 0 for every checkpoint)"
        return f"on average {100 * value:.0f}% of {what}"

    text = (f"Guessing control (the same post-SFT samples scored against another prompt's gold "
            f"answer, {c['shifts']} shifts; `sftrl.eval.passk.mismatched_answer_pass_at_k`): "
            f"pass@{k} control {c['control_min']:.3f} to {c['control_max']:.3f} against the "
            f"true {c['true_min']:.3f} to {c['true_max']:.3f}, "
            f"{share(c['share_k'], f'pass@{k}')}; at k = 1 the control is "
            f"{share(c['share_1'], 'pass@1')}.")
    if c["minus_control"] is not None:
        text += (f" pass@{k} minus its control, as a proxy (not one of the paper's): "
                 f"instance-level Spearman ρ {_rho_p(c['minus_control'])}.")
    return text


def group_text(group: str, f: Mapping[str, Any]) -> list[str]:
    """The findings of one predictor group, in the order the report tells them."""
    labels = {name: label for label, name in proxy_rows(f["k"])}
    lines = [f"Group `{group}`: {f['n']} SFT checkpoints with a post-RL result, from "
             f"{f['n_datasets']} data sets; pass@k uses k = {f['k']}."]
    for level in ("instance", "dataset"):
        lines += level_text(f["levels"][level], labels)
    m = f["misranking"]
    if m is not None:
        text = (f"Of the {m['pairs']} checkpoint pairs that post-SFT and post-RL pass@1 both "
                f"order strictly, post-SFT pass@1 orders {m['discordant']} the wrong way round.")
        if m["n_best_rl"] == 1:
            ties = m["top_rl_sft_ties"]
            text += (f" The best checkpoint after RL, `{m['top_rl']}`, ranks "
                     f"{m['top_rl_sft_rank']} of {f['n']} by post-SFT pass@1"
                     + (f" (tied with {ties} other)" if ties else "") + ".")
        else:
            text += f" {m['n_best_rl']} checkpoints share the best post-RL pass@1."
        lines.append(text)
    if f["margins"]:
        lines.append("Instance-level Spearman ρ minus post-SFT pass@1's, with a "
                     f"{100 * CONFIDENCE:g}% paired bootstrap interval over the checkpoints: "
                     + ", ".join(f"{labels[m['proxy']]} {_margin_text(m)}"
                                 for m in f["margins"]) + ".")
    lines += settings_text(f["paper_settings"], labels)
    if f["control"] is not None:
        lines.append(control_text(f["control"]))
    if f["spearman_by_k"]:
        lines.append("Instance-level Spearman ρ of post-SFT pass@k against post-RL pass@1, by k "
                     "(permutation p): " + ", ".join(
                         f"k = {s['k']} {s['rho']:.3f} ({s['p_value']:.3f})"
                         for s in f["spearman_by_k"]) + ".")
    return lines


def signal_text(s: Mapping[str, Any]) -> str:
    return (
        f"RL gain in post-RL minus post-SFT pass@1 over {s['n']} checkpoints: mean "
        f"{s['mean_gain']:+.4f}, std {s['std_gain']:.4f}; its sampling standard error is "
        f"{s['mean_gain_se']:.4f} for the mean and {s['gain_se_rms']:.4f} (rms) per "
        f"checkpoint; {s['n_gain_beyond_noise']} of {s['n']} gains exceed "
        f"{NOISE_SE:g} standard errors. "
        + ("That is too little RL signal at this scale."
           if abs(s["mean_gain"]) <= NOISE_SE * s["mean_gain_se"] else
           "The mean gain is beyond sampling noise.")
        + f" Post-RL pass@1 spans {s['rl_min']:.4f} to {s['rl_max']:.4f} (std "
        f"{s['rl_std']:.4f}, per-checkpoint SE {s['rl_se_rms']:.4f})."
        " The SE counts only evaluation sampling (n samples per fixed prompt, bounded "
        "by sqrt(p(1-p)/(nP))); seed-to-seed variation of RL itself is not measured "
        "(one RL run per checkpoint) and adds to it.")


def verdict_text(v: Mapping[str, Any]) -> str:
    if not v["judged"]:
        return "No checkpoint has both a post-SFT and a post-RL result: nothing to judge."
    if v["reasons"]:
        return ("**The paper's central finding does not reproduce at this scale**: "
                + "; ".join(VERDICT_REASONS[r].format(n=v["n"]) for r in v["reasons"]) + ".")
    return ("**The paper's central finding reproduces at this scale**: post-SFT pass@1 "
            "misranks checkpoints, and the best proxy at the instance level is not pass@1 "
            f"but one with a significantly positive correlation (p < {ALPHA}) that ranks them "
            f"better than pass@1 beyond noise ({100 * CONFIDENCE:g}% paired bootstrap).")


def findings_text(data: Mapping[str, Any]) -> list[str]:
    lines = [line for group, f in data["groups"].items() for line in group_text(group, f)]
    if data["rl_signal"]["n"]:
        lines.append(signal_text(data["rl_signal"]))
    return lines + [verdict_text(f["verdict"]) for f in data["groups"].values()]


# ------------------------------------------------------------------ the other sections


def difference_text(d: Mapping[str, Any], k: int) -> str:
    labels = {name: label for label, name in proxy_rows(k)}
    cells = []
    for c in d["cells"]:
        text = f"{labels[c['proxy']]} {c['ours']:.2f} vs {c['theirs']:.2f}"
        if "margin_here" in c:
            text += (f" (margin over pass@1: {c['margin_here']:+.2f} here, "
                     f"{c['margin_there']:+.2f} there)")
        cells.append(text)
    return (f"Spearman ρ at the {WHERE[d['level']]} level, this study's ({POOLING[d['level']]}) "
            f"vs the paper's {d['model']}: " + "; ".join(cells) + ".")


def setup_text(s: Mapping[str, Any]) -> list[str]:
    return [
        f"- model: {s['model_type']} with hidden size {s['hidden_size']} and "
        f"{s['num_layers']} layers"
        + (f" (≈{s['params'] / 1e6:.2f}M parameters)" if s["params"] else "")
        + "; the paper's are Llama-3-8B and Mistral-NeMo-12B.",
        f"- {s['checkpoints']} SFT checkpoints"
        + (f" (of {s['rows']} in the sweep)" if s["checkpoints"] < s["rows"] else "")
        + f" from {s['datasets']} data sets"
        + (f" of {_or_list(s['data_sizes'])} synthetic examples" if s["data_sizes"] else "")
        + ".",
        f"- the same GRPO budget per checkpoint: {s['rl_steps']} steps.",
        f"- evaluation: {', '.join(s['benchmarks'])}; {s['samples']} samples on each of "
        f"{s['prompts']} prompts.",
    ]


def paper_section(data: Mapping[str, Any], k: int) -> list[str]:
    paper = data["paper"]
    lines = ["## The paper's numbers", "",
             "For comparison with the paper's own table for Llama-3-8B and Mistral-NeMo-12B. "
             + (f"Values from `{paper['path']}`, as typed in there; their source: "
                f"{paper['source']}"
                if paper["path"] else
                "**To be filled from the paper**: its numbers are not available in this "
                "workspace, so the cells are left empty rather than guessed. Fill them by "
                "passing `--paper_numbers=FILE` (see `sftrl.study.load_paper_numbers`)."),
             "", PAPER_HEADLINE, ""]
    lines += paper_table(paper["table"], k)
    lines += [f"- {note}" for note in paper["notes"]] + ([""] if paper["notes"] else [])
    ks = {name: f["k"] for name, f in data["groups"].items()}
    differences = [difference_text(d, ks[d["group"]]) for d in paper["differences"]]
    lines += [f"- {line}" for line in differences] + ([""] if differences else [])
    lines += ["How this study differs from the paper's setting (differences in the numbers "
              "above follow partly from these):", "", *setup_text(data["setup"]), ""]
    return lines


def readme(data: Mapping[str, Any]) -> str:
    """The README of the study whose data (study.json) is `data`."""
    groups = data["predictor"]["groups"]
    k_first = next(iter(groups.values()))["k"]
    sizes = list(data["predictor"]["options"]["calibration_sizes"])
    lines = [f"# Replication study: `{data['sweep']}`", "",
             "Generated by `sftrl.study` from the sweep's output; every number below is "
             "computed from the files it names, none is typed in. Do not edit by hand: "
             "re-run the commands at the end.", ""]
    if data["partial"]:
        lines += ["**Partial: some runs are unfinished (see the missing rows).**", ""]
    lines += ["## Checkpoints", "",
              "Generalization loss is the held-out loss after SFT (nats/token, lower is "
              "better); pass@1 and pass@k are means over the evaluated benchmarks. The "
              "pass@k control is the guessing control (see the findings): the same samples "
              "scored against another prompt's answer. 2·SE(gain) is twice the sampling "
              "standard error of the gain (an upper bound; see the findings).", ""]
    lines += checkpoint_table(data["checkpoints"], k_first)
    for group, g in groups.items():
        lines += [f"## Predictor: group `{group}`", "",
                  f"Outcome: post-RL pass@1. Source: {data['predictor_source']}. Spearman ρ "
                  "with its two-sided permutation p-value over all points; R²: a line fitted "
                  "on every calibration subset of m checkpoints (data sets at the data-set "
                  "level), scored on the rest, mean ± std over subsets. Generalization loss is "
                  "negated so that higher is better for every proxy; the average is of the "
                  "three proxies z-scored within the group.", ""]
        lines += predictor_table(g, sizes)
        lines += [f"![each proxy vs post-RL pass@1; points numbered as in the checkpoint "
                  f"table]({plots.proxies_name(group, len(groups))})", ""]
    lines += ["## Findings", "", *[f"- {f}" for f in findings_text(data)], ""]
    lines += paper_section(data, k_first)
    lines += ["## Plots", ""]
    if any(c["sft_pass@k"] for c in data["checkpoints"]):
        lines += [f"![pass@k before and after RL per checkpoint]({plots.CURVES})", ""]
    if data["rl_signal"]["n"]:
        lines += [f"![RL gain per checkpoint with ±2 SE]({plots.GAINS})", ""]
    partial = data["partial"]
    lines += ["## Time and reproduction", "",
              f"Sweep wall-clock time{' so far' if partial else ''} (first start to last "
              f"end in `{STATUS_FILE}`, the predict run included): "
              f"{duration(data['wall_clock_s'])}; the runs' own times add up to "
              f"{duration(data['runs_total_s'])}.", "",
              "Regenerate everything (sweep, then this page):", "",
              "```", *data["commands"], "```", ""]
    return "\n".join(lines)

