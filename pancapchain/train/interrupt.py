"""Ctrl-C during training: stop at the next step boundary with a complete checkpoint, never mid-write.

The first SIGINT only sets a flag; at the end of the running optimizer step the Trainer saves a checkpoint
(``checkpoint-N``, the full resume state) and leaves its loop, and ``run_training`` raises
:class:`pancapchain.errors.TrainingInterrupted` (exit code 130, one line naming the checkpoint). A second
SIGINT raises KeyboardInterrupt at once (exit 130, the checkpoint being written may then be incomplete).

Multi-process launches (``accelerate launch`` / torchrun): the launcher turns Ctrl-C into a SIGINT (SIGTERM
when it is itself terminated) to every rank, which may arrive at different steps. Each rank only sets its
flag; at every step end the ranks take the maximum of their flags (one tiny all-reduce), so all of them stop
after the same step and save one checkpoint together. The launcher waits ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``
seconds (default 30) for the ranks before it kills them: raise it when saving a checkpoint takes longer.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist
from transformers import TrainerCallback


class StopOnInterrupt(TrainerCallback):
    """Turns the first Ctrl-C into "save and stop after this step"."""

    def __init__(self):
        self.requested = False  # this rank will stop (its own signal, or another rank's, via the all-reduce)
        self.received = 0  # signals this rank received: the second one stops at once
        self.step: int | None = None
        self._previous: dict[int, object] = {}

    @staticmethod
    def multi_process() -> bool:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    @staticmethod
    def supported() -> bool:
        return threading.current_thread() is threading.main_thread()

    def _on_signal(self, signum, frame) -> None:
        self.received += 1
        if self.received > 1:
            raise KeyboardInterrupt
        self.requested = True
        if int(os.environ.get("RANK", "0")) == 0:
            print("\nCtrl-C: stopping after the current step with a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.supported():
            signals = (signal.SIGINT, signal.SIGTERM) if self.multi_process() else (signal.SIGINT,)
            self._previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}

    def _any_rank_requested(self, device) -> bool:
        """True when any rank has its flag set (every rank calls this at the same step end)."""
        if not (self.multi_process() and dist.is_available() and dist.is_initialized()):
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_requested(args.device):
            self.requested = True
            self.step = state.global_step
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = False

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.requested:  # the checkpoint of this step was written at the step's end already
            control.should_save = False
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        """Put the previous signal handlers back (also when training ended with an exception)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
