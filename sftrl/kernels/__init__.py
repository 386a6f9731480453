"""Pallas kernels for sftrl (depend on jax only).

Each kernel has a `BlockSizes` dataclass, a plain-JAX `*_reference`, and a dispatcher that picks
Pallas on GPU/TPU and the reference (or interpret mode) on CPU. They live inside the `sftrl`
package: a top-level `kernels` would shadow PyPI's `kernels`, which transformers requires.
"""
