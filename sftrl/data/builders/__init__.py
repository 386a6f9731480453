"""Dataset builders for sftrl: plain-Python readers and TFDS array_record builders.

The plain readers (this package's top level) need nothing beyond the standard library and
pyarrow; the TFDS builders live in `sftrl.data.builders.tfds_builders` and are imported
explicitly, which also registers them with `tfds.builder` / `tfds.data_source`.
"""

from sftrl.data.builders.errors import DataFormatError
from sftrl.data.builders.fields import FieldMap, parse_fields
from sftrl.data.builders.problems import (
    OPTIONAL_FIELDS,
    REQUIRED_FIELDS,
    parse_problem,
    read_problems,
    read_rl_file,
)
from sftrl.data.builders.rows import iter_rows
from sftrl.data.builders.sft import (
    HELDOUT,
    TRAIN,
    SplitStats,
    check_sft_files,
    heldout_score,
    is_heldout,
    normalize_problem_text,
    read_heldout,
    read_sft_file,
    read_sft_files,
)

__all__ = [
    "HELDOUT",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "TRAIN",
    "DataFormatError",
    "FieldMap",
    "SplitStats",
    "check_sft_files",
    "heldout_score",
    "is_heldout",
    "iter_rows",
    "normalize_problem_text",
    "parse_fields",
    "parse_problem",
    "read_heldout",
    "read_problems",
    "read_rl_file",
    "read_sft_file",
    "read_sft_files",
]
