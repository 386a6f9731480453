"""Device mesh, the logical-axis rules, and helpers that place parameters and batches on the mesh.

Arrays are annotated with *logical* axis names (weights: 'embed', 'vocab', 'q_heads', ...;
activations: 'activation_batch', ...). One rules table maps each logical name to mesh axes, so the
same model code runs on one CPU device, a fake 8-device CPU mesh, or a TPU/GPU pod: only the mesh
sizes change. Depends on jax only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Training: weights are FSDP-sharded along 'embed' and tensor-parallel along heads/mlp/vocab;
# the batch is split over both data-parallel axes.
TRAIN_RULES: Rules = (
    # weights
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("head_dim", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_length", None),
)

# Sampling: no FSDP on weights (every decode step would all-gather them); weights are replicated
# over 'data'/'fsdp' and split over 'tensor' only, and sequences are split over the batch axes.
SAMPLING_RULES: Rules = tuple(
    (name, None) if name == "embed" else (name, axes) for name, axes in TRAIN_RULES
)


class MeshError(ValueError):
    """A mesh shape that does not fit the devices present."""


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> dict[str, int]:
    """The mesh sizes with a -1 axis resolved; MeshError (naming `mesh`) if they do not fit."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size == 0 or size < -1:
            raise MeshError(f"mesh.{name} must be a positive integer or -1, got {size!r}")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {', '.join('mesh.' + n for n in free)}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(
                f"mesh.{free[0]}: {num_devices} devices are not divisible by the fixed axes "
                f"(product {fixed})"
            )
        sizes[free[0]] = num_devices // fixed
    total = math.prod(sizes.values())
    if total != num_devices:
        raise MeshError(
            f"mesh: data*fsdp*tensor = {total}: data={sizes['data']} x fsdp={sizes['fsdp']} x "
            f"tensor={sizes['tensor']} = {total} devices, but {num_devices} are present"
        )
    return sizes


def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[Any] | None = None
) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 (all remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    # A TPU topology's devices (an ahead-of-time plan) carry coordinates too.
    if len(devices) > 1 and (devices == list(jax.devices())
                             or getattr(devices[0], "platform", "") == "tpu"):
        try:
            # Topology-aware placement on TPU/GPU; plain reshape where that is not available.
            device_grid = mesh_utils.create_device_mesh(shape, devices)
        except Exception:
            device_grid = np.asarray(devices).reshape(shape)
    else:
        device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES)


def _mesh_axes_for(name: str | None, rules: Rules) -> tuple[str, ...]:
    if name is None:
        return ()
    for rule_name, axes in rules:
        if rule_name == name:
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    raise KeyError(f"logical axis {name!r} has no rule in the sharding rules table")


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Rules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Resolves logical names to a PartitionSpec on `mesh`.

    A mesh axis of size 1 is dropped, a mesh axis already used by an earlier dimension is not used
    again, and (when `shape` is given) a dimension that the mesh axes do not divide is replicated:
    a tiny model with 2 kv heads still runs on a tensor=4 mesh, only less sharded.
    """
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        axes = [a for a in _mesh_axes_for(name, rules) if mesh.shape[a] > 1 and a not in used]
        if shape is not None:
            kept: list[str] = []
            for axis in axes:
                if shape[dim] % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
                    kept.append(axis)
            axes = kept
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh plus a rules table: everything needed to place or constrain an array."""

    mesh: Mesh
    rules: Rules = TRAIN_RULES

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None):
        return logical_to_spec(logical_axes, self.rules, self.mesh, shape)

    def sharding(
        self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None
    ) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(logical_axes, shape))

    def constrain(self, x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
        """Pins an activation's sharding inside jit (a no-op on a one-device mesh)."""
        if self.mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(x, self.sharding(logical_axes, x.shape))

    def tree_shardings(self, logical_tree: Any, shape_tree: Any) -> Any:
        """Shardings for a tree of arrays, given a matching tree of logical PartitionSpecs."""
        return jax.tree.map(
            lambda spec, x: self.sharding(tuple(spec), x.shape),
            logical_tree,
            shape_tree,
            is_leaf=lambda v: isinstance(v, PartitionSpec),
        )


def single_device_layout(rules: Rules = TRAIN_RULES) -> Layout:
    return Layout(make_mesh(1, 1, 1, devices=jax.devices()[:1]), rules)


def shard_batch(
    batch: Any, layout: Layout, logical_axes: Sequence[str | None] = ("activation_batch",)
) -> Any:
    """Places host arrays (this process's part of the global batch) on the mesh, split by batch."""

    def place(x: Any) -> jax.Array:
        x = np.asarray(x)
        axes = tuple(logical_axes)[: x.ndim]
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:]) if x.ndim else x.shape
        sharding = layout.sharding(axes, global_shape)
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(place, batch)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole (global) array on this host; gathers across processes on multi-host runs."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
