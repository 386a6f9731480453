"""The train state (step, params, optimizer state, RNG) and its orbax checkpointing.

One checkpoint step is a directory holding three orbax items, written and committed together:

- ``state``: the :class:`TrainState` arrays (``StandardSave``), stored shard-by-shard so that a
  checkpoint written on one mesh can be restored onto another by passing target shardings;
- ``data``: the data-iterator position, arbitrary JSON kept outside the pytree (``JsonSave``);
- ``meta``: our own JSON record of every leaf's path, shape, dtype and an integer checksum, plus a
  digest of ``data``.

The ``meta`` item exists because orbax does not notice every kind of damage. Arrays larger than
OCDBT's inline limit live in data files whose bytes carry no checksum, so bytes overwritten in place
are restored silently as wrong numbers; and orbax casts to the requested dtype without complaint.
Restore therefore checks the target against ``meta`` before reading and the checksums after.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Sharding

PyTree = Any

_STATE_ITEM = "state"
_DATA_ITEM = "data"
_META_ITEM = "meta"
_ITEMS = (_STATE_ITEM, _DATA_ITEM, _META_ITEM)
_FORMAT = "sftrl.train_state"
_FORMAT_VERSION = 1
# orbax writes a step into "<step>.orbax-checkpoint-tmp[-<timestamp>]" and renames it when done, so
# such a directory is what an interrupted save leaves behind.
_TMP_MARKER = ".orbax-checkpoint-tmp"
_TMP_STEP = re.compile(r"^(\d+)" + re.escape(_TMP_MARKER))
# Written into the step directory just before the final rename: its absence means the step was not
# committed (or was damaged afterwards).
_COMMIT_FILE = "commit_success.txt"


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete, corrupt, or does not match what the caller expects."""


@flax.struct.dataclass
class TrainState:
    """Everything a trainer needs to resume: a pytree, so it can pass through ``jit``.

    ``rng`` is raw ``uint32`` key data rather than a typed key because orbax cannot serialize
    extended (key) dtypes; ``rng_impl`` (static, not a leaf) says how to wrap it back.
    """

    step: jax.Array
    params: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    rng_impl: str = flax.struct.field(pytree_node=False, default="threefry2x32")

    @property
    def key(self) -> jax.Array:
        """The RNG as a typed PRNG key."""
        return jax.random.wrap_key_data(self.rng, impl=self.rng_impl)

    def next_key(self) -> tuple[TrainState, jax.Array]:
        """Split the RNG: returns the state holding the advanced key and a fresh subkey to use."""
        key, sub = jax.random.split(self.key)
        return self.replace(rng=jax.random.key_data(key)), sub

    def apply_gradients(self, grads: PyTree, tx: optax.GradientTransformation) -> TrainState:
        """One optimizer update: returns the state with new params/opt_state and ``step + 1``.

        ``tx`` is passed in rather than stored so the state stays a pure array pytree that orbax
        can save and ``jit`` can trace without closing over Python objects.
        """
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


def create_train_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0: ``opt_state = tx.init(params)`` and an RNG seeded with ``seed``.

    The optimizer state is created by ``tx.init`` and follows whatever placement it produces; call
    this under ``jax.jit`` with ``out_shardings`` to place it explicitly.
    """
    key = jax.random.key(seed)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(key),
        rng_impl=str(jax.random.key_impl(key)),
    )


# ------------------------------------------------------------------------------------------------
# Abstract targets for restore.


def _shape_dtype(x: Any, sharding: Sharding | None) -> jax.ShapeDtypeStruct:
    sharding = sharding if sharding is not None else getattr(x, "sharding", None)
    if sharding is None:
        raise ValueError(
            f"no sharding for a leaf of shape {tuple(x.shape)} and dtype {x.dtype}: pass one in "
            "the shardings tree (restore places every array by its target sharding)"
        )
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding)


def abstract_state_for(
    state_shape_tree: PyTree, shardings_tree: PyTree | Sharding | None = None
) -> PyTree:
    """Restore target: a tree of ``jax.ShapeDtypeStruct`` with ``sharding=`` set on every leaf.

    ``state_shape_tree`` is typically ``jax.eval_shape(...)`` output (or live arrays).
    ``shardings_tree`` may be a single ``Sharding`` for all leaves, a tree with the same structure,
    or a prefix of it (one sharding standing for a whole subtree, e.g. all of ``opt_state``). A
    ``None`` in it, or ``shardings_tree=None``, keeps the leaf's own ``.sharding``.
    """
    if shardings_tree is None or isinstance(shardings_tree, Sharding):
        return jax.tree.map(lambda x: _shape_dtype(x, shardings_tree), state_shape_tree)

    def fill(sharding: Sharding | None, subtree: PyTree) -> PyTree:
        return jax.tree.map(lambda x: _shape_dtype(x, sharding), subtree)

    return jax.tree.map(
        fill,
        shardings_tree,
        state_shape_tree,
        is_leaf=lambda s: s is None or isinstance(s, Sharding),
    )


def abstract_like(state: PyTree, shardings: PyTree | Sharding | None = None) -> PyTree:
    """Restore target shaped like ``state``; with ``shardings=None`` it reuses the live shardings.

    Restoring into the layout a running job already has is then ``restore(abstract_like(state))``.
    """
    return abstract_state_for(state, shardings)


# ------------------------------------------------------------------------------------------------
# Per-leaf checksums.

_U32 = jnp.uint32


def _fmix32(h: jax.Array) -> jax.Array:
    # murmur3's finalizer: a bijection on uint32, so distinct inputs never collide.
    h = h ^ (h >> _U32(16))
    h = h * _U32(0x85EBCA6B)
    h = h ^ (h >> _U32(13))
    h = h * _U32(0xC2B2AE35)
    return h ^ (h >> _U32(16))


def _as_u32_bits(x: jax.Array) -> jax.Array:
    """The leaf's exact bit pattern widened to uint32 (64-bit types gain a trailing axis of 2)."""
    if x.dtype == jnp.bool_:
        return x.astype(_U32)
    bits = jax.dtypes.itemsize_bits(x.dtype)
    if bits < 8:
        # Sub-byte types (int4, float4, ...) cannot be bitcast; a value-preserving widening is
        # still exact for them.
        wide = jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else jnp.int32
        x, bits = x.astype(wide), 32
    unsigned = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint32}[bits]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(_U32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
    """Two uint32 checksums of the leaf's bits, position-dependent so moved values are caught.

    Integer sums wrap exactly and are order-independent, so the result is bit-identical whatever
    the sharding or reduction order; that is what lets a checkpoint written on one mesh be verified
    after restoring onto another, without gathering the array onto one host.
    """
    bits = _as_u32_bits(x)
    # Row-major linear index (mod 2**32), built per axis so no reshape forces a relayout.
    index = jnp.zeros(bits.shape, _U32)
    for axis, size in enumerate(bits.shape):
        index = index * _U32(size) + jax.lax.broadcasted_iota(_U32, bits.shape, axis)
    weight = _fmix32(index + _U32(0x9E3779B9)) | _U32(1)  # odd: any single change shifts the sum
    linear = jnp.sum(bits * weight, dtype=_U32)
    mixed = jnp.sum(_fmix32(bits ^ _fmix32(index)), dtype=_U32)  # nonlinear: no cancelling pairs
    return jnp.stack([linear, mixed])


_tree_checksums = jax.jit(lambda leaves: [_leaf_checksum(x) for x in leaves])


def _checksums(leaves: list[jax.Array]) -> list[list[int]]:
    # One jit call per device set: a single call over all leaves would refuse a state whose leaves
    # live on different devices (e.g. step on one device, params on a mesh).
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(leaves):
        devices = getattr(getattr(x, "sharding", None), "device_set", ())
        groups.setdefault(tuple(sorted(d.id for d in devices)), []).append(i)
    out: list[list[int]] = [[] for _ in leaves]
    for members in groups.values():
        sums = _tree_checksums([leaves[i] for i in members])
        for i, s in zip(members, sums, strict=True):
            # The sums are replicated; reading one local copy works in multi-process runs too.
            out[i] = [int(v) for v in np.asarray(s.addressable_data(0))]
    return out


# ------------------------------------------------------------------------------------------------
# Checkpointer.


def _to_tree(state: TrainState) -> dict[str, PyTree]:
    # Saved as a plain dict so the on-disk layout does not depend on the Python class.
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "rng": state.rng,
    }


def _leaves_with_paths(tree: PyTree) -> dict[str, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def _json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _is_meta_record(meta: Any) -> bool:
    """Whether ``meta`` has the fields restore relies on (so damage to it is not a KeyError)."""
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        return False
    if not isinstance(meta.get("step"), int) or not isinstance(meta.get("leaves"), dict):
        return False
    return all(
        isinstance(rec, dict)
        and isinstance(rec.get("shape"), list)
        and isinstance(rec.get("dtype"), str)
        and isinstance(rec.get("checksum"), list)
        for rec in meta["leaves"].values()
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


class Checkpointer:
    """Saves and restores :class:`TrainState` plus the data-iterator position with orbax.

    Saves are asynchronous by default: ``save`` returns once arrays are copied off the devices,
    while files are written in the background; ``wait`` (or ``restore``/``close``) blocks until
    they are committed. Every failure to restore is raised as :class:`CheckpointError`.
    """

    def __init__(
        self,
        directory: str | epath.PathLike,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
        save_interval_steps: int = 1,
    ) -> None:
        path = epath.Path(directory)
        # orbax requires absolute paths; remote ("gs://...") paths already are.
        if "://" not in str(directory):
            path = epath.Path(path.expanduser().resolve())
        self.directory = path
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._closed = False

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, steps={self.all_steps()})"

    # --- saving ---------------------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: TrainState,
        data_state: Mapping[str, Any] | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Save ``state`` and ``data_state`` as checkpoint ``step``; returns whether it saved.

        Steps not on the ``save_interval_steps`` grid are skipped unless ``force``. With async
        saving, the call returns while the files are still being written.
        """
        step = int(step)
        if not force and not self._manager.should_save(step):
            return False
        # A JSON round trip both rejects non-JSON values now (not later on the writer thread) and
        # snapshots the dict, so the caller may keep mutating theirs during an async write.
        data = json.loads(json.dumps({} if data_state is None else dict(data_state)))
        tree = _to_tree(state)
        leaves = _leaves_with_paths(tree)
        sums = _checksums(list(leaves.values()))
        meta = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "step": step,
            "rng_impl": state.rng_impl,
            "saved_at_unix": time.time(),
            "jax_version": jax.__version__,
            "process_count": jax.process_count(),
            "data_sha256": _json_digest(data),
            "leaves": {
                path: {"shape": list(x.shape), "dtype": str(x.dtype), "checksum": s}
                for (path, x), s in zip(leaves.items(), sums, strict=True)
            },
        }
        args = ocp.args.Composite(
            **{
                _STATE_ITEM: ocp.args.StandardSave(tree),
                _DATA_ITEM: ocp.args.JsonSave(data),
                _META_ITEM: ocp.args.JsonSave(meta),
            }
        )
        try:
            return bool(self._manager.save(step, args=args, force=force))
        except Exception as e:
            raise CheckpointError(
                f"saving step {step} to {self.directory} failed: {_first_line(e)}"
            ) from e

    def wait(self) -> None:
        """Block until every pending save is committed; raises CheckpointError if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"saving to {self.directory} failed: {_first_line(e)}") from e

    # --- listing --------------------------------------------------------------------------------

    def all_steps(self) -> list[int]:
        """Committed steps, ascending (interrupted saves are not steps)."""
        return sorted(int(s) for s in self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None if there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _tmp_dirs(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        if self.directory.exists():
            for child in self.directory.iterdir():
                if m := _TMP_STEP.match(child.name):
                    found.setdefault(int(m.group(1)), []).append(child.name)
        return found

    # --- restoring ------------------------------------------------------------------------------

    def restore(
        self, abstract_state: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restore checkpoint ``step`` (default: the latest) as ``(state, data_state)``.

        ``abstract_state`` is a TrainState of ``jax.ShapeDtypeStruct`` with ``sharding=`` set (see
        :func:`abstract_state_for`); arrays come back with exactly those shardings, which is how a
        checkpoint saved on one mesh is loaded onto another. Live arrays are accepted as targets
        too. Raises CheckpointError if the step is missing, partial, corrupt, or does not match
        the target's structure, shapes or dtypes.
        """
        self.wait()  # a step still being written must not be read half-done
        where = str(self.directory)
        steps = self.all_steps()
        tmp = self._tmp_dirs()
        if step is None:
            if not steps:
                leftovers = sorted(name for names in tmp.values() for name in names)
                extra = f" (only interrupted saves: {leftovers})" if tmp else ""
                raise CheckpointError(f"no checkpoint to restore in {where}{extra}")
            step = steps[-1]
        step = int(step)
        if step not in steps:
            if step in tmp:
                raise self._damaged(
                    step, "partial", f"only {tmp[step]} from an interrupted save exists"
                )
            raise CheckpointError(
                f"checkpoint step {step} does not exist in {where}; available steps: {steps}"
            )
        self._check_committed(step)

        target = _to_tree(abstract_state_for(abstract_state))
        meta = self._restore_meta(step)
        self._check_matches(step, meta, target, abstract_state.rng_impl)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    **{
                        _STATE_ITEM: ocp.args.StandardRestore(target),
                        _DATA_ITEM: ocp.args.JsonRestore(),
                    }
                ),
            )
        except Exception as e:
            raise self._damaged(
                step, "corrupt or partial", f"reading it failed ({_first_line(e)})"
            ) from e
        tree, data = restored[_STATE_ITEM], restored[_DATA_ITEM]
        self._verify(step, meta, tree, data)
        state = TrainState(
            step=tree["step"],
            params=tree["params"],
            opt_state=tree["opt_state"],
            rng=tree["rng"],
            rng_impl=abstract_state.rng_impl,
        )
        return state, dict(data)

    def _damaged(self, step: int, what: str, why: str) -> CheckpointError:
        # Naming the other steps tells the caller what they can fall back to.
        others = [s for s in self.all_steps() if s != step]
        return CheckpointError(
            f"checkpoint step {step} in {self.directory} is {what}: {why}; complete steps: {others}"
        )

    def _check_committed(self, step: int) -> None:
        # Cheap file-level checks first, so damage that orbax would report deep inside tensorstore
        # (or not at all) gets a plain message.
        step_dir = self.directory / str(step)
        missing = [name for name in (_COMMIT_FILE, *_ITEMS) if not (step_dir / name).exists()]
        if missing:
            raise self._damaged(step, "corrupt or partial", f"{step_dir} lacks {missing}")

    def _restore_meta(self, step: int) -> dict[str, Any]:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{_META_ITEM: ocp.args.JsonRestore()})
            )
            meta = restored[_META_ITEM]
        except Exception as e:
            raise self._damaged(
                step,
                "corrupt or partial",
                f"its '{_META_ITEM}' item is unreadable ({_first_line(e)})",
            ) from e
        if not _is_meta_record(meta):
            raise self._damaged(
                step, "corrupt", f"its '{_META_ITEM}' item is not a {_FORMAT} record"
            )
        if meta.get("version", 0) > _FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} has format version "
                f"{meta['version']}, newer than this code understands ({_FORMAT_VERSION})"
            )
        if meta["step"] != step:
            raise self._damaged(
                step, "corrupt", f"its '{_META_ITEM}' item records step {meta['step']}"
            )
        return meta

    def _check_matches(
        self, step: int, meta: dict[str, Any], target: PyTree, rng_impl: str
    ) -> None:
        # orbax itself would silently cast dtypes and report structure mismatches as generic
        # errors; comparing against our own record names the offending paths.
        saved: dict[str, Any] = meta["leaves"]
        wanted = _leaves_with_paths(target)
        problems = []
        if only_saved := sorted(set(saved) - set(wanted)):
            problems.append(f"in the checkpoint but not in abstract_state: {only_saved}")
        if only_wanted := sorted(set(wanted) - set(saved)):
            problems.append(f"in abstract_state but not in the checkpoint: {only_wanted}")
        for path in sorted(set(saved) & set(wanted)):
            rec, want = saved[path], wanted[path]
            if tuple(rec["shape"]) != tuple(want.shape):
                problems.append(
                    f"{path}: shape {tuple(rec['shape'])} saved, {tuple(want.shape)} requested"
                )
            if rec["dtype"] != str(want.dtype):
                problems.append(f"{path}: dtype {rec['dtype']} saved, {want.dtype} requested")
        if meta.get("rng_impl", rng_impl) != rng_impl:
            problems.append(f"rng_impl {meta['rng_impl']} saved, {rng_impl} requested")
        if problems:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not match abstract_state: "
                + "; ".join(problems)
            )

    def _verify(self, step: int, meta: dict[str, Any], tree: PyTree, data: Any) -> None:
        leaves = _leaves_with_paths(tree)
        sums = _checksums(list(leaves.values()))
        bad = [
            path
            for path, s in zip(leaves, sums, strict=True)
            if meta["leaves"][path]["checksum"] != s
        ]
        if bad:
            raise self._damaged(
                step, "corrupt", f"checksum mismatch in {bad}: the array data files were altered"
            )
        if _json_digest(data) != meta.get("data_sha256"):
            raise self._damaged(
                step, "corrupt", f"the '{_DATA_ITEM}' item differs from what was saved"
            )

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Finish pending saves and release orbax's resources; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def state_shardings(state_shape: TrainState, params_shardings: PyTree, replicated: Sharding
                    ) -> TrainState:
    """Shardings for a whole TrainState: the params' shardings for params and for every
    optimizer-state subtree shaped like the params (Adam's moments), replicated elsewhere."""
    params_def = jax.tree.structure(params_shardings)

    def like_params(x: Any) -> bool:
        return jax.tree.structure(x) == params_def

    opt = jax.tree.map(
        lambda x: params_shardings if like_params(x) else replicated,
        state_shape.opt_state,
        is_leaf=like_params,
    )
    return state_shape.replace(
        step=replicated, params=params_shardings, opt_state=opt, rng=replicated
    )
