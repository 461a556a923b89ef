"""A wall-clock training budget: ``train.max_seconds`` stops training after that many seconds of optimizer steps,
and the learning-rate schedule runs on elapsed time instead of steps.

Written by hand because the Trainer only knows step- and epoch-based schedules, and an ablation that compares
variants "within the same wall budget" (benchmarks/learning_quality.py) needs a schedule that completes its
warmup and cosine decay exactly when the budget ends, whatever the step time of the variant.
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class WallClockBudget(TrainerCallback):
    """Stops training once ``seconds`` of training time have passed; ``lr_factor`` is a time-based schedule.

    The clock starts at the first optimizer step (evaluation before training does not count). A resumed run
    gets a fresh budget: the budget is a per-launch limit, not a total.
    """

    def __init__(self, seconds: float, warmup_ratio: float = 0.03, scheduler: str = "cosine"):
        if seconds <= 0:
            raise ValueError(f"a wall-clock budget needs seconds > 0, got {seconds}")
        if scheduler not in ("cosine", "linear", "constant"):
            raise ValueError(f"train.max_seconds supports scheduler cosine, linear or constant, not {scheduler!r}")
        self.seconds = seconds
        self.warmup = min(max(warmup_ratio, 0.0), 0.5)
        self.scheduler = scheduler
        self.started: float | None = None
        self.clock = time.monotonic
        self.spent = False  # True once the budget, not the epoch or step cap, ended training
        self.synced: float | None = None  # several ranks: rank 0's elapsed fraction at the last step end

    def end_report(self) -> dict:
        """How the run ended, for metrics.json: ``stopped_by`` "wall_budget", or "epochs_or_steps" when the epoch or
        step cap came first, and ``lr_factor_end``, the schedule's multiplier at the last step (0 when the cosine or
        linear decay finished; above 0 means the run ended with the learning rate not annealed)."""
        return {"stopped_by": "wall_budget" if self.spent else "epochs_or_steps",
                "lr_factor_end": round(self.lr_factor(), 4)}

    def elapsed_fraction(self) -> float:
        """Share of the budget used so far, in [0, 1] (0 before the first step)."""
        if self.started is None:
            return 0.0
        return self.synced if self.synced is not None else self._own_fraction()

    def _own_fraction(self) -> float:
        """This process's share of the budget used, by its own clock (after the first step began)."""
        return min(1.0, (self.clock() - self.started) / self.seconds)

    def lr_factor(self, _step: int = 0) -> float:
        """Multiplier of the base learning rate: linear warmup, then cosine/linear decay to 0 (or constant)."""
        f = self.elapsed_fraction()
        if self.warmup > 0 and f < self.warmup:
            return max(f / self.warmup, 1e-3)
        if self.scheduler == "constant":
            return 1.0
        progress = (f - self.warmup) / (1.0 - self.warmup)
        if self.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_step_begin(self, args, state, control, **kwargs):
        if self.started is None:
            self.started = self.clock()
            if _world_size() > 1:
                self.synced = 0.0  # the first step's learning rate, before any rank's clock is shared

    def on_step_end(self, args, state, control, **kwargs):
        if _world_size() > 1:
            # The ranks' clocks differ by milliseconds: one would stop a step before the others (which then wait in
            # the next all-reduce forever) and their learning rates would differ. Every rank takes rank 0's time.
            self.synced = _from_rank_zero(self._own_fraction(), args.device)
        if self.elapsed_fraction() >= 1.0:
            self.spent = True
            control.should_training_stop = True
            control.should_save = True  # the final checkpoint is the budget's end
        return control


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _from_rank_zero(value: float, device: torch.device) -> float:
    """``value`` as rank 0 has it, on every rank (one broadcast on the Trainer's device, as NCCL needs)."""
    shared = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(shared, src=0)
    return float(shared.item())
