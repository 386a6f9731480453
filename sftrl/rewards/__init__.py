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

Modules, one concept each
    extraction   where a response puts its answer: `ExtractionConfig`, `PRESETS`, the candidates
    normalize    `normalize_answer`: presentation only, never arithmetic
    numbers      plain numbers in exact rational arithmetic
    guards       what sympy is never shown (`refusal`, `Limits`)
    symbolic     the math-verify check, run in worker processes
    pool         the spawned worker processes and their per-check time limits
    verifier     `Verifier`, its caches, and the shared verifier behind `verify` / `reward`
    cli          `python -m sftrl.rewards --check`
"""

from __future__ import annotations

from sftrl.rewards.cli import CheckSummary, SamplesFileError, detect_fields, main, rescore_file
from sftrl.rewards.extraction import (
    PATTERNS,
    PRESETS,
    ExtractionConfig,
    extract_answer,
    extract_candidates,
    get_config,
)
from sftrl.rewards.normalize import normalize_answer
from sftrl.rewards.verifier import (
    Verifier,
    VerifierStats,
    close,
    format_found,
    reward,
    reward_batch,
    rewards_from_verdicts,
    verify,
    verify_batch,
)

__all__ = [
    "PATTERNS",
    "PRESETS",
    "CheckSummary",
    "ExtractionConfig",
    "SamplesFileError",
    "Verifier",
    "VerifierStats",
    "close",
    "detect_fields",
    "extract_answer",
    "extract_candidates",
    "format_found",
    "get_config",
    "main",
    "normalize_answer",
    "rescore_file",
    "reward",
    "reward_batch",
    "rewards_from_verdicts",
    "verify",
    "verify_batch",
]
