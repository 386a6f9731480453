"""The old name of `sftrl.stages.predict`, kept only for `sftrl.study` (split on another branch):
delete this file once that imports `sftrl.stages.predict`."""

from sftrl.stages.predict import options_from_config, run

__all__ = ["options_from_config", "run"]
