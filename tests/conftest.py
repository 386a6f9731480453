"""Test-wide setup: a fake 8-device CPU platform, float32 matmuls, repo root importable."""

import os

# Must be set before jax is imported anywhere: the sharded tests need 8 (fake) CPU devices, and a
# mesh over devices[:1] still exercises the single-device path.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_default_matmul_precision", "highest")
