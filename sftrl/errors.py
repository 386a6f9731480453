"""What counts as a user's mistake, and how it is reported: one line, exit status 2.

Every module raises its own error type (naming the file, line, field or config key); this module
only knows which of those types are a user's mistake, so that entry points print
`sftrl: error: <message>` instead of a traceback. `--verbose` on an entry point, or
`SFTRL_VERBOSE=1`, re-raises instead, for a developer who wants the traceback.

The types are named, not imported: a module that was never imported cannot have raised its
error, so only the types whose modules are loaded are looked up (and entry points stay light).
"""

from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """Bad input that has no more specific error type of its own (a data or prompt setting)."""


# module -> error classes in it that describe bad input (configs, flags, files, checkpoints).
# Not here on purpose: NonFiniteLossError (training diverged) and ModelCheckError (our code
# disagrees with itself): neither is the user's input.
_USER_ERRORS: dict[str, tuple[str, ...]] = {
    "sftrl.config_lib": ("ConfigError",),
    "sftrl.sharding": ("MeshError",),
    "sftrl.report": ("ReportError",),
    "sftrl.launch": ("SweepError",),
    "sftrl.study": ("StudyError",),
    "sftrl.optim": ("OptimizerConfigError",),
    "sftrl.train.state": ("CheckpointError",),
    "sftrl.models.model_config": ("ModelConfigError",),
    "sftrl.models.safetensors_io": ("SafetensorsError",),
    "sftrl.models.checkpoint": ("CheckpointFormatError",),
    "sftrl.models.attention": ("AttentionImplError",),
    "sftrl.data.tokenizer": ("TokenizerError",),
    "sftrl.data.synthetic": ("TaskConfigError",),
    "sftrl.data.builders.errors": ("DataFormatError",),
    "sftrl.data.benchmarks": ("BenchmarkError",),
    "sftrl.eval.sample_store": ("SampleStoreError",),
    "sftrl.eval.evaluators": ("EvaluatorError",),
    "sftrl.eval.predict": ("PredictError",),
    "sftrl.eval.benchmarks": ("BenchmarkError",),
    "sftrl.losses": ("PolicyLossConfigError",),
    "sftrl.rewards": ("SamplesFileError",),
    "sftrl.rank.inputs": ("RankError",),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """The user-error classes of the sftrl modules loaded so far (plus a missing file)."""
    types: list[type[BaseException]] = [UserError, FileNotFoundError, NotADirectoryError,
                                        IsADirectoryError]
    for module_name, class_names in _USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        types.extend(getattr(module, name) for name in class_names if hasattr(module, name))
    return tuple(types)


def is_user_error(error: BaseException) -> bool:
    return isinstance(error, user_error_types())


def verbose_requested(argv: list[str] | None = None) -> bool:
    """--verbose anywhere on the command line, or SFTRL_VERBOSE set to a true value."""
    args = sys.argv if argv is None else argv
    if "--verbose" in args or "--verbose=true" in args:
        return True
    return os.environ.get("SFTRL_VERBOSE", "").lower() in ("1", "true", "yes")


def one_line(error: BaseException) -> str:
    """`sftrl: error: <message>`, the message folded onto one line."""
    if isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError) and (
            error.filename is not None):
        message = f"{error.filename}: {error.strerror or 'no such file or directory'}"
    else:
        message = str(error.args[0]) if len(error.args) == 1 else str(error)
    message = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    return f"sftrl: error: {message or type(error).__name__}"


def report(error: BaseException) -> int:
    """Prints `error` as one line on stderr and returns the exit status for it."""
    print(one_line(error), file=sys.stderr)
    return EXIT_USER_ERROR
