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


def test_end_report_says_whether_the_budget_or_a_cap_ended_the_run():
    b = budget(seconds=10, warmup=0.0)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    b.on_step_begin(None, None, control)
    b.clock.now += 5  # an epoch cap ends the run half-way: the cosine is at 0.5
    assert b.end_report() == {"stopped_by": "epochs_or_steps", "lr_factor_end": 0.5}
    b.clock.now += 5
    b.on_step_end(None, None, control)
    assert b.end_report() == {"stopped_by": "wall_budget", "lr_factor_end": 0.0}


def test_a_run_its_epoch_cap_ended_is_reported_with_a_warning(caplog):
    from pancapchain.config import load_recipe
    from pancapchain.train.run import _budget_end

    cfg = load_recipe("recipes/tiny_chain.yaml", ["train.epochs=2"])
    b = budget(seconds=10, warmup=0.0)
    b.on_step_begin(None, None, None)
    b.clock.now += 5
    with caplog.at_level("WARNING"):
        assert _budget_end(b, cfg) == {"stopped_by": "epochs_or_steps", "lr_factor_end": 0.5}
    assert "train.epochs=2" in caplog.text and "at 50% of its peak" in caplog.text
