"""Pallas kernels for sftrl (depend on jax only).

Each kernel has a `BlockSizes` dataclass, a plain-JAX `*_reference`, and a dispatcher that picks
Pallas on GPU/TPU and the reference (or interpret mode) on CPU. This package is imported from the
repository root and is deliberately not published: PyPI's unrelated `kernels` package must not be
shadowed by, or shadow, this one.
"""
