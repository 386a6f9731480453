"""The one error type for malformed data files: it always names where the problem is."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data file is malformed; the message names file, line (or Parquet row) and field."""

    def __init__(self, location: str, message: str, field: str | None = None) -> None:
        self.location = location
        self.problem = message
        self.field = field
        where = location if field is None else f"{location}: field {field!r}"
        super().__init__(f"{where}: {message}")
