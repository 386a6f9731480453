"""`data.fields`: which field of a user's SFT file plays which part of a chat example.

Public SFT sets name their fields differently (OpenMathInstruct-2: `problem` /
`generated_solution`; MetaMathQA: `query` / `response`; OpenThoughts: `conversations` of
`{from, value}` turns plus a `system` field). A mapping `target=source,...` says where each
part comes from; the targets are

    id        a record id (default: the record's position)
    problem   the user turn        (problem form)
    solution  the assistant turn   (problem form)
    messages  a list of turns, `{role, content}` or ShareGPT's `{from, value}`
    system    a system prompt put before the conversation (skipped when empty)

A target that is not mapped is read from the field of its own name, as without a mapping.
Mapping `problem` or `solution` selects the problem form even when the record also carries
`messages` (NuminaMath-CoT has both); mapping `messages` selects the chat form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sftrl.data.builders.errors import DataFormatError

TARGETS = ("id", "problem", "solution", "messages", "system")


@dataclasses.dataclass(frozen=True)
class FieldMap:
    """target -> source field name, for the targets the user mapped."""

    mapping: tuple[tuple[str, str], ...] = ()

    def source(self, target: str) -> str:
        """The file's field that holds `target` (its own name when unmapped)."""
        return dict(self.mapping).get(target, target)

    def mapped(self, target: str) -> bool:
        return target in dict(self.mapping)

    @property
    def problem_form(self) -> bool:
        return self.mapped("problem") or self.mapped("solution")

    def get(self, raw: Mapping[str, Any], target: str, loc: str) -> Any:
        """The value of `target` in `raw`; a mapped field that is absent is an error naming it,
        an unmapped one is None (the reader then applies its own defaults)."""
        name = self.source(target)
        value = raw.get(name)
        if value is None and self.mapped(target):
            raise DataFormatError(loc, f"missing (data.fields maps {target} to it)", name)
        return value

    def spec(self) -> str:
        return ",".join(f"{t}={s}" for t, s in self.mapping)


def parse_fields(spec: str | FieldMap | None) -> FieldMap:
    """`"problem=question,solution=generated_solution"` -> FieldMap; "" or None: no mapping.

    Raises ValueError naming the bad entry (the config layer adds the key's name)."""
    if isinstance(spec, FieldMap):
        return spec
    if not spec or not spec.strip():
        return FieldMap()
    pairs: dict[str, str] = {}
    for entry in spec.split(","):
        target, eq, source = (part.strip() for part in entry.partition("="))
        if not eq or not target or not source:
            raise ValueError(f"{entry.strip()!r} is not target=field")
        if target not in TARGETS:
            raise ValueError(f"{target!r} is not one of {', '.join(TARGETS)}")
        if target in pairs:
            raise ValueError(f"{target!r} is mapped twice")
        pairs[target] = source
    if "messages" in pairs and ({"problem", "solution"} & set(pairs)):
        raise ValueError("map either messages (chat form) or problem/solution, not both")
    return FieldMap(tuple(pairs.items()))


__all__ = ["TARGETS", "FieldMap", "parse_fields"]
