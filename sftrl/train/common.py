"""What the SFT and GRPO loops share: the model from the config, the sharded train state (fresh or
restored) with the checkpoints, their index and the metrics writer it resumes, and the guard
against non-finite losses."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from sftrl import atomic, config_lib
from sftrl.errors import UserError
from sftrl.eval import evaluators as eval_runner
from sftrl.eval.evaluators import Evaluator
from sftrl.models import checkpoint
from sftrl.models.transformer import (
    Model,
    Transformer,
    abstract_params,
    build_model,
    param_shardings,
)
from sftrl.sharding import Layout
from sftrl.train import state as state_lib
from sftrl.train.metrics_log import MetricsWriter

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A step produced a non-finite loss or gradient; nothing after the last good save is kept."""


def load_model(
    config: ml_collections.ConfigDict, layout: Layout, *, hf_path: str | None = None
) -> Model:
    """The config's model for training: float32 master params, compute in config.dtype.

    `hf_path` overrides model.hf_path (e.g. GRPO starting from an exported SFT checkpoint).
    """
    dtype = config_lib.resolve_dtype(config.dtype)
    path = config.model.hf_path if hf_path is None else hf_path
    if path:
        model, arch = checkpoint.load_hf(
            path, dtype=dtype, param_dtype=jnp.float32, mesh=layout, remat=config.remat,
            attention=config.attention,
        )
        if arch.vocab_size != config.model.vocab_size:
            log.info("vocab_size %d from %s/config.json (config says %d)", arch.vocab_size, path,
                     config.model.vocab_size)
        return model
    return build_model(
        config_lib.model_config(config), layout, seed=config.seed, dtype=dtype,
        param_dtype=jnp.float32, remat=config.remat, attention=config.attention,
    )


@dataclasses.dataclass
class StateSetup:
    state: state_lib.TrainState
    shardings: state_lib.TrainState
    data_state: dict[str, Any]
    start_step: int  # 0 for a fresh run, else the restored checkpoint's step
    resumed: bool


def fresh_or_restored_state(
    model: Model,
    tx: optax.GradientTransformation,
    layout: Layout,
    checkpointer: state_lib.Checkpointer,
    *,
    seed: int,
) -> StateSetup:
    """The train state created directly in its shards, or the latest checkpoint's."""

    def create(params: Any) -> state_lib.TrainState:
        return state_lib.create_train_state(params, tx, seed)

    shape = jax.eval_shape(create, model.params)
    shardings = state_lib.state_shardings(
        shape, param_shardings(model.module, layout), layout.sharding(())
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        abstract = state_lib.abstract_state_for(shape, shardings)
        state, data_state = checkpointer.restore(abstract, latest)
        log.info("resumed from %s step %d", checkpointer.directory, latest)
        return StateSetup(state, shardings, dict(data_state), latest, True)
    state = jax.jit(create, out_shardings=shardings)(model.params)
    return StateSetup(state, shardings, {}, 0, False)


INDEX_FILE = "index.json"


class CheckpointIndex:
    """`checkpoints/index.json`: for each saved step, what it was evaluated with and the result."""

    def __init__(self, directory: Path):
        self.path = atomic.as_path(directory) / INDEX_FILE
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                log.warning("%s is damaged; starting a new index", self.path)

    def record(self, step: int, **fields: Any) -> None:
        if jax.process_index() != 0:
            return
        self.entries.setdefault(str(step), {}).update(fields)
        atomic.write_json(self.path, self.entries, indent=1)

    def forget_after(self, step: int) -> None:
        stale = [k for k in self.entries if int(k) > step]
        for key in stale:
            del self.entries[key]


class RunStart(NamedTuple):
    """What a trainer starts from: its checkpoints and their index, the train state and the
    metrics writer."""

    checkpointer: state_lib.Checkpointer
    index: CheckpointIndex
    setup: StateSetup
    writer: MetricsWriter


def start_run(
    config: ml_collections.ConfigDict,
    workdir: Path,
    model: Model,
    tx: optax.GradientTransformation,
    layout: Layout,
    pipeline: Any,
    data_key: str,
    *,
    tensorboard: bool,
    prefix: str,
) -> RunStart:
    """A trainer's start, fresh or from the latest checkpoint in `workdir/checkpoints`: the data
    `pipeline` put back where that checkpoint saved it (under `data_key`), the index's entries
    after its step forgotten (the run redoes them) and the metrics writer resumed at it."""
    checkpointer = state_lib.Checkpointer(
        workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
    )
    index = CheckpointIndex(workdir / "checkpoints")
    setup = fresh_or_restored_state(model, tx, layout, checkpointer, seed=config.seed)
    if setup.resumed and data_key in setup.data_state:
        pipeline.set_state(setup.data_state[data_key])
    index.forget_after(setup.start_step)
    writer = MetricsWriter(
        workdir, resume_step=setup.start_step if setup.resumed else None,
        tensorboard=tensorboard, prefix=prefix,
    )
    return RunStart(checkpointer, index, setup, writer)


def check_finite(step: int, metrics: dict[str, float], example_ids: Any, workdir: Path) -> None:
    if metrics.get("finite", 1.0) < 1.0:
        raise NonFiniteLossError(
            f"step {step}: non-finite loss or gradient (loss {metrics.get('loss')}, grad norm "
            f"{metrics.get('grad_norm')}); batch examples {example_ids}. Nothing after the last "
            f"saved checkpoint in {workdir / 'checkpoints'} was written; lower the learning rate "
            "or check these examples."
        )


def training_module(config: ml_collections.ConfigDict, layout: Layout) -> Transformer:
    """The config's model module (float32 params, compute in config.dtype), without weights."""
    return Transformer(
        config_lib.model_config(config), dtype=config_lib.resolve_dtype(config.dtype),
        param_dtype=jnp.float32, layout=layout, remat=config.remat, attention=config.attention,
    )


def restore_params(
    config: ml_collections.ConfigDict, workdir: Path, module: Transformer, layout: Layout,
    step: int | None = None, *, section: str = "sft",
) -> tuple[Any, int]:
    """(params, step) of a run's checkpoint (default: its latest), placed per `layout`.

    The run's optimizer is rebuilt from `config.<section>` ("sft" or "rl") only to give orbax
    the state's structure; its moments are read and dropped. No weights are initialised first.
    """
    from sftrl.optim import OptimizerConfig, make_optimizer

    directory = atomic.as_path(workdir) / "checkpoints"
    shapes, _ = abstract_params(module)
    with state_lib.Checkpointer(directory, async_save=False) as ckpt:
        target = step if step is not None else ckpt.latest_step()
        if target is None:
            raise state_lib.CheckpointError(f"{directory}: no checkpoint to start from")
        tx = make_optimizer(OptimizerConfig.from_config(config[section], total_steps=1))

        def create(params: Any) -> state_lib.TrainState:
            return state_lib.create_train_state(params, tx, 0)

        shape = jax.eval_shape(create, shapes)
        shardings = state_lib.state_shardings(
            shape, param_shardings(module, layout), layout.sharding(())
        )
        state, _ = ckpt.restore(state_lib.abstract_state_for(shape, shardings), target)
    log.info("params from %s step %d", directory, target)
    return state.params, target


def run_evaluators(evaluators: Mapping[str, Evaluator], state: Any, step: int, writer: Any
                   ) -> dict[str, float]:
    """Every evaluator on the live state through the evaluator runner (metrics named
    `<evaluator>/<metric>`); results (and each one's time) go to the writer."""
    results: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        start = time.perf_counter()
        results.update(eval_runner.run_evaluators({name: evaluator}, state))
        results[f"time/eval_{name}_s"] = time.perf_counter() - start
    if results:
        writer.write(step, results)
        log.info("step %d eval: %s", step, {k: round(v, 4) for k, v in results.items()
                                             if not k.startswith("time/")})
    return results


# A run directory's checkpoints belong to one stage: `checkpoints/stage.json` says which, so
# that `--stage=rl` pointed at an SFT run neither resumes GRPO from an SFT checkpoint nor mixes
# its own checkpoints into the SFT ones.
STAGE_MARKER = "stage.json"


def run_stage(workdir: Path) -> str | None:
    """The stage whose checkpoints `workdir` holds ('sft', 'rl'), or None if it holds none."""
    directory = atomic.as_path(workdir) / "checkpoints"
    marker = directory / STAGE_MARKER
    if marker.is_file():
        try:
            stage = json.loads(marker.read_text()).get("stage")
        except (json.JSONDecodeError, AttributeError) as error:
            raise state_lib.CheckpointError(f"{marker}: not a stage marker ({error})") from None
        return str(stage)
    return None  # no checkpoints, or written before markers existed (either stage: unknown)


def claim_run_dir(workdir: Path, stage: str) -> None:
    """Marks `workdir`'s checkpoints as `stage`'s; refuses a folder that holds another stage."""
    existing = run_stage(workdir)
    if existing is not None and existing != stage:
        raise UserError(f"{workdir}: holds a {existing} run's checkpoints; give the {stage} "
                        "stage its own --workdir")
    directory = atomic.as_path(workdir) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / STAGE_MARKER
    if jax.process_index() == 0 and not marker.exists():
        atomic.write_json(marker, {"stage": stage}, indent=None)


def abstract_train_state(
    module: Transformer, tx: optax.GradientTransformation, layout: Layout, *, seed: int = 0
) -> tuple[state_lib.TrainState, state_lib.TrainState]:
    """(state, shardings) of the train state a run of `module` would create, with no weights:
    every leaf a `jax.ShapeDtypeStruct` carrying its sharding (from one abstract init trace and
    `jax.eval_shape` of the optimizer's init). What `sftrl.plan` compiles against."""
    shapes, _ = abstract_params(module)
    shape = jax.eval_shape(lambda p: state_lib.create_train_state(p, tx, seed), shapes)
    shardings = state_lib.state_shardings(
        shape, param_shardings(module, layout), layout.sharding(())
    )
    return state_lib.abstract_state_for(shape, shardings), shardings
