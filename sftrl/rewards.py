r"""Answer extraction and verification: the one verifier behind GRPO rewards and benchmark scores.

DESIGN: "Rewards are the eval verifier". `reward` is `verify` plus an optional format bonus, and
benchmark scoring calls `verify_batch`, so a number reported after RL and the reward RL optimised
come from the same code.

How a response is judged against a gold answer
    1. Extraction (`ExtractionConfig`, per-benchmark presets in `PRESETS`) lists candidate answers
       in priority order: the last `\boxed{...}` / `\fbox{...}` (nested braces; boxes that follow
       one another, "`\boxed{2}` and `\boxed{3}`", are joined into one list answer), GSM8K
       `#### 42`, "final answer is ...", "answer is ..." / "answer: ...", the last number. Only the
       tail `max_response_chars` of a response is read.
    2. Normalisation (`normalize_answer`) of each candidate and of the gold: unicode compatibility
       forms and math symbols, `$`/`\(`/`\boxed` wrappers, `\left`/`\right`, spacing commands
       (`\!`, `\,`), `\dfrac`, `\text{}` and trailing unit words, thousands separators, percent,
       degrees, currency, a trailing period.
    3. The answer is the first candidate that parses (this mirrors math-verify, which falls back to
       other answers in the text when the preferred one does not parse); with
       `ExtractionConfig(fallback=False)` only the first candidate counts. No candidate: incorrect.
    4. Equivalence, cheapest first: equal normalised strings; plain numbers (integers, decimals,
       fractions, mixed numbers, scientific notation, small powers) in exact rational arithmetic,
       where a decimal also matches a value it agrees with to 6 decimal places (math-verify's
       float rule); an assignment `x = 3` against a gold without one compares its right-hand
       side; a plain number far from a symbolic gold's value (computed once per gold) is wrong.
       Everything else goes to `math-verify` (sympy) in a worker process. Model text is never
       `eval`-ed: numbers are read by regular expressions, and math-verify is only given its
       LaTeX parser (its plain-expression parser goes through sympy's `parse_expr`).

Safety
    Symbolic checks run in a pool of spawned processes (`concurrent.futures.ProcessPoolExecutor`,
    'spawn' context: fork is unsafe once JAX threads exist). Each check has a time limit; a check
    that runs past it is incorrect and counted (`Verifier.stats.timeouts`), and since a busy
    sympy cannot be interrupted, the pool's processes are killed and replaced. A worker that dies
    (segfault, memory limit) costs only the check that killed it (`stats.crashes`). Before sympy
    sees anything, a candidate longer than `max_answer_chars`, nested deeper than `max_depth`,
    with unbalanced brackets, non-ASCII left after normalisation (lookalike letters), exponents
    over `max_exponent` or numeric power towers, factorials of 1000 or more, or LaTeX commands
    that make sympy compute without bound (`\sum`, `\prod`, `\int`, `\lim`) or TeX programming
    (`\def`, `\input`, ...) is refused: it counts as not parsing, so it can only match the gold
    as an equal string.

Caching (`Verifier(cache=True)`, the default)
    A verdict depends on the response only through its normalised candidates, and what is cached
    are pure functions of their keys: the outcome of the symbolic check of (normalised candidate,
    normalised gold) -- including "this candidate does not parse", which sends the walk on to the
    next candidate exactly as an uncached check would -- plus normalised strings, parsed plain
    numbers and each gold's value. So the many identical answers among k samples are checked
    once, and the cache changes no verdict (the tests compare cached, uncached and one-by-one
    verdicts). Timeouts are cached too: a hostile answer repeated 256 times costs one time limit.
    `cache=False` shares no symbolic outcome between samples (each gold is still prepared once).
    For an outcome to be a function of its inputs, workers run with a fixed hash seed and reseed
    sympy's RNG before every check: sympy decides some equalities at random points and shuffles
    its assumption facts, and without this the same check (seen with `\pi\pi\infty` against
    `2`) could come out differently in another worker, after other checks, or in another run.

Command line
    python -m sftrl.rewards --check samples.jsonl [--out rescored.jsonl | --in-place]
        [--benchmark math500] [--response-field response] [--gold-field gold]
        [--verdict-field correct] [--workers N] [--timeout-s S]
    rescores a samples file (one JSON object per line; the response field holds a string or a list
    of strings) into a new file (default `samples.rescored.jsonl`), written incrementally to a
    temporary file beside it and renamed into place at the end. A malformed line or a missing
    field stops it with the file, line and field named.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures as cf
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import re
import sys
import tempfile
import threading
import time
import types
import unicodedata
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

__all__ = [
    "PRESETS",
    "CheckSummary",
    "ExtractionConfig",
    "SamplesFileError",
    "Verifier",
    "VerifierStats",
    "close",
    "extract_answer",
    "extract_candidates",
    "get_config",
    "main",
    "normalize_answer",
    "rescore_file",
    "reward",
    "reward_batch",
    "verify",
    "verify_batch",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

PATTERNS = ("boxed", "hashes", "final_answer", "answer_is", "last_number")


@dataclasses.dataclass(frozen=True)
class ExtractionConfig:
    """Where a benchmark's responses put their final answer, in priority order.

    patterns: names from `PATTERNS`, highest priority first:
        boxed         the last `\\boxed{...}` or `\\fbox{...}` (adjacent boxes joined as a list)
        hashes        GSM8K style `#### 42` (the last one, to the end of its line)
        final_answer  "final answer is X" / "Final Answer: X" (the last one)
        answer_is     "answer is X" / "answer: X" (the last one)
        last_number   the last number in the text
    fallback: when the first candidate does not parse, try the next ones (math-verify does);
        False judges the first candidate only.
    max_response_chars: only this many characters at the end of a response are read, which bounds
        the work on hostile input; final answers come last.
    """

    patterns: tuple[str, ...] = ("boxed", "final_answer", "answer_is")
    fallback: bool = True
    max_response_chars: int = 131_072

    def __post_init__(self) -> None:
        unknown = [p for p in self.patterns if p not in PATTERNS]
        if unknown or not self.patterns:
            raise ValueError(f"ExtractionConfig.patterns: unknown {unknown} (known: {PATTERNS})")
        if self.max_response_chars <= 0:
            raise ValueError("ExtractionConfig.max_response_chars must be positive")


_MATH_STYLE = ExtractionConfig(patterns=("boxed", "final_answer", "answer_is"))
PRESETS: dict[str, ExtractionConfig] = {
    # Unknown source: every explicit answer marker, \boxed first; no bare trailing number.
    "default": ExtractionConfig(patterns=("boxed", "hashes", "final_answer", "answer_is")),
    "math500": _MATH_STYLE,
    "minerva_math": _MATH_STYLE,
    "olympiadbench": _MATH_STYLE,
    # Integer answers: a bare trailing number is not trusted (it is often an intermediate step).
    "aime24": _MATH_STYLE,
    "aime25": _MATH_STYLE,
    "amc23": _MATH_STYLE,
    # GSM8K's own format first; its standard scoring falls back to the last number in the text.
    "gsm8k": ExtractionConfig(
        patterns=("hashes", "boxed", "final_answer", "answer_is", "last_number")
    ),
}


def get_config(config: ExtractionConfig | str | None = None) -> ExtractionConfig:
    """An `ExtractionConfig` from itself, a preset name, or None (the default preset)."""
    if config is None:
        return PRESETS["default"]
    if isinstance(config, ExtractionConfig):
        return config
    try:
        return PRESETS[config]
    except KeyError:
        raise KeyError(f"unknown extraction preset {config!r}; known: {sorted(PRESETS)}") from None


# Upper bound on the length of one extracted answer: longer is junk, never a final answer, and
# bounding it keeps brace matching linear on hostile text.
_MAX_EXTRACT_CHARS = 4096
# Only the last few `\boxed` occurrences are tried, so 100k unclosed boxes stay cheap.
_MAX_BOXES_TRIED = 8
_MAX_BOXES_JOINED = 6

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
# What may stand between two boxes that form one list answer: "\boxed{2} and \boxed{3}".
_BOX_SEPARATOR_RE = re.compile(
    r"[\s$,;]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)[\s$,;]*)?", re.ASCII
)
_FINAL_ANSWER_RE = re.compile(r"final\s+answer(?:\s+is)?\s*[:=]?", re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"\banswer(?:\s+is|\s*:|\s*=)", re.IGNORECASE)
_LAST_NUMBER_RE = re.compile(r"-?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def _matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the `}` closing the `{` at `open_pos` (escaped `\\{` skipped), or None."""
    depth = 0
    end = min(len(text), open_pos + _MAX_EXTRACT_CHARS + 2)
    for token in _BRACE_TOKEN_RE.finditer(text, open_pos, end):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return token.start()
    return None


def _box_at(text: str, pos: int, command: str) -> tuple[int, str] | None:
    """(end, content) of the box whose command starts at `pos`, or None if it does not close."""
    i = pos + len(command)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = _matching_brace(text, i)
        return None if close is None else (close + 1, text[i + 1 : close])
    # `\boxed 5`: TeX takes a single token as the argument.
    token = re.match(r"[0-9A-Za-z.\-]+", text[i : i + 64])
    return None if token is None or i == pos + len(command) else (i + token.end(), token.group())


def _previous_box_start(text: str, before: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for command in _BOX_COMMANDS:
        pos = text.rfind(command, 0, before)
        if pos >= 0 and (best is None or pos > best[0]):
            best = (pos, command)
    return best


def _last_boxed(text: str) -> str | None:
    """Content of the last closed box; boxes right before it (separated by "and", ",") join it."""
    before = len(text)
    for _ in range(_MAX_BOXES_TRIED):
        found = _previous_box_start(text, before)
        if found is None:
            return None
        pos, command = found
        box = _box_at(text, pos, command)
        before = pos
        if box is not None and box[1].strip():
            break
    else:
        return None
    contents = [box[1]]
    start = pos
    while len(contents) < _MAX_BOXES_JOINED:
        found = _previous_box_start(text, start)
        if found is None:
            break
        prev = _box_at(text, found[0], found[1])
        if prev is None or not prev[1].strip():
            break
        gap = text[prev[0] : start]
        if _BOX_SEPARATOR_RE.fullmatch(gap) is None:
            break
        contents.append(prev[1])
        start = found[0]
    return ", ".join(c.strip() for c in reversed(contents))


def _find_unescaped(text: str, token: str, start: int) -> int:
    """Index of the first `token` at or after `start` not escaped by a backslash (`\\$`)."""
    pos = text.find(token, start)
    while pos > 0 and text[pos - 1] == "\\":
        pos = text.find(token, pos + 1)
    return pos


def _answer_after(text: str, pos: int) -> str | None:
    """The answer written right after an anchor such as "final answer is" at `pos`."""
    rest = text[pos : pos + _MAX_EXTRACT_CHARS]
    rest = rest.lstrip(" \t*:")  # markdown bold and stray colons: "**Final Answer:** 5"
    for command in _BOX_COMMANDS:
        if rest.startswith(command):
            box = _box_at(rest, 0, command)
            return None if box is None else box[1]
    for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(opener):
            end = _find_unescaped(rest, closer, len(opener))
            if end < 0:
                return None
            inner = rest[len(opener) : end]
            return inner if opener in ("$$", "\\[") or "\n" not in inner else None
    line = rest.split("\n", 1)[0]
    sentence_end = _SENTENCE_END_RE.search(line)
    if sentence_end is not None:
        line = line[: sentence_end.start()]
    line = line.strip().rstrip("*").strip()
    return line or None


def _last_anchor_answer(text: str, anchor: re.Pattern[str]) -> str | None:
    last = None
    for last in anchor.finditer(text):  # noqa: B007 -- only the last match is wanted
        pass
    return None if last is None else _answer_after(text, last.end())


def _hashes_answer(text: str) -> str | None:
    pos = text.rfind("####")
    if pos < 0:
        return None
    line = text[pos + 4 : pos + 4 + _MAX_EXTRACT_CHARS].split("\n", 1)[0].strip()
    return line or None


def _last_number(text: str) -> str | None:
    last = None
    for last in _LAST_NUMBER_RE.finditer(text):  # noqa: B007 -- only the last match is wanted
        pass
    return None if last is None else last.group().rstrip(",")


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": _last_boxed,
    "hashes": _hashes_answer,
    "final_answer": lambda text: _last_anchor_answer(text, _FINAL_ANSWER_RE),
    "answer_is": lambda text: _last_anchor_answer(text, _ANSWER_IS_RE),
    "last_number": _last_number,
}


def extract_candidates(text: str, config: ExtractionConfig | str | None = None) -> list[str]:
    """Candidate answers in `text`, highest priority first, raw (not normalised), no duplicates.

    With `config.fallback` False only the first candidate is returned.
    """
    cfg = get_config(config)
    if not isinstance(text, str):
        raise TypeError(f"response must be a str, got {type(text).__name__}")
    tail = text[-cfg.max_response_chars :]
    found: list[str] = []
    for name in cfg.patterns:
        answer = (_EXTRACTORS[name](tail) or "").strip()
        if answer and len(answer) <= _MAX_EXTRACT_CHARS and answer not in found:
            found.append(answer)
            if not cfg.fallback:
                break
    return found


def extract_answer(text: str, config: ExtractionConfig | str | None = None) -> str | None:
    """The highest-priority answer in `text` (e.g. the last `\\boxed{}` content), or None."""
    candidates = extract_candidates(text, config)
    return candidates[0] if candidates else None


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

# Unicode math that models (and lookalike attacks) write instead of LaTeX. NFKC runs first, so
# fullwidth digits and similar compatibility forms are already ASCII.
_UNICODE_MATH = str.maketrans({
    "−": "-", "–": "-", "—": "-", "‐": "-", "×": "\\times ", "·": "\\cdot ", "⋅": "\\cdot ",
    "÷": "\\div ", "π": "\\pi ", "√": "\\sqrt ", "∞": "\\infty ", "°": "^\\circ ", "≤": "\\le ",
    "≥": "\\ge ", "≠": "\\ne ", "±": "\\pm ", "∪": "\\cup ", "∩": "\\cap ", "∈": "\\in ",
    "⁄": "/",  # NFKC writes ½ as 1⁄2
    **{
        letter: f"\\{name} "
        for letter, name in zip(
            "αβγδεθκλμνξρστφχψωΓΔΘΛΞΠΣΦΨΩ",
            "alpha beta gamma delta epsilon theta kappa lambda mu nu xi rho sigma tau phi chi psi "
            "omega Gamma Delta Theta Lambda Xi Pi Sigma Phi Psi Omega".split(), strict=True)
    },
})
_SUPERSCRIPT_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_SUPERSCRIPT_RE = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+")
_TEXT_COMMANDS = r"(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathit)"
_WHOLE_TEXT_RE = re.compile(rf"\\{_TEXT_COMMANDS}\s*\{{([^{{}}]*)\}}")
_TEXT_CONJUNCTION_RE = re.compile(rf"\\{_TEXT_COMMANDS}\s*\{{\s*(?:and|or|,)\s*\}}")
# A unit after a value: `5\text{ cm}^2`, `3\mbox{ dollars}`, `2\mathrm{~m}`.
_TEXT_UNIT_RE = re.compile(
    rf"\\{_TEXT_COMMANDS}\s*\{{(?:[\s~][^{{}}]*|[A-Za-z]{{2}}[A-Za-z\s./]*)\}}(?:\^\{{?[0-9]\}}?)?"
)
# `\\` (a matrix row break) is matched first so that its second backslash is not read as the
# start of `\,` or `\ `.
_SPACING_RE = re.compile(r"\\\\|\\[,;: !]|\\q?quad\b|\\enspace\b|\\thinspace\b|~")
_SIZING_RE = re.compile(
    r"\\(?:left|right)\s*\.|\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)\b"
)
_DEGREES_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ\b|\\circ\b|\\degree\b")
_FRAC_DIGITS_RE = re.compile(r"\\frac\s*([0-9])\s*([0-9])")
_FRAC_FIRST_RE = re.compile(r"\\frac\s*([0-9A-Za-z])\s*\{")
_FRAC_SECOND_RE = re.compile(r"\\frac\s*(\{[^{}]*\})\s*([0-9A-Za-z])")
_SQRT_TOKEN_RE = re.compile(r"\\sqrt\s*([0-9A-Za-z])")
_SPACE_AROUND_SYMBOL_RE = re.compile(r"\s*([^\w\s\\])\s*")
_AND_OR_RE = re.compile(r"\s+(?:and|or)\s+")
_UNIT_WORD_RE = re.compile(r"[A-Za-z]{2,}(?:\.|\^\{?[0-9]\}?)?")
_THOUSANDS_RE = re.compile(r"-?[0-9]{1,3}(?:(,)[0-9]{3})+(?:\.[0-9]+)?|-?[0-9]{1,3}(?: [0-9]{3})+")
_SCI_E_RE = re.compile(r"(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))[eE]([-+]?[0-9]+)")
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _unwrap(s: str) -> str:
    """Strip delimiters that wrap the whole answer: `$..$`, `\\(..\\)`, `\\boxed{..}`."""
    for _ in range(8):
        before = s
        s = s.strip().rstrip(".").strip()
        for opener, closer in _WRAPPERS:
            if s.startswith(opener) and s.endswith(closer) and len(s) >= len(opener) + len(closer):
                s = s[len(opener) : len(s) - len(closer)]
        for command in _BOX_COMMANDS:
            if s.startswith(command):
                box = _box_at(s, 0, command)
                if box is not None and box[0] == len(s):
                    s = box[1]
        whole_text = _WHOLE_TEXT_RE.fullmatch(s)
        if whole_text is not None:
            s = whole_text.group(1)
        if s == before:
            break
    return s


def _spacing(match: re.Match[str]) -> str:
    token = match.group()
    return token if token == "\\\\" else "" if token == "\\!" else " "


def _strip_unit_words(s: str) -> str:
    """`5` for `5 apples` / `12 square feet`: words after a value are units or commentary."""
    tokens = s.split(" ")
    end = len(tokens)
    while end > 1 and _UNIT_WORD_RE.fullmatch(tokens[end - 1]):
        end -= 1
    if end == len(tokens) or not tokens[end - 1] or tokens[end - 1][-1] not in "0123456789})":
        return s
    return " ".join(tokens[:end])


@functools.lru_cache(maxsize=65_536)
def normalize_answer(answer: str) -> str:
    """A canonical string for an answer, so equal answers written differently compare equal.

    Presentation only -- units, `\\text{}`, spacing, thousands separators, percent, degrees,
    currency, wrappers, a trailing period -- never arithmetic.
    """
    # Superscripts first: NFKC would turn x² into x2.
    s = _SUPERSCRIPT_RE.sub(lambda m: "^{" + m.group().translate(_SUPERSCRIPT_DIGITS) + "}",
                            answer)
    s = unicodedata.normalize("NFKC", s)
    s = "".join(c for c in s if unicodedata.category(c) not in ("Cf", "Cc") or c in "\n\t")
    s = s.translate(_UNICODE_MATH).replace("\n", " ").replace("\t", " ")
    s = _unwrap(s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _SPACING_RE.sub(_spacing, s.replace("{,}", ","))
    s = _SIZING_RE.sub("", s)
    s = re.sub(r"\\[dtc]frac\b", r"\\frac", s)
    s = re.sub(r"\\[dt]binom\b", r"\\binom", s)
    s = s.replace("\\displaystyle", "").replace("\\lbrace", "\\{").replace("\\rbrace", "\\}")
    s = _DEGREES_RE.sub("", s)
    s = _TEXT_CONJUNCTION_RE.sub(",", s)
    if _WHOLE_TEXT_RE.fullmatch(s.strip()) is None:
        s = _TEXT_UNIT_RE.sub("", s)
    s = _unwrap(s)
    s = _FRAC_DIGITS_RE.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_FIRST_RE.sub(r"\\frac{\1}{", s)
    s = _FRAC_SECOND_RE.sub(r"\\frac\1{\2}", s)
    s = _SQRT_TOKEN_RE.sub(r"\\sqrt{\1}", s)
    s = s.replace("**", "^")
    s = _strip_unit_words(_AND_OR_RE.sub(",", " ".join(s.split())))
    s = re.sub(r"\s+\\", r"\\", s)
    s = re.sub(r"\\\\\s+", r"\\\\", s)  # a space after a row break `\\` means nothing
    s = _SPACE_AROUND_SYMBOL_RE.sub(r"\1", s)
    s = s.strip().rstrip(".,;").lstrip("=").strip()
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    sci = _SCI_E_RE.fullmatch(s)
    if sci is not None:  # 4.5e33 -> what sympy's LaTeX parser reads as a number, not 4.5 * e * 33
        s = f"{sci.group(1)}\\times10^{{{int(sci.group(2))}}}"
    return s


# ---------------------------------------------------------------------------------------------
# Plain numbers, in exact rational arithmetic
# ---------------------------------------------------------------------------------------------

_DECIMAL = r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_INTEGER_RE = re.compile(r"-?[0-9]+")
_DECIMAL_RE = re.compile(_DECIMAL)
_SCI_TIMES_RE = re.compile(
    rf"({_DECIMAL})(?:\\times|\\cdot|\*)10\^(?:\{{([-+]?[0-9]+)\}}|([0-9]))"
)
_POWER_OF_INT_RE = re.compile(r"(-?)([0-9]+)\^(?:\{([0-9]+)\}|([0-9]))")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}")
_SLASH_RE = re.compile(r"(-?[0-9]+)/(-?[0-9]+)")
_MIXED_RE = re.compile(r"(-?)([0-9]+)\\frac\{([0-9]+)\}\{([0-9]+)\}")
_ASSIGNMENT_RE = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?=([^=<>]+)")
# Keeps exact arithmetic small: 10^400 is fine, 10^(10^9) is not a plain number.
_MAX_PLAIN_EXPONENT = 400
_DECIMAL_PLACES = 6  # math-verify's float_rounding: a decimal matches when equal to 6 places
_FAR = Fraction(1, 10**6)  # see Verifier._far_from_gold


@dataclasses.dataclass(frozen=True)
class _Number:
    value: Fraction
    inexact: bool  # written as a decimal, so possibly rounded


def _decimal_fraction(text: str) -> Fraction | None:
    try:
        return Fraction(Decimal(text))
    except (InvalidOperation, ValueError):
        return None


def _as_number(s: str) -> _Number | None:
    """The value of a normalised answer that is a plain number, or None. Never evaluates code."""
    if len(s) > 200:
        return None
    if _INTEGER_RE.fullmatch(s):
        return _Number(Fraction(int(s)), inexact=False)
    if _DECIMAL_RE.fullmatch(s):
        value = _decimal_fraction(s)
        return None if value is None else _Number(value, inexact=True)
    if m := _SCI_TIMES_RE.fullmatch(s):
        exponent = int(m.group(2) or m.group(3))
        mantissa = _decimal_fraction(m.group(1))
        if mantissa is None or abs(exponent) > _MAX_PLAIN_EXPONENT:
            return None
        return _Number(mantissa * Fraction(10) ** exponent, inexact="." in m.group(1))
    if m := _POWER_OF_INT_RE.fullmatch(s):  # -2^{2} is -(2^2)
        sign, base, exponent = m.group(1), m.group(2), int(m.group(3) or m.group(4))
        if exponent * len(base) > _MAX_PLAIN_EXPONENT:
            return None
        value = Fraction(int(base)) ** exponent
        return _Number(-value if sign else value, inexact=False)
    for pattern in (_FRAC_RE, _SLASH_RE):
        if m := pattern.fullmatch(s):
            groups = m.groups()
            sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
            numerator, denominator = int(groups[-2]), int(groups[-1])
            if denominator == 0:
                return None
            return _Number(sign * Fraction(numerator, denominator), inexact=False)
    if m := _MIXED_RE.fullmatch(s):  # 1\frac{4}{5} is one and four fifths, as in MATH
        sign, whole, numerator, denominator = m.groups()
        if int(denominator) == 0:
            return None
        value = int(whole) + Fraction(int(numerator), int(denominator))
        return _Number(-value if sign else value, inexact=False)
    return None


def _numbers_equal(a: _Number, b: _Number) -> bool:
    if a.value == b.value:
        return True
    if a.inexact or b.inexact:
        return round(a.value, _DECIMAL_PLACES) == round(b.value, _DECIMAL_PLACES)
    return False


def _assignment_rhs(s: str) -> str | None:
    """`3` for `x=3` (or `a_1=3`): a single-variable assignment's right-hand side."""
    m = _ASSIGNMENT_RE.fullmatch(s)
    return None if m is None else m.group(1)


def _is_relation(s: str) -> bool:
    return any(op in s for op in ("=", "<", ">", "\\le", "\\ge", "\\ne"))


# ---------------------------------------------------------------------------------------------
# Static guards: what sympy is never shown
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Limits:
    max_answer_chars: int = 1000
    max_depth: int = 24
    max_exponent: int = 10_000


# `\sum`, `\int`, `\prod`, `\lim` make sympy compute (an unbounded amount); the rest is TeX
# programming that has no place in an answer.
_REFUSED_COMMAND_RE = re.compile(
    r"\\(?:i{1,3}nt|oint|sum|prod|coprod|lim|limsup|liminf|def|gdef|edef|xdef|newcommand|"
    r"renewcommand|providecommand|DeclareMathOperator|input|include|write|immediate|openout|"
    r"openin|read|csname|catcode|let|expandafter|special|usepackage)(?![A-Za-z])"
)
_BIG_FACTORIAL_RE = re.compile(r"[0-9]{4,}\s*!")
_NUMERIC_RE = re.compile(r"[0-9{}()\s+\-*^.]+")
_UNBRACED_TOWER_RE = re.compile(r"[0-9]\s*\^\s*\{?\s*[0-9]+\s*\}?\s*\^")
_INT_LITERAL_RE = re.compile(r"[0-9]+")


def _nesting(s: str) -> tuple[int, bool]:
    """(deepest nesting of brackets of any kind, whether they are balanced).

    `{}` must pair up; `(` and `[` may close with either `)` or `]`, as intervals do.
    """
    depth = deepest = braces = 0
    balanced = True
    escaped = False
    for char in s:
        if escaped:  # `\{` is a literal brace, not a group
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "{([":
            depth += 1
            deepest = max(deepest, depth)
            braces += char == "{"
        elif char in "})]":
            depth -= 1
            braces -= char == "}"
            balanced = balanced and depth >= 0 and braces >= 0
    return deepest, balanced and depth == 0 and braces == 0


def _exponent_at(s: str, caret: int) -> str:
    """The text of the exponent after the `^` at `caret`: a braced group or one token."""
    i = caret + 1
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        close = _matching_brace(s, i)
        return s[i + 1 : close] if close is not None else s[i + 1 :]
    digits = re.match(r"[0-9]+|\\?[A-Za-z]+|.", s[i:])
    return "" if digits is None else digits.group()


def _oversized_power(s: str, limits: _Limits) -> bool:
    for caret in (i for i, c in enumerate(s) if c == "^"):
        exponent = _exponent_at(s, caret)
        if "^" in exponent and _NUMERIC_RE.fullmatch(exponent):
            return True  # 9^{9^{9}}: a number with hundreds of millions of digits
        literals = _INT_LITERAL_RE.findall(exponent)
        if not literals:
            continue
        if any(len(x) > 9 for x in literals):
            return True
        base = re.search(r"([0-9]+)\s*\}?\s*$", s[max(0, caret - 64) : caret])
        base_digits = len(base.group(1)) if base else 1
        if max(int(x) for x in literals) * base_digits > limits.max_exponent:
            return True
    return False


@functools.lru_cache(maxsize=65_536)
def _refusal(s: str, limits: _Limits) -> str | None:
    """Why a normalised answer must not reach sympy, or None when it may."""
    if len(s) > limits.max_answer_chars:
        return "too long"
    if not s.isascii():
        return "non-ASCII"  # lookalike letters; NFKC already mapped the honest compatibility forms
    deepest, balanced = _nesting(s)
    if deepest > limits.max_depth:
        return "nested too deep"
    if not balanced:
        return "unbalanced brackets"  # malformed: it cannot parse
    if _REFUSED_COMMAND_RE.search(s):
        return "refused command"
    if _BIG_FACTORIAL_RE.search(s):
        return "factorial too large"
    if "^" in s and (_UNBRACED_TOWER_RE.search(s) or _oversized_power(s, limits)):
        return "exponent too large"
    return None


# ---------------------------------------------------------------------------------------------
# The symbolic check, run in worker processes
# ---------------------------------------------------------------------------------------------

CORRECT, WRONG, UNPARSABLE, TIMEOUT, CRASHED, ERROR = (
    "correct", "wrong", "unparsable", "timeout", "crashed", "error"
)


@functools.cache
def _math_verify() -> Any:
    """math-verify, imported on first use: only worker processes need sympy."""
    import math_verify

    return math_verify


@functools.cache
def _latex_only_extraction() -> tuple[Any, ...]:
    # LaTeX extraction only: math-verify's plain-expression extraction goes through sympy's
    # `parse_expr`, which evaluates Python, and must never see model text.
    mv = _math_verify()
    return (mv.LatexExtractionConfig(boxed_match_priority=-1),)


@functools.lru_cache(maxsize=8192)
def _parse_symbolic(answer: str) -> tuple[Any, ...]:
    """math-verify's parse of a normalised answer; () when it does not parse."""
    mv = _math_verify()
    parsed = mv.parse(
        "$" + answer + "$",
        extraction_config=_latex_only_extraction(),
        fallback_mode="no_fallback",
        extraction_mode="first_match",
        parsing_timeout=None,  # the parent's per-check limit kills this process instead
    )
    return tuple(parsed)


def _check_symbolic(candidate: str, gold: str, limits: _Limits) -> str:
    """Outcome of comparing one normalised candidate with a normalised gold using math-verify."""
    if _refusal(candidate, limits) is not None:
        return UNPARSABLE
    try:
        answer = _parse_symbolic(candidate)
    except Exception:  # a parser bug on hostile text is "does not parse", not a crash
        return UNPARSABLE
    if not answer:
        return UNPARSABLE
    try:
        target = _parse_symbolic(gold) if _refusal(gold, limits) is None else ()
        if not target:
            return WRONG
        same = _math_verify().verify(list(target), list(answer), timeout_seconds=None)
    except Exception:
        return ERROR
    return CORRECT if same else WRONG


# Fixed seeds for the workers' hashing and sympy's RNG: see _reseed_sympy and _spawning_workers.
_SEED = 20250101

# A job whose "candidate" is this asks for the gold's numeric value instead of a comparison
# (no real candidate is empty: empty candidates are dropped at extraction).
_GOLD_VALUE_JOB = ""
_NO_VALUE = "no value"


def _gold_value(gold: str, limits: _Limits) -> str:
    """The gold's value as a 30-digit decimal if it is one real constant (`\\frac{\\pi}{6}`,
    `x = 2\\sqrt{3}`), else `_NO_VALUE`. Lets the parent rule out plain numbers far from it."""
    if _refusal(gold, limits) is not None:
        return _NO_VALUE
    try:
        parsed = _parse_symbolic(gold)
        if len(parsed) != 1:
            return _NO_VALUE
        import sympy

        expr = parsed[0]
        if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
            expr = expr.rhs  # an assignment is compared by its right-hand side, as math-verify does
        if (not isinstance(expr, sympy.Expr) or getattr(expr, "is_Matrix", False)
                or isinstance(expr, sympy.Tuple) or expr.free_symbols):
            return _NO_VALUE
        value = expr.evalf(30)
        if not isinstance(value, sympy.Float) or not value.is_finite:
            return _NO_VALUE
        return str(value)
    except Exception:
        return _NO_VALUE


def _exit_when_orphaned(parent_pid: int, poll_s: float = 0.5) -> None:
    """Ends this worker once its parent is gone (the parent's pid is no longer our parent's).

    A SIGKILLed parent (a preempted job, kill -9) runs no clean-up, and an idle worker blocked on
    the executor's queue would wait forever. Polling the parent pid works on every POSIX system
    and, unlike Linux's PR_SET_PDEATHSIG, does not fire when merely the thread that happened to
    start the worker ends.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(0)

    threading.Thread(target=watch, name="sftrl-orphan-watch", daemon=True).start()


def _worker_init(memory_bytes: int | None, parent_pid: int | None = None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which cleans up
    if parent_pid is not None:
        _exit_when_orphaned(parent_pid)
    if memory_bytes:
        try:
            import resource

            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            limit = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass  # not on this platform: the time limit still bounds a runaway check
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _latex_only_extraction()  # import sympy now, so no timed check pays for it
    _parse_symbolic("1")


def _worker_ping(delay_s: float) -> int:
    time.sleep(delay_s)
    return os.getpid()


def _reseed_sympy() -> None:
    """Make the next check a function of its inputs alone.

    sympy decides some equalities at random points and shuffles its assumption facts with a
    module-level RNG seeded from entropy, so the same check could come out differently in another
    worker, or after other checks in the same one (seen with answers such as `\\pi\\pi\\infty`
    against `2`). Reseeding before every check is what lets a cached outcome stand for a fresh
    one, and makes reruns reproduce.
    """
    import random

    import sympy.core.random

    sympy.core.random.seed(_SEED)
    random.seed(_SEED)


def _worker_run(jobs: tuple[tuple[str, str], ...], limits: _Limits) -> list[str]:
    outcomes = []
    for candidate, gold in jobs:
        _reseed_sympy()
        outcomes.append(_gold_value(gold, limits) if candidate == _GOLD_VALUE_JOB
                        else _check_symbolic(candidate, gold, limits))
    return outcomes


# ---------------------------------------------------------------------------------------------
# The process pool: per-check time limits by killing and replacing workers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _spawning_workers() -> Iterator[None]:
    """What worker processes are started with: no `__main__` of ours, a fixed hash seed.

    A 'spawn' child imports the parent's main module, to find what was pickled from it. Our
    workers need only this module; importing, say, the training entry point there would cost
    seconds and a JAX import per worker (and every restart), and a script without an
    `if __name__ == "__main__"` guard would re-run itself. A fixed PYTHONHASHSEED makes set and
    dict iteration inside sympy the same in every worker and every run (with `_reseed_sympy`,
    the same check gives the same outcome anywhere). Processes are only started inside this
    block, so both are changed just for that moment.
    """
    main, hash_seed = sys.modules["__main__"], os.environ.get("PYTHONHASHSEED")
    sys.modules["__main__"] = types.ModuleType("__main__")
    os.environ["PYTHONHASHSEED"] = str(_SEED)
    try:
        yield
    finally:
        sys.modules["__main__"] = main
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed


@dataclasses.dataclass
class _Task:
    indices: tuple[int, ...]
    suspect: bool = False  # was in flight when a worker died: runs alone until cleared
    deadline: float = 0.0
    started: float = 0.0


class _WorkerPool:
    """Runs symbolic checks in spawned processes, each check under a wall-clock limit.

    Work goes out in chunks, at most one per worker, so a chunk that is submitted is running and
    its deadline means something. A chunk gets the limit of one check: if it finishes in time,
    every check in it did; if not, it is split and rerun one check at a time, and a single check
    that runs out of time is a TIMEOUT. Either way the processes are killed and replaced, because
    a busy sympy cannot be interrupted. When a worker dies, the checks that were in flight are
    rerun alone, so a second death names its check (CRASHED).
    """

    def __init__(self, workers: int, timeout_s: float, limits: _Limits,
                 memory_bytes: int | None, startup_timeout_s: float = 120.0,
                 worker_fn: Callable[[tuple[tuple[str, str], ...], _Limits], list[str]] = (
                     _worker_run)) -> None:
        # worker_fn: what a worker runs on a chunk of jobs; must be importable by name (spawn).
        self.worker_fn = worker_fn
        self.workers = workers
        self.timeout_s = timeout_s
        self.limits = limits
        self.memory_bytes = memory_bytes
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        self._executor: cf.ProcessPoolExecutor | None = None
        self._seconds_per_check = 0.01  # running estimate, sizes the chunks

    # -- lifecycle --------------------------------------------------------------------------

    def _start(self) -> cf.ProcessPoolExecutor:
        import importlib.util

        if importlib.util.find_spec("math_verify") is None:  # fail here, not in a worker
            raise ImportError("symbolic answer checks need math-verify: pip install math-verify")
        executor = cf.ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(self.memory_bytes, os.getpid()),
        )
        # Wait until every worker has started and imported sympy, so that no check's deadline
        # includes a process start-up.
        deadline = time.monotonic() + self.startup_timeout_s
        pids: set[int] = set()
        try:
            with _spawning_workers():  # each submit here starts one process
                pings = [executor.submit(_worker_ping, 0.05) for _ in range(self.workers)]
            while True:
                for ping in pings:
                    pids.add(ping.result(timeout=max(0.1, deadline - time.monotonic())))
                if len(pids) >= self.workers:
                    break
                pings = [executor.submit(_worker_ping, 0.05) for _ in range(self.workers)]
        except BaseException:
            self._kill(executor)
            raise
        self._executor = executor
        return executor

    # Only the executor's manager thread reaps worker processes: joining (polling) them from
    # here as well races with its waitpid and can report a reaped worker as alive.

    @staticmethod
    def _kill(executor: cf.ProcessPoolExecutor) -> None:
        # ProcessPoolExecutor has no public way to stop a busy worker before Python 3.14
        # (`kill_workers`), hence the private `_processes`. kill() only signals; it never reaps.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.kill()
        executor.shutdown(wait=True, cancel_futures=True)  # the manager thread reaps them

    def _restart(self) -> None:
        if self._executor is not None:
            self._kill(self._executor)
            self._executor = None
            self.restarts += 1

    def close(self) -> None:
        """Stop the workers: politely if they are idle, by force if one is still busy."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        manager = getattr(executor, "_executor_manager_thread", None)
        executor.shutdown(wait=False, cancel_futures=True)  # idle workers exit, manager reaps
        if manager is not None:
            manager.join(timeout=5)
        if manager is None or manager.is_alive():
            for process in processes:
                process.kill()
            if manager is not None:
                manager.join(timeout=10)

    @property
    def started(self) -> bool:
        return self._executor is not None

    # -- running checks ---------------------------------------------------------------------

    def _chunk_size(self) -> int:
        # A chunk must finish well inside one check's limit, or it is split and rerun.
        return max(1, min(32, int(0.1 * self.timeout_s / self._seconds_per_check)))

    def run(self, jobs: Sequence[tuple[str, str]], *,
            on_done: Callable[[int], None] | None = None) -> tuple[list[str], int, int]:
        """Outcomes of `jobs` (candidate, gold), plus the number of timeouts and crashes."""
        try:
            return self._run(jobs, on_done)
        except BaseException:
            # Ctrl-C or a bug: checks may still be running, and a later call must not inherit
            # busy workers (its deadlines would be wrong).
            self._restart()
            raise

    def _run(self, jobs: Sequence[tuple[str, str]],
             on_done: Callable[[int], None] | None) -> tuple[list[str], int, int]:
        outcomes: list[str | None] = [None] * len(jobs)
        fresh = deque(range(len(jobs)))
        retry: deque[_Task] = deque()
        in_flight: dict[cf.Future[list[str]], _Task] = {}
        timeouts = crashes = 0

        def finish(index: int, outcome: str) -> None:
            outcomes[index] = outcome
            if on_done is not None:
                on_done(1)

        while fresh or retry or in_flight:
            executor = self._executor or self._start()
            self._fill(executor, jobs, fresh, retry, in_flight)
            wait_s = max(0.0, min(t.deadline for t in in_flight.values()) - time.monotonic())
            done, _ = cf.wait(in_flight, timeout=wait_s, return_when=cf.FIRST_COMPLETED)
            broken = False
            for future in done:
                task = in_flight.pop(future)
                try:
                    results = future.result()
                except BrokenProcessPool:
                    broken = True
                    crashes += self._after_crash(task, retry, finish)
                    continue
                self._learn_speed(task, len(results))
                for index, outcome in zip(task.indices, results, strict=True):
                    finish(index, outcome)
            now = time.monotonic()
            expired = [f for f, t in in_flight.items() if t.deadline <= now]
            if not broken and not expired:
                continue
            for future in expired:
                task = in_flight.pop(future)
                if len(task.indices) == 1:
                    timeouts += 1
                    finish(task.indices[0], TIMEOUT)
                else:
                    retry.extendleft(_Task((i,)) for i in reversed(task.indices))
            for task in in_flight.values():
                if broken:  # cannot tell which in-flight check killed the worker
                    crashes += self._after_crash(task, retry, finish)
                else:  # innocent bystander of a kill: rerun as it was
                    retry.appendleft(_Task(task.indices, suspect=task.suspect))
            in_flight.clear()
            self._restart()
        return [o if o is not None else ERROR for o in outcomes], timeouts, crashes

    def _fill(self, executor: cf.ProcessPoolExecutor, jobs: Sequence[tuple[str, str]],
              fresh: deque[int], retry: deque[_Task],
              in_flight: dict[cf.Future[list[str]], _Task]) -> None:
        while len(in_flight) < self.workers and (fresh or retry):
            if any(t.suspect for t in in_flight.values()):
                return  # a suspect runs alone
            if retry:
                if retry[0].suspect and in_flight:
                    return
                task = retry.popleft()
            else:
                size = self._chunk_size()
                task = _Task(tuple(fresh.popleft() for _ in range(min(size, len(fresh)))))
            future = executor.submit(self.worker_fn, tuple(jobs[i] for i in task.indices),
                                     self.limits)
            task.started = time.monotonic()
            task.deadline = task.started + self.timeout_s
            in_flight[future] = task
            if task.suspect:
                return

    def _after_crash(self, task: _Task, retry: deque[_Task],
                     finish: Callable[[int, str], None]) -> int:
        if task.suspect and len(task.indices) == 1:
            finish(task.indices[0], CRASHED)
            return 1
        retry.extendleft(_Task((i,), suspect=True) for i in reversed(task.indices))
        return 0

    def _learn_speed(self, task: _Task, n: int) -> None:
        per_check = (time.monotonic() - task.started) / max(1, n)
        self._seconds_per_check = 0.8 * self._seconds_per_check + 0.2 * max(per_check, 1e-4)


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class VerifierStats:
    """Counters since the verifier was made (see `Verifier.stats`)."""

    checks: int = 0  # (response, gold) pairs judged
    fast: int = 0  # decided without sympy (no answer, equal strings, plain numbers)
    cache_hits: int = 0  # decided by sympy outcomes all already cached when the batch came
    symbolic: int = 0  # symbolic checks run in workers (each distinct one once, when cached)
    timeouts: int = 0  # symbolic checks that ran out of time (verdict: incorrect)
    crashes: int = 0  # symbolic checks that killed their worker (verdict: incorrect)
    refused: int = 0  # candidates kept from sympy by the static guards
    restarts: int = 0  # times the worker processes were killed and replaced

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _gold_text(gold: object) -> str:
    if isinstance(gold, bool) or not isinstance(gold, str | int | float):
        raise TypeError(f"gold answer must be a str (or a number), got {type(gold).__name__}")
    text = str(gold)
    if not text.strip():
        raise ValueError("gold answer is empty")
    return text


_Lookup = Callable[[str, str], str | None]


class _Candidates:
    """A response's normalised candidate answers, extracted only as far as a verdict needs.

    Most responses are decided by their first candidate, so the later patterns (the case-
    insensitive anchor searches) usually never run. The sequence is the same as extracting
    everything up front; it is just computed lazily.
    """

    __slots__ = ("_config", "_next_pattern", "_tail", "found")

    def __init__(self, response: str, config: ExtractionConfig) -> None:
        if not isinstance(response, str):
            raise TypeError(f"response must be a str, got {type(response).__name__}")
        self._tail = response[-config.max_response_chars :]
        self._config = config
        self._next_pattern = 0
        self.found: list[str] = []

    def get(self, position: int) -> str | None:
        """The candidate at `position`, or None when there are no more."""
        patterns = self._config.patterns
        while len(self.found) <= position and self._next_pattern < len(patterns):
            if self.found and not self._config.fallback:
                break
            raw = (_EXTRACTORS[patterns[self._next_pattern]](self._tail) or "").strip()
            self._next_pattern += 1
            if raw and len(raw) <= _MAX_EXTRACT_CHARS:
                candidate = normalize_answer(raw)
                if candidate and candidate not in self.found:
                    self.found.append(candidate)
        return self.found[position] if position < len(self.found) else None


class _Outcomes(dict[tuple[str, str], str]):
    """One item's own symbolic outcomes (the uncached path)."""

    def get_pair(self, candidate: str, gold: str) -> str | None:
        return self.get((candidate, gold))


class Verifier:
    """Judges responses against gold answers; owns the worker processes and the caches.

    Args:
        config: default extraction config (an `ExtractionConfig` or a preset name).
        workers: worker processes for symbolic checks (default: up to 4, no more than the CPUs).
        timeout_s: wall-clock limit of one symbolic check; past it the check is incorrect.
        cache: reuse symbolic outcomes across identical (candidate, gold) pairs; it changes no
            verdict (see the module docstring), only the time taken.
        max_answer_chars, max_depth, max_exponent: the static guards on what reaches sympy.
        worker_memory_bytes: data-segment limit of each worker (None: unlimited).

    Use as a context manager, or call `close()`; the processes start on the first check that
    needs sympy and are reused across calls.
    """

    def __init__(self, config: ExtractionConfig | str | None = None, *,
                 workers: int | None = None, timeout_s: float = 5.0, cache: bool = True,
                 max_answer_chars: int = 1000, max_depth: int = 24, max_exponent: int = 10_000,
                 worker_memory_bytes: int | None = 4 << 30, cache_entries: int = 500_000
                 ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.config = get_config(config)
        self.cache = cache
        self.limits = _Limits(max_answer_chars, max_depth, max_exponent)
        self._pool = _WorkerPool(workers or _default_workers(), timeout_s, self.limits,
                                 worker_memory_bytes)
        self._outcomes: dict[tuple[str, str], str] = {}
        self._numbers: dict[str, _Number | None] = {}
        # gold -> its numeric value (None: not one real constant); gold preparation, kept with
        # or without `cache` -- it can only rule out what sympy would rule out too
        self._gold_values: dict[str, Fraction | None] = {}
        self._cache_entries = cache_entries
        self._stats = VerifierStats()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, self._pool.close)

    # -- public API -------------------------------------------------------------------------

    @property
    def stats(self) -> VerifierStats:
        return dataclasses.replace(self._stats, restarts=self._pool.restarts)

    def verify(self, response: str, gold: str, *,
               config: ExtractionConfig | str | None = None) -> bool:
        """Whether `response`'s final answer equals `gold`."""
        return self.verify_batch([(response, gold)], config=config)[0]

    def verify_batch(self, pairs: Iterable[tuple[str, str]], *,
                     config: ExtractionConfig | str | None = None,
                     progress: bool = False) -> list[bool]:
        """Verdicts for (response, gold) pairs, in order."""
        cfg = get_config(config) if config is not None else self.config
        items = []
        for index, (response, gold) in enumerate(pairs):
            try:
                items.append(self._prepare(response, _gold_text(gold), cfg))
            except (TypeError, ValueError) as error:
                raise type(error)(f"pair {index}: {error}") from None
        with self._lock:
            return self._judge(items, progress)

    def reward(self, response: str, gold: str, *, format_bonus: float = 0.0,
               config: ExtractionConfig | str | None = None) -> float:
        """1.0 for a correct answer, plus `format_bonus` when the first pattern finds an answer."""
        return self.reward_batch([(response, gold)], format_bonus=format_bonus, config=config)[0]

    def reward_batch(self, pairs: Iterable[tuple[str, str]], *, format_bonus: float = 0.0,
                     config: ExtractionConfig | str | None = None) -> list[float]:
        """`reward` for many (response, gold) pairs; identical answers are checked once."""
        cfg = get_config(config) if config is not None else self.config
        pairs = list(pairs)
        verdicts = self.verify_batch(pairs, config=cfg)
        return rewards_from_verdicts([r for r, _ in pairs], verdicts, format_bonus=format_bonus,
                                     config=cfg)

    def close(self) -> None:
        """Stop the worker processes (they start again if needed)."""
        self._pool.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one item ---------------------------------------------------------------------------

    def _prepare(self, response: str, gold: str,
                 config: ExtractionConfig) -> tuple[_Candidates, str]:
        return _Candidates(response, config), normalize_answer(gold)

    def _number(self, s: str) -> _Number | None:
        if not self.cache:
            return _as_number(s)
        if s not in self._numbers:
            if len(self._numbers) >= self._cache_entries:
                self._numbers.clear()
            self._numbers[s] = _as_number(s)
        return self._numbers[s]

    def _fast_verdict(self, candidate: str, gold: str) -> bool | None:
        """True/False when string and plain-number rules decide; None when sympy must."""
        if candidate == gold:
            return True
        if _is_relation(candidate) != _is_relation(gold):
            # `x=3` against `3` (or the reverse): compare the right-hand side, as math-verify does
            if (rhs := _assignment_rhs(candidate)) is not None and not _is_relation(gold):
                candidate = rhs
            elif (rhs := _assignment_rhs(gold)) is not None and not _is_relation(candidate):
                gold = rhs
            else:
                return None
            if candidate == gold:
                return True
        a, b = self._number(candidate), self._number(gold)
        if a is not None and b is not None:
            return _numbers_equal(a, b)
        return None

    def _far_from_gold(self, candidate: str, gold: str) -> bool | None:
        """For a plain-number candidate and a gold that is not one: True when the gold's value
        (computed once per gold, in a worker) is far from it, None while the value is unknown.

        "Far" is more than 1e-6 relative. Every way math-verify can call a number equal to an
        expression (same value, equal to 6 decimal places, a zero difference) is within that,
        so this rules out only what sympy would: a shortcut, not a different verdict.
        """
        number = self._number(candidate)
        if number is None or self._number(gold) is not None:
            return False
        if gold not in self._gold_values:
            return None
        value = self._gold_values[gold]
        return value is not None and abs(number.value - value) > _FAR * max(1, abs(value))

    def _walk(self, candidates: _Candidates, gold: str, start: int,
              lookup: _Lookup) -> tuple[bool | None, int, bool, tuple[str, str] | None]:
        """(verdict, position, by_sympy, job): a verdict, or None and the worker job it waits
        for. Candidates before `start` are known not to parse."""
        position = start - 1
        while (candidate := candidates.get(position := position + 1)) is not None:
            fast = self._fast_verdict(candidate, gold)
            if fast is not None:
                return fast, position, False, None
            far = self._far_from_gold(candidate, gold)
            if far is None:
                return None, position, False, (_GOLD_VALUE_JOB, gold)
            if far:
                return False, position, False, None
            if _refusal(candidate, self.limits) is not None:
                continue  # never parsed, so "does not parse": on to the next candidate
            outcome = lookup(candidate, gold)
            if outcome is None:
                return None, position, True, (candidate, gold)
            if outcome != UNPARSABLE:
                return outcome == CORRECT, position, True, None
        return False, position, False, None  # no candidate parses: incorrect

    # -- batches ----------------------------------------------------------------------------

    def _judge(self, items: list[tuple[_Candidates, str]], progress: bool) -> list[bool]:
        """Walk every item's candidates; run the symbolic checks the walks stop at; repeat.

        Cached: a check is keyed by (candidate, gold) and shared by every item that needs it,
        now and in later batches. Uncached: each item keeps its own outcomes, so identical items
        are checked separately -- the reference the cached path must reproduce.
        """
        verdicts: list[bool] = [False] * len(items)
        positions = [0] * len(items)
        own = [_Outcomes() for _ in items] if not self.cache else []
        waiting = list(range(len(items)))
        waited = [False] * len(items)  # needed a check that was not cached yet
        by_sympy = [False] * len(items)
        while waiting:
            still: list[int] = []
            jobs: list[tuple[str, str]] = []
            for index in waiting:
                candidates, gold = items[index]
                lookup = self._cached_outcome if self.cache else own[index].get_pair
                verdict, position, by_sympy[index], job = self._walk(
                    candidates, gold, positions[index], lookup)
                positions[index] = position
                if job is not None:
                    still.append(index)
                    jobs.append(job)
                    waited[index] = True
                else:
                    verdicts[index] = bool(verdict)
            if jobs:
                self._record(jobs, still, own, progress)
            waiting = still
        self._count(items, positions, waited, by_sympy)
        return verdicts

    def _record(self, jobs: list[tuple[str, str]], indices: list[int],
                own: list[_Outcomes], progress: bool) -> None:
        values = list(dict.fromkeys(job for job in jobs if job[0] == _GOLD_VALUE_JOB))
        if values:  # one per gold, even uncached: gold preparation, not a shared verdict
            for (_, gold), value in zip(values, self._run(values, progress), strict=True):
                self._gold_values[gold] = _decimal_fraction(value) if value != _NO_VALUE else None
            kept = [(i, job) for i, job in zip(indices, jobs, strict=True)
                    if job[0] != _GOLD_VALUE_JOB]
            indices, jobs = [i for i, _ in kept], [job for _, job in kept]
            if not jobs:
                return
        if not self.cache:
            for index, job, outcome in zip(indices, jobs, self._run(jobs, progress),
                                           strict=True):
                own[index][job] = outcome
            return
        distinct = list(dict.fromkeys(jobs))
        outcomes = self._run(distinct, progress)
        if len(self._outcomes) + len(distinct) > self._cache_entries:
            self._outcomes.clear()
        self._outcomes.update(zip(distinct, outcomes, strict=True))

    def _cached_outcome(self, candidate: str, gold: str) -> str | None:
        return self._outcomes.get((candidate, gold))

    def _count(self, items: list[tuple[_Candidates, str]], positions: list[int],
               waited: list[bool], by_sympy: list[bool]) -> None:
        self._stats.checks += len(items)
        self._stats.fast += sum(not b for b in by_sympy)
        self._stats.cache_hits += sum(b and not w for b, w in zip(by_sympy, waited, strict=True))
        for (candidates, _), position in zip(items, positions, strict=True):
            self._stats.refused += sum(
                _refusal(c, self.limits) is not None for c in candidates.found[: position + 1])

    def _run(self, jobs: list[tuple[str, str]], progress: bool) -> list[str]:
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="symbolic checks", unit="check", leave=False)
        try:
            outcomes, timeouts, crashes = self._pool.run(
                jobs, on_done=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
        self._stats.symbolic += len(jobs)
        self._stats.timeouts += timeouts
        self._stats.crashes += crashes
        if timeouts or crashes:
            log.warning("%d symbolic checks timed out and %d crashed a worker (both: incorrect)",
                        timeouts, crashes)
        return outcomes


# ---------------------------------------------------------------------------------------------
# Module-level entry points: one shared verifier
# ---------------------------------------------------------------------------------------------

_shared: Verifier | None = None
_shared_lock = threading.Lock()


def _shared_verifier() -> Verifier:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Verifier()
        return _shared


def verify(response: str, gold: str, *, config: ExtractionConfig | str | None = None) -> bool:
    """Whether `response`'s final answer equals `gold` (the shared `Verifier`)."""
    return _shared_verifier().verify(response, gold, config=config)


def verify_batch(pairs: Iterable[tuple[str, str]], *,
                 config: ExtractionConfig | str | None = None,
                 progress: bool = False) -> list[bool]:
    """Verdicts for (response, gold) pairs (the shared `Verifier`)."""
    return _shared_verifier().verify_batch(pairs, config=config, progress=progress)


def format_found(response: str, config: ExtractionConfig | str | None = None) -> bool:
    """Whether the config's first pattern (e.g. `\\boxed{}`) finds an answer, right or wrong."""
    cfg = get_config(config)
    return extract_answer(
        response, dataclasses.replace(cfg, patterns=cfg.patterns[:1], fallback=False)
    ) is not None


def rewards_from_verdicts(responses: Sequence[str], verdicts: Sequence[bool], *,
                          format_bonus: float = 0.0,
                          config: ExtractionConfig | str | None = None) -> list[float]:
    """GRPO rewards from verdicts already computed: 1.0 if correct, plus `format_bonus` when
    `format_found` (so a caller that needs both verdicts and rewards verifies once)."""
    return [
        float(correct) + (format_bonus if format_bonus and format_found(response, config)
                          else 0.0)
        for response, correct in zip(responses, verdicts, strict=True)
    ]


def reward(response: str, gold: str, *, format_bonus: float = 0.0,
           config: ExtractionConfig | str | None = None) -> float:
    """GRPO reward: 1.0 if `verify`, plus `format_bonus` when the config's first pattern (e.g.
    `\\boxed{}`) finds an answer, right or wrong."""
    return _shared_verifier().reward(response, gold, format_bonus=format_bonus, config=config)


def reward_batch(pairs: Iterable[tuple[str, str]], *, format_bonus: float = 0.0,
                 config: ExtractionConfig | str | None = None) -> list[float]:
    """`reward` for many (response, gold) pairs at once (shares the symbolic checks)."""
    return _shared_verifier().reward_batch(pairs, format_bonus=format_bonus, config=config)


def close() -> None:
    """Stop the shared verifier's worker processes (also done at exit)."""
    global _shared
    with _shared_lock:
        shared, _shared = _shared, None
    if shared is not None:
        shared.close()


atexit.register(close)


# ---------------------------------------------------------------------------------------------
# Command line: rescore a samples file
# ---------------------------------------------------------------------------------------------


class SamplesFileError(ValueError):
    """A samples file that cannot be rescored; the message names file, line and field."""


@dataclasses.dataclass
class _Record:
    line: int
    data: dict[str, Any]
    responses: list[str]
    many: bool  # the response field held a list
    gold: str


def _read_records(path: Path, response_field: str,
                  gold_field: str) -> Iterator[_Record]:
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SamplesFileError(f"{where}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise SamplesFileError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(data, dict):
                raise SamplesFileError(f"{where}: expected a JSON object")
            if response_field not in data:
                raise SamplesFileError(f"{where}: missing field {response_field!r}")
            if gold_field not in data:
                raise SamplesFileError(f"{where}: missing field {gold_field!r}")
            value = data[response_field]
            many = isinstance(value, list)
            responses = value if many else [value]
            if not all(isinstance(r, str) for r in responses):
                raise SamplesFileError(
                    f"{where}: field {response_field!r} must be a string or a list of strings")
            gold = data[gold_field]
            try:
                gold = _gold_text(gold)
            except (TypeError, ValueError) as error:
                raise SamplesFileError(f"{where}: field {gold_field!r}: {error}") from None
            yield _Record(line_number, data, responses, many, gold)


def _chunks(records: Iterator[_Record], responses_per_chunk: int) -> Iterator[list[_Record]]:
    chunk: list[_Record] = []
    size = 0
    for record in records:
        chunk.append(record)
        size += len(record.responses)
        if size >= responses_per_chunk:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclasses.dataclass
class CheckSummary:
    """What `rescore_file` did."""

    records: int = 0
    responses: int = 0
    correct: int = 0
    changed: int = 0  # verdicts that differ from the ones already in the file
    compared: int = 0  # responses that had an old verdict to compare with


# (responses, gold) field names: sftrl's own sample store first, then the one-response layout
_FIELD_LAYOUTS = (("responses", "answer"), ("response", "gold"))


def detect_fields(path: Path) -> tuple[str, str]:
    """The (response, gold) field names of `path`, read from its first record.

    sftrl's eval stage writes `responses` / `answer` (`sftrl.eval.sample_store`); other tools
    often write one `response` and a `gold`. A file with neither is reported by the reader, which
    names the missing field of the default layout.
    """
    with path.open("rb") as handle:
        for raw in handle:
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break  # the reader reports it with the line number
            if not isinstance(data, dict):
                break
            for response_field, gold_field in _FIELD_LAYOUTS:
                if response_field in data and gold_field in data:
                    return response_field, gold_field
            break
    return _FIELD_LAYOUTS[-1]


def rescore_file(path: Path, out: Path, *, verifier: Verifier,
                 config: ExtractionConfig, response_field: str | None = None,
                 gold_field: str | None = None, verdict_field: str = "correct",
                 responses_per_chunk: int = 20_000) -> CheckSummary:
    """Writes `path`'s records with fresh verdicts to `out`, atomically (temp file + rename).

    Field names left as None are detected from the first record (`detect_fields`).
    """
    from tqdm import tqdm

    if response_field is None or gold_field is None:
        detected = detect_fields(path)
        response_field = response_field or detected[0]
        gold_field = gold_field or detected[1]

    summary = CheckSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=out.parent, prefix=f".{out.name}.", suffix=".tmp",
        delete=False)
    bar = tqdm(desc=f"rescoring {path.name}", unit="response", disable=None)
    try:
        with handle:
            records = _read_records(path, response_field, gold_field)
            for chunk in _chunks(records, responses_per_chunk):
                pairs = [(r, record.gold) for record in chunk for r in record.responses]
                verdicts = iter(verifier.verify_batch(pairs, config=config))
                for record in chunk:
                    mine = [next(verdicts) for _ in record.responses]
                    _count_changes(summary, record, mine, verdict_field)
                    record.data[verdict_field] = mine if record.many else mine[0]
                    handle.write(json.dumps(record.data, ensure_ascii=False) + "\n")
                    summary.records += 1
                    summary.responses += len(mine)
                    summary.correct += sum(mine)
                handle.flush()
                bar.update(len(pairs))
                log.info("%s: %d records, %d responses rescored", path, summary.records,
                         summary.responses)
        os.chmod(handle.name, path.stat().st_mode & 0o777)  # not the temp file's 0600
        os.replace(handle.name, out)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    return summary


def _count_changes(summary: CheckSummary, record: _Record, mine: list[bool],
                   verdict_field: str) -> None:
    old = record.data.get(verdict_field)
    if old is None:
        return
    old_list = old if isinstance(old, list) else [old]
    if len(old_list) != len(mine):
        return
    summary.compared += len(mine)
    summary.changed += sum(bool(o) != m for o, m in zip(old_list, mine, strict=True))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sftrl.rewards",
        description="Rescore a samples file with the current answer verifier.")
    parser.add_argument("--check", type=Path, required=True, metavar="FILE.jsonl",
                        help="samples file: one JSON object per line")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="output file (default: FILE.rescored.jsonl)")
    where.add_argument("--in-place", action="store_true",
                       help="replace the input file (atomically) instead of writing a new one")
    parser.add_argument("--benchmark", default=None,
                        help=f"extraction preset {sorted(PRESETS)} (default: the file's name "
                             "if it is a preset, else 'default')")
    parser.add_argument("--response-field", default=None,
                        help="default: 'responses' (sftrl's samples files) if the first record "
                             "has it, else 'response'")
    parser.add_argument("--gold-field", default=None,
                        help="default: 'answer' with 'responses', else 'gold'")
    parser.add_argument("--verdict-field", default="correct")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path: Path = args.check
    if not path.is_file():
        print(f"sftrl: error: {path}: no such file", file=sys.stderr)
        return 2
    preset = args.benchmark or (path.stem if path.stem in PRESETS else "default")
    out = path if args.in_place else (args.out or path.with_suffix(".rescored.jsonl"))
    if not args.in_place and out.resolve() == path.resolve():
        print(f"sftrl: error: --out {out} is the input file; pass --in-place to replace it",
              file=sys.stderr)
        return 2
    try:
        config = get_config(preset)
    except KeyError as error:
        print(f"sftrl: error: --benchmark: {error.args[0]}", file=sys.stderr)
        return 2
    with Verifier(config, workers=args.workers, timeout_s=args.timeout_s) as verifier:
        try:
            summary = rescore_file(path, out, verifier=verifier, config=config,
                                   response_field=args.response_field,
                                   gold_field=args.gold_field, verdict_field=args.verdict_field)
        except SamplesFileError as error:
            print(f"sftrl: error: {error}", file=sys.stderr)
            return 2
        stats = verifier.stats
    accuracy = summary.correct / summary.responses if summary.responses else 0.0
    print(f"{out}: {summary.records} records, {summary.responses} responses, "
          f"{summary.correct} correct ({accuracy:.4f}); preset {preset!r}")
    if summary.compared:
        print(f"verdicts changed: {summary.changed} of {summary.compared}")
    print(f"symbolic checks {stats.symbolic}, timeouts {stats.timeouts}, "
          f"crashes {stats.crashes}")
    return 0


if __name__ == "__main__":
    # Run the copy imported under its real name: what is pickled for the worker processes must
    # be found as `sftrl.rewards.<name>` there, since they never import this `__main__`.
    from sftrl.rewards import main as _main

    sys.exit(_main())
