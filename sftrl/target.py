"""The platform a program is compiled *for*, which need not be the host's backend.

Everything that picks an implementation by platform (the `dtype="auto"` rule, the attention
implementation, the Pallas decode kernel's backend) asks `platform()` here instead of
`jax.default_backend()`, so that `sftrl.plan` can trace and compile TPU programs on a CPU host
(`jax.experimental.topologies` + libtpu) and get the same choices a TPU run makes. Outside
`compiling_for(...)` it is the host's backend, so nothing changes for a normal run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax

PLATFORMS = ("cpu", "gpu", "tpu")
_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("sftrl_target",
                                                                       default=None)


def platform() -> str:
    """'cpu', 'gpu' or 'tpu': the platform being compiled for (default: this host's backend)."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    backend = jax.default_backend()
    # ROCm and other GPU plugins report their own names; they take the GPU paths
    return backend if backend in PLATFORMS else "gpu"


@contextlib.contextmanager
def compiling_for(name: str) -> Iterator[None]:
    """Within the block, `platform()` is `name` (traces made here bake its choices in)."""
    if name not in PLATFORMS:
        raise ValueError(f"target platform must be one of {', '.join(PLATFORMS)}, got {name!r}")
    token = _OVERRIDE.set(name)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)
