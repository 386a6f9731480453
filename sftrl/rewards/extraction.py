r"""Extraction: where a response puts its final answer, and the candidate answers found there.

An `ExtractionConfig` (per-benchmark presets in `PRESETS`) names the patterns to look for, highest
priority first: the last `\boxed{...}` / `\fbox{...}` (adjacent boxes joined into one list
answer), GSM8K `#### 42`, "final answer is ...", "answer is ...", the last number. Candidates are
raw text (`sftrl.rewards.normalize` makes them comparable). Every step is bounded on hostile
input: only a response's tail is read, an answer is at most `MAX_EXTRACT_CHARS` long, and only the
last few boxes are tried.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

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
MAX_EXTRACT_CHARS = 4096
# Only the last few `\boxed` occurrences are tried, so 100k unclosed boxes stay cheap.
_MAX_BOXES_TRIED = 8
_MAX_BOXES_JOINED = 6

BOX_COMMANDS = ("\\boxed", "\\fbox")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
# What may stand between two boxes that form one list answer: "\boxed{2} and \boxed{3}".
_BOX_SEPARATOR_RE = re.compile(
    r"[\s$,;]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)[\s$,;]*)?", re.ASCII
)
_FINAL_ANSWER_RE = re.compile(r"final\s+answer(?:\s+is)?\s*[:=]?", re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"\banswer(?:\s+is|\s*:|\s*=)", re.IGNORECASE)
_LAST_NUMBER_RE = re.compile(r"-?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")


def matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the `}` closing the `{` at `open_pos` (escaped `\\{` skipped), or None."""
    depth = 0
    end = min(len(text), open_pos + MAX_EXTRACT_CHARS + 2)
    for token in _BRACE_TOKEN_RE.finditer(text, open_pos, end):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return token.start()
    return None


def box_at(text: str, pos: int, command: str) -> tuple[int, str] | None:
    """(end, content) of the box whose command starts at `pos`, or None if it does not close."""
    i = pos + len(command)
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        close = matching_brace(text, i)
        return None if close is None else (close + 1, text[i + 1 : close])
    # `\boxed 5`: TeX takes a single token as the argument.
    token = re.match(r"[0-9A-Za-z.\-]+", text[i : i + 64])
    return None if token is None or i == pos + len(command) else (i + token.end(), token.group())


def _previous_box_start(text: str, before: int) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for command in BOX_COMMANDS:
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
        box = box_at(text, pos, command)
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
        prev = box_at(text, found[0], found[1])
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
    rest = text[pos : pos + MAX_EXTRACT_CHARS]
    rest = rest.lstrip(" \t*:")  # markdown bold and stray colons: "**Final Answer:** 5"
    for command in BOX_COMMANDS:
        if rest.startswith(command):
            box = box_at(rest, 0, command)
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
    line = text[pos + 4 : pos + 4 + MAX_EXTRACT_CHARS].split("\n", 1)[0].strip()
    return line or None


def _last_number(text: str) -> str | None:
    last = None
    for last in _LAST_NUMBER_RE.finditer(text):  # noqa: B007 -- only the last match is wanted
        pass
    return None if last is None else last.group().rstrip(",")


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
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
        answer = (EXTRACTORS[name](tail) or "").strip()
        if answer and len(answer) <= MAX_EXTRACT_CHARS and answer not in found:
            found.append(answer)
            if not cfg.fallback:
                break
    return found


def extract_answer(text: str, config: ExtractionConfig | str | None = None) -> str | None:
    """The highest-priority answer in `text` (e.g. the last `\\boxed{}` content), or None."""
    candidates = extract_candidates(text, config)
    return candidates[0] if candidates else None
