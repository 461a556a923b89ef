"""The wall-clock training budget: time-based LR schedule and the stop signal (fake clock, no sleeping)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from pancapchain.train.budget import WallClockBudget


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def budget(seconds=100.0, warmup=0.1, scheduler="cosine"):
    b = WallClockBudget(seconds, warmup, scheduler)
    b.clock = FakeClock()
    return b


def test_schedule_follows_elapsed_time():
    b = budget()
    assert b.elapsed_fraction() == 0.0 and b.lr_factor() == pytest.approx(1e-3)  # before the first step
    b.on_step_begin(None, None, None)
    b.clock.now += 5  # half of the 10 % warmup
    assert b.lr_factor() == pytest.approx(0.5)
    b.clock.now += 5 + 45  # 55 %: half-way through the cosine part
    assert b.lr_factor() == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    b.clock.now += 45  # the end
    assert b.lr_factor() == pytest.approx(0.0, abs=1e-12)


def test_linear_and_constant_schedules():
    lin, const = budget(scheduler="linear"), budget(scheduler="constant")
    for b in (lin, const):
        b.on_step_begin(None, None, None)
        b.clock.now += 55
    assert lin.lr_factor() == pytest.approx(0.5)
    assert const.lr_factor() == 1.0


def test_stop_signal_only_when_the_budget_is_spent():
    b = budget(seconds=10, warmup=0.0)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    b.on_step_begin(None, None, control)
    b.clock.now += 9.9
    assert not b.on_step_end(None, None, control).should_training_stop
    b.clock.now += 0.2
    out = b.on_step_end(None, None, control)
    assert out.should_training_stop and out.should_save


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="seconds > 0"):
        WallClockBudget(0)
    with pytest.raises(ValueError, match="not 'polynomial'"):
        WallClockBudget(10, scheduler="polynomial")
