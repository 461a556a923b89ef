"""Ctrl-C during training: stop at the next step boundary with a complete checkpoint, never mid-write.

The first SIGINT only sets a flag; at the end of the running optimizer step the Trainer saves a checkpoint
(``checkpoint-N``, the full resume state) and leaves its loop, and ``run_training`` raises
:class:`pancapchain.errors.TrainingInterrupted` (exit code 130, one line naming the checkpoint). A second
SIGINT raises KeyboardInterrupt at once (exit 130, the checkpoint being written may then be incomplete).

Only single-process runs install the handler: under a multi-process launch every rank gets the signal at a
different point, and ranks stopping at different steps would wait for each other forever.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from transformers import TrainerCallback


class StopOnInterrupt(TrainerCallback):
    """Turns the first Ctrl-C into "save and stop after this step"."""

    def __init__(self):
        self.requested = False
        self.step: int | None = None
        self._previous = None

    @staticmethod
    def supported() -> bool:
        single = int(os.environ.get("WORLD_SIZE", "1")) <= 1
        return single and threading.current_thread() is threading.main_thread()

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after the current step with a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if self.supported():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
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
        """Put the previous SIGINT handler back (also when training ended with an exception)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
