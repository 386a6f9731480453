r"""Normalisation: one canonical string per answer, so equal answers written alike compare equal.

Presentation only -- unicode forms, wrappers, spacing, `\text{}` and unit words, thousands
separators, percent, degrees, currency -- never arithmetic: whether two different strings mean the
same value is decided by `sftrl.rewards.numbers` or by the symbolic check.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from sftrl.rewards.extraction import BOX_COMMANDS, box_at

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
        for command in BOX_COMMANDS:
            if s.startswith(command):
                box = box_at(s, 0, command)
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
