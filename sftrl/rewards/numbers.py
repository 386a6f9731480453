"""Plain numbers: the value of an answer that is a number, in exact rational arithmetic.

Integers, decimals, fractions, mixed numbers, scientific notation and small powers are read by
regular expressions (model text is never evaluated) and compared exactly, except that a decimal
also matches a value it agrees with to 6 decimal places (math-verify's float rule). Most answers
are decided here, without sympy.
"""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

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
FAR = Fraction(1, 10**6)  # see verifier.Verifier._far_from_gold


@dataclasses.dataclass(frozen=True)
class Number:
    value: Fraction
    inexact: bool  # written as a decimal, so possibly rounded


def decimal_fraction(text: str) -> Fraction | None:
    try:
        return Fraction(Decimal(text))
    except (InvalidOperation, ValueError):
        return None


def as_number(s: str) -> Number | None:
    """The value of a normalised answer that is a plain number, or None. Never evaluates code."""
    if len(s) > 200:
        return None
    if _INTEGER_RE.fullmatch(s):
        return Number(Fraction(int(s)), inexact=False)
    if _DECIMAL_RE.fullmatch(s):
        value = decimal_fraction(s)
        return None if value is None else Number(value, inexact=True)
    if m := _SCI_TIMES_RE.fullmatch(s):
        exponent = int(m.group(2) or m.group(3))
        mantissa = decimal_fraction(m.group(1))
        if mantissa is None or abs(exponent) > _MAX_PLAIN_EXPONENT:
            return None
        return Number(mantissa * Fraction(10) ** exponent, inexact="." in m.group(1))
    if m := _POWER_OF_INT_RE.fullmatch(s):  # -2^{2} is -(2^2)
        sign, base, exponent = m.group(1), m.group(2), int(m.group(3) or m.group(4))
        if exponent * len(base) > _MAX_PLAIN_EXPONENT:
            return None
        value = Fraction(int(base)) ** exponent
        return Number(-value if sign else value, inexact=False)
    for pattern in (_FRAC_RE, _SLASH_RE):
        if m := pattern.fullmatch(s):
            groups = m.groups()
            sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
            numerator, denominator = int(groups[-2]), int(groups[-1])
            if denominator == 0:
                return None
            return Number(sign * Fraction(numerator, denominator), inexact=False)
    if m := _MIXED_RE.fullmatch(s):  # 1\frac{4}{5} is one and four fifths, as in MATH
        sign, whole, numerator, denominator = m.groups()
        if int(denominator) == 0:
            return None
        value = int(whole) + Fraction(int(numerator), int(denominator))
        return Number(-value if sign else value, inexact=False)
    return None


def numbers_equal(a: Number, b: Number) -> bool:
    if a.value == b.value:
        return True
    if a.inexact or b.inexact:
        return round(a.value, _DECIMAL_PLACES) == round(b.value, _DECIMAL_PLACES)
    return False


def assignment_rhs(s: str) -> str | None:
    """`3` for `x=3` (or `a_1=3`): a single-variable assignment's right-hand side."""
    m = _ASSIGNMENT_RE.fullmatch(s)
    return None if m is None else m.group(1)


def is_relation(s: str) -> bool:
    return any(op in s for op in ("=", "<", ">", "\\le", "\\ge", "\\ne"))
