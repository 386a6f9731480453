"""The learning-rate schedules of sftrl.optim against their written-out definitions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sftrl import config_lib, optim


def _wsd_reference(t: int, peak: float, end: float, warmup: int, total: int, decay: int) -> float:
    # warmup 0 -> peak, constant, then a straight line from peak (at total - decay) to end (at
    # total): the warmup-stable-decay schedule as written in its papers
    if t < warmup:
        return peak * t / warmup
    if t < total - decay:
        return peak
    return peak + (end - peak) * min(1.0, (t - (total - decay)) / decay)


def test_wsd_is_stable_then_a_linear_decay_over_the_last_steps():
    config = optim.OptimizerConfig(lr=3e-3, warmup_steps=20, total_steps=1350, schedule="wsd",
                                   decay_steps=150, min_lr_ratio=0.0)
    schedule = optim.learning_rate(config)
    steps = [0, 10, 20, 500, 1199, 1200, 1275, 1349, 1350]
    np.testing.assert_allclose([float(schedule(t)) for t in steps],
                               [_wsd_reference(t, 3e-3, 0.0, 20, 1350, 150) for t in steps],
                               rtol=1e-6, atol=1e-12)
    # a decay branch at step s equals the stable run up to s (the property the studies use)
    longer = optim.learning_rate(optim.OptimizerConfig(
        lr=3e-3, warmup_steps=20, total_steps=2150, schedule="wsd", decay_steps=150))
    assert all(float(schedule(t)) == float(longer(t)) for t in range(0, 1200, 37))


def test_wsd_needs_decay_steps_that_fit():
    with pytest.raises(optim.OptimizerConfigError, match="decay_steps"):
        optim.OptimizerConfig(schedule="wsd", total_steps=100)
    # a run shorter than the decay (an evaluation's placeholder optimizer) decays over all of it
    short = optim.learning_rate(optim.OptimizerConfig(lr=1.0, schedule="wsd", total_steps=100,
                                                      decay_steps=200, min_lr_ratio=0.0))
    assert float(short(0)) == 1.0 and float(short(50)) == pytest.approx(0.5)
    # a training run whose length is known is refused at validation, naming the key
    c = config_lib.base_config()
    c.sft.update(schedule="wsd", num_steps=100, warmup_steps=20, decay_steps=90)
    with pytest.raises(config_lib.ConfigError, match=r"sft\.decay_steps: 90"):
        config_lib.validate(c, num_devices=1)


def test_check_run_length_names_a_decay_longer_than_the_run():
    # what the trainers call once the epochs have set the run length
    fits = optim.OptimizerConfig(schedule="wsd", total_steps=120, warmup_steps=20, decay_steps=100)
    optim.check_run_length(fits)
    with pytest.raises(optim.OptimizerConfigError, match="decay_steps: 101 is more than the 100"):
        optim.check_run_length(dataclasses.replace(fits, decay_steps=101))
