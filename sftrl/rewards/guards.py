r"""Static guards: which normalised answers sympy is never shown, and why.

A busy sympy cannot be interrupted, and some text makes it compute without bound (`\sum`,
`\int`, power towers, huge exponents and factorials) or is TeX programming (`\def`, `\input`).
`refusal` names the reason an answer is kept from it, under the verifier's `Limits`; a refused
answer counts as not parsing, so it can only match its gold as an equal string.
"""

from __future__ import annotations

import dataclasses
import functools
import re

from sftrl.rewards.extraction import matching_brace


@dataclasses.dataclass(frozen=True)
class Limits:
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
        close = matching_brace(s, i)
        return s[i + 1 : close] if close is not None else s[i + 1 :]
    digits = re.match(r"[0-9]+|\\?[A-Za-z]+|.", s[i:])
    return "" if digits is None else digits.group()


def _oversized_power(s: str, limits: Limits) -> bool:
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
def refusal(s: str, limits: Limits) -> str | None:
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
