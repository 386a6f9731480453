"""AdamW with warmup + decay, global-norm clipping and a weight-decay mask, shared by SFT and GRPO.

The optimizer state follows the parameters' dtype, so float32 master weights (``param_dtype``)
give float32 Adam moments while the forward pass computes in bfloat16 (``dtype``).

The optimizer's config keys (each trainer's section: ``sft.lr``, ``rl.b2``, ...) are the fields of
`OptimizerConfig`, written here only: `config_lib` builds the sections from `config_defaults`.
A leaf below the trainers (jax and optax only), so that `config_lib` can validate the keys
without importing `sftrl.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant", "wsd")


class OptimizerConfigError(ValueError):
    """An invalid optimizer setting; the message names the config field."""


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    lr: float = 1e-3
    warmup_steps: int = 0
    total_steps: int = 1
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    # "wsd" (warmup-stable-decay): constant lr, then a linear decay over the LAST decay_steps
    # steps. Stable up to any step s, so a run that resumes a stable checkpoint at s with
    # total_steps = s + decay_steps is a short decay branch of the same trajectory (a valid end
    # point of SFT at every branch).
    decay_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    decay_norms: bool = False  # weight decay on RMSNorm scales
    decay_embeddings: bool = False  # weight decay on the embedding (and a tied output) matrix

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "total_steps": self.total_steps >= 1,
            "schedule": self.schedule in SCHEDULES,
            "min_lr_ratio": 0 <= self.min_lr_ratio <= 1,
            "weight_decay": self.weight_decay >= 0,
            "b1": 0 <= self.b1 < 1,
            "b2": 0 <= self.b2 < 1,
            "eps": self.eps > 0,
            "grad_clip": self.grad_clip >= 0,
            "decay_steps": self.decay_steps > 0 if self.schedule == "wsd"
            else self.decay_steps >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                extra = f" (one of {', '.join(SCHEDULES)})" if name == "schedule" else ""
                raise OptimizerConfigError(f"{name}: invalid value {getattr(self, name)!r}{extra}")

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The fields a config section sets; total_steps is the trainer's, from its run length."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "total_steps")

    @classmethod
    def from_config(cls, section: Any, total_steps: int) -> OptimizerConfig:
        return cls(total_steps=max(1, total_steps), **{k: section[k] for k in cls.config_keys()})


def config_defaults(**overrides: Any) -> dict[str, Any]:
    """A trainer section's optimizer keys with their defaults, `overrides` changed (validated)."""
    config = OptimizerConfig(**overrides)
    return {k: getattr(config, k) for k in OptimizerConfig.config_keys()}


def check_run_length(config: OptimizerConfig) -> None:
    """Refuses a "wsd" decay longer than the run after warmup (OptimizerConfigError naming
    decay_steps). The trainers call it once the run length is known; `learning_rate` itself
    accepts the placeholder length a restore-only optimizer is built with."""
    span = config.total_steps - config.warmup_steps
    if config.schedule == "wsd" and config.decay_steps > span:
        raise OptimizerConfigError(f"decay_steps: {config.decay_steps} is more than the "
                                   f"{span} steps after warmup")


def learning_rate(config: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``lr``, then the configured decay to ``lr * min_lr_ratio``."""
    peak, end = config.lr, config.lr * config.min_lr_ratio
    decay_steps = max(1, config.total_steps - config.warmup_steps)
    if config.schedule == "wsd":
        # A run shorter than warmup + decay_steps decays over what is left (config validation
        # refuses that for a training run whose length it knows; a restore for evaluation
        # builds the optimizer with a placeholder length and never steps it).
        span = min(config.decay_steps, decay_steps)
        decay = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, span)],
            [decay_steps - span])
    elif config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.min_lr_ratio)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if config.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, decay], [config.warmup_steps])


def decay_mask(params: Any, config: OptimizerConfig) -> Any:
    """True where weight decay applies: matrices, minus norms/embeddings unless configured."""

    def keep(path: tuple[Any, ...], _: Any) -> bool:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if any("norm" in n for n in names):
            return config.decay_norms
        if names and names[0] == "embed":
            return config.decay_embeddings
        return True

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps,
        weight_decay=config.weight_decay, mask=lambda p: decay_mask(p, config),
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw
