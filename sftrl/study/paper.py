"""The paper's table (`--paper_numbers`, e.g. docs/quagmire_paper_numbers.json) and this study's
Spearman ρ next to it, as data."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sftrl.study.findings import proxy_rows, score
from sftrl.study.sweep import StudyError, read_json

PAPER_MODELS = ("Llama-3-8B", "Mistral-NeMo-12B")
# The one quantitative claim of the paper's abstract (arXiv 2510.01624), the yardstick when the
# table above is empty.
PAPER_HEADLINE = (
    "The paper's abstract (Kang et al., arXiv 2510.01624) sums its table up as: predicting from "
    "generalization loss and pass@large k instead of post-SFT performance improves R² and "
    "Spearman's ρ by up to 0.5 (2×).")
PAPER_COLUMNS = ("dataset_spearman", "dataset_r2", "instance_spearman", "instance_r2")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StudyError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class PaperNumbers:
    """The `--paper_numbers` file: {model: {row label: {column: value}}}, where the numbers
    come from, and notes on them."""

    table: dict[str, dict[str, dict[str, Any]]]
    source: str = ""
    notes: tuple[str, ...] = ()


def _paper_provenance(data: Any, path: Path) -> tuple[str, tuple[str, ...]]:
    """(source, notes): a table without a source cannot be checked, so it is required."""
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source.strip():
        raise StudyError(f"{path}: field 'source' must say where the numbers come from")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise StudyError(f"{path}: field 'notes' must be a list of strings")
    return source.strip(), tuple(notes)


def _leading_number(cell: Any) -> float | None:
    """The number a paper cell starts with ("0.57 ± 0.29" -> 0.57); None for text."""
    if isinstance(cell, int | float) and not isinstance(cell, bool):
        return float(cell)
    match = re.match(r"\s*(-?\d+(?:\.\d+)?)", cell) if isinstance(cell, str) else None
    return float(match[1]) if match else None



def paper_differences(paper: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      g: Mapping[str, Any], k: int) -> list[dict[str, Any]]:
    """Per level and paper model, this study's Spearman ρ next to the paper's, proxy by proxy,
    and the margin over post-SFT pass@1 in both (the paper's headline); entries without a
    comparable cell are left out."""
    out = []
    for level, column in (("dataset", "dataset_spearman"), ("instance", "instance_spearman")):
        ours = {name: score(g, level, name) for _, name in proxy_rows(k)}
        ours = {n: s["spearman"]["rho"] for n, s in ours.items() if "error" not in s}
        for model in PAPER_MODELS:
            table = paper.get(model, {})
            base = _leading_number(table.get("post-SFT pass@1", {}).get(column))
            cells = []
            for label, name in proxy_rows(k):
                key = "pass@k" if label == f"pass@{k}" else label
                theirs = _leading_number(table.get(key, {}).get(column))
                if theirs is None or name not in ours:
                    continue
                cell = {"proxy": name, "ours": ours[name], "theirs": theirs}
                if name != "pass@1" and base is not None and "pass@1" in ours:
                    cell.update(margin_here=ours[name] - ours["pass@1"],
                                margin_there=theirs - base)
                cells.append(cell)
            if cells:
                out.append({"level": level, "model": model, "cells": cells})
    return out


def load_paper_numbers(path: Path | None, k_label: str) -> PaperNumbers:
    """The paper's table from a JSON file typed in from it: {"source": "...", "notes": [...],
    "models": {"Llama-3-8B": {"post-SFT pass@1": {"dataset_spearman": 0.1,
    "dataset_r2": "0.2 ± 0.1", ...}}}}; values are numbers or text, absent cells stay empty."""
    if path is None:
        return PaperNumbers({})
    data = read_json(path)
    source, notes = _paper_provenance(data, path)
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise StudyError(f"{path}: field 'models' must be an object")
    rows = {label for label, _ in proxy_rows(0)} | {k_label, "pass@k (large k)"}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, table in models.items():
        if model not in PAPER_MODELS:
            raise StudyError(f"{path}: models.{model}: not one of {PAPER_MODELS}")
        if not isinstance(table, dict):
            raise StudyError(f"{path}: models.{model}: expected an object")
        for row, cells in table.items():
            where = f"{path}: models.{model}.{row}"
            if row not in rows:
                raise StudyError(f"{where}: unknown row (known: {sorted(rows)})")
            if not isinstance(cells, dict):
                raise StudyError(f"{where}: expected an object")
            for column, value in cells.items():
                if column not in PAPER_COLUMNS:
                    raise StudyError(f"{where}.{column}: unknown column ({PAPER_COLUMNS})")
                if not isinstance(value, str):
                    _number(value, f"{where}.{column}")
            key = "pass@k" if row in (k_label, "pass@k (large k)") else row
            out.setdefault(model, {})[key] = cells
    return PaperNumbers(out, source, notes)
